// The fastws-client module (fastws/static/fastws-client.js, the very file the server serves and
// npm publishes) against real fastws servers on 127.0.0.1 (tests/js/app.py), over Node's ws
// package. Run by tests/js/test_js_client.py, which starts the shared server (FASTWS_URL).
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, test } from "node:test";
import WebSocket from "ws";

import { FastWSClient, backoffDelay, parseSince, tokenExpiry, VERSION } from "../../fastws/static/fastws-client.js";
import { SHARED, closeAll, freePort, gate, proxy, publisher, record, startServer, unique, until, wsUrl } from "./helpers.mjs";

const clients = [];
function client(url, options = {}) {
  const c = new FastWSClient(url, { WebSocket, ...options });
  clients.push(c);
  return c;
}
after(async () => {
  for (const c of clients) c.close();
  await closeAll();
});

const tmp = mkdtempSync(path.join(tmpdir(), "fastws-js-"));
after(() => rmSync(tmp, { recursive: true, force: true }));

/** A token provider that lets the first connection through and holds every later one until
 * `hold.open()`: what the room broadcasts meanwhile is missed for sure. */
function holdReconnects() {
  const hold = gate();
  let calls = 0;
  return { hold, token: async () => { if (calls++ > 0) await hold.wait; return null; }, calls: () => calls };
}

function assertContiguous(messages) {
  for (let i = 1; i < messages.length; i++) {
    assert.equal(messages[i].epoch, messages[0].epoch);
    assert.equal(messages[i].offset, messages[i - 1].offset + 1, `offsets ${messages[i - 1].offset} then ${messages[i].offset}`);
  }
}

test("backoff: full jitter within [0, min(max, initial * factor^n)]", () => {
  const b = { initial: 100, max: 1000, factor: 2 };
  for (let n = 0; n < 12; n++) {
    const cap = Math.min(1000, 100 * 2 ** n);
    assert.equal(backoffDelay(n, b, () => 0), 0);
    assert.equal(backoffDelay(n, b, () => 0.999999), Math.floor(cap * 0.999999));
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(n, b);
      assert.ok(d >= 0 && d <= cap, `attempt ${n}: ${d} outside [0, ${cap}]`);
    }
  }
  assert.equal(backoffDelay(50, b, () => 0.5), 500); // capped at max, never Infinity
  assert.throws(() => new FastWSClient("ws://127.0.0.1:1/", { WebSocket, backoff: { initial: 0 } }), RangeError);
  assert.throws(() => new FastWSClient("ws://127.0.0.1:1/", { WebSocket, bogus: 1 }), /unknown option/);
  assert.throws(() => new FastWSClient("http://x:1/", { WebSocket, since: "nope" }), /since must be/);
  assert.throws(() => new FastWSClient("ftp://x/", { WebSocket }), /not a ws/);
  assert.deepEqual(parseSince("00ff:12"), { epoch: "00ff", offset: 12 });
  assert.equal(parseSince("x:1"), null);
  assert.equal(VERSION, "0.1.0");
});

test("reconnect: attempts against a closed port back off within bounds, then give up", async () => {
  const port = await freePort();
  const c = client(`ws://127.0.0.1:${port}/x`, { backoff: { initial: 20, max: 80, factor: 2 }, maxRetries: 6 });
  const log = record(c);
  await until(() => log.of("close").length, "the close after the last retry");
  const tries = log.of("reconnecting");
  assert.deepEqual(tries.map((e) => e.attempt), [0, 1, 2, 3, 4, 5]);
  for (const e of tries) {
    assert.equal(e.cause, "close");
    assert.ok(e.delay >= 0 && e.delay <= Math.min(80, 20 * 2 ** e.attempt), `delay ${e.delay} at attempt ${e.attempt}`);
  }
  assert.equal(c.state, "closed");
  assert.equal(log.of("open").length, 0);
});

test("send queue: bounded while not connected, flushed in order on open, dropped on close", async () => {
  const port = await freePort();
  const c = client(`ws://127.0.0.1:${port}/x`, { maxQueue: 2, backoff: { initial: 50, max: 50 } });
  const log = record(c);
  c.send("a");
  c.send({ b: 1 });
  assert.throws(() => c.send("c"), RangeError);
  assert.equal(c.queued, 2);
  c.close();
  assert.equal(log.of("close")[0].unsent, 2);
  assert.throws(() => c.send("d"), /after close/);

  const room = wsUrl(SHARED, "/log/" + unique("queue"));
  const d = client(room);
  const dlog = record(d);
  d.send("early one");
  d.send("early two");
  await until(() => dlog.data.length >= 2, "the queued messages' echoes");
  assert.deepEqual(dlog.data, ["early one", "early two"]);
  assertContiguous(dlog.messages);
});

