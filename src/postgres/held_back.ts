/**
 * Readers held back by an open transaction: how far `readAll` is behind the
 * committed events and which transactions hide them (`readAllLag()`), and
 * the watch that logs a warning while that lasts. Private to the package.
 *
 * `readAll` returns only positions below `(xmin + offset) << 20`, xmin being
 * the oldest transaction id still running anywhere in the cluster: in every
 * database, prepared transactions included (they outlive their session and
 * a restart). A transaction left open after it wrote something hides every
 * event appended after it took its id, from every reader of every store on
 * the cluster; nothing fails, so without this nobody would know.
 *
 * @module
 */

import type { ReadAllLag, ReaderHold } from "../event_store.ts";
import { type QueryContext, read } from "./read.ts";
import { POSITIONS_END } from "./statements.ts";

/** Milliseconds readers may be held back before the store warns, unless told. */
export const DEFAULT_HELD_BACK_THRESHOLD_MS = 5_000;

/**
 * How long after the last `readAll` readers count as active. Subscriptions
 * and projections read at least once a second (their poll), even while
 * held back; a projection busy in its handler does not read, but then it is
 * the one holding, and others read.
 */
const ACTIVE_MS = 5_000;

/**
 * How long `close()` waits for a check in flight: on a server that went
 * silent it could wait for as long as the connection takes to fail.
 */
const CLOSE_WAIT_MS = 1_000;

/** The warning repeats every this many thresholds while the hold lasts. */
const REPEAT_FACTOR = 6;

/**
 * Observations of hidden events kept at most. Dropping one only makes a
 * hold look younger than it is (the next kept one was seen later), never
 * older: so thinning can delay a warning, never raise a false one.
 */
const MAX_OBSERVATIONS = 64;

/** A 32-bit transaction id's range, for turning one into the full 64 bits. */
const XID_SPAN = 4294967296n;

/** The statements of the lag and of the watch, for a schema (quoted). */
export interface HeldBackStatements {
  /**
   * The watch's check, cheap enough for every second: one row with `head`
   * (the highest committed position, null if none; a backward probe of
   * `events_global_position_idx`) and `last` (`readAll` returns only
   * positions up to it).
   */
  check: string;
  /**
   * One row per transaction holding readers back, oldest first (one row with
   * null holder columns when none): `head`, `readable` (the highest position
   * up to the bound), `hidden` (committed events past it), and the
   * holder's `kind`, `pid`, `gid`, `database`, `username`, `application`,
   * `started`, `queried` and `age` (ms). Never the query text.
   */
  lag: string;
}

/**
 * Writes the statements for one schema.
 *
 * @param schema The schema, already checked and double-quoted.
 */
