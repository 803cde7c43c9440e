/*
 * The benchmark's floor: the cost of the system calls alone. A minimal SSE
 * server in C, one thread, epoll, that does only what every server under test
 * must do per event: one write(2) of the event's bytes to each subscriber's
 * socket. No queue, no buffer per stream, no encoding per subscriber: the
 * event is formatted once, then written N times from one loop.
 *
 *   floor PORT [EVENTS_PER_WRITE]
 *
 * Listens on 127.0.0.1:PORT and answers, like the Python servers under test
 * (bench/servers/ours.py):
 *
 *   GET /events        a stream: "200 OK", Content-Type text/event-stream, the
 *                      preamble ": ok" (as EventSource sends), then every event
 *                      published, each "id: <ms>-<i>\ndata: <ns> <i> xxx...\n\n"
 *                      (the hub's frames: <ns> is the publish time stamp the
 *                      load client reads, CLOCK_REALTIME, as payload() does);
 *   POST /bench/publish?count=N&rate=R&size=S
 *                      "202 Accepted", then publishes N events of S bytes of
 *                      data, R per second (0: flat out), to every stream open
 *                      at the time of each event, paced as ours.py paced() is:
 *                      event i is due at start + i / R;
 *   anything else      404.
 *
 * Stream sockets are written blocking (TCP_NODELAY, as gunicorn sets): a
 * subscriber whose socket buffer is full makes the loop wait for it, which is
 * what delivering every event at every subscriber costs without buffering in
 * user space. A subscriber that hangs up (read returns 0) or whose write fails
 * is closed and forgotten. The loop stops for nothing else: between events it
 * polls epoll (without waiting when flat out, every 64 events, as paced() lets
 * its writers run) so that streams opened meanwhile are served.
 *
 * EVENTS_PER_WRITE (default 1: the floor the benchmark reports against): the
 * events due together (flat out: up to 64 at a time) written to each socket
 * with one write(2) of all of them, as the Python servers coalesce what was
 * pushed before their writer ran. With it, the floor of throughput counts the
 * bytes' cost, not one system call per event.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define REQUEST_MAX 4096  /* a request's head longer than this is refused */

static const char STREAM_HEAD[] =
    "HTTP/1.0 200 OK\r\n"
    "Content-Type: text/event-stream; charset=utf-8\r\n"
    "Cache-Control: no-cache, no-transform\r\n"
    "X-Accel-Buffering: no\r\n"
    "Connection: close\r\n"
    "\r\n"
    ": ok\n\n";
static const char ACCEPTED[] = "HTTP/1.0 202 Accepted\r\nContent-Type: text/plain\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
static const char NOT_FOUND[] = "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
static const char BAD_REQUEST[] = "HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/* One client. A stream keeps only its descriptor and its place among the
   subscribers; a request still being read keeps what arrived of it (freed
   once it is whole: the load client's arrive in one segment, so rarely). */
struct client {
    int fd;
    int subscriber;   /* index in subscribers[], or -1 while the request is read */
    char *pending;    /* the head read so far, when it came in pieces */
    size_t pending_len;
};

static struct client **subscribers;
static size_t subscriber_count, subscriber_room;

/* The publisher: one at a time, as one trigger starts one in ours.py. */
static struct {
    int active;
    long count, next;
    double rate, start;
    int size;
    int per_write;    /* events written to a socket in one write(2), at most */
    char *frame;      /* the events being written: formatted once */
} pub;

static uint64_t realtime_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Blocking write of all of it; 0 if the peer is gone. */
static int write_all(int fd, const char *buf, size_t len) {
    while (len) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return 0;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 1;
}

static void drop(int ep, struct client *c) {
    if (c->subscriber >= 0) {
        /* Swap the last subscriber into its place: O(1), order is of no matter. */
        struct client *last = subscribers[--subscriber_count];
        subscribers[c->subscriber] = last;
        last->subscriber = c->subscriber;
    }
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->pending);
    free(c);
}

static void subscribe(struct client *c) {
    if (subscriber_count == subscriber_room) {
        subscriber_room = subscriber_room ? subscriber_room * 2 : 1024;
        subscribers = realloc(subscribers, subscriber_room * sizeof *subscribers);
        if (!subscribers) { perror("realloc"); exit(2); }
    }
    c->subscriber = (int)subscriber_count;
    subscribers[subscriber_count++] = c;
}

/* The value of NAME=... in the query string QUERY (up to the first space), or FALLBACK. */
static double query_number(const char *query, const char *name, double fallback) {
    size_t len = strlen(name);
    for (const char *p = query; p && *p && *p != ' ';) {
        if (strncmp(p, name, len) == 0 && p[len] == '=') return atof(p + len + 1);
        p = strpbrk(p, "& ");
        if (!p || *p == ' ') break;
        p++;
    }
    return fallback;
}

static void start_publishing(const char *query) {
    pub.count = (long)query_number(query, "count", 0);
    pub.rate = query_number(query, "rate", 0);
    pub.size = (int)query_number(query, "size", 64);
    if (pub.size < 0) pub.size = 0;
    free(pub.frame);
    pub.frame = malloc(((size_t)pub.size + 128) * (size_t)pub.per_write);
    if (!pub.frame) { perror("malloc"); exit(2); }
    pub.next = 0;
    pub.start = mono();
    pub.active = pub.count > 0;
}

