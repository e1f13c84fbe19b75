// Compiled (never run) by tests/js/test_js_client.py with tsc --noEmit --strict: the declarations of
// fastws-client (fastws/static/fastws-client.d.ts) type a real use, and reject a wrong one.
import { FastWSClient, backoffDelay, parseSince, tokenExpiry, VERSION } from "fastws-client";
import type { FastWSMessageEvent, ResetEvent, ReconnectingEvent } from "fastws-client";

const client = new FastWSClient("ws://127.0.0.1:9001/lobby", {
  backoff: { initial: 100, max: 5000 },
  heartbeat: { interval: 20000, timeout: 5000 },
  token: async () => "a.b.c",
  maxQueue: 10,
  since: "00ff:3",
});
client.addEventListener("message", (ev: FastWSMessageEvent<{ content: string }>) => {
  const offset: number | null = ev.offset;
  const replayed: boolean = ev.replayed;
  console.log(offset, replayed, ev.data.content);
});
client.addEventListener("reset", (ev: ResetEvent) => console.log(ev.reason, ev.epoch, ev.offset));
client.addEventListener("reconnecting", (ev: ReconnectingEvent) => console.log(ev.cause, ev.delay, ev.attempt));
client.addEventListener("auth", (ev) => { const ok: boolean = ev.ok; console.log(ok, ev.exp); });
client.addEventListener("close", (ev) => { const n: number = ev.unsent; console.log(n, ev.code); });
client.send({ content: "hello" });
const since: string | null = client.since;
const state: "connecting" | "open" | "closed" = client.state;
const d: number = backoffDelay(3, { initial: 1 }, Math.random);
const p = parseSince("00ff:1");
const e: number | null = tokenExpiry("x");
const v: string = VERSION;
console.log(since, state, d, p?.offset, e, v);
client.close(1000, "bye");

// @ts-expect-error: an unknown option
new FastWSClient("ws://x/", { bogus: true });
// @ts-expect-error: the heartbeat interval is a number
new FastWSClient("ws://x/", { heartbeat: { interval: "soon" } });
