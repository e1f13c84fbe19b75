// Type declarations of fastws-client.js (the fastws browser and Node client).

export declare const VERSION: string;

export interface Backoff {
  /** ms cap of the first retry (default 500) */
  initial?: number;
  /** ms cap of any retry (default 30000) */
  max?: number;
  /** growth of the cap per attempt (default 2) */
  factor?: number;
}

export interface Heartbeat {
  /** ms without a received frame before a ping is sent (default 25000) */
  interval?: number;
  /** ms to wait for any frame after the ping before the link counts as dead (default 10000) */
  timeout?: number;
  /** the TEXT message sent (default "ping") */
  ping?: string;
  /** the answer, swallowed, not a message event (default "pong") */
  pong?: string;
}

/** A constructor with the browser WebSocket's API (the ws package's WebSocket fits). */
export type WebSocketLike = new (url: string, protocols?: string | string[]) => {
  readyState: number;
  binaryType: string;
  send(data: string | ArrayBufferLike | ArrayBufferView | Blob): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: any }) => void) | null;
  onerror: ((ev: any) => void) | null;
  onclose: ((ev: { code: number; reason: string; wasClean: boolean }) => void) | null;
};

export interface ClientOptions {
  /** reconnect after a drop (default true) */
  reconnect?: boolean;
  /** add ?since=<epoch>:<offset> on reconnect and unpack history (default true) */
  resume?: boolean;
  backoff?: Backoff;
  /** consecutive failed attempts before giving up with a close event (default Infinity) */
  maxRetries?: number;
  /** false (default), true (the defaults of Heartbeat) or settings; the server must answer ping */
  heartbeat?: boolean | Heartbeat;
  /** called before every connection attempt and before a JWT's exp; null: no token */
  token?: (() => string | Promise<string>) | null;
  /** the query parameter carrying the token (default "token", what fastws.JWTAuth reads) */
  tokenParam?: string;
  /** ms before exp to refresh (default 30000; at most half the token's remaining life) */
  refreshBefore?: number;
  /** messages queued while not open (default 100; 0: send() throws while not open) */
  maxQueue?: number;
  /** a position to resume from on the first connection ("<epoch>:<offset>", e.g. kept in storage) */
  since?: string | null;
  protocols?: string | string[];
  /** the WebSocket implementation (default globalThis.WebSocket) */
  WebSocket?: WebSocketLike;
  /** default "arraybuffer" */
  binaryType?: "arraybuffer" | "blob";
  /** parse TEXT frames as JSON when they are JSON (default true) */
  json?: boolean;
}

export interface OpenEvent extends Event {
  readonly since: string | null;
  readonly url: string;
}
export interface FastWSMessageEvent<T = any> extends Event {
  /** the envelope's data, else the parsed JSON, the string, or the binary data */
  readonly data: T;
  /** null for messages that came without an envelope */
  readonly epoch: string | null;
  readonly offset: number | null;
  /** true when it came from a history frame after a reconnect */
  readonly replayed: boolean;
}
export interface ResetEvent extends Event {
  readonly reason: "epoch" | "trimmed" | "ahead" | string;
  readonly epoch: string;
  readonly offset: number;
}
export interface ResumeEvent extends Event {
  readonly since: number | null;
  readonly offset: number;
  readonly count: number;
  readonly epoch: string;
}
export interface ReconnectingEvent extends Event {
  /** 0 for the first retry after a connection */
  readonly attempt: number;
  /** ms until the attempt */
  readonly delay: number;
  readonly cause: "close" | "error" | "token" | "heartbeat" | "gap" | "duplicate" | "epoch";
  readonly code: number | null;
  readonly reason: string;
  readonly since: string | null;
}
export interface CloseEvent extends Event {
  readonly code: number | null;
  readonly reason: string;
  readonly wasClean: boolean;
  /** queued messages dropped */
  readonly unsent: number;
  readonly since: string | null;
}
export interface ErrorEvent extends Event {
  readonly where: "socket" | "connect" | "token" | "resume";
  readonly error: unknown;
  readonly reason: string;
}
export interface AuthEvent extends Event {
  readonly ok: boolean;
  readonly exp: number | null;
  readonly error: string | null;
}

export interface FastWSClientEventMap {
  open: OpenEvent;
  message: FastWSMessageEvent;
  reset: ResetEvent;
  resume: ResumeEvent;
  reconnecting: ReconnectingEvent;
  close: CloseEvent;
  error: ErrorEvent;
  auth: AuthEvent;
}

export declare class FastWSClient extends EventTarget {
  constructor(url: string, options?: ClientOptions);
  readonly url: string;
  readonly options: Required<ClientOptions>;
  readonly state: "connecting" | "open" | "closed";
  /** the last envelope's "<epoch>:<offset>", or null */
  readonly since: string | null;
  readonly queued: number;
  /** the WebSocket in use (open or opening), or null between attempts */
  readonly socket: InstanceType<WebSocketLike> | null;
  send(data: string | ArrayBufferLike | ArrayBufferView | Blob | unknown): void;
  close(code?: number, reason?: string): void;
  addEventListener<K extends keyof FastWSClientEventMap>(
    type: K, listener: (ev: FastWSClientEventMap[K]) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof FastWSClientEventMap>(
    type: K, listener: (ev: FastWSClientEventMap[K]) => void, options?: boolean | EventListenerOptions): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions): void;
}

export declare function backoffDelay(attempt: number, backoff?: Backoff, random?: () => number): number;
export declare function parseSince(value: string): { epoch: string; offset: number } | null;
export declare function tokenExpiry(token: string): number | null;
export default FastWSClient;
