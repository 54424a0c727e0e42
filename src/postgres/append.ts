/**
 * The PostgreSQL store's append: one statement per attempt, sent again after
 * a lost connection (looking for its ids) and retried after a lost race.
 * Private to the package.
 *
 * @module
 */

import type { Span } from "@opentelemetry/api";
import type { AppendResult, ExpectedVersion } from "../event_store.ts";
import {
  ConcurrencyConflictError,
  MigrationError,
  PositionsExhaustedError,
} from "../errors.ts";
import type { PreparedEvent } from "../_input.ts";
import { repeatedAppend } from "../expected_version.ts";
import {
  constraintOf,
  isConnectionError,
  isLostConnection,
  isServerError,
} from "./driver.ts";
import { arrayLiteral, byteaArrayLiteral } from "./statements.ts";
import {
  answer,
  type Log,
  type QueryContext,
  readStreamVersion,
} from "./read.ts";

/** How often an append is sent again after its connection was lost. */
const LOST_CONNECTION_RESENDS = 2;

/** Appends that lose a race for `"any"` retry at most this often. */
const MAX_APPEND_ATTEMPTS = 100;

/**
 * How long lock timeouts may keep finding the stream's version unchanged
 * (milliseconds, and at least two of them in a row) before an append stops
 * waiting: with no commit on the stream for that long, the lock is not a
 * racing append's, whose commit is about to end, but held by something
 * else (a `CREATE INDEX`, a long transaction).
 */
const LOCK_STALL_LIMIT_MS = 1_000;

/** What an append needs of the store: its statements, and who to tell. */
export interface AppendContext extends QueryContext {
  /** Tells subscribers that an append committed, up to `position`. */
  notifyAppended(position: bigint): void;
}

/**
 * Appends checked and encoded events to a stream, as
 * {@linkcode EventStore.appendEvents} says, setting the span's version.
 *
 * @throws {ConcurrencyConflictError} `expected` does not hold.
 * @throws {MigrationError} Stored positions lie beyond this cluster's
 *   transaction ids.
 * @throws {PositionsExhaustedError} No global position is left.
 * @throws The driver's error otherwise, for the caller to type: among them
 *   a lock timeout (55P03) that outlasted the retries, with the version as
 *   expected.
 */