export function heldBackStatements(schema: string): HeldBackStatements {
  const events = `${schema}.events`;
  // The readAll statement's bound, exactly (src/postgres/statements.ts):
  // the highest position it returns, inclusive.
  const last = `(
    SELECT CASE WHEN horizon < ${POSITIONS_END}
                THEN (horizon << 20) - 1
                ELSE 9223372036854775807 END
    FROM (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint
                   + ${schema}.position_offset() AS horizon) AS snapshot)`;
  return {
    check: `
      SELECT (SELECT max(global_position) FROM ${events}) AS head,
             ${last} AS last`,
    // Holders: every transaction with an id (pg_stat_activity.backend_xid,
    // which PostgreSQL shows for every role's sessions, and
    // pg_prepared_xacts) older than the highest hidden event's transaction.
    // Their ids are 32 bits: each becomes the full id nearest the
    // snapshot's xmax (every running id is within 2^31 of it). Parallel
    // workers share their leader's id and are left out.
    lag: `
      WITH snapshot AS (
        SELECT ${last} AS last,
               pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xmax,
               ${schema}.position_offset() AS shift,
               (SELECT max(global_position) FROM ${events}) AS head
      ), summary AS (
        SELECT head, last, xmax, shift,
               (SELECT max(global_position) FROM ${events}
                WHERE global_position <= snapshot.last) AS readable,
               (SELECT count(*) FROM ${events}
                WHERE global_position > snapshot.last) AS hidden
        FROM snapshot
      ), running AS (
        SELECT 'transaction' AS kind, pid, NULL::text AS gid,
               datname::text AS database, usename::text AS username,
               application_name::text AS application,
               xact_start AS started, query_start AS queried,
               backend_xid::text::bigint AS xid
        FROM pg_stat_activity
        WHERE backend_xid IS NOT NULL
          AND (leader_pid IS NULL OR leader_pid = pid)
        UNION ALL
        SELECT 'prepared transaction', NULL, gid, database::text,
               owner::text, NULL, prepared, NULL, transaction::text::bigint
        FROM pg_prepared_xacts
      ), holders AS (
        SELECT running.*,
               summary.xmax + ((running.xid - summary.xmax % ${XID_SPAN}
                 + ${XID_SPAN + XID_SPAN / 2n}) % ${XID_SPAN}
                 - ${XID_SPAN / 2n}) AS fullxid
        FROM summary, running
        WHERE summary.head > summary.last
      )
      SELECT summary.head, summary.readable, summary.hidden,
             holders.kind, holders.pid, holders.gid, holders.database,
             holders.username, holders.application, holders.started,
             holders.queried,
             (extract(epoch FROM now() - holders.started) * 1000)::bigint
               AS age
      FROM summary
      LEFT JOIN holders
        ON holders.fullxid < (summary.head >> 20) - summary.shift
      ORDER BY holders.fullxid`,
  };
}

/**
 * How far `readAll` is behind the committed events and why: one statement,
 * a read.
 *
 * @param context The store's statements' context.
 * @param statements The schema's {@linkcode HeldBackStatements}.
 */
export async function readLag(
  context: QueryContext,
  statements: HeldBackStatements,
): Promise<ReadAllLag> {
  const rows = await read(
    context,
    () => context.sql.unsafe(statements.lag, [], { prepare: context.prepare }),
  );
  const [summary] = rows;
  const hiddenEvents = Number(summary.hidden);
  return {
    headPosition: positionOf(summary.head),
    readablePosition: positionOf(summary.readable),
    hiddenEvents,
    heldBy: hiddenEvents === 0
      ? []
      : rows.filter((row) => row.kind !== null).map(holdOf),
  };
}

/** A holder's row as a {@linkcode ReaderHold}, without its absent fields. */
function holdOf(row: Record<string, unknown>): ReaderHold {
  const hold: Partial<ReaderHold> = {
    kind: row.kind === "transaction" ? "transaction" : "prepared transaction",
  };
  if (row.pid !== null) hold.pid = Number(row.pid);
  if (row.gid !== null) hold.gid = String(row.gid);
  if (row.database !== null) hold.database = String(row.database);
  if (row.username !== null) hold.user = String(row.username);
  if (row.application !== null) {
    hold.applicationName = String(row.application);
  }
  if (row.started !== null) hold.transactionStart = dateOf(row.started);
  if (row.queried !== null) hold.queryStart = dateOf(row.queried);
  // A clock step on the server can make it negative.
  hold.ageMs = row.age === null ? 0 : Math.max(0, Number(row.age));
  return hold as ReaderHold;
}

function positionOf(value: unknown): bigint {
  return value === null || value === undefined ? 0n : BigInt(value as string);
}

/** A timestamp as postgres.js gives it (a Date, or text from an instance that parses none). */
function dateOf(value: unknown): Date {
  return value instanceof Date ? value : new Date(String(value));
}

/** A {@linkcode ReaderHold} for a log record: dates as ISO text, which any logger can print. */
function holdFields(hold: ReaderHold): Record<string, unknown> {
  return {
    ...hold,
    transactionStart: hold.transactionStart?.toISOString(),
    queryStart: hold.queryStart?.toISOString(),
  };
}

