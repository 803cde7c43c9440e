/*
 * The benchmark's load client: many SSE subscribers (or one publisher) on one
 * core, written in C with epoll so that it is never the bottleneck.
 *
 *   loadclient sub HOST PORT PATH CONNECTIONS EXPECTED TIMEOUT_S
 *       Opens CONNECTIONS streams (HTTP/1.0, so every server sends the body
 *       unframed), prints "READY <n>" once every stream has its response
 *       headers, then reads until each stream has EXPECTED events or TIMEOUT_S
 *       passed since READY without progress. Every "data: <ns> ..." line is an
 *       event published at <ns> (CLOCK_REALTIME): its latency is now - <ns>.
 *       Prints one JSON line: counts and the latency distribution.
 *
 *   loadclient sub HOST PORT PATH CONNECTIONS EXPECTED TIMEOUT_S check CHANNEL IDS
 *       The same, and checks every event at every stream (slower: each line
 *       is read whole, for the multiplexed scenario): its data is
 *       "<ns> <i> CHANNEL ..." with i = 0, 1, 2, ... at each stream (nothing
 *       lost, twice or out of order), its type is "message" (no stream-reset
 *       or stream-error), and IDS says what its id must be: "none" (not
 *       checked), "plain" (an id "<ms>-<seq>" greater than the one before), or
 *       "cursor:N" (a multiplexed cursor of N entries "<channel>*<ms>-<seq>"
 *       separated by ';', the event's channel CHANNEL first and its own id
 *       greater than the one before; the bare id line a new stream starts
 *       with must have N entries too). Failures are counted in the JSON.
 *
 *   Both sub modes connect from SOURCE_ADDRESS when it is set (see bind_source).
 *
 *   loadclient pub HOST PORT PATH COUNT RATE SIZE [TAG]
 *       POSTs COUNT events (body "<ns> <i> <padding to SIZE>", or
 *       "<ns> <i> TAG <padding>") over one keep-alive connection, RATE per
 *       second (0: as fast as the server answers, 32 requests in flight).
 *       Prints one JSON line.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HIST_US 10            /* histogram resolution: 10 microseconds */
#define HIST_BUCKETS 2000000  /* up to 20 seconds */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The address streams connect FROM (environment SOURCE_ADDRESS, e.g.
   127.0.0.2; unset: the kernel's choice). One source address reaches one
   server address:port through at most ~28,000 ephemeral ports
   (net.ipv4.ip_local_port_range), so 50,000 streams to one hub come from
   several load clients, each from its own loopback address. */
static void bind_source(int fd) {
    const char *source = getenv("SOURCE_ADDRESS");
    if (!source || !*source) return;
    struct sockaddr_in from = {.sin_family = AF_INET, .sin_port = 0};
    if (inet_pton(AF_INET, source, &from.sin_addr) != 1) {
        fprintf(stderr, "SOURCE_ADDRESS is not an IPv4 address: %s\n", source); exit(2);
    }
    /* The port is chosen at connect() for the whole 4-tuple, not at bind()
       for the address alone (which would cap us at the same ~28,000). */
    int one = 1;
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&from, sizeof from) < 0) { perror("bind SOURCE_ADDRESS"); exit(2); }
}

static int connect_to(const char *host, int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) { perror("socket"); exit(2); }
    bind_source(fd);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &addr.sin_addr);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) { perror("connect"); exit(2); }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static void send_all(int fd, const char *buf, size_t len) {
    while (len) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) { if (errno == EINTR || errno == EAGAIN) continue; perror("write"); exit(2); }
        buf += n; len -= (size_t)n;
    }
}

/* Per-stream parser state: we only look for lines that start "data: <digits>". */
struct conn {
    int fd;
    int headers_done;   /* seen \r\n\r\n */
    int hdr_match;      /* how much of \r\n\r\n matched */
    int line_pos;       /* position in the current line (capped) */
    int prefix;         /* chars of "data: " matched at line start */
    int in_number;
    int digits;
    uint64_t number;
    long events;
    int closed;
    struct check *check;  /* only when checking every event */
};

/* What "check" mode keeps per stream: the line being read, and the fields of
   the event being read. */
