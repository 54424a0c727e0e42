/**
 * The PostgreSQL store's statements, written once per schema, and the array
 * type OIDs its parameters need.
 *
 * Every statement binds its values as parameters; only the schema name,
 * checked and quoted by `quoteSchema`, is part of the text. Result columns
 * are aliased to single lower-case words so that an application's
 * postgres.js column transform (e.g. camel case) cannot rename them.
 * Private to the package.
 *
 * @module
 */

import { Buffer } from "node:buffer";

/**
 * An array parameter as PostgreSQL's array literal, `{"a","b"}`, built here
 * rather than by postgres.js. postgres.js serializes an array parameter only
 * once it has fetched the server's array types, which each new connection
 * does first; but a query pipelined onto a connection still fetching them is
 * built before they arrive, and its array goes out as `a,b` ("malformed
 * array literal", seen intermittently on the first appends of a new pool).
 * A string parameter needs no serializer: the server parses the literal as
 * the statement's declared array type (`$2::uuid[]`).
 *
 * @param values Each element's text (not null).
 */
export function arrayLiteral(values: readonly string[]): string {
  let literal = "{";
  for (let index = 0; index < values.length; index++) {
    if (index > 0) literal += ",";
    literal += `"${
      values[index].replaceAll("\\", "\\\\").replaceAll('"', '\\"')
    }"`;
  }
  return literal + "}";
}

/** A `bigint[]` parameter as an array literal, `NULL` for null elements. */
export function bigintArrayLiteral(values: readonly (number | null)[]): string {
  return `{${
    values.map((value) => value === null ? "NULL" : String(value)).join(",")
  }}`;
}

/** A `boolean[]` parameter as an array literal. */
export function booleanArrayLiteral(values: readonly boolean[]): string {
  return `{${values.map((value) => value ? "t" : "f").join(",")}}`;
}

/**
 * A `bytea[]` parameter as an array literal of hex elements (`\\x…`), the
 * text form postgres.js would send for each element too.
 */
export function byteaArrayLiteral(values: readonly Uint8Array[]): string {
  let literal = "{";
  for (let index = 0; index < values.length; index++) {
    if (index > 0) literal += ",";
    const bytes = values[index];
    literal += `"\\\\x${
      Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString(
        "hex",
      )
    }"`;
  }
  return literal + "}";
}

/**
 * Events one transaction can append: a position is the transaction's id plus
 * the offset of migration 007 (`position_offset()`, 0 until a restore into
 * another cluster), shifted left by 20 bits, plus the event's index in the
 * transaction.
 */
export const POSITIONS_PER_TRANSACTION = 2 ** 20;

/**
 * The first transaction id plus offset whose positions would not fit: 2^43.
 * Shifted left by 20 bits it is 2^63, past the largest bigint, and
 * PostgreSQL's `<<` wraps silently to negative numbers. The positions of
 * `2^43 − 1` run up to exactly 2^63 − 1. Migration 008 knows it too.
 */
export const POSITIONS_END = "8796093022208";