test("resume: exactly once, in order, across a server-side close", async () => {
  const room = wsUrl(SHARED, "/log/" + unique("resume"));
  const pub = await publisher(room);
  const held = holdReconnects();
  const c = client(room, { token: held.token, backoff: { initial: 10, max: 20 } });
  const log = record(c);
  await until(() => log.of("open").length, "open");
  for (let i = 1; i <= 10; i++) await pub.say(`m${i}`);
  await until(() => log.data.length === 10, "m1..m10");
  await pub.say("kick"); // the room closes every other socket (1012)
  await until(() => log.of("reconnecting").length, "the reconnect");
  for (let i = 11; i <= 15; i++) await pub.say(`m${i}`); // missed: the reconnect is held
  held.hold.open();
  await until(() => log.of("resume").length, "the catch-up");
  for (let i = 16; i <= 20; i++) await pub.say(`m${i}`);
  await until(() => log.data.length >= 21, "m16..m20");
  const want = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "m9", "m10", "kick",
                "m11", "m12", "m13", "m14", "m15", "m16", "m17", "m18", "m19", "m20"];
  assert.deepEqual(log.data, want);
  assertContiguous(log.messages);
  assert.deepEqual(log.messages.filter((m) => m.replayed).map((m) => m.data), ["m11", "m12", "m13", "m14", "m15"]);
  const r = log.of("reconnecting")[0];
  assert.equal(r.cause, "close");
  assert.equal(r.code, 1012);
  assert.equal(r.since, `${log.messages[0].epoch}:11`);
  const resumed = log.of("resume")[0];
  assert.equal(resumed.since, 11);
  assert.equal(resumed.count, 5);
  assert.equal(log.of("open")[1].since, `${log.messages[0].epoch}:11`);
  assert.equal(log.of("reset").length, 0);
  assert.equal(c.since, `${log.messages[0].epoch}:21`);
  pub.close();
});

test("resume: 1000 missed messages arrive in one history frame, one event each", async () => {
  const room = wsUrl(SHARED, "/log/" + unique("thousand"));
  const pub = await publisher(room);
  const held = holdReconnects();
  const c = client(room, { token: held.token, backoff: { initial: 10, max: 20 } });
  const log = record(c);
  await until(() => log.of("open").length, "open");
  await pub.say("first");
  await until(() => log.data.length === 1, "first");
  await pub.say("kick");
  await until(() => log.of("reconnecting").length, "the reconnect");
  pub.send("burst:1000");
  await until(() => pub.frames.some((f) => f.includes('"data":"b1000"')), "the burst's end");
  held.hold.open();
  await until(() => log.of("resume").length, "the catch-up");
  assert.equal(log.of("resume")[0].count, 1001); // "burst:1000" itself, b1 .. b1000
  assert.equal(log.data.length, 1003);
  assert.deepEqual(log.data.slice(0, 3), ["first", "kick", "burst:1000"]);
  assert.deepEqual(log.data.slice(3), Array.from({ length: 1000 }, (_, i) => `b${i + 1}`));
  assertContiguous(log.messages);
  pub.close();
});

test("skip: a socket excluded from a broadcast moves on to its offset without an event", async () => {
  const room = wsUrl(SHARED, "/log/" + unique("skip"));
  const pub = await publisher(room);
  const c = client(room, { backoff: { initial: 10, max: 20 } });
  const log = record(c);
  await until(() => log.of("open").length, "open");
  await pub.say("one");
  await until(() => log.data.length === 1, "one");
  c.send("skip:hidden"); // the room sends it to everyone but this client, which gets its offset
  await until(() => pub.frames.some((f) => f.includes('"data":"hidden"')), "hidden, to the publisher");
  await pub.say("two");
  await until(() => log.data.length === 2, "two");
  assert.deepEqual(log.data, ["one", "two"]);
  assert.equal(log.messages[1].offset, log.messages[0].offset + 2);
  assert.equal(c.since, `${log.messages[1].epoch}:${log.messages[1].offset}`);
  assert.equal(log.of("reconnecting").length, 0); // no gap, no reconnect
  pub.close();
});

