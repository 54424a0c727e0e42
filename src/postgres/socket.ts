/**
 * A socket for postgres.js 3.4.9 that keeps it from losing or stalling calls
 * when a connection dies under load (after `pg_ctl restart`, a killed
 * backend, a pooler that drops a server). Private to the package.
 *
 * Two bugs of postgres.js's `src/connection.js`, found by tracing a patched
 * copy (docs/design.md, "Connection loss": the upstream patch and a
 * deterministic repro with a fake socket, the same on Node 20 and Deno 2):
 *
 * 1. A socket `'error'` rejects the queries the connection holds, but the
 *    connection stays in the pool's busy queue, with its last `query`, until
 *    `'close'`. Queries the pool hands it in between are queued in `sent`
 *    and, when `'close'` comes with `hadError` true, never rejected: after
 *    the next connect they are taken for the query in flight and wait
 *    forever (or, with no socket left, Deno exits: "Promise resolution is
 *    still pending but the event loop has already resolved"). Deno's
 *    `node:net` reports a write after the server's FIN as `'error'`
 *    (EPIPE) then `close(hadError=true)` more often than Node does, so Deno
 *    hits this far more often; Node's documentation allows either order.
 *    Fix here: `'close'` follows `'error'` at once, so that no query can be
 *    queued on a dead socket.
 * 2. Closing cancels the pending write flush (`clearImmediate`) without
 *    resetting `nextWriteTimer` and `chunk`: the next StartupMessage of that
 *    connection is buffered and never sent, the backend waits for it, and
 *    the call waits until `connect_timeout`, at every reconnect. Fix here:
 *    the StartupMessage is padded to at least 1024 bytes, which makes the
 *    driver flush at once (resetting its flush state); this socket's first
 *    write drops the dead connection's stale bytes in front of the
 *    StartupMessage and the padding, so the server never sees either.
 *
 * Plain TCP and unix sockets only: with TLS the driver wraps the socket in
 * its own, so {@linkcode resilientSocketOptions} leaves TLS alone.
 *
 * @module
 */
import net from "node:net";
import { Buffer } from "node:buffer";

/** A startup parameter no server sees: the socket strips it. */
const PAD_KEY = "deno_eventstore.pad";

/** Past the driver's flush threshold (1024 bytes): a write that goes out at once. */
const PAD = { [PAD_KEY]: "x".repeat(1024) };
const PROTOCOL_3 = 196608; // StartupMessage protocol version 3.0

interface DriverOptions {
  host: string[];
  port: number[];
  path?: string | false;
}

/** Everything before the last untyped packet (StartupMessage, cancel) is stale. */
export function sanitizeFirstWrite(buffer: Buffer): Buffer {
  let last = -1;
  for (let i = 0; i + 5 <= buffer.length;) {
    const untyped = buffer[i] === 0; // untyped: Int32 length (< 16 MiB), no type byte
    const length = untyped ? buffer.readInt32BE(i) : buffer.readInt32BE(i + 1);
    if (length < 4) return buffer; // not a message boundary: send as it is
    if (untyped) last = i;
    i += untyped ? length : 1 + length;
  }
  if (last < 0) return buffer;
  const packet = buffer.subarray(last, last + buffer.readInt32BE(last));
  const rest = buffer.subarray(last + packet.length);
  if (packet.length < 8 || packet.readInt32BE(4) !== PROTOCOL_3) {
    return last === 0 ? buffer : Buffer.concat([packet, rest]);
  }
  // StartupMessage: key\0value\0 ... \0 — drop the padding pair.
  const pairs = packet.subarray(8, packet.length - 1).toString("utf8").split(
    "\0",
  );
  const kept: string[] = [];
  for (let i = 0; i + 1 < pairs.length; i += 2) {
    if (pairs[i] !== PAD_KEY) kept.push(pairs[i], pairs[i + 1]);
  }
  const body = Buffer.from(kept.map((s) => s + "\0").join("") + "\0", "utf8");
  const header = Buffer.alloc(8);
  header.writeInt32BE(8 + body.length, 0);
  header.writeInt32BE(PROTOCOL_3, 4);
  return Buffer.concat([header, body, rest]);
}

/**
 * The error a server sent just before it closed a connection (FATAL: an
 * idle-in-transaction timeout, a terminated backend, a shutdown), as
 * PostgreSQL's fields: postgres.js drops it when no query is in flight, and
 * reports only `CONNECTION_CLOSED` to a transaction that was waiting.
 */