#define LINE_MAX_KEPT 4096
struct check {
    char line[LINE_MAX_KEPT];
    int len;              /* bytes kept of the current line (the rest is dropped) */
    char id[LINE_MAX_KEPT];
    int id_len, has_id, has_data, other_type;
    char data[256];
    int data_len;
    long next_seq;        /* the <i> the next event must carry */
    uint64_t last_ms, last_seq;
};

/* Checking: the channel every event must name, how its id is checked, and
   what failed (every count must stay 0). */
static int checking;
static const char *check_channel;
static int ids_mode;      /* 0 none, 1 plain, 2 cursor */
static int cursor_entries;
static long bad_data, bad_order, bad_id, other_events, checked_events;

static const char DATA[] = "data: ";

static uint32_t *hist;
static long total_events, hist_overflow;
static uint64_t first_event_ns, last_event_ns;

static void record(uint64_t published, uint64_t at) {
    uint64_t lat = at > published ? at - published : 0;
    uint64_t bucket = lat / (HIST_US * 1000ull);
    if (bucket >= HIST_BUCKETS) { hist_overflow++; bucket = HIST_BUCKETS - 1; }
    hist[bucket]++;
    total_events++;
    if (!first_event_ns) first_event_ns = at;
    last_event_ns = at;
}

static void feed(struct conn *c, const char *buf, ssize_t n, uint64_t at) {
    for (ssize_t i = 0; i < n; i++) {
        if (c->line_pos == 7 && c->headers_done) {
            /* The rest of this line is of no interest (padding, other fields):
               jump to its end instead of looking at every byte, so the client
               keeps up with millions of events a second. */
            const char *end = memchr(buf + i, '\n', (size_t)(n - i));
            if (!end) return;
            i = end - buf;
        }
        char ch = buf[i];
        if (!c->headers_done) {
            static const char END[] = "\r\n\r\n";
            c->hdr_match = (ch == END[c->hdr_match]) ? c->hdr_match + 1 : (ch == '\r' ? 1 : 0);
            if (c->hdr_match == 4) { c->headers_done = 1; c->line_pos = 0; c->prefix = 0; }
            continue;
        }
        if (ch == '\n' || ch == '\r') {
            if (c->in_number && c->digits) { record(c->number, at); c->events++; }
            c->in_number = 0; c->line_pos = 0; c->prefix = 0;
            continue;
        }
        if (c->in_number) {
            if (ch >= '0' && ch <= '9') {
                c->number = c->number * 10 + (uint64_t)(ch - '0');
                c->digits++;
                continue;
            }
            if (c->digits) { record(c->number, at); c->events++; }  /* other data lines are not ours */
            c->in_number = 0; c->line_pos = 7; /* skip the rest of the line */
            continue;
        }
        if (c->line_pos == c->prefix && c->prefix < 6) {
            if (ch == DATA[c->prefix]) {
                c->prefix++; c->line_pos++;
                if (c->prefix == 6) { c->in_number = 1; c->number = 0; c->digits = 0; }
                continue;
            }
        }
        c->line_pos = 7;
    }
}

/* "<ms>-<seq>" (len bytes at s) as two numbers; 0 if it is not one. */
static int parse_event_id(const char *s, int len, uint64_t *ms, uint64_t *seq) {
    int i = 0, digits = 0;
    *ms = 0; *seq = 0;
    while (i < len && s[i] >= '0' && s[i] <= '9') { *ms = *ms * 10 + (uint64_t)(s[i++] - '0'); digits++; }
    if (!digits || i >= len || s[i++] != '-') return 0;
    digits = 0;
    while (i < len && s[i] >= '0' && s[i] <= '9') { *seq = *seq * 10 + (uint64_t)(s[i++] - '0'); digits++; }
    return digits && i == len;
}