test("gap: an envelope that skips an offset is not delivered; the log fills the gap", async () => {
  const room = wsUrl(SHARED, "/log/" + unique("gap"));
  const pub = await publisher(room);
  const c = client(room, { backoff: { initial: 10, max: 20 } });
  const log = record(c);
  await until(() => log.of("open").length, "open");
  await pub.say("one");
  await until(() => log.data.length === 1, "one");
  c.send("gap"); // the room sends this client offset 3 after 1 (what a dropped message leaves)
  await until(() => log.of("resume").length, "the catch-up after the gap");
  await pub.say("two");
  await until(() => log.data.length === 2, "two");
  assert.deepEqual(log.data, ["one", "two"]); // the forged envelope never reached the application
  assertContiguous(log.messages);
  const r = log.of("reconnecting")[0];
  assert.equal(r.cause, "gap");
  assert.match(r.reason, /offset 3 after 1/);
  pub.close();
});

test("reset: a position from another epoch, a trimmed log, a room without history", async () => {
  const room = wsUrl(SHARED, "/log/" + unique("epoch"));
  const pub = await publisher(room);
  await pub.say("before");
  const c = client(room, { since: "0123456789abcdef:7" });
  const log = record(c);
  await until(() => log.of("reset").length, "the reset");
  const reset = log.of("reset")[0];
  assert.equal(reset.reason, "epoch");
  assert.equal(reset.offset, 1);
  assert.match(reset.epoch, /^[0-9a-f]{8}$/);
  assert.equal(c.since, `${reset.epoch}:1`);
  await pub.say("after");
  await until(() => log.data.length === 1, "after");
  assert.equal(log.messages[0].offset, 2);
  assert.equal(log.data[0], "after");

  const short = wsUrl(SHARED, "/short/" + unique("trim"));
  const spub = await publisher(short);
  const held = holdReconnects();
  const s = client(short, { token: held.token, backoff: { initial: 10, max: 20 } });
  const slog = record(s);
  await until(() => slog.of("open").length, "open");
  await spub.say("x");
  await until(() => slog.data.length === 1, "x");
  await spub.say("kick");
  await until(() => slog.of("reconnecting").length, "the reconnect");
  for (let i = 0; i < 8; i++) await spub.say(`y${i}`); // history = 5: the log drops what it missed
  held.hold.open();
  await until(() => slog.of("reset").length, "the trimmed reset");
  assert.equal(slog.of("reset")[0].reason, "trimmed");
  assert.equal(slog.of("resume").length, 0);
  assert.deepEqual(slog.data, ["x", "kick"]); // nothing replayed, nothing invented

  const plain = client(wsUrl(SHARED, "/plain/" + unique("plain")), { since: "00aa:1" });
  const plog = record(plain);
  await until(() => plog.of("error").length, "the resume error");
  assert.equal(plog.of("error")[0].where, "resume");
  assert.match(plog.of("error")[0].reason, /keeps no history/);
  assert.equal(plain.since, null);
  pub.close();
  spub.close();
});

test("restarts: same data dir resumes, a new data dir (another epoch) resets", async () => {
  const port = await freePort();
  const dirA = path.join(tmp, "a");
  const dirB = path.join(tmp, "b");
  let server = await startServer(port, dirA);
  const room = wsUrl(server.url, "/log/restart");
  const c = client(room, { backoff: { initial: 50, max: 200 } });
  const log = record(c);
  try {
    await until(() => log.of("open").length, "open");
    let pub = await publisher(room);
    await pub.say("one");
    await pub.say("two");
    await until(() => log.data.length === 2, "one, two");
    pub.close();
    await server.kill(); // kill -9: no close frame, the log is on disk
    server = await startServer(port, dirA);
    pub = await publisher(room);
    await pub.say("three");
    await until(() => log.of("resume").length && log.data.length === 3, "the catch-up after the restart");
    assert.deepEqual(log.data, ["one", "two", "three"]);
    assertContiguous(log.messages);
    assert.equal(log.of("reset").length, 0);
    pub.close();
    await server.stop();
    server = await startServer(port, dirB); // the log is lost: another epoch
    await until(() => log.of("reset").length, "the epoch reset");
    const reset = log.of("reset")[0];
    assert.equal(reset.reason, "epoch");
    assert.notEqual(reset.epoch, log.messages[0].epoch);
    pub = await publisher(room);
    await pub.say("fresh");
    await until(() => log.data.length === 4, "fresh");
    assert.equal(log.messages[3].epoch, reset.epoch);
    assert.equal(log.messages[3].offset, 1);
    pub.close();
  } finally {
    c.close();
    await server.stop();
  }
});

