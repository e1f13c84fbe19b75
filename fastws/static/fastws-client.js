// fastws-client: the browser (and Node) client of fastws. One dependency-free ES module.
//
// Theory of operation
// -------------------
// A FastWSClient keeps one logical connection to a fastws endpoint over as many WebSockets as it
// takes:
//
// 1. Connecting. The first attempt is made at once; after a drop, attempt n (0, 1, ...) waits a
//    random time in [0, min(backoff.max, backoff.initial * backoff.factor ** n)] ("full jitter"),
//    so clients dropped together do not come back together. An open socket resets n.
// 2. Resuming. Every room envelope {"epoch","offset","data"} moves the client's
//    position (epoch:offset). A reconnect adds ?since=epoch:offset to the URL; the room answers
//    first with {"type":"history",...} (each entry becomes one "message" event, in order, with
//    replayed=true) or {"type":"reset",...} (a "reset" event: rebuild state from what the room
//    sends next). Offsets must be contiguous: an envelope that does not follow the last one (a gap,
//    a repeat, another epoch) is never delivered nor silently dropped; the client reconnects with
//    since= its last position and lets the room's log fill the gap (or say reset). A socket the
//    room excluded from a broadcast gets {"type":"skip","epoch","offset"}: the position moves on,
//    no event.
// 3. Batches. {"type":"batch","messages":[...]} frames are unpacked into their messages, in order.
// 4. Heartbeat (opt-in: browsers cannot see protocol pings). After heartbeat.interval ms with
//    nothing received the client sends heartbeat.ping ("ping") and expects any frame within
//    heartbeat.timeout ms; the server answers "pong" when the room (or connection) has
//    set_auto_response("ping", "pong"). A silent link is dropped and reconnected.
// 5. Tokens. options.token() is called before every connection attempt; its token goes in the
//    query (?token=, what fastws.JWTAuth reads). Before a JWT's exp the client calls it again and
//    sends {"type":"auth","token":...}; the server's {"type":"auth","ok",...} is an "auth" event.
// 6. Sending while not open. send() queues up to maxQueue messages (sent in order when a socket
//    opens) and throws a RangeError beyond; close() drops the queue.

export const VERSION = "0.1.0";

const CONNECTING = "connecting";
const OPEN = "open";
const CLOSED = "closed";

const DEFAULTS = Object.freeze({
  reconnect: true,
  resume: true,
  backoff: Object.freeze({ initial: 500, max: 30000, factor: 2 }),
  maxRetries: Infinity,
  heartbeat: false,
  token: null,
  tokenParam: "token",
  refreshBefore: 30000,
  maxQueue: 100,
  since: null,
  protocols: undefined,
  WebSocket: undefined,
  binaryType: "arraybuffer",
  json: true,
});

const HEARTBEAT = Object.freeze({ interval: 25000, timeout: 10000, ping: "ping", pong: "pong" });

/** The delay before reconnect attempt `attempt` (0 for the first retry), in ms: full jitter. */
export function backoffDelay(attempt, backoff = DEFAULTS.backoff, random = Math.random) {
  const { initial, max, factor } = { ...DEFAULTS.backoff, ...backoff };
  const cap = Math.min(max, initial * Math.pow(factor, Math.max(0, attempt)));
  return Math.floor(random() * cap);
}

/** "<epoch>:<offset>" -> {epoch, offset}, or null when malformed (the server's own rule). */
export function parseSince(value) {
  const m = /^([0-9a-f]{1,32}):([0-9]{1,18})$/.exec(String(value));
  return m ? { epoch: m[1], offset: Number(m[2]) } : null;
}

/** The `exp` claim of a JWT (seconds), or null for anything else. Not a verification. */
export function tokenExpiry(token) {
  try {
    const part = String(token).split(".")[1];
    if (!part) return null;
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((part.length + 3) % 4);
    const exp = JSON.parse(atob(b64)).exp;
    return typeof exp === "number" && Number.isFinite(exp) ? exp : null;
  } catch {
    return null;
  }
}

function event(type, fields) {
  const ev = new Event(type);
  for (const [k, v] of Object.entries(fields)) {
    Object.defineProperty(ev, k, { value: v, enumerable: true });
  }
  return ev;
}