/** The statements of a store whose tables live in `schema` (quoted). */
export interface Statements {
  /**
   * The schema, quoted: for the statements built per call, the binary
   * COPY reads of `copy_read.ts`.
   */
  schema: string;
  /**
   * Appends a batch in one round trip. Reads the stream's version, checks
   * the expectation, looks for the batch's ids in the stream (when `$8`),
   * and inserts every event from arrays in the same statement, unless the
   * expectation failed or an id is stored already. Parameters: `$1` stream
   * id, `$2` ids (uuid[]), `$3` types (text[]), `$4` data (bytea[]), `$5`
   * metadata (JSON text[]), `$6` the exact version required (null: any),
   * `$7` whether the stream must exist, `$8` whether to look for the ids
   * (only the caller's ids can be stored already). One row: `previous` (the
   * version read), `position` (the last inserted global position, null when
   * nothing was inserted), and where the stream holds any of the ids:
   * `storedids`, `storedversions` (JSON arrays, null when none) and `storedposition`
   * (the position of the highest of them); `ahead`, true when stored
   * positions lie beyond this cluster's transaction ids (a restore into
   * another cluster, before `migrate()`), and nothing was inserted;
   * `exhausted`, true when this transaction's positions would pass the
   * largest bigint (see `POSITIONS_END`), and nothing was inserted. Two
   * writers that read the same version collide on the primary key (23505).
   */
  append: string;
  /**
   * The same for a single event, with plain parameters instead of arrays:
   * `$2` id, `$3` type, `$4` data, `$5` metadata, `$6` and `$7`
   * as in `append`. Most appends carry one event, and the arrays cost their
   * serialization and an `unnest`.
   */
  appendOne: string;
  /**
   * The common append, lean: one event, no ids to look for. A plain
   * `INSERT … SELECT` (no CTE, no aggregates around it) with the same
   * checks as `appendOne` (`$1`–`$7` as there): the expectation, `ahead`
   * and `exhausted` in its WHERE. One row (`position`, `version`) when it
   * inserted, none otherwise: then `appendOne` says why (or appends, if
   * the stream moved meanwhile). Measured with `pgbench -M prepared` on a
   * durable cluster: about 1.2× the rate of `appendOne` at 1 client and
   * 1.5× at 16 (docs/design.md).
   */
  appendOneLean: string;
  /**
   * The common append of a command handler, leaner still: one event, no ids
   * to look for, an exact expected version `$6` (0: a new stream). `$1`–`$5`
   * as in `appendOne`. It reads no version: for `$6` > 0 it checks that
   * version `$6` exists (one probe of the primary key), and the insert of
   * version `$6 + 1` itself refuses a stream that has moved on (23505 on
   * `events_pkey`, as when two writers race), so with no gaps in versions
   * the stream is at `$6` exactly when it inserts. One row (`position`,
   * `version`) when it inserted, none when version `$6` is missing, stored
   * positions are `ahead` or positions `exhausted`: then `appendOne` says
   * why. Measured with pg_stat_statements on one cluster, the same runs:
   * about 10 µs over a plain 1-row INSERT's 35–40 µs, where
   * `appendOneLean` took 40 µs over it (docs/design.md).
   */
  appendOneExact: string;
  /**
   * Single-event appends to different streams, coalesced into one statement
   * (one transaction, one commit), each checked on its own terms. Parameters
   * are arrays, one element per append: `$1` stream ids, `$2` event ids,
   * `$3` types, `$4` data, `$5` metadata, `$6` exact versions (null: any),
   * `$7` whether the stream must exist, `$8` whether to look for its id in
   * the stream (the caller's ids). One row per append, in order: `previous`
   * (the version read), `position` (null when its expectation failed or its
   * id is stored, and nothing of it was inserted), `storedversion` and
   * `storedposition` (where the stream holds its id, null when not), and
   * `ahead`/`exhausted` as in `append` (then nothing at all was inserted). The streams must be
   * distinct: each append's version is read before any is inserted.
   */
  appendGroup: string;
  /**
   * A group of single-event appends that all expect an exact version and
   * look for no ids, leaner: `$1` stream ids (distinct), `$2` event ids,
   * `$3` types, `$4` data, `$5` metadata, `$6` exact versions (0: a new
   * stream). Like `appendOneExact` per append: it inserts version `$6 + 1`
   * where version `$6` exists (or `$6` is 0), and `ON CONFLICT DO NOTHING`
   * skips an append whose stream moved on instead of failing the group. One
   * row (`stream`, `position`) per append inserted, in no order; an append
   * without one was not inserted (its version is missing or taken, or
   * positions are `ahead` or `exhausted`, which leave out all of them): it
   * runs again alone, to say why. Rows are inserted in stream order, so
   * two groups that share streams wait for each other rather than
   * deadlock.
   */
  appendGroupExact: string;
  /** `$1` stream id, `$2` first version, `$3` limit (null: all). */
  load: string;
  /**
   * Events of every stream in global order. `$1` after this position, `$2`
   * limit (null: all), `$3` types (null: all), `$4` category (null: all).
   * Only positions below (the snapshot's xmin + the offset) << 20 are
   * returned: every transaction with a lower id has ended, so no position
   * below them can still appear; a later one may still be preceded by a
   * commit. Once xmin + offset reaches `POSITIONS_END` that bound would
   * wrap negative; every position that can exist lies below it then, so
   * the bound becomes the largest bigint, inclusive.
   */
  readAll: string;
  /**
   * `readAll` without its filters: `$1` after this position, `$2` limit.
   * A generic plan of `readAll` cannot tell what its `$3 IS NULL OR …`
   * filters keep, estimates one row, and scans the whole range for a
   * bitmap and a sort; with no filter its estimate holds.
   */
  readAllUnfiltered: string;
  /**
   * The highest global position stored (`head`, null when none): one
   * backward probe of the position index, for the watch that wakes
   * subscribers when another process appended (`notify.ts`).
   */
  head: string;
  /** `$1` projection name; zero or one row with `position`. */
  projectionPosition: string;
  /** `$1` projection name, `$2` position: saves it. */
  saveProjectionPosition: string;
  /**
   * `$1` projection name: forgets its position, after any batch in flight
   * (under the same lock), through the function of migration 005.
   */
  resetProjection: string;
  /**
   * `$1` projection name: a transaction lock, one batch of a name at a
   * time. One row, with `in_recovery` and `read_only` as in `readOnly`:
   * the batch's own transaction says whether it could commit, before the
   * handler runs.
   */
  lockProjection: string;
  /**
   * No parameters. One row: `in_recovery` (a hot standby) and `read_only`
   * (this transaction's `transaction_read_only`, which follows
   * `default_transaction_read_only`), booleans.
   */
  readOnly: string;
  /** `$1` stream id; one row with `version`. */
  streamVersion: string;
  /**
   * Upserts a snapshot unless the stored one is newer, only when the stream
   * has reached `$2`. `$1` stream id, `$2` version, `$3` state. One row:
   * the stream's `version`.
   */
  saveSnapshot: string;
  /** `$1` stream id; zero or one row. */
  loadSnapshot: string;
}