export async function append(
  context: AppendContext,
  span: Span,
  streamId: string,
  expected: ExpectedVersion,
  prepared: readonly PreparedEvent[],
  hasCallerIds: boolean,
): Promise<AppendResult> {
  const ids = new Array<string>(prepared.length);
  const types = new Array<string>(prepared.length);
  const data = new Array<Uint8Array>(prepared.length);
  const metadata = new Array<string>(prepared.length);
  prepared.forEach((event, index) => {
    ids[index] = event.id;
    types[index] = event.type;
    data[index] = event.data;
    metadata[index] = event.metadataJson;
  });
  const exactVersion = typeof expected === "number"
    ? expected
    : expected === "no_stream"
    ? 0
    : null;
  const mustExist = expected === "stream_exists";

  const { sql, statements } = context;
  const single = prepared.length === 1;
  // A single event's parameters $1–$5, as the single statements take them.
  const event = [streamId, ids[0], types[0], data[0], metadata[0]] as const;
  // Whether the statement looks for the batch's ids in the stream: for
  // the caller's ids, and after this call lost its connection, when
  // its first attempt may have committed (its ids, generated or not,
  // tell).
  let lookForIds = hasCallerIds;
  let lostConnections = 0;
  // What the server said when the first connection was lost (a FATAL
  // error: a restart, a pooler's timeout), kept for the caller when a
  // resend then fails with only the socket's word for it.
  let firstLoss: unknown;
  // The stream's version at the last lock timeout, since when lock
  // timeouts have found it so, and how many.
  let versionAtLockTimeout: number | undefined;
  let stalledSince = 0;
  let stalledLockTimeouts = 0;
  // The longest back-off between retries, raised after a lock timeout.
  let backOffLimit = BACK_OFF_LIMIT_MS;
  for (let attempt = 1;; attempt++) {
    const started = performance.now();
    try {
      if (single && !lookForIds) {
        // The common case, in its lean statement (leaner still with an
        // exact version, which it need not read); only when it inserted
        // nothing does the full one run, to say why. A stream that moved
        // past an exact version fails its insert on the primary key
        // (23505): a conflict, typed below.
        const [inserted] = await answer(
          context,
          exactVersion !== null
            ? sql.unsafe(
              statements.appendOneExact,
              [...event, exactVersion],
              { prepare: context.prepare },
            )
            : sql.unsafe(
              statements.appendOneLean,
              [...event, exactVersion, mustExist],
              { prepare: context.prepare },
            ),
        );
        if (inserted !== undefined) {
          const version = Number(inserted.version);
          const globalPosition = BigInt(inserted.position);
          span.setAttribute("eventstore.version", version);
          context.notifyAppended(globalPosition);
          return { version, globalPosition };
        }
      }
      const [row] = single
        ? await answer(
          context,
          sql.unsafe(
            statements.appendOne,
            [...event, exactVersion, mustExist, lookForIds],
            { prepare: context.prepare },
          ),
        )
        : await answer(
          context,
          sql.unsafe(statements.append, [
            streamId,
            arrayLiteral(ids),
            arrayLiteral(types),
            byteaArrayLiteral(data),
            arrayLiteral(metadata),
            exactVersion,
            mustExist,
            lookForIds,
          ], { prepare: context.prepare }),
        );
      if (row.exhausted) throw positionsExhausted(context, streamId);
      if (row.ahead) throw positionsAhead(context, streamId);
      if (row.storedids !== null) {
        const storedVersions = fromJson<number[]>(row.storedversions);
        const repeated = repeatedAppend(
          streamId,
          expected,
          ids,
          fromJson<string[]>(row.storedids).map((id, index) => ({
            id,
            version: Number(storedVersions[index]),
          })),
        );
        if (repeated !== undefined) {
          context.log("debug", "Append repeated: returning its result", {
            streamId,
            version: repeated,
          });
          span.setAttribute("eventstore.version", repeated);
          span.setAttribute("eventstore.repeated", true);
          return {
            version: repeated,
            globalPosition: BigInt(row.storedposition),
          };
        }
      }
      const previous = Number(row.previous);
      if (row.position === null) {
        throw conflict(context.log, streamId, expected, previous);
      }
      const version = previous + prepared.length;
      const globalPosition = BigInt(row.position);
      span.setAttribute("eventstore.version", version);
      context.notifyAppended(globalPosition);
      return { version, globalPosition };
    } catch (error) {
      // Sent again after a lost connection: looking for its ids, the
      // next attempt returns the first one's result if that did
      // commit, so nothing is stored twice. Twice, since the first
      // resend may still get the dead connection's farewell (57P01),
      // which postgres.js hands to the next query.
      if (
        (isLostConnection(error) || isConnectTimeout(error)) &&
        lostConnections < LOST_CONNECTION_RESENDS
      ) {
        lostConnections++;
        lookForIds = true;
        firstLoss ??= error;
        context.log(
          "debug",
          "Sending an append again after a lost connection",
          {
            streamId,
            error: error instanceof Error ? error.message : String(error),
          },
        );
        continue;
      }
      if (isLockTimeout(error)) {
        // The insert waited on a key (or the table) locked by another
        // transaction for longer than the operator's lock_timeout (55P03).
        // Under racing appends that is a racer's commit, not yet done: a
        // race, whose outcome the stream's version tells.
        const version = await readStreamVersion(context, streamId);
        if (version === versionAtLockTimeout) {
          stalledLockTimeouts++;
        } else {
          versionAtLockTimeout = version;
          stalledSince = started;
          stalledLockTimeouts = 0;
        }
        const stalled = stalledLockTimeouts > 0 &&
          performance.now() - stalledSince >= LOCK_STALL_LIMIT_MS;
        // Commits take about as long as this wait (or longer): retrying
        // every few milliseconds after the next lost race would spend the
        // attempts long before 20 racers are through.
        backOffLimit = Math.min(
          MAX_BACK_OFF_LIMIT_MS,
          Math.max(backOffLimit, performance.now() - started),
        );
        const moved = exactVersion !== null && version !== exactVersion;
        // With the caller's ids the mover may be this very append, sent
        // before: only the statement run again tells.
        if (moved && !lookForIds) {
          throw conflict(context.log, streamId, expected, version, error);
        }
        if (!stalled && attempt < MAX_APPEND_ATTEMPTS) {
          context.log("debug", "Retrying an append after a lock timeout", {
            streamId,
            attempt,
            version,
          });
          // No back-off: the attempt has just waited a whole lock_timeout.
          continue;
        }
        if (moved) {
          throw conflict(context.log, streamId, expected, version, error);
        }
        // Nothing commits on the stream, yet the lock stays: the store
        // cannot serve now (typed by the caller as StoreUnavailableError,
        // with 55P03 and the server's message).
        throw error;
      }
      const retry = retryAfter(error, expected, lookForIds);
      if (retry === "never") {
        throw isServerError(firstLoss) && !isServerError(error) &&
            isConnectionError(error)
          ? firstLoss
          : error;
      }
      if (retry === "retry" && attempt < MAX_APPEND_ATTEMPTS) {
        context.log("debug", "Retrying an append that lost a race", {
          streamId,
          attempt,
          reason: isServerError(error) ? error.code : "unknown",
        });
        await backOff(attempt, backOffLimit);
        continue;
      }
      throw conflict(
        context.log,
        streamId,
        expected,
        await readStreamVersion(context, streamId),
        error,
      );
    }
  }
}

