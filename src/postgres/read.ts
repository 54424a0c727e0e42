/**
 * How the PostgreSQL store waits for its statements' answers, repeats a read
 * after a lost connection, and turns rows into the contract's values.
 * Private to the package.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import type postgres from "postgres";
import type { RecordedEvent } from "../event_store.ts";
import type { Codec } from "../codec.ts";
import type { LogLevel } from "../logger.ts";
import { decodeValue, type ReadAllRange } from "../_input.ts";
import { isLostConnection, type PostgresSql } from "./driver.ts";
import { arrayLiteral, type Statements } from "./statements.ts";
import { COPY_AFTER, copyEvents, copyLoad, copyReadAll } from "./copy_read.ts";

/** The store's log: its logger, with the schema added to every record. */
export type Log = (
  level: LogLevel,
  message: string,
  fields: Record<string, unknown>,
) => void;

/** What the store's statements need: the instance, the statements, the wait, the log. */
export interface QueryContext {
  /** The postgres.js instance. */
  readonly sql: PostgresSql;
  /** The statements of the store's schema. */
  readonly statements: Statements;
  /** Decodes `data` and snapshot `state`. */
  readonly codec: Codec;
  /** `options.responseTimeout`: milliseconds to wait for an answer, if any limit. */
  readonly responseTimeout: number | undefined;
  /** The store's log. */
  readonly log: Log;
  /**
   * Whether statements are prepared once per connection (named prepared
   * statements) or parsed with each call (`options.prepare`).
   */
  readonly prepare: boolean;
  /**
   * Milliseconds after which the store cancels a statement itself: the
   * `statementTimeout` behind a pooler, which refuses it as a startup
   * parameter. The server reports the cancel as it reports its own timeout
   * (57014). `undefined` where PostgreSQL enforces it.
   */
  readonly cancelAfter: number | undefined;
}

/**
 * A statement's answer, or after `responseTimeout` a `RESPONSE_TIMEOUT`
 * error (typed as {@linkcode StoreUnavailableError}). The statement is
 * not cancelled: the server may still run it, so an append that timed out
 * may have committed (retry it with its ids). What it is for: a call on a
 * connection whose answer never arrives, as under Deno after a restart.
 */
export function answer<T>(
  context: QueryContext,
  query: Promise<T>,
): Promise<T> {
  const cancelAfter = context.cancelAfter;
  if (cancelAfter !== undefined) cancelLater(query, cancelAfter);
  const ms = context.responseTimeout;
  if (ms === undefined) return query;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timedOut = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      // Its late outcome goes nowhere, but must not go unhandled.
      query.catch(() => {});
      reject(Object.assign(
        new Error(
          `no answer within ${ms} ms (options.responseTimeout); the statement may still complete`,
        ),
        { code: "RESPONSE_TIMEOUT" },
      ));
    }, ms);
  });
  return Promise.race([query, timedOut]).finally(() => clearTimeout(timer));
}

/**
 * Cancels a postgres.js query still running after `ms` (a CancelRequest on
 * a connection of its own, which a pooler passes on to the server the query
 * runs on), the way PostgreSQL's `statement_timeout` would end it. A cancel
 * that arrives before the server started the statement (while postgres.js
 * still sends or describes it) does nothing, so it is sent again every
 * {@linkcode CANCEL_REPEAT_MS} until the query settles.
 */
function cancelLater(query: Promise<unknown>, ms: number): void {
  // postgres.js's `query.cancel()` sends one CancelRequest, then forgets how
  // (it drops its `canceller`): so the canceller is kept here, to send more.
  const canceller = (query as { canceller?: (query: unknown) => unknown })
    .canceller;
  if (typeof canceller !== "function") return;
  let settled = false;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const send = () => {
    if (settled) return;
    try {
      Promise.resolve(canceller(query)).catch(() => {});
    } catch {
      // Already answered, or its connection is gone: nothing to cancel.
    }
    timer = setTimeout(send, CANCEL_REPEAT_MS);
  };
  timer = setTimeout(send, ms);
  const stop = () => {
    settled = true;
    clearTimeout(timer);
  };
  query.then(stop, stop);
}

/** How often a statement past its timeout is cancelled again. */
const CANCEL_REPEAT_MS = 100;

/**
 * Runs a read, and again (twice at most) if the connection failed: a read
 * changes nothing, so repeating it is safe, and it spares the caller the error
 * that the first call after a lost connection can get (postgres.js hands
 * the dead connection's farewell to the next query) once it reconnected.
 * Appends are never repeated this way: their outcome is unknown.
 */
export async function read<T>(
  context: QueryContext,
  query: () => Promise<T>,
): Promise<T> {
  for (let repeats = 0;; repeats++) {
    try {
      return await answer(context, query());
    } catch (error) {
      if (!isLostConnection(error) || repeats === READ_REPEATS) throw error;
      context.log("debug", "Repeating a read after a lost connection", {
        error: error instanceof Error ? error.message : String(error),
      });
    }
  }
}

/**
 * How often a read is repeated after a lost connection: twice, as an append
 * is sent again, since the first repeat may still get the dead
 * connection's farewell (57P01) that postgres.js hands to the next query
 * (a test kills a read's backend once: with one repeat the call failed).
 */
const READ_REPEATS = 2;