/* Event pub.next, formatted at END; returns the end of its frame. */
static char *format_event(char *end) {
    uint64_t ns = realtime_ns();
    long i = pub.next++;
    end += snprintf(end, 128, "id: %llu-%ld\ndata: ", (unsigned long long)(ns / 1000000), i);
    int data = snprintf(end, 128, "%llu %ld ", (unsigned long long)ns, i);
    end += data;
    int padding = pub.size - data;
    if (padding > 0) { memset(end, 'x', (size_t)padding); end += padding; }
    *end++ = '\n';
    *end++ = '\n';
    if (pub.next >= pub.count) pub.active = 0;
    return end;
}

static int due(void) {
    return pub.active && (pub.rate <= 0 || mono() >= pub.start + pub.next / pub.rate);
}

/* The events due (at most pub.per_write): formatted once, then one write per subscriber. */
static void publish_due(int ep) {
    char *end = pub.frame;
    for (int k = 0; k < pub.per_write && due(); k++) end = format_event(end);
    size_t len = (size_t)(end - pub.frame);
    for (size_t k = 0; k < subscriber_count;) {
        struct client *c = subscribers[k];
        if (write_all(c->fd, pub.frame, len)) k++;
        else drop(ep, c);  /* the last one took its place: write to it next */
    }
}

/* A whole request head: answer it. 0 if the client is done with (closed). */
static int answer(int ep, struct client *c, const char *head) {
    if (strncmp(head, "POST /bench/publish?", 20) == 0) {
        start_publishing(head + 20);
        write_all(c->fd, ACCEPTED, sizeof ACCEPTED - 1);
        drop(ep, c);
        return 0;
    }
    if (strncmp(head, "GET /events ", 12) == 0 || strncmp(head, "GET /events?", 12) == 0) {
        int blocking = fcntl(c->fd, F_GETFL) & ~O_NONBLOCK;
        fcntl(c->fd, F_SETFL, blocking);
        if (!write_all(c->fd, STREAM_HEAD, sizeof STREAM_HEAD - 1)) { drop(ep, c); return 0; }
        subscribe(c);
        return 1;
    }
    write_all(c->fd, NOT_FOUND, sizeof NOT_FOUND - 1);
    drop(ep, c);
    return 0;
}

static void readable(int ep, struct client *c) {
    static char buf[REQUEST_MAX + 1];
    for (;;) {
        ssize_t n = recv(c->fd, buf, REQUEST_MAX, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) { drop(ep, c); return; }
        if (n < 0) return;
        if (c->subscriber >= 0) continue;  /* a stream's client says nothing we need */
        const char *head = buf;
        size_t len = (size_t)n;
        if (c->pending || !memmem(buf, len, "\r\n\r\n", 4)) {
            if (c->pending_len + len > REQUEST_MAX) {
                write_all(c->fd, BAD_REQUEST, sizeof BAD_REQUEST - 1);
                drop(ep, c);
                return;
            }
            c->pending = realloc(c->pending, c->pending_len + len + 1);
            if (!c->pending) { perror("realloc"); exit(2); }
            memcpy(c->pending + c->pending_len, buf, len);
            c->pending_len += len;
            c->pending[c->pending_len] = 0;
            if (!memmem(c->pending, c->pending_len, "\r\n\r\n", 4)) continue;
            head = c->pending;
        } else {
            buf[len] = 0;
        }
        int open = answer(ep, c, head);
        if (!open) return;
        free(c->pending);
        c->pending = NULL;
        c->pending_len = 0;
    }
}

static void accept_all(int ep, int listener) {
    for (;;) {
        int fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno != EAGAIN) perror("accept4");
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct client *c = calloc(1, sizeof *c);
        if (!c) { perror("calloc"); exit(2); }
        c->fd = fd;
        c->subscriber = -1;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
}

int main(int argc, char **argv) {
    pub.per_write = argc == 3 ? atoi(argv[2]) : 1;
    if ((argc != 2 && argc != 3) || atoi(argv[1]) <= 0 || pub.per_write <= 0 || pub.per_write > 64) {
        fprintf(stderr, "usage: floor PORT [EVENTS_PER_WRITE (1 to 64)]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);  /* a gone subscriber is a failed write, not a death */
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) < 0) { perror("bind"); return 2; }
    if (listen(listener, 16384) < 0) { perror("listen"); return 2; }
    int ep = epoll_create1(0);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, listener, &lev);

    struct epoll_event events[512];
    for (;;) {
        int timeout = -1;
        if (pub.active) {
            double wait = pub.rate > 0 ? pub.start + pub.next / pub.rate - mono() : 0;
            timeout = wait > 0 ? (int)(wait * 1000) + 1 : 0;
        }
        int n = epoll_wait(ep, events, 512, timeout);
        if (n < 0 && errno != EINTR) { perror("epoll_wait"); return 2; }
        for (int e = 0; e < n; e++) {
            if (events[e].data.ptr == NULL) accept_all(ep, listener);
            else readable(ep, events[e].data.ptr);
        }
        if (!pub.active) continue;
        /* Flat out: 64 events between two looks at epoll; paced: those due. */
        for (long before = pub.next; due() && pub.next - before < 64;) publish_due(ep);
    }
}