function isObject(v) {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

/**
 * {"epoch","offset","data"}: a logged broadcast (exactly those keys; entries logged before the
 * envelope lost its "type" key also have type "message").
 */
function isEnvelope(v) {
  if (typeof v.epoch !== "string" || !Number.isSafeInteger(v.offset) || !("data" in v)) return false;
  const n = Object.keys(v).length;
  return n === 3 || (n === 4 && v.type === "message");
}

/** {"type":"skip","epoch","offset"}: an entry this socket was excluded from (its offset only). */
function isSkip(v) {
  return v.type === "skip" && typeof v.epoch === "string" && Number.isSafeInteger(v.offset);
}

export class FastWSClient extends EventTarget {
  /**
   * @param {string} url ws:// or wss:// URL, or a path ("/lobby") resolved against the page.
   * @param {object} [options] see fastws-client.d.ts (ClientOptions).
   */
  constructor(url, options = {}) {
    super();
    const unknown = Object.keys(options).filter((k) => !(k in DEFAULTS));
    if (unknown.length) throw new TypeError(`fastws-client: unknown option(s): ${unknown.join(", ")}`);
    this.options = { ...DEFAULTS, ...options, backoff: { ...DEFAULTS.backoff, ...(options.backoff || {}) } };
    const b = this.options.backoff;
    if (!(b.initial > 0 && b.max >= b.initial && b.factor >= 1)) {
      throw new RangeError("fastws-client: backoff needs initial > 0, max >= initial, factor >= 1");
    }
    const hb = this.options.heartbeat;
    this._heartbeat = hb ? { ...HEARTBEAT, ...(hb === true ? {} : hb) } : null;
    if (this._heartbeat && !(this._heartbeat.interval > 0 && this._heartbeat.timeout > 0)) {
      throw new RangeError("fastws-client: heartbeat needs interval > 0 and timeout > 0 (ms)");
    }
    if (!(this.options.maxQueue >= 0)) throw new RangeError("fastws-client: maxQueue must be >= 0");
    this._WS = this.options.WebSocket || globalThis.WebSocket;
    if (typeof this._WS !== "function") {
      throw new TypeError("fastws-client: no WebSocket here; pass options.WebSocket (e.g. the ws package's)");
    }
    this.url = resolveUrl(url);
    this._position = null;
    if (this.options.since != null) {
      this._position = parseSince(this.options.since);
      if (!this._position) throw new TypeError("fastws-client: since must be <epoch>:<offset>");
    }
    this._state = CONNECTING;
    this._ws = null;
    this._attempt = 0;
    this._queue = [];
    this._timers = new Set();
    this._hbTimer = null;
    this._refreshTimer = null;
    this._lastRx = 0;
    this._awaitingResume = false;
    queueMicrotask(() => this._connect()); // after the caller has added its listeners
  }

  /** "connecting" (also between attempts), "open" or "closed" (for good). */
  get state() {
    return this._state;
  }

  /** The last envelope's position, "<epoch>:<offset>", or null before the first one. */
  get since() {
    return this._position ? `${this._position.epoch}:${this._position.offset}` : null;
  }

  /** The WebSocket in use (open or opening), or null between attempts. */
  get socket() {
    return this._ws;
  }

  /** Messages waiting for a socket. */
  get queued() {
    return this._queue.length;
  }

  /**
   * Send a string (TEXT), an ArrayBuffer/typed array/Blob (BINARY) or any other value as JSON.
   * While not open the message is queued (up to maxQueue); beyond that a RangeError is thrown.
   */
  send(data) {
    if (this._state === CLOSED) throw new Error("fastws-client: send() after close()");
    const frame = typeof data === "string" || isBinary(data) ? data : JSON.stringify(data);
    const ws = this._ws;
    if (this._state === OPEN && ws && ws.readyState === 1) {
      ws.send(frame);
      return;
    }
    if (this._queue.length >= this.options.maxQueue) {
      throw new RangeError(`fastws-client: not connected and the send queue is full (maxQueue ${this.options.maxQueue})`);
    }
    this._queue.push(frame);
  }

  /** Close for good: no reconnect; queued messages are dropped (counted in the close event). */
  close(code = 1000, reason = "") {
    if (this._state === CLOSED) return;
    const ws = this._ws;
    this._finish({ code, reason, wasClean: true });
    if (ws) {
      try {
        ws.close(code, reason);
      } catch {
        /* already closing */
      }
    }
  }

  // ------------------------------------------------------------------ connecting

  async _connect() {
    if (this._state === CLOSED) return;
    let token = null;
    if (this.options.token) {
      try {
        token = await this.options.token();
      } catch (err) {
        this._emitError("token", err);
        this._retry({ cause: "token", code: null, reason: String(err && err.message || err) });
        return;
      }
      if (this._state === CLOSED) return;
    }
    const url = new URL(this.url);
    const since = this.options.resume ? this.since : null;
    if (since) url.searchParams.set("since", since);
    if (token) url.searchParams.set(this.options.tokenParam, token);
    let ws;
    try {
      ws = this.options.protocols === undefined ? new this._WS(url.href) : new this._WS(url.href, this.options.protocols);
    } catch (err) {
      this._emitError("connect", err);
      this._retry({ cause: "error", code: null, reason: String(err && err.message || err) });
      return;
    }
    ws.binaryType = this.options.binaryType;
    this._ws = ws;
    this._awaitingResume = Boolean(since);
    ws.onopen = () => {
      if (ws !== this._ws) return;
      this._state = OPEN;
      this._attempt = 0;
      this._lastRx = Date.now();
      const queued = this._queue;
      this._queue = [];
      for (const frame of queued) ws.send(frame);
      this._startHeartbeat(ws);
      this._scheduleRefresh(token ? tokenExpiry(token) : null);
      this.dispatchEvent(event("open", { since, url: url.href }));
    };
    ws.onmessage = (ev) => {
      if (ws !== this._ws) return;
      this._lastRx = Date.now();
      this._frame(ev.data);
    };
    ws.onerror = () => {
      if (ws !== this._ws) return;
      this._emitError("socket", new Error("fastws-client: WebSocket error"));
    };
    ws.onclose = (ev) => {
      if (ws !== this._ws) return;
      this._drop(ws);
      this._retry({ cause: "close", code: ev.code, reason: ev.reason, wasClean: ev.wasClean });
    };
  }

  _drop(ws, code, reason) {
    // forget this socket: nothing it still delivers is read, and a dead link is not waited for
    this._ws = null;
    this._stopTimers();
    ws.onopen = ws.onmessage = ws.onclose = null;
    ws.onerror = () => {}; // Node's ws reports an abandoned handshake as an error: not ours any more
    if (code !== undefined) {
      try {
        if (typeof ws.terminate === "function") ws.terminate(); // Node's ws: no close handshake on a dead link
        else ws.close(code, reason);
      } catch {
        /* closed already */
      }
    }
  }

  _retry(info) {
    if (this._state === CLOSED) return;
    this._state = CONNECTING;
    const { maxRetries } = this.options;
    if (!this.options.reconnect || this._attempt >= maxRetries) {
      this._finish({ code: info.code, reason: info.reason, wasClean: Boolean(info.wasClean) });
      return;
    }
    const delay = backoffDelay(this._attempt, this.options.backoff);
    const attempt = this._attempt;
    this._attempt += 1;
    this.dispatchEvent(event("reconnecting", { attempt, delay, since: this.since, ...info }));
    this._later(delay, () => this._connect());
  }

  /** Drop the live socket and reconnect (cause: heartbeat, gap, duplicate, epoch). */
  _resync(cause, reason) {
    const ws = this._ws;
    if (!ws) return;
    this._drop(ws, 4000, reason.slice(0, 120));
    this._retry({ cause, code: null, reason });
  }

  _finish({ code, reason, wasClean }) {
    const unsent = this._queue.length;
    this._state = CLOSED;
    this._queue = [];
    for (const t of this._timers) clearTimeout(t);
    this._timers.clear();
    if (this._ws) this._drop(this._ws);
    this.dispatchEvent(event("close", { code: code ?? null, reason: reason ?? "", wasClean, unsent, since: this.since }));
  }

  _later(ms, fn) {
    const t = setTimeout(() => {
      this._timers.delete(t);
      fn();
    }, ms);
    this._timers.add(t);
    return t;
  }

  _stopTimers() {
    for (const name of ["_hbTimer", "_refreshTimer"]) {
      if (this[name] !== null) {
        clearTimeout(this[name]);
        this._timers.delete(this[name]);
        this[name] = null;
      }
    }
  }

  _emitError(where, error) {
    this.dispatchEvent(event("error", { where, error, reason: error && error.message ? error.message : String(error) }));
  }

  // ------------------------------------------------------------------ heartbeat

  _startHeartbeat(ws) {
    const hb = this._heartbeat;
    if (!hb) return;
    const check = () => {
      if (ws !== this._ws) return;
      const idle = Date.now() - this._lastRx;
      if (idle < hb.interval) {
        this._hbTimer = this._later(hb.interval - idle, check);
        return;
      }
      const sentAt = Date.now();
      try {
        ws.send(hb.ping);
      } catch {
        /* the close event follows */
      }
      this._hbTimer = this._later(hb.timeout, () => {
        if (ws !== this._ws) return;
        if (this._lastRx < sentAt) this._resync("heartbeat", `no answer to the heartbeat in ${hb.timeout} ms`);
        else check();
      });
    };
    this._hbTimer = this._later(hb.interval, check);
  }

  // ------------------------------------------------------------------ tokens

  _scheduleRefresh(exp) {
    if (this._refreshTimer !== null) {
      clearTimeout(this._refreshTimer);
      this._timers.delete(this._refreshTimer);
      this._refreshTimer = null;
    }
    if (!this.options.token || typeof exp !== "number") return;
    const left = exp * 1000 - Date.now();
    const lead = Math.min(this.options.refreshBefore, left / 2);
    const ws = this._ws;
    this._refreshTimer = this._later(Math.max(0, left - lead), async () => {
      this._refreshTimer = null;
      let token;
      try {
        token = await this.options.token();
      } catch (err) {
        this._emitError("token", err);
        return;
      }
      if (ws !== this._ws || !ws || ws.readyState !== 1) return;
      ws.send(JSON.stringify({ type: "auth", token }));
    });
  }

  // ------------------------------------------------------------------ frames

  _frame(data) {
    if (typeof data !== "string") {
      this._awaitingResume = false;
      this._deliver(data, null, false);
      return;
    }
    if (this._heartbeat && data === this._heartbeat.pong) return;
    let value = data;
    if (this.options.json) {
      try {
        value = JSON.parse(data);
      } catch {
        value = data;
      }
    }
    const first = this._awaitingResume;
    this._awaitingResume = false;
    if (isObject(value)) {
      if (first && value.type === "history" && typeof value.epoch === "string" && Array.isArray(value.messages)) {
        this._history(value);
        return;
      }
      if (first && value.type === "reset" && typeof value.reason === "string") {
        this._position = typeof value.epoch === "string" && Number.isSafeInteger(value.offset)
          ? { epoch: value.epoch, offset: value.offset } : null;
        this.dispatchEvent(event("reset", { reason: value.reason, epoch: value.epoch, offset: value.offset }));
        return;
      }
      if (first && value.type === "error" && typeof value.reason === "string" && !("message" in value)) {
        // the room cannot resume (it keeps no history, or refused since=): start over
        this._position = null;
        this._emitError("resume", new Error(value.reason));
        return;
      }
      if (value.type === "auth" && typeof value.ok === "boolean") {
        if (value.ok) this._scheduleRefresh(typeof value.exp === "number" ? value.exp : null);
        this.dispatchEvent(event("auth", { ok: value.ok, exp: value.exp ?? null, error: value.error ?? null }));
        return;
      }
    }
    this._value(value, false);
  }

  _value(value, replayed) {
    if (isObject(value)) {
      if (value.type === "batch" && Array.isArray(value.messages)) {
        const ws = this._ws;
        for (const m of value.messages) {
          if (!this._value(m, replayed) || ws !== this._ws) return false;
        }
        return true;
      }
      if (isEnvelope(value)) return this._envelope(value, replayed);
      if (isSkip(value)) return this._envelope(value, replayed, true);
    }
    this._deliver(value, null, replayed);
    return true;
  }

  _envelope(env, replayed, skip = false) {
    const pos = this._position;
    if (pos) {
      if (env.epoch !== pos.epoch) {
        this._resync("epoch", `an envelope of epoch ${env.epoch} after ${pos.epoch} without a reset`);
        return false;
      }
      if (env.offset !== pos.offset + 1) {
        const cause = env.offset > pos.offset + 1 ? "gap" : "duplicate";
        this._resync(cause, `offset ${env.offset} after ${pos.offset}`);
        return false;
      }
    }
    this._position = { epoch: env.epoch, offset: env.offset };
    if (!skip) this._deliver(env.data, env, replayed);
    return true;
  }

  _history(h) {
    const since = this._position ? this._position.offset : null;
    const ws = this._ws;
    for (const m of h.messages) {
      if (!(isObject(m) && isEnvelope(m))) continue;
      if (!this._envelope(m, true) || ws !== this._ws) return;
    }
    if (!this._position || this._position.offset !== h.offset) {
      this._resync("gap", `history ended at ${this._position && this._position.offset}, the log at ${h.offset}`);
      return;
    }
    this.dispatchEvent(event("resume", { since, offset: h.offset, count: h.messages.length, epoch: h.epoch }));
  }

  _deliver(data, env, replayed) {
    this.dispatchEvent(event("message", {
      data,
      epoch: env ? env.epoch : null,
      offset: env ? env.offset : null,
      replayed,
    }));
  }
}

function isBinary(v) {
  return v instanceof ArrayBuffer || ArrayBuffer.isView(v) || (typeof Blob !== "undefined" && v instanceof Blob);
}

function resolveUrl(url) {
  const loc = globalThis.location;
  const u = new URL(url, loc && loc.href ? loc.href : undefined);
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  if (u.protocol !== "ws:" && u.protocol !== "wss:") {
    throw new TypeError(`fastws-client: ${url} is not a ws://, wss:// or page-relative URL`);
  }
  return u.href;
}

export default FastWSClient;