/* The id of an event in "check" mode: 1 if it is what ids_mode asks for. */
static int id_ok(struct check *k, int bare) {
    if (ids_mode == 0) return 1;
    if (!k->has_id) return bare;  /* an event without an id line keeps the last one: not ours */
    const char *own = k->id;
    int own_len = k->id_len;
    if (ids_mode == 2) {
        int entries = 1;
        for (int i = 0; i < k->id_len; i++) entries += k->id[i] == ';';
        if (entries != cursor_entries) return 0;
        if (bare) return 1;  /* the starting cursor: the channels in the order asked */
        const char *star = memchr(k->id, '*', (size_t)k->id_len);
        size_t name_len = strlen(check_channel);
        if (!star || (size_t)(star - k->id) != name_len || memcmp(k->id, check_channel, name_len) != 0) return 0;
        own = star + 1;
        const char *semi = memchr(own, ';', (size_t)(k->id + k->id_len - own));
        own_len = (int)((semi ? semi : k->id + k->id_len) - own);
    }
    if (bare) return 1;
    uint64_t ms, seq;
    if (!parse_event_id(own, own_len, &ms, &seq)) return 0;
    if (ms < k->last_ms || (ms == k->last_ms && seq <= k->last_seq)) return 0;
    k->last_ms = ms; k->last_seq = seq;
    return 1;
}

/* A blank line: the event read so far is dispatched and checked. */
static void dispatch_checked(struct conn *c, uint64_t at) {
    struct check *k = c->check;
    if (k->has_data) {
        checked_events++;
        /* "<ns> <i> <channel> ..." */
        uint64_t ns = 0;
        long seq = 0;
        int i = 0, ok = 1, digits = 0;
        while (i < k->data_len && k->data[i] >= '0' && k->data[i] <= '9') { ns = ns * 10 + (uint64_t)(k->data[i++] - '0'); digits++; }
        ok = digits && i < k->data_len && k->data[i++] == ' ';
        digits = 0;
        while (ok && i < k->data_len && k->data[i] >= '0' && k->data[i] <= '9') { seq = seq * 10 + (k->data[i++] - '0'); digits++; }
        ok = ok && digits && i < k->data_len && k->data[i++] == ' ';
        size_t name_len = strlen(check_channel);
        ok = ok && (size_t)(k->data_len - i) >= name_len && memcmp(k->data + i, check_channel, name_len) == 0
             && (i + (int)name_len == k->data_len || k->data[i + name_len] == ' ');
        if (!ok) bad_data++;
        else {
            if (seq != k->next_seq) bad_order++;
            k->next_seq = seq + 1;
            record(ns, at);
        }
        if (k->other_type) other_events++;
        if (!id_ok(k, 0)) bad_id++;
        c->events++;
    } else if (k->has_id) {
        if (!id_ok(k, 1)) bad_id++;
    } else if (k->other_type) {
        other_events++;
    }
    k->has_id = k->has_data = k->other_type = 0;
    k->data_len = 0;
}

/* One whole line of a stream in "check" mode. */
static void line_checked(struct conn *c, uint64_t at) {
    struct check *k = c->check;
    char *line = k->line;
    int len = k->len;
    k->len = 0;
    if (len && line[len - 1] == '\r') len--;
    if (len == 0) { dispatch_checked(c, at); return; }
    if (line[0] == ':') return;  /* a comment */
    char *colon = memchr(line, ':', (size_t)len);
    int name_len = colon ? (int)(colon - line) : len;
    const char *value = colon ? colon + 1 : line + len;
    if (value < line + len && *value == ' ') value++;
    int value_len = (int)(line + len - value);
    if (name_len == 2 && memcmp(line, "id", 2) == 0) {
        memcpy(k->id, value, (size_t)value_len);
        k->id_len = value_len;
        k->has_id = 1;
    } else if (name_len == 4 && memcmp(line, "data", 4) == 0) {
        if (k->has_data) { bad_data++; return; }  /* our events have one data line */
        int keep = value_len < (int)sizeof k->data ? value_len : (int)sizeof k->data;
        memcpy(k->data, value, (size_t)keep);
        k->data_len = keep;
        k->has_data = 1;
    } else if (name_len == 5 && memcmp(line, "event", 5) == 0) {
        if (!(value_len == 7 && memcmp(value, "message", 7) == 0)) k->other_type = 1;
    }
}

static void feed_checked(struct conn *c, const char *buf, ssize_t n, uint64_t at) {
    struct check *k = c->check;
    for (ssize_t i = 0; i < n; i++) {
        char ch = buf[i];
        if (!c->headers_done) {
            static const char END[] = "\r\n\r\n";
            c->hdr_match = (ch == END[c->hdr_match]) ? c->hdr_match + 1 : (ch == '\r' ? 1 : 0);
            if (c->hdr_match == 4) c->headers_done = 1;
            continue;
        }
        if (ch == '\n') { line_checked(c, at); continue; }
        if (k->len < LINE_MAX_KEPT) k->line[k->len++] = ch;
    }
}

