// Helpers of the fastws-client tests: a fastws server (the one the pytest wrapper started, or one
// of their own, to restart), a raw publisher, a loopback TCP proxy, bounded waits.
import { spawn } from "node:child_process";
import { mkdirSync } from "node:fs";
import net from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import WebSocket from "ws";

export const T = 10_000; // every wait is bounded by this (ms) unless told otherwise

export const SHARED = process.env.FASTWS_URL; // http://127.0.0.1:PORT of the wrapper's server
if (!SHARED) throw new Error("FASTWS_URL is not set: run these tests through tests/js/test_js_client.py");
export const wsUrl = (http, path) => http.replace(/^http/, "ws") + path;

let seq = 0;
/** A room name no other test uses. */
export const unique = (what) => `${what}-${process.pid}-${Date.now()}-${++seq}`;

/** Poll `pred` every 10 ms until it is truthy (its value is returned) or `ms` pass. */
export async function until(pred, what, ms = T) {
  const deadline = Date.now() + ms;
  for (let i = 0; i < ms / 10 + 1; i++) {
    const v = pred();
    if (v) return v;
    if (Date.now() > deadline) break;
    await sleep(10);
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}`);
}

/** Record every event of a FastWSClient, in order. */
export function record(client) {
  const log = { events: [], messages: [], data: [] };
  for (const type of ["open", "message", "reset", "resume", "reconnecting", "close", "error", "auth"]) {
    client.addEventListener(type, (ev) => {
      log.events.push(ev);
      if (type === "message") {
        log.messages.push(ev);
        log.data.push(ev.data);
      }
    });
  }
  log.of = (type) => log.events.filter((e) => e.type === type);
  return log;
}

const opened = new Set(); // publishers and proxies, closed by closeAll() (a failed test leaks none)
export async function closeAll() {
  for (const c of opened) await c();
  opened.clear();
}

/** A raw ws publisher that sends a text and waits for its echo (the room broadcasts to it too). */
export async function publisher(url) {
  const ws = new WebSocket(url);
  opened.add(async () => ws.terminate());
  const frames = [];
  ws.on("message", (data, isBinary) => frames.push(isBinary ? data : data.toString()));
  await new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
  });
  return {
    ws,
    frames,
    send: (text) => ws.send(text),
    /** send `text` and wait until its envelope comes back; the envelope */
    async say(text) {
      const from = frames.length;
      ws.send(text);
      return until(() => frames.slice(from).map(parse).find((m) => m && Number.isSafeInteger(m.offset) && m.data === text),
                   `the echo of ${text}`);
    },
    close: () => ws.close(),
  };
}

function parse(frame) {
  try {
    return JSON.parse(frame);
  } catch {
    return null;
  }
}

/** A free TCP port on 127.0.0.1 (nothing listens on it when this returns). */
export async function freePort() {
  const srv = net.createServer();
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  const { port } = srv.address();
  await new Promise((r) => srv.close(r));
  return port;
}

/** `fastws serve tests.js.app:app` on `port` with rooms in `dataDir`; {url, stop, kill}. */
export async function startServer(port, dataDir) {
  const python = process.env.FASTWS_PYTHON;
  mkdirSync(dataDir, { recursive: true });
  const proc = spawn(python, ["-m", "fastws", "serve", "tests.js.app:app", "--host", "127.0.0.1",
                              "--port", String(port), "--data-dir", dataDir],
                     { cwd: process.env.FASTWS_ROOT, stdio: ["ignore", "inherit", "inherit"],
                       env: { ...process.env, FASTWS_DATA_DIR: dataDir } });
  const url = `http://127.0.0.1:${port}`;
  let exited = false;
  const gone = new Promise((r) => proc.once("exit", () => { exited = true; r(); }));
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (exited) throw new Error("the fastws server exited at start");
    try {
      if ((await fetch(url + "/healthz")).ok) break;
    } catch {
      /* not yet listening */
    }
    if (Date.now() > deadline) {
      proc.kill("SIGKILL");
      throw new Error("the fastws server did not start in 20 s");
    }
    await sleep(50);
  }
  opened.add(async () => { if (!exited) proc.kill("SIGKILL"); });
  const stop = async (signal = "SIGTERM") => {
    if (!exited) proc.kill(signal);
    await Promise.race([gone, sleep(15_000)]);
    if (!exited) {
      proc.kill("SIGKILL");
      await gone;
    }
  };
  return { url, proc, stop, kill: () => stop("SIGKILL") };
}

/** A loopback TCP proxy to `target` ("127.0.0.1:port"): silence() stops forwarding on the links
 * open now (they stay open, quiet: a dead link), cut() destroys them; new links forward. */
export async function proxy(targetPort) {
  const links = new Set();
  const server = net.createServer((down) => {
    const up = net.connect(targetPort, "127.0.0.1");
    const link = { down, up, silent: false };
    links.add(link);
    const forward = (from, to) => from.on("data", (chunk) => { if (!link.silent) to.write(chunk); });
    forward(down, up);
    forward(up, down);
    const end = () => { links.delete(link); down.destroy(); up.destroy(); };
    down.on("close", end).on("error", end);
    up.on("close", end).on("error", end);
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const close = () => new Promise((r) => { for (const l of links) { l.down.destroy(); l.up.destroy(); } server.close(r); });
  opened.add(close);
  return {
    port: server.address().port,
    get links() { return links.size; },
    silence() { for (const l of links) l.silent = true; },
    cut() { for (const l of links) { l.down.destroy(); l.up.destroy(); } },
    close,
  };
}

/** A promise and its resolve function (a gate a test opens). */
export function gate() {
  let open;
  const p = new Promise((r) => { open = r; });
  return { wait: p, open: () => open() };
}