/**
 * Whether the server would refuse a write, as `in_recovery` and
 * `read_only`: a standby's transactions are read-only too, but saying which
 * of the two it is tells the reader what to change.
 */
const READ_ONLY_COLUMNS = `pg_is_in_recovery() AS in_recovery,
        current_setting('transaction_read_only')::boolean AS read_only`;

/**
 * Writes the statements for one schema.
 *
 * @param schema The schema, already checked and double-quoted.
 */
export function statementsFor(schema: string): Statements {
  const events = `${schema}.events`;
  const snapshots = `${schema}.snapshots`;
  return {
    schema,
    append: appendWith(
      schema,
      `SELECT current.base + batch.ordinality,
              $1, current.version + batch.ordinality, batch.event_id,
              batch.event_type, batch.data, batch.metadata::jsonb
       FROM current,
            unnest($2::uuid[], $3::text[], $4::bytea[], $5::text[])
              WITH ORDINALITY AS batch(event_id, event_type, data, metadata, ordinality)`,
      "ORDER BY batch.ordinality",
      "event_id = ANY ($2::uuid[])",
    ),
    appendOne: appendWith(
      schema,
      `SELECT current.base + 1,
              $1, current.version + 1, $2::uuid, $3::text, $4::bytea,
              $5::text::jsonb
       FROM current`,
      "",
      "event_id = $2::uuid",
    ),
    appendOneLean: `
      INSERT INTO ${events}
        (global_position, stream_id, version, event_id, event_type, data, metadata)
      SELECT (ids.transaction << 20) + 1, $1, current.version + 1, $2::uuid,
             $3::text, $4::bytea, $5::text::jsonb
      FROM (SELECT coalesce(max(version), 0) AS version FROM ${events}
            WHERE stream_id = $1) AS current,
           ${currentIds(schema)} AS ids
      WHERE ($6::bigint IS NULL OR current.version = $6::bigint)
        AND (current.version > 0 OR NOT $7::boolean)
        AND ids.transaction < ${POSITIONS_END}
        AND NOT ${aheadOf(events, "ids.horizon")}
      RETURNING global_position AS position, version`,
    appendOneExact: `
      INSERT INTO ${events}
        (global_position, stream_id, version, event_id, event_type, data, metadata)
      SELECT (ids.transaction << 20) + 1, $1, $6::bigint + 1, $2::uuid,
             $3::text, $4::bytea, $5::text::jsonb
      FROM ${currentIds(schema)} AS ids
      WHERE ($6::bigint = 0 OR EXISTS (
              SELECT FROM ${events} WHERE stream_id = $1 AND version = $6::bigint))
        AND ids.transaction < ${POSITIONS_END}
        AND NOT ${aheadOf(events, "ids.horizon")}
      RETURNING global_position AS position, version`,
    appendGroup: `
      WITH batch AS (
        SELECT b.*,
               (SELECT coalesce(max(version), 0) FROM ${events} AS e
                WHERE e.stream_id = b.stream_id) AS version,
               stored.version AS stored_version,
               stored.global_position AS stored_position
        FROM unnest($1::text[], $2::uuid[], $3::text[], $4::bytea[],
                    $5::text[], $6::bigint[], $7::boolean[], $8::boolean[])
               WITH ORDINALITY
               AS b(stream_id, event_id, event_type, data, metadata, exact,
                    must_exist, look, ordinality)
             -- Only for the caller's ids: the event, if the stream has it.
             LEFT JOIN LATERAL (
               SELECT e.version, e.global_position FROM ${events} AS e
               WHERE b.look AND e.stream_id = b.stream_id
                 AND e.event_id = b.event_id
               LIMIT 1) AS stored ON true
      ), ids AS (
        SELECT transaction, transaction >= ${POSITIONS_END} AS exhausted,
               ${aheadOf(events, "horizon")} AS ahead
        FROM ${currentIds(schema)} AS x
      ), accepted AS (
        SELECT batch.*, row_number() OVER (ORDER BY batch.ordinality) AS k
        FROM batch, ids
        WHERE (batch.exact IS NULL OR batch.version = batch.exact)
          AND (batch.version > 0 OR NOT batch.must_exist)
          AND batch.stored_version IS NULL
          AND NOT ids.exhausted AND NOT ids.ahead
      ), inserted AS (
        INSERT INTO ${events}
          (global_position, stream_id, version, event_id, event_type, data, metadata)
        SELECT (ids.transaction << 20) + accepted.k, accepted.stream_id,
               accepted.version + 1, accepted.event_id, accepted.event_type,
               accepted.data, accepted.metadata::jsonb
        FROM accepted, ids
        ORDER BY accepted.k
        RETURNING stream_id, global_position
      )
      SELECT batch.version AS previous, inserted.global_position AS position,
             batch.stored_version AS storedversion,
             batch.stored_position AS storedposition,
             ids.ahead AS ahead, ids.exhausted AS exhausted
      FROM batch CROSS JOIN ids
           LEFT JOIN inserted ON inserted.stream_id = batch.stream_id
      ORDER BY batch.ordinality`,
    appendGroupExact: `
      INSERT INTO ${events}
        (global_position, stream_id, version, event_id, event_type, data, metadata)
      SELECT (ids.transaction << 20) + b.ordinality, b.stream_id, b.exact + 1,
             b.event_id, b.event_type, b.data, b.metadata::jsonb
      FROM ${currentIds(schema)} AS ids,
           unnest($1::text[], $2::uuid[], $3::text[], $4::bytea[],
                  $5::text[], $6::bigint[])
             WITH ORDINALITY
             AS b(stream_id, event_id, event_type, data, metadata, exact,
                  ordinality)
      WHERE ids.transaction < ${POSITIONS_END}
        AND NOT ${aheadOf(events, "ids.horizon")}
        -- A scalar subquery, not EXISTS: the planner cannot turn it into a
        -- join, which for an unnest it may do with a scan of the table.
        AND (b.exact = 0 OR (SELECT true FROM ${events} AS e
                             WHERE e.stream_id = b.stream_id
                               AND e.version = b.exact LIMIT 1))
      ORDER BY b.stream_id
      ON CONFLICT ON CONSTRAINT events_pkey DO NOTHING
      RETURNING stream_id AS stream, global_position AS position`,
    load: `
      SELECT event_id AS id, version, global_position AS position,
             event_type AS type, encode(data, 'base64') AS data,
             metadata::text AS metadata,
             created_at AS created
      FROM ${events}
      WHERE stream_id = $1 AND version >= $2::bigint
      ORDER BY version
      LIMIT $3::bigint`,
    readAll: readAllWith(
      schema,
      `AND ($3::text[] IS NULL OR event_type = ANY ($3::text[]))
        AND ($4::text IS NULL OR split_part(stream_id, '-', 1) = $4::text)`,
    ),
    readAllUnfiltered: readAllWith(schema, ""),
    head: `SELECT max(global_position) AS head FROM ${events}`,
    projectionPosition: `
      SELECT position FROM ${schema}.projection_checkpoints WHERE name = $1`,
    saveProjectionPosition: `
      INSERT INTO ${schema}.projection_checkpoints (name, position)
      VALUES ($1, $2::bigint)
      ON CONFLICT (name) DO UPDATE
        SET position = excluded.position, updated_at = now()`,
    resetProjection: `SELECT ${schema}.reset_projection($1)`,
    lockProjection: `
      SELECT pg_advisory_xact_lock(hashtextextended(
        'deno-eventstore projection ${schema.slice(1, -1)} ' || $1, 0)),
        ${READ_ONLY_COLUMNS}`,
    readOnly: `SELECT ${READ_ONLY_COLUMNS}`,
    streamVersion: `
      SELECT coalesce(max(version), 0) AS version
      FROM ${events} WHERE stream_id = $1`,
    saveSnapshot: `
      WITH current AS (
        SELECT coalesce(max(version), 0) AS version
        FROM ${events} WHERE stream_id = $1
      ), saved AS (
        INSERT INTO ${snapshots} AS stored (stream_id, version, state)
        SELECT $1, $2::bigint, $3::bytea FROM current
        WHERE current.version >= $2::bigint
        ON CONFLICT (stream_id) DO UPDATE
          SET version = excluded.version, state = excluded.state,
              created_at = excluded.created_at
          WHERE stored.version <= excluded.version
      )
      SELECT version FROM current`,
    loadSnapshot: `
      SELECT version, encode(state, 'base64') AS state,
             created_at AS created
      FROM ${snapshots} WHERE stream_id = $1`,
  };
}