static double percentile(double p) {
    long want = (long)(p * total_events);
    long seen = 0;
    for (long b = 0; b < HIST_BUCKETS; b++) {
        seen += hist[b];
        if (seen > want) return (b + 0.5) * HIST_US / 1000.0;
    }
    return (double)HIST_BUCKETS * HIST_US / 1000.0;
}

static int run_sub(const char *host, int port, const char *path, int nconn, long expected, double timeout) {
    hist = calloc(HIST_BUCKETS, sizeof *hist);
    struct conn *conns = calloc((size_t)nconn, sizeof *conns);
    int ep = epoll_create1(0);
    char request[1024];
    int rlen = snprintf(request, sizeof request,
                        "GET %s HTTP/1.0\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n\r\n", path, host, port);
    for (int i = 0; i < nconn; i++) {
        conns[i].fd = connect_to(host, port);
        if (checking) {
            conns[i].check = calloc(1, sizeof *conns[i].check);
            if (!conns[i].check) { perror("calloc"); exit(2); }
        }
        send_all(conns[i].fd, request, (size_t)rlen);
        fcntl(conns[i].fd, F_SETFL, O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &conns[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev);
    }
    static char buf[1 << 16];
    struct epoll_event events[512];
    int ready = 0, announced = 0, open = nconn;
    long complete = 0;
    double start = mono(), progress = start;
    while (open > 0) {
        int n = epoll_wait(ep, events, 512, 100);
        uint64_t at = now_ns();
        for (int e = 0; e < n; e++) {
            struct conn *c = events[e].data.ptr;
            for (;;) {
                ssize_t got = read(c->fd, buf, sizeof buf);
                if (got > 0) {
                    int had_headers = c->headers_done;
                    long before = c->events;
                    if (checking) feed_checked(c, buf, got, at);
                    else feed(c, buf, got, at);
                    if (!had_headers && c->headers_done) ready++;
                    if (c->events > before) {
                        progress = mono();
                        if (before < expected && c->events >= expected) complete++;
                    }
                    continue;
                }
                if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
                    c->closed = 1; open--;
                    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                    close(c->fd);
                }
                break;
            }
        }
        if (!announced && ready == nconn) {
            announced = 1;
            printf("READY %d\n", ready);
            fflush(stdout);
            progress = mono();
        }
        if (expected > 0 && complete == nconn) break;
        double t = mono();
        if (announced && t - progress > timeout) break;
        if (!announced && t - start > timeout + 60) break;
    }
    long min = -1, max = 0, early = 0;
    for (int i = 0; i < nconn; i++) {
        if (min < 0 || conns[i].events < min) min = conns[i].events;
        if (conns[i].events > max) max = conns[i].events;
        if (conns[i].closed) early++;
    }
    double span = last_event_ns > first_event_ns ? (last_event_ns - first_event_ns) / 1e9 : 0;
    printf("{\"connections\": %d, \"ready\": %d, \"closed_early\": %ld, \"events\": %ld, \"expected\": %ld,"
           " \"min_per_connection\": %ld, \"max_per_connection\": %ld, \"span_s\": %.6f,"
           " \"p50_ms\": %.3f, \"p90_ms\": %.3f, \"p99_ms\": %.3f, \"p999_ms\": %.3f, \"max_ms\": %.3f,"
           " \"over_20s\": %ld, ",
           nconn, ready, early, total_events, expected * nconn, min < 0 ? 0 : min, max, span,
           percentile(0.5), percentile(0.9), percentile(0.99), percentile(0.999), percentile(0.999999),
           hist_overflow);
    if (checking)
        printf("\"checked\": %ld, \"bad_data\": %ld, \"bad_order\": %ld, \"bad_id\": %ld, \"other_events\": %ld, ",
               checked_events, bad_data, bad_order, bad_id, other_events);
    printf("\"histogram\": [");
    /* A compact histogram for plots: log-spaced bins in milliseconds. */
    int firstbin = 1;
    double lo = 0.01;
    while (lo < 20000) {
        double hi = lo * 1.25;
        long from = (long)(lo * 1000 / HIST_US), to = (long)(hi * 1000 / HIST_US);
        if (to > HIST_BUCKETS) to = HIST_BUCKETS;
        long count = 0;
        for (long b = from; b < to; b++) count += hist[b];
        if (count) { printf("%s[%.4f, %ld]", firstbin ? "" : ", ", lo, count); firstbin = 0; }
        lo = hi;
    }
    printf("]}\n");
    return 0;
}