/** What the watch needs of its store. */
export interface HeldBackContext {
  /** The store's statements' context: instance, preparation, timeouts, log. */
  readonly query: QueryContext;
  /** The schema's {@linkcode HeldBackStatements}. */
  readonly statements: HeldBackStatements;
  /** `options.heldBackThreshold`: 0 turns the watch off. */
  readonly thresholdMs: number;
  /**
   * Sends a statement when a connection of the store's pool is free for it,
   * so that the watch never queues behind, or pipelines ahead of, the
   * application's statements.
   */
  withConnection<T>(send: () => Promise<T>): Promise<T>;
  /** The store's calls in flight, which `close()` lets finish. */
  readonly inFlight: Set<Promise<unknown>>;
}

/** When a hidden event was first seen hidden. */
interface Observation {
  readonly position: bigint;
  readonly at: number;
}

/**
 * Watches, while readers are active, whether committed events stay hidden
 * from them, and logs a `warn` record naming what holds them once one has
 * stayed hidden for the threshold; again every {@linkcode REPEAT_FACTOR}
 * thresholds while it lasts; and an `info` record once they caught up.
 *
 * About once a second (more often for a threshold under 2 s) it reads the
 * highest committed position and `readAll`'s bound (the highest position it
 * returns). A position seen past the bound is hidden; it stays hidden for as
 * long as later bounds do not reach it. So the hold is timed from when an event still hidden now was
 * first seen hidden, not from the last look: appends in flight, which hide
 * the events of a few milliseconds, never add up to a warning.
 */
export class HeldBackWatch {
  readonly #context: HeldBackContext;
  readonly #intervalMs: number;
  /** Hidden positions seen, increasing, each with when it was first seen. */
  #seen: Observation[] = [];
  #lastRead = Number.NEGATIVE_INFINITY;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #checking: Promise<void> | undefined;
  /** When the last warning of the hold in progress was logged. */
  #warnedAt: number | undefined;
  /** Since when the hold warned about has lasted. */
  #heldSince = 0;
  #closed = false;