/**
 * This transaction's id (`transaction`) and its snapshot's xmax
 * (`horizon`), each plus the offset of migration 007: a subquery for the
 * append statements' FROM. The id is assigned here, after the statement's
 * snapshot was taken.
 */
function currentIds(schema: string): string {
  return `(SELECT pg_current_xact_id()::text::bigint
                 + ${schema}.position_offset() AS transaction,
               pg_snapshot_xmax(pg_current_snapshot())::text::bigint
                 + ${schema}.position_offset() AS horizon)`;
}

/**
 * `readAll`'s statement with `filters` (SQL on `$3`, `$4`, or nothing).
 *
 * Its range is written so that the planner reads the position index in
 * order whatever the statistics say, and stops after the limit. Positions
 * are sparse (a transaction's id shifted left by 20 bits), so a range past
 * recent appends, beyond what `ANALYZE` saw, was estimated at a few rows;
 * the planner then chose a bitmap scan of the whole range and a sort, and
 * a first page of 100 cost as much as reading 10,000 (15 ms). The lower
 * bound is a subquery, and the upper one an `<= ANY (ARRAY[…])` bound, so
 * that neither is estimated from the statistics nor the two as one range
 * (whose default estimate is 0.5%); the EXPLAIN tests hold the plan.
 * The limit is a subquery too: then no value of a call changes the plan,
 * PostgreSQL keeps the generic one after five calls, and a read is not
 * planned again each time (a 1-event `readAll` took 425–595 µs planned
 * each call, 288–346 µs with the generic plan).
 */
