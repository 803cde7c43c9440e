// A real third-party client for the tests: N EventSources of the npm
// `eventsource` package (WHATWG-conformant) on one URL.
//
//   node client.mjs URL N SECONDS [EVENT_TYPE ...]
//
// Prints one JSON line per thing that happens, to stdout:
//   {"kind": "open" | "error" | "event" | "state", "client": i, "t": ms, ...}
// "event" lines carry type, data and lastEventId; "state" lines a readyState
// (0 CONNECTING, 1 OPEN, 2 CLOSED) each time it changes. Listens for
// "message", "stream-reset" and any EVENT_TYPE given. Exits when stdin is
// closed or reads "quit", or after SECONDS at most, whichever comes first,
// printing {"kind": "exit"} last.
import { EventSource } from "eventsource";

const [url, count = "1", seconds = "20", ...types] = process.argv.slice(2);
if (!url) {
  console.error("usage: node client.mjs URL N SECONDS [EVENT_TYPE ...]");
  process.exit(2);
}
const started = Date.now();
const emit = (line) => process.stdout.write(JSON.stringify({ ...line, t: Date.now() - started }) + "\n");

const sources = [];
for (let i = 0; i < Number(count); i++) {
  const source = new EventSource(url);
  let state = source.readyState;
  const watch = () => {
    if (source.readyState !== state) {
      state = source.readyState;
      emit({ kind: "state", client: i, readyState: state });
    }
  };
  const keep = (e) => {
    watch();
    emit({ kind: "event", client: i, type: e.type, data: e.data, lastEventId: e.lastEventId });
  };
  for (const type of ["message", "stream-reset", ...types]) source.addEventListener(type, keep);
  source.onopen = () => { watch(); emit({ kind: "open", client: i }); };
  source.onerror = (e) => { watch(); emit({ kind: "error", client: i, message: String(e.message ?? ""), code: e.code ?? null }); };
  emit({ kind: "state", client: i, readyState: state });
  sources.push({ source, watch });
}
// The package changes readyState without always firing an event (a refused
// reconnect only fires "error"); poll as well, so every change is seen.
const poll = setInterval(() => sources.forEach(({ watch }) => watch()), 10);

let done = false;
const finish = () => {
  if (done) return;
  done = true;
  clearInterval(poll);
  sources.forEach(({ source, watch }) => { watch(); source.close(); });
  emit({ kind: "exit" });
  process.exit(0);
};
setTimeout(finish, Number(seconds) * 1000);
process.stdin.on("data", (chunk) => { if (String(chunk).includes("quit")) finish(); });
process.stdin.on("end", finish);
emit({ kind: "ready", clients: Number(count) });
