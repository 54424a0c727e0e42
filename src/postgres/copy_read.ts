/**
 * Reads of many events by binary COPY: `COPY (SELECT …) TO STDOUT (FORMAT
 * binary)`, whose rows `binary_rows.ts` parses from PostgreSQL's binary
 * encoding. Used for what a read returns past its first
 * {@linkcode COPY_AFTER} events (read.ts): a 10,000-event load or catch-up
 * then pays none of postgres.js' per-column text parsing, and a short read
 * keeps its prepared statement (docs/performance.md has both measured).
 * Private to the package.
 *
 * COPY takes no parameters, so its values are in the statement's text:
 * strings quoted by {@linkcode quoteLiteral} (its tests give it hostile
 * input), numbers written from checked integers; nothing else is
 * concatenated but the quoted schema.
 *
 * @module
 */

import type { RecordedEvent } from "../event_store.ts";
import type { ReadAllRange } from "../_input.ts";
import { BinaryEventRows } from "./binary_rows.ts";
import type { QueryContext } from "./read.ts";
import { readableEnd } from "./statements.ts";

/**
 * Reads that may return more events than this go on by binary COPY after
 * their first this-many, which the prepared statement returns: below about
 * 100 events a COPY (parsed and planned anew, sent by the simple protocol)
 * is no faster, and a 1-event load must not get slower.
 */
export const COPY_AFTER = 100;

/**
 * A string as an SQL literal, `E'…'`: backslashes and quotes doubled, which
 * reads the same whatever `standard_conforming_strings` says. UTF-8 has no
 * multi-byte sequence holding either byte, so nothing else can end it.
 *
 * @throws {TypeError} The string holds a NUL, which no PostgreSQL text can
 *   (the store's checks refuse it before a statement is built).
 */
export function quoteLiteral(value: string): string {
  if (value.includes("\0")) {
    throw new TypeError("an SQL literal cannot hold a NUL character");
  }
  return `E'${value.replaceAll("\\", "\\\\").replaceAll("'", "''")}'`;
}

/** A checked integer as SQL text; anything else is refused. */
function integer(value: number | bigint): string {
  if (typeof value === "number" && !Number.isSafeInteger(value)) {
    throw new TypeError(`not an integer: ${value}`);
  }
  return `${BigInt(value)}::bigint`;
}

/** `LIMIT n`, or nothing for no limit. */
function limit(maxCount: number): string {
  return Number.isFinite(maxCount) ? `LIMIT ${integer(maxCount)}` : "";
}

/** The binary COPY of a stream's events from `fromVersion` on. */
export function copyLoad(
  schema: string,
  streamId: string,
  fromVersion: number,
  maxCount: number,
): string {
  return `COPY (
      SELECT event_id, version, global_position, event_type, data,
             metadata::text, created_at
      FROM ${schema}.events
      WHERE stream_id = ${quoteLiteral(streamId)}
        AND version >= ${integer(fromVersion)}
      ORDER BY version
      ${limit(maxCount)}) TO STDOUT (FORMAT binary)`;
}

/** The binary COPY of `readAll`'s events in `range`: its prepared read's rows. */
export function copyReadAll(schema: string, range: ReadAllRange): string {
  const { fromPosition, maxCount, types, category } = range;
  const typeFilter = types === undefined
    ? ""
    : `AND event_type = ANY (ARRAY[${
      types.map(quoteLiteral).join(", ")
    }]::text[])`;
  const categoryFilter = category === undefined
    ? ""
    : `AND split_part(stream_id, '-', 1) = ${quoteLiteral(category)}`;
  return `COPY (
      SELECT event_id, stream_id, version, global_position, event_type, data,
             metadata::text, created_at
      FROM ${schema}.events
      WHERE global_position > (SELECT ${integer(fromPosition)})
        -- Written as the prepared read's range is (statements.ts
        -- readAllWith): an index scan in order, whatever the statistics.
        AND global_position <= ANY (ARRAY[${readableEnd(schema)}])
        ${typeFilter}
        ${categoryFilter}
      ORDER BY global_position
      ${limit(maxCount)}) TO STDOUT (FORMAT binary)`;
}

/**
 * Runs a binary COPY of events and parses its rows as they arrive. Settles
 * once the COPY ended: with its events, or with the first error (of the
 * server, of the connection, or of a row that did not decode; the rest of
 * the rows is read and dropped, so the connection is free again after).
 *
 * The stream is consumed in flowing mode (`data` events): on Deno, reading
 * postgres.js' copy-out stream with `for await` can hang the connection's
 * next query.
 *
 * @param streamId The stream of every row, when the COPY selects no
 *   `stream_id` (`copyLoad`).
 */
export function copyEvents<D>(
  context: QueryContext,
  text: string,
  streamId?: string,
): Promise<RecordedEvent<D>[]> {
  const query = context.sql.unsafe(text);
  const rows = new BinaryEventRows<D>(context.codec, streamId);
  const events = query.readable().then((stream) =>
    new Promise<RecordedEvent<D>[]>((resolve, reject) => {
      let failure: { error: unknown } | undefined;
      stream.on("data", (chunk: Uint8Array) => {
        if (failure !== undefined) return;
        try {
          rows.push(chunk);
        } catch (error) {
          failure = { error };
        }
      });
      stream.on("end", () => {
        resumeSocket(stream);
        if (failure !== undefined) return reject(failure.error);
        try {
          resolve(rows.finish());
        } catch (error) {
          reject(error);
        }
      });
      stream.on("error", (error) => {
        resumeSocket(stream);
        reject(error);
      });
      // Destroyed without an error: the COPY did not end.
      stream.on("close", () => {
        resumeSocket(stream);
        try {
          resolve(rows.finish());
        } catch (error) {
          reject(error);
        }
      });
    })
  );
  // `answer()` cancels a statement past its timeout through the query's
  // canceller: that of the COPY's query, which this promise is not.
  const canceller = (query as unknown as {
    canceller?: (query: unknown) => unknown;
  }).canceller;
  return Object.assign(events, {
    canceller: canceller && (() => canceller(query)),
  });
}

/**
 * Resumes the connection's socket after its COPY ended. postgres.js pauses
 * the socket whenever its copy-out stream's buffer is full, and resumes it
 * only from the stream's `_read()`: rows that arrive before the `data`
 * listener is attached (the stream is handed over a microtask late) fill
 * the buffer, and once the stream has ended nothing calls `_read()` again.
 * The socket then stays paused, and the connection's next query never gets
 * its answer (the race test of copy_read_test.ts hung so). `_read()` is
 * exactly that resume; on a connection already gone it has no socket.
 */
function resumeSocket(stream: { _read?: (size: number) => void }): void {
  try {
    stream._read?.(0);
  } catch {
    // The connection closed: there is no socket to resume.
  }
}