export interface Farewell {
  /** SQLSTATE, e.g. `25P03`. */
  readonly code: string;
  /** `FATAL` or `PANIC`. */
  readonly severity: string;
  /** The server's message. */
  readonly message: string;
}

/**
 * The farewell at the end of the last chunk a socket received, if that
 * chunk is one whole ErrorResponse of severity FATAL or PANIC (it comes
 * alone, after the connection was idle or between statements). Anything
 * else is not a farewell.
 */
export function farewellIn(
  chunk: Uint8Array | undefined,
): Farewell | undefined {
  if (chunk === undefined || chunk.length < 6 || chunk[0] !== 0x45) {
    return undefined; // 'E'
  }
  const bytes = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  if (1 + bytes.readInt32BE(1) !== bytes.length) return undefined;
  const fields = new Map<string, string>();
  for (let i = 5; i < bytes.length && bytes[i] !== 0;) {
    const end = bytes.indexOf(0, i + 1);
    if (end < 0) return undefined;
    fields.set(
      String.fromCharCode(bytes[i]),
      bytes.toString("utf8", i + 1, end),
    );
    i = end + 1;
  }
  const severity = fields.get("V") ?? fields.get("S");
  const code = fields.get("C");
  const message = fields.get("M");
  if (severity !== "FATAL" && severity !== "PANIC") return undefined;
  if (code === undefined || message === undefined) return undefined;
  return { code, severity, message };
}

/** The `socket` option: a connected-on-demand net.Socket with the two fixes. */
export function resilientSocket(
  options: DriverOptions,
  onFarewell?: (farewell: Farewell) => void,
): net.Socket {
  type Emit = (
    this: net.Socket,
    event: string | symbol,
    ...args: unknown[]
  ) => boolean;
  type Write = (
    this: net.Socket,
    chunk: unknown,
    ...rest: unknown[]
  ) => boolean;
  const socket = new net.Socket();
  let over = false;
  let first = true;
  // A reference, not a copy: the server's last words, read at 'close'.
  let last: Uint8Array | undefined;
  const farewell = () => {
    const said = onFarewell === undefined ? undefined : farewellIn(last);
    if (said !== undefined) onFarewell!(said);
  };
  const emit = socket.emit as Emit;
  (socket as { emit: Emit }).emit = function (event, ...args) {
    if (over) return false; // nothing reaches the driver after its 'close'
    if (event === "data") last = args[0] as Uint8Array;
    if (event === "error" || event === "close") farewell();
    if (event === "error") {
      // 'close' at once, so that no query is queued on the dead socket.
      over = true;
      socket.destroy();
      emit.call(this, "error", ...args);
      return emit.call(this, "close", true);
    }
    if (event === "close") over = true;
    return emit.call(this, event, ...args);
  };
  if (options.path) socket.connect(options.path);
  else socket.connect(options.port[0], options.host[0]);
  // After connect(), which resets `write` to the prototype's.
  const write = socket.write as Write;
  (socket as { write: Write }).write = function (chunk, ...rest) {
    if (first && Buffer.isBuffer(chunk)) {
      first = false;
      chunk = sanitizeFirstWrite(chunk);
    }
    return write.call(this, chunk, ...rest);
  };
  return socket;
}

/**
 * Options to merge into the driver's: the socket factory and the padding
 * parameter. Nothing for TLS or several hosts, where the driver must make
 * the socket itself.
 */
export function resilientSocketOptions<
  const C extends Record<string, string | number | boolean | undefined>,
>(
  url: string,
  connection: C,
  onFarewell?: (farewell: Farewell) => void,
): { socket?: (options: DriverOptions) => net.Socket; connection: C } {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return { connection }; // several hosts, or a URL the driver reads its own way
  }
  let sslEnv: string | undefined;
  try {
    sslEnv = Deno.env.get("PGSSL"); // postgres.js reads it as the `ssl` default
  } catch {
    // No env permission: postgres.js cannot read it either.
  }
  const sslmode = parsed.searchParams.get("sslmode") ??
    parsed.searchParams.get("ssl") ?? sslEnv ?? null;
  const tls = sslmode !== null && !["disable", "false"].includes(sslmode);
  if (tls || parsed.host.includes(",")) return { connection };
  return {
    socket: (options) => resilientSocket(options, onFarewell),
    connection: { ...connection, ...PAD },
  };
}