/** The version of a stream, 0 if it has none: a read. */
export async function readStreamVersion(
  context: QueryContext,
  streamId: string,
): Promise<number> {
  const [row] = await read(
    context,
    () =>
      context.sql.unsafe(context.statements.streamVersion, [streamId], {
        prepare: context.prepare,
      }),
  );
  return Number(row.version);
}

/**
 * Events of one stream from `fromVersion` on, at most `maxCount`: a read.
 * The first {@linkcode COPY_AFTER} come from the prepared statement; if
 * there may be more, the rest come by binary COPY (`copy_read.ts`). Events
 * are never changed once stored, so the two statements read one stream.
 */
export function loadStream<D>(
  context: QueryContext,
  streamId: string,
  fromVersion: number,
  maxCount: number,
): Promise<RecordedEvent<D>[]> {
  return preparedThenCopy<D>(
    context,
    maxCount,
    (first) =>
      context.sql.unsafe(context.statements.load, [
        streamId,
        fromVersion,
        first,
      ], { prepare: context.prepare }),
    () => streamId,
    (last, rest) =>
      copyEvents<D>(
        context,
        copyLoad(context.statements.schema, streamId, last.version + 1, rest),
        streamId,
      ),
  );
}

/**
 * Events of every stream in position order, filtered: a read. As
 * {@linkcode loadStream}, the first {@linkcode COPY_AFTER} come from the
 * prepared statement and the rest by binary COPY, from the last position
 * the first returned, under a bound of its own (`readableEnd`): the same
 * events a caller reading page by page would get.
 */
export function loadAll<D>(
  context: QueryContext,
  options: ReadAllRange,
): Promise<RecordedEvent<D>[]> {
  const { fromPosition, types, category } = options;
  return preparedThenCopy<D>(
    context,
    options.maxCount,
    (first) =>
      types === undefined && category === undefined
        ? context.sql.unsafe(context.statements.readAllUnfiltered, [
          fromPosition,
          first,
        ] as never[], { prepare: context.prepare })
        : context.sql.unsafe(context.statements.readAll, [
          fromPosition,
          first,
          types === undefined ? null : arrayLiteral(types),
          category ?? null,
        ] as never[], { prepare: context.prepare }),
    (row) => row.stream,
    (last, rest) =>
      copyEvents<D>(
        context,
        copyReadAll(context.statements.schema, {
          fromPosition: last.globalPosition,
          maxCount: rest,
          types,
          category,
        }),
      ),
  );
}

/**
 * A read of at most `maxCount` events: the first {@linkcode COPY_AFTER}
 * from `prepared` (given its limit), and if it returned that many and more
 * may follow, the rest from `copyRest` (given the last event and how many
 * more at most), both repeated after a lost connection.
 */
async function preparedThenCopy<D>(
  context: QueryContext,
  maxCount: number,
  prepared: (first: number) => Promise<postgres.Row[]>,
  streamOf: (row: postgres.Row) => string,
  copyRest: (
    last: RecordedEvent<D>,
    rest: number,
  ) => Promise<RecordedEvent<D>[]>,
): Promise<RecordedEvent<D>[]> {
  const first = Math.min(maxCount, COPY_AFTER);
  const rows = await read(context, () => prepared(first));
  const events = new Array<RecordedEvent<D>>(rows.length);
  for (let index = 0; index < rows.length; index++) {
    events[index] = recorded<D>(
      context.codec,
      streamOf(rows[index]),
      rows[index],
    );
  }
  if (rows.length < first || maxCount === first) return events;
  const rest = await read(
    context,
    () => copyRest(events[events.length - 1], maxCount - first),
  );
  for (let index = 0; index < rest.length; index++) events.push(rest[index]);
  return events;
}

/** An event row as the contract's {@linkcode RecordedEvent}. */
export function recorded<D>(
  codec: Codec,
  streamId: string,
  row: postgres.Row,
): RecordedEvent<D> {
  const version = Number(row.version);
  return {
    id: row.id,
    streamId,
    version,
    globalPosition: BigInt(row.position),
    type: row.type,
    data: decodeValue(
      codec,
      asBytes(row.data),
      () => `stream ${JSON.stringify(streamId)} version ${version} data`,
    ) as D,
    metadata: asJsonObject(row.metadata),
    createdAt: row.created,
  };
}

/**
 * The bytes of a `data` or `state` column, as a plain `Uint8Array`. The
 * read statements select them as base64 text (`encode(…, 'base64')`):
 * postgres.js decodes bytea's hex text in JavaScript, byte by byte, which
 * took 14% of a 10,000-event load, and base64 is shorter on the wire and
 * decoded natively (docs/performance.md). A `Buffer` (bytea as postgres.js
 * gives it) is taken too.
 */
export function asBytes(value: Uint8Array | string): Uint8Array {
  // Buffer's base64 decoding skips the newline PostgreSQL writes every 76
  // characters.
  const bytes = typeof value === "string"
    ? Buffer.from(value, "base64")
    : value;
  return bytes.constructor === Uint8Array
    ? bytes
    : new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** jsonb arrives parsed, or as text from an instance told not to parse it. */
function asJsonObject(value: unknown): Record<string, unknown> {
  return typeof value === "string" ? JSON.parse(value) : value as Record<
    string,
    unknown
  >;
}