function readAllWith(schema: string, filters: string): string {
  return `
      SELECT event_id AS id, stream_id AS stream, version,
             global_position AS position, event_type AS type,
             encode(data, 'base64') AS data,
             metadata::text AS metadata, created_at AS created
      FROM ${schema}.events
      WHERE global_position > (SELECT $1::bigint)
        AND global_position <= ANY (ARRAY[${readableEnd(schema)}])
        ${filters}
      ORDER BY global_position
      LIMIT (SELECT $2::bigint)`;
}

/**
 * The highest position `readAll` may return: every position below the
 * first of the oldest transaction still running (its xmin, plus the offset
 * of migration 007), so that no event that commits later can appear below
 * one already returned. Shared by the prepared read and its binary COPY
 * (`copy_read.ts`).
 */
export function readableEnd(schema: string): string {
  return `(
          SELECT CASE WHEN horizon < ${POSITIONS_END}
                      THEN (horizon << 20) - 1
                      ELSE 9223372036854775807 END
          FROM (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint
                         + ${schema}.position_offset() AS horizon) AS snapshot)`;
}

/**
 * Whether a stored position lies at or beyond the positions of `horizon`
 * (the snapshot's xmax plus the offset), which no transaction of this
 * cluster can have written: a database restored into another cluster
 * (see `appendWith`).
 *
 * A forward probe of `events_global_position_idx` from the horizon's first
 * position, which on a healthy cluster finds nothing, so it reads no heap
 * page: 10–20 µs less per append than the last entry's `max()`, measured
 * with pg_stat_statements (docs/design.md). `ORDER BY … LIMIT 1` rather
 * than `EXISTS`: the planner cannot estimate the bound, and for an EXISTS it
 * may choose a sequential scan, expecting a match among the first rows (it
 * did once: W1 fell to 0.08 of its baseline), while here any plan but the
 * index would have to read and sort the whole table.
 */