static int run_pub(const char *host, int port, const char *path, long count, double rate, int size, const char *tag) {
    int fd = connect_to(host, port);
    char *body = malloc((size_t)size + 64), *req = malloc((size_t)size + 1024);
    static char buf[1 << 16];
    long sent = 0, answered = 0, ok = 0;
    double start = mono();
    int window = rate > 0 ? 1 : 32;
    size_t match = 0;
    static const char OKLINE[] = "HTTP/1.1 2";
    while (answered < count) {
        while (sent < count && sent - answered < window) {
            if (rate > 0) {
                double due = start + sent / rate, t = mono();
                if (t < due) { struct timespec d = {0, (long)((due - t) * 1e9)}; nanosleep(&d, NULL); }
            }
            int blen = tag ? snprintf(body, (size_t)size + 64, "%llu %ld %.32s ", (unsigned long long)now_ns(), sent, tag)
                           : snprintf(body, (size_t)size + 64, "%llu %ld ", (unsigned long long)now_ns(), sent);
            while (blen < size) body[blen++] = 'x';
            int len = snprintf(req, (size_t)size + 1024,
                               "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n",
                               path, host, port, blen);
            memcpy(req + len, body, (size_t)blen);
            send_all(fd, req, (size_t)(len + blen));
            sent++;
        }
        ssize_t got = read(fd, buf, sizeof buf);
        if (got <= 0) { fprintf(stderr, "publisher connection closed after %ld answers\n", answered); break; }
        /* Count status lines: every response starts with "HTTP/1.1 " (a body may
           end without a newline, so the next one need not start a line). */
        for (ssize_t i = 0; i < got; i++) {
            if (match == 9) { answered++; if (buf[i] == '2') ok++; match = 0; }
            else if (buf[i] == OKLINE[match]) match++;
            else match = buf[i] == OKLINE[0] ? 1 : 0;
        }
    }
    double took = mono() - start;
    printf("{\"sent\": %ld, \"answered\": %ld, \"ok\": %ld, \"seconds\": %.6f, \"per_second\": %.1f}\n",
           sent, answered, ok, took, answered / (took > 0 ? took : 1));
    return ok == count ? 0 : 1;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 11 && strcmp(argv[1], "sub") == 0 && strcmp(argv[8], "check") == 0) {
        checking = 1;
        check_channel = argv[9];
        if (strcmp(argv[10], "none") == 0) ids_mode = 0;
        else if (strcmp(argv[10], "plain") == 0) ids_mode = 1;
        else if (strncmp(argv[10], "cursor:", 7) == 0 && atoi(argv[10] + 7) > 0) { ids_mode = 2; cursor_entries = atoi(argv[10] + 7); }
        else { fprintf(stderr, "IDS is none, plain or cursor:N (N > 0), not %s\n", argv[10]); return 2; }
    }
    if ((argc == 8 || checking) && strcmp(argv[1], "sub") == 0)
        return run_sub(argv[2], atoi(argv[3]), argv[4], atoi(argv[5]), atol(argv[6]), atof(argv[7]));
    if ((argc == 8 || argc == 9) && strcmp(argv[1], "pub") == 0)
        return run_pub(argv[2], atoi(argv[3]), argv[4], atol(argv[5]), atof(argv[6]), atoi(argv[7]),
                       argc == 9 ? argv[8] : NULL);
    fprintf(stderr, "usage: loadclient sub HOST PORT PATH CONNECTIONS EXPECTED TIMEOUT_S [check CHANNEL IDS]\n"
                    "       loadclient pub HOST PORT PATH COUNT RATE SIZE [TAG]\n");
    return 2;
}