test("batch frames are unpacked in order, live and in a catch-up", async () => {
  const room = wsUrl(SHARED, "/batched/" + unique("batch"));
  const raw = await publisher(room);
  const held = holdReconnects();
  const c = client(room, { token: held.token, backoff: { initial: 10, max: 20 } });
  const log = record(c);
  await until(() => log.of("open").length, "open");
  raw.send("burst:25");
  await until(() => log.data.length === 26, "burst:25 and b1..b25");
  assert.deepEqual(log.data, ["burst:25", ...Array.from({ length: 25 }, (_, i) => `b${i + 1}`)]);
  assertContiguous(log.messages);
  // what came over the wire really were batch frames
  await until(() => raw.frames.filter((f) => f.startsWith('{"type":"batch"')).length >= 2, "batch frames");
  raw.send("kick");
  await until(() => log.of("reconnecting").length, "the reconnect");
  raw.send("burst:3");
  await until(() => raw.frames.some((f) => f.includes('"data":"b3"') && f.includes('"offset":31')), "the second burst");
  held.hold.open();
  await until(() => log.of("resume").length && log.data.length === 31, "the catch-up");
  assert.deepEqual(log.data.slice(26), ["kick", "burst:3", "b1", "b2", "b3"]);
  assertContiguous(log.messages);
  raw.close();
});

test("heartbeat: a link that goes silent is dropped and the client resumes", async () => {
  const target = Number(new URL(SHARED).port);
  const px = await proxy(target);
  const name = unique("heartbeat");
  const pub = await publisher(wsUrl(SHARED, "/log/" + name));
  const c = client(`ws://127.0.0.1:${px.port}/log/${name}`,
                   { heartbeat: { interval: 150, timeout: 1000 }, backoff: { initial: 10, max: 20 } });
  const log = record(c);
  try {
    await until(() => log.of("open").length, "open");
    await pub.say("one");
    await until(() => log.data.length === 1, "one");
    // a few heartbeats answered by the room's auto response: the pongs are no messages
    const t0 = Date.now();
    await until(() => Date.now() - t0 > 1200, "a few heartbeat rounds", 3000);
    assert.equal(log.of("reconnecting").length, 0);
    px.silence(); // the TCP link stays open and says nothing more, both ways
    await pub.say("two");
    await until(() => log.of("reconnecting").length, "the heartbeat timeout");
    assert.equal(log.of("reconnecting")[0].cause, "heartbeat");
    await until(() => log.of("resume").length && log.data.length === 2, "the catch-up");
    assert.deepEqual(log.data, ["one", "two"]);
    assert.equal(log.messages[1].replayed, true);
    assert.ok(!log.data.includes("pong"));
    assertContiguous(log.messages);
  } finally {
    c.close();
    pub.close();
    await px.close();
  }
});

test("token: given on every connect, refreshed in band before exp, a refused refresh reported", async () => {
  let calls = 0;
  let sub = "alice";
  const token = async () => {
    calls += 1;
    return (await fetch(`${SHARED}/token?sub=${sub}&ttl=3`)).text();
  };
  const c = client(wsUrl(SHARED, "/auth"), { token, backoff: { initial: 10, max: 20 } });
  const log = record(c);
  await until(() => log.of("open").length, "open");
  assert.match(log.of("open")[0].url, /[?&]token=ey/);
  assert.equal(calls, 1);
  // past the first token's exp (3 s), on the same connection, thanks to the refreshes
  await until(() => log.of("auth").filter((e) => e.ok).length >= 3, "three refreshes", 15_000);
  for (const e of log.of("auth")) {
    assert.equal(e.ok, true);
    assert.equal(typeof e.exp, "number");
  }
  assert.equal(log.of("reconnecting").length, 0);
  c.send("hi");
  await until(() => log.data.length === 1, "the echo");
  assert.deepEqual(log.data[0], { echo: "hi", sub: "alice" });
  assert.ok(calls >= 4);
  // a refresh the server refuses (another user): reported; the token then expires, the server
  // closes with 1008 and the client comes back with a fresh token from the provider
  sub = "mallory";
  await until(() => log.of("auth").some((e) => !e.ok), "the refused refresh", 10_000);
  assert.equal(log.of("auth").find((e) => !e.ok).error, "Token subject mismatch");
  await until(() => log.of("reconnecting").length && log.of("open").length === 2, "the reconnect", 10_000);
  assert.equal(log.of("reconnecting")[0].code, 1008);
  c.send("again");
  await until(() => log.data.length === 2, "the echo");
  assert.deepEqual(log.data[1], { echo: "again", sub: "mallory" });
  assert.equal(tokenExpiry("not a jwt"), null);
});