function aheadOf(events: string, horizon: string): string {
  return `(${horizon} < ${POSITIONS_END} AND
           (SELECT global_position FROM ${events}
            WHERE global_position >= (${horizon} << 20)
            ORDER BY global_position LIMIT 1) IS NOT NULL)`;
}

/**
 * The append statement around the rows it inserts: read the stream's
 * version and, when `$8`, the stream's events whose id `idMatch`es one of
 * the batch's; insert `rows` (a SELECT from `current`) only when `$6`/`$7`
 * hold, no id is stored, no stored position is `ahead` and positions are
 * not `exhausted`; report the version read, the last position inserted, the
 * ids found, `ahead` and `exhausted`.
 *
 * Reading the ids and inserting in one statement is safe under READ
 * COMMITTED: a repeat that runs while the first append is still
 * uncommitted cannot see its ids, but reads the same stream version, so its
 * insert collides with the first on the primary key and waits for it; the
 * store then runs the statement again, which sees the committed ids.
 *
 * `ahead`: whether a stored position lies at or beyond the positions of the
 * snapshot's xmax, which no transaction of this cluster can have written
 * (none with an id that high had started; and once xmax + offset is past
 * `POSITIONS_END`, no position lies beyond them): a database restored into
 * another cluster, whose transaction ids start lower, until
 * `realign_positions()` (migration 007, run by `migrate()`) raises the
 * offset. An append then writes nothing rather than a position below stored
 * ones. One forward probe of `events_global_position_idx` ({@linkcode aheadOf}).
 *
 * The append is its own transaction (one statement), so its transaction id
 * is assigned after its snapshot was taken: no row of its own or of a later
 * transaction is visible, the first position is `base + 1`, and the id is at
 * least the snapshot's xmax, so `ahead` is never true on a healthy cluster.
 *
 * `exhausted`: whether this transaction's id plus the offset has reached
 * `POSITIONS_END`, past which its positions would wrap to negative numbers.
 * Arithmetic on the ids the statement reads anyway: no probe. `base` is
 * null then, and nothing is inserted.
 */
function appendWith(
  schema: string,
  rows: string,
  order: string,
  idMatch: string,
): string {
  const events = `${schema}.events`;
  return `
    WITH current AS (
      SELECT (SELECT coalesce(max(version), 0) FROM ${events}
              WHERE stream_id = $1) AS version,
             CASE WHEN ids.transaction < ${POSITIONS_END}
                  THEN ids.transaction << 20 END AS base,
             ids.transaction >= ${POSITIONS_END} AS exhausted,
             ${aheadOf(events, "ids.horizon")} AS ahead
      FROM ${currentIds(schema)} AS ids
    ), stored AS (
      -- Only for the caller's ids: a scan of the stream's rows.
      SELECT event_id::text AS id, version, global_position
      FROM ${events}
      WHERE $8::boolean AND stream_id = $1 AND ${idMatch}
    ), appended AS (
      INSERT INTO ${events}
        (global_position, stream_id, version, event_id, event_type, data, metadata)
      ${rows}
      WHERE ($6::bigint IS NULL OR current.version = $6::bigint)
        AND (current.version > 0 OR NOT $7::boolean)
        AND NOT current.ahead
        AND NOT current.exhausted
        AND NOT EXISTS (SELECT FROM stored)
      ${order}
      RETURNING global_position
    )
    SELECT current.version AS previous,
           (SELECT max(global_position) FROM appended) AS position,
           -- JSON, not arrays: the store's pools do not fetch the server's
           -- array types (connection.ts), and JSON needs none.
           (SELECT json_agg(id ORDER BY version) FROM stored) AS storedids,
           (SELECT json_agg(version ORDER BY version) FROM stored)
             AS storedversions,
           (SELECT max(global_position) FROM stored) AS storedposition,
           current.ahead AS ahead,
           current.exhausted AS exhausted
    FROM current`;
}