/**
 * The error of an append refused because stored positions lie beyond this
 * cluster's transaction ids: the database was restored into (or moved to)
 * another cluster, and `migrate()` has not realigned positions yet. Nothing
 * was written: a position written now would sort below stored ones.
 */
export function positionsAhead(
  context: AppendContext,
  streamId: string,
): MigrationError {
  context.log("error", "Append refused: stored positions are ahead", {
    streamId,
  });
  return new MigrationError(
    `Cannot append to stream ${
      JSON.stringify(streamId.slice(0, 200))
    }: the stored global positions lie beyond this server's transaction ids, as after a restore into another cluster; run migrate() (deno task migrate) once to realign them (stored positions are kept); nothing was written`,
  );
}

/**
 * The error of an append refused because its transaction's positions would
 * pass the largest bigint and wrap to negative numbers: nothing was written.
 */
export function positionsExhausted(
  context: AppendContext,
  streamId: string,
): PositionsExhaustedError {
  context.log("error", "Append refused: global positions are exhausted", {
    streamId,
  });
  return new PositionsExhaustedError(streamId);
}

/** The conflict error of an append refused, logged. */
export function conflict(
  log: Log,
  streamId: string,
  expectedVersion: ExpectedVersion,
  actualVersion: number,
  cause?: unknown,
): ConcurrencyConflictError {
  log("debug", "Append refused: concurrency conflict", {
    streamId,
    expectedVersion,
    actualVersion,
  });
  return new ConcurrencyConflictError(
    streamId,
    { expectedVersion, actualVersion },
    cause === undefined ? undefined : { cause },
  );
}

/**
 * What to do after an append failed:
 * - `"retry"`: the statement may simply be run again. A serialization
 *   failure or deadlock (under an isolation level above READ COMMITTED)
 *   says nothing about versions; a key violation after a race leaves an
 *   `"any"` or `"stream_exists"` expectation true, and may have been this
 *   same append's first attempt (when it carries the caller's ids).
 * - `"conflict"`: another append took the version expected.
 * - `"never"`: not a race at all.
 */
function retryAfter(
  error: unknown,
  expected: ExpectedVersion,
  hasCallerIds: boolean,
): "retry" | "conflict" | "never" {
  if (!isServerError(error)) return "never";
  if (error.code === "40001" || error.code === "40P01") return "retry";
  if (error.code !== "23505" || constraintOf(error) !== "events_pkey") {
    return "never";
  }
  // With the caller's ids, the winner may be this very append, sent before
  // and committed meanwhile: the statement run again tells.
  return expected === "any" || expected === "stream_exists" || hasCallerIds
    ? "retry"
    : "conflict";
}

/** The longest wait between two attempts, unless commits are slow. */
const BACK_OFF_LIMIT_MS = 50;

/** The longest wait between two attempts even when commits are slow. */
const MAX_BACK_OFF_LIMIT_MS = 1_000;

/**
 * Waits before a retry: not at all for the first ones (a lost race is
 * usually over by then), then a random few milliseconds, growing up to
 * `limit`, so that many writers on one stream stop colliding in lockstep.
 */
async function backOff(attempt: number, limit: number): Promise<void> {
  if (attempt < 3) return;
  const ms = Math.random() * Math.min(limit, 2 ** (attempt - 2));
  await new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * A JSON column's value: parsed by postgres.js, or still text from an
 * application's instance whose types leave JSON alone.
 */
function fromJson<T>(value: unknown): T {
  return (typeof value === "string" ? JSON.parse(value) : value) as T;
}

/**
 * Whether the server gave up waiting for a lock (SQLSTATE 55P03,
 * `lock_not_available`): `lock_timeout` ran out.
 */
function isLockTimeout(error: unknown): boolean {
  return isServerError(error) && error.code === "55P03";
}

/**
 * Whether a connection timed out before it was ready: nothing was sent on
 * it, so an append may be sent again.
 */
function isConnectTimeout(error: unknown): boolean {
  return (error as { code?: unknown })?.code === "CONNECT_TIMEOUT";
}