  /** @param context The store's instance, statements, threshold and pool. */
  constructor(context: HeldBackContext) {
    this.#context = context;
    this.#intervalMs = Math.min(
      1_000,
      Math.max(100, context.thresholdMs / 2),
    );
  }

  /**
   * Says that a reader called `readAll`: starts the checks, unless they
   * run already. Costs a clock read.
   */
  readerActive(): void {
    if (this.#context.thresholdMs === 0 || this.#closed) return;
    this.#lastRead = Date.now();
    if (this.#timer === undefined && this.#checking === undefined) {
      this.#schedule();
    }
  }

  /**
   * How far `readAll` lags now (see {@linkcode readLag}), for the store's
   * `readAllLag()`, which runs it as an operation of its own.
   */
  lag(): Promise<ReadAllLag> {
    return readLag(this.#context.query, this.#context.statements);
  }

  /**
   * Stops the checks and waits for one in flight, at most
   * {@linkcode CLOSE_WAIT_MS} (a pool the store opened also lets it finish
   * before it ends). Never throws.
   */
  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#checking === undefined) return;
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      this.#checking,
      new Promise((resolve) => timer = setTimeout(resolve, CLOSE_WAIT_MS)),
    ]);
    clearTimeout(timer);
  }

  #schedule(): void {
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#tick();
    }, this.#intervalMs);
    unrefTimer(this.#timer);
  }

  #tick(): void {
    // Without readers nobody is held back: the next readAll starts again.
    if (this.#closed || Date.now() - this.#lastRead > ACTIVE_MS) return;
    const { inFlight, query } = this.#context;
    const checking = this.#check().catch((error) => {
      if (this.#closed) return;
      query.log("debug", "Cannot check whether readers are held back", {
        error: error instanceof Error ? error.message : String(error),
      });
    }).finally(() => {
      inFlight.delete(checking);
      this.#checking = undefined;
      if (!this.#closed && Date.now() - this.#lastRead <= ACTIVE_MS) {
        this.#schedule();
      }
    });
    this.#checking = checking;
    inFlight.add(checking);
  }

  async #check(): Promise<void> {
    const { query, statements, thresholdMs } = this.#context;
    const [row] = await this.#context.withConnection(() =>
      read(
        query,
        () =>
          query.sql.unsafe(statements.check, [], { prepare: query.prepare }),
      )
    );
    const now = Date.now();
    this.#observe(
      row.head === null ? undefined : BigInt(row.head),
      BigInt(row.last),
      now,
    );
    const heldForMs = this.#seen.length === 0 ? 0 : now - this.#seen[0].at;
    if (heldForMs < thresholdMs) {
      if (this.#warnedAt !== undefined) {
        this.#warnedAt = undefined;
        query.log("info", "Readers caught up", {
          heldForMs: now - this.#heldSince,
        });
      }
      return;
    }
    if (
      this.#warnedAt !== undefined &&
      now - this.#warnedAt < thresholdMs * REPEAT_FACTOR
    ) {
      return;
    }
    const first = this.#warnedAt === undefined;
    if (first) this.#heldSince = this.#seen[0].at;
    this.#warnedAt = now;
    if (!await this.#warn(heldForMs) && first) this.#warnedAt = undefined;
  }

  /**
   * Forgets positions readers can have now (up to `last`, inclusive); notes
   * a new hidden head.
   */
  #observe(head: bigint | undefined, last: bigint, now: number): void {
    let released = 0;
    while (
      released < this.#seen.length && this.#seen[released].position <= last
    ) {
      released++;
    }
    if (released > 0) this.#seen = this.#seen.slice(released);
    if (
      head !== undefined && head > last &&
      (this.#seen.length === 0 || head > this.#seen.at(-1)!.position)
    ) {
      this.#seen.push({ position: head, at: now });
      if (this.#seen.length > MAX_OBSERVATIONS) {
        // Every other one, keeping the oldest and the newest.
        this.#seen = this.#seen.filter((_, index) =>
          index % 2 === 0 || index === this.#seen.length - 1
        );
      }
    }
  }

  /**
   * Names what holds readers back: the lag, read through a free connection.
   * Returns whether it warned: not when the hold ended meanwhile.
   */
  async #warn(heldForMs: number): Promise<boolean> {
    const { query, statements, thresholdMs } = this.#context;
    const fields: Record<string, unknown> = {
      heldForMs,
      thresholdMs,
    };
    try {
      const lag = await this.#context.withConnection(() =>
        readLag(query, statements)
      );
      if (lag.hiddenEvents === 0) return false;
      Object.assign(fields, {
        hiddenEvents: lag.hiddenEvents,
        headPosition: String(lag.headPosition),
        readablePosition: String(lag.readablePosition),
        holders: lag.heldBy.map(holdFields),
      });
      if (
        lag.heldBy.some((hold) =>
          hold.kind === "transaction" && hold.transactionStart === undefined
        )
      ) {
        fields.hint =
          "PostgreSQL shows other roles' sessions without their times unless the store's role has pg_read_all_stats (GRANT pg_read_all_stats TO <role>)";
      }
    } catch (error) {
      // The warning stands without its details.
      fields.holdersError = error instanceof Error
        ? error.message
        : String(error);
    }
    if (this.#closed) return false;
    query.log("warn", "Readers are held back by an open transaction", fields);
    return true;
  }
}

/** Lets the process exit while a timer is pending: in Deno and in Node. */
function unrefTimer(timer: ReturnType<typeof setTimeout>): void {
  if (typeof timer === "number") {
    globalThis.Deno?.unrefTimer(timer);
  } else {
    (timer as { unref?: () => void }).unref?.();
  }
}
