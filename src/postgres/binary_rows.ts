/**
 * The parser of a binary `COPY … TO STDOUT (FORMAT binary)` of event rows:
 * PostgreSQL's own binary encoding of each column, read straight into the
 * contract's {@linkcode RecordedEvent}s. postgres.js is not involved past
 * handing over the bytes, so none of its per-column text parsing runs
 * (docs/performance.md has what that saves). Private to the package.
 *
 * The columns, in this order (the COPY statements of `copy_read.ts` select
 * them so): `event_id` (uuid), `stream_id` (text; absent when every row is
 * of one known stream), `version` (bigint), `global_position` (bigint),
 * `event_type` (text), `data` (bytea), `metadata::text`, `created_at`
 * (timestamptz).
 *
 * @module
 */

import type { RecordedEvent } from "../event_store.ts";
import { cborCodec, type Codec, decodeCborRange } from "../codec.ts";
import { decodeValue } from "../_input.ts";
import { copyJson } from "../_json.ts";

/** What every binary COPY starts with: `PGCOPY\n\377\r\n\0`. */
const SIGNATURE = [
  0x50,
  0x47,
  0x43,
  0x4f,
  0x50,
  0x59,
  0x0a,
  0xff,
  0x0d,
  0x0a,
  0,
];

/** The signature, the flags field and the header extension's length. */
const HEADER_LENGTH = SIGNATURE.length + 8;

/** PostgreSQL's epoch, 2000-01-01T00:00:00Z, in Unix milliseconds. */
const POSTGRES_EPOCH_MS = 946_684_800_000;

/** The bits of `timestamptz` 'infinity' and '-infinity' (int64 max and min). */
const INFINITE_HIGH = 0x7fffffff;
const MINUS_INFINITE_HIGH = -0x80000000;

const utf8 = new TextDecoder();

/** The hex digits' char codes of a byte's high and low halves, by byte. */
const HIGH_DIGIT = new Uint8Array(256);
const LOW_DIGIT = new Uint8Array(256);
for (let byte = 0; byte < 256; byte++) {
  HIGH_DIGIT[byte] = "0123456789abcdef".charCodeAt(byte >> 4);
  LOW_DIGIT[byte] = "0123456789abcdef".charCodeAt(byte & 15);
}

/** The binary COPY went wrong: a layout the parser does not know. */
export class BinaryCopyError extends Error {
  constructor(problem: string) {
    super(`binary COPY of events: ${problem}`);
    this.name = "BinaryCopyError";
  }
}

/**
 * Turns the chunks of one binary COPY, in order, into events. Chunks may
 * split a row anywhere (postgres.js hands over one row a chunk, but nothing
 * relies on it): what is left of a row waits for the next chunk.
 *
 * @example
 * ```ts ignore
 * const rows = new BinaryEventRows(cborCodec, "order-42");
 * for (const chunk of chunks) rows.push(chunk);
 * const events = rows.finish();
 * ```
 */
export class BinaryEventRows<D = unknown> {
  readonly #codec: Codec;
  readonly #streamId: string | undefined;
  readonly #events: RecordedEvent<D>[] = [];
  /** The bytes of a row that did not end in its chunk. */
  #rest: Uint8Array | undefined;
  #header = true;
  #buffer: ArrayBufferLike | undefined;
  #bytes: Uint8Array<ArrayBufferLike> = new Uint8Array(0);
  #view: DataView<ArrayBufferLike> = new DataView(this.#bytes.buffer);
  #ended = false;
  /** The last text column values, which repeat from row to row. */
  #lastType = new TextCache();
  #lastStream = new TextCache();
  #lastMetadata = new MetadataCache();

  /**
   * @param codec Decodes `data`.
   * @param streamId The stream every row is of, when the COPY selects no
   *   `stream_id` column.
   */
  constructor(codec: Codec, streamId?: string) {
    this.#codec = codec;
    this.#streamId = streamId;
  }

  /** Parses every whole row in `chunk` (and what was left before it). */
  push(chunk: Uint8Array): void {
    if (this.#ended) {
      if (chunk.length === 0) return;
      throw new BinaryCopyError("bytes after the trailer");
    }
    let bytes: Uint8Array<ArrayBufferLike>;
    let view: DataView<ArrayBufferLike>;
    let at: number;
    let end: number;
    if (this.#rest === undefined) {
      // Chunks are slices of the socket's reads, many of one buffer: its
      // view is made once, not per row.
      if (chunk.buffer !== this.#buffer) {
        this.#buffer = chunk.buffer;
        this.#bytes = new Uint8Array(chunk.buffer);
        this.#view = new DataView(chunk.buffer);
      }
      bytes = this.#bytes;
      view = this.#view;
      at = chunk.byteOffset;
      end = at + chunk.byteLength;
    } else {
      bytes = new Uint8Array(this.#rest.length + chunk.length);
      bytes.set(this.#rest);
      bytes.set(chunk, this.#rest.length);
      this.#rest = undefined;
      view = new DataView(bytes.buffer);
      at = 0;
      end = bytes.length;
    }
    if (this.#header) {
      if (end - at < HEADER_LENGTH) {
        this.#rest = bytes.slice(at, end);
        return;
      }
      for (let index = 0; index < SIGNATURE.length; index++) {
        if (bytes[at + index] !== SIGNATURE[index]) {
          throw new BinaryCopyError("no binary COPY signature");
        }
      }
      const extension = view.getInt32(at + SIGNATURE.length + 4);
      if (end - at < HEADER_LENGTH + extension) {
        this.#rest = bytes.slice(at, end);
        return;
      }
      at += HEADER_LENGTH + extension;
      this.#header = false;
    }
    const columns = this.#streamId === undefined ? 8 : 7;
    while (at + 2 <= end) {
      const count = view.getInt16(at);
      if (count === -1) {
        this.#ended = true;
        if (at + 2 !== end) {
          throw new BinaryCopyError("bytes after the trailer");
        }
        return;
      }
      if (count !== columns) {
        throw new BinaryCopyError(`${count} columns, not ${columns}`);
      }
      if (!whole(view, at + 2, end, columns)) break;
      at = this.#row(bytes, view, at + 2);
    }
    if (at < end) this.#rest = bytes.slice(at, end);
  }

  /** The events, once the trailer came; a COPY cut short is an error. */
  finish(): RecordedEvent<D>[] {
    if (!this.#ended) throw new BinaryCopyError("the COPY ended early");
    return this.#events;
  }

  /** Reads one whole row, whose first column starts at `at`. */
  #row(bytes: Uint8Array, view: DataView, at: number): number {
    // Every column is NOT NULL or derived from one: a -1 length is a
    // layout this parser does not know, and fails the length checks.
    fixed(view, at, 16);
    const id = uuid(bytes, at + 4);
    at += 20;
    let streamId = this.#streamId;
    if (streamId === undefined) {
      const length = view.getInt32(at);
      streamId = this.#lastStream.text(bytes, at + 4, at + 4 + length);
      at += 4 + length;
    }
    fixed(view, at, 8);
    const version = view.getInt32(at + 4) * 2 ** 32 + view.getUint32(at + 8);
    at += 12;
    fixed(view, at, 8);
    const globalPosition = view.getBigInt64(at + 4);
    at += 12;
    let length = view.getInt32(at);
    const type = this.#lastType.text(bytes, at + 4, at + 4 + length);
    at += 4 + length;
    length = view.getInt32(at);
    const dataAt = at + 4;
    at = dataAt + length;
    let data: D;
    try {
      // The default codec decodes in place; another is given a view.
      data = (this.#codec === cborCodec
        ? decodeCborRange(bytes, dataAt, at)
        : this.#codec.decode(bytes.subarray(dataAt, at))) as D;
    } catch {
      // Decoded again for the typed error and its label, which are made
      // only when needed: no closure or label per row.
      data = decodeValue(
        this.#codec,
        bytes.subarray(dataAt, at),
        `stream ${JSON.stringify(streamId)} version ${version} data`,
      ) as D;
    }
    length = view.getInt32(at);
    const metadata = this.#lastMetadata.value(bytes, at + 4, at + 4 + length);
    at += 4 + length;
    fixed(view, at, 8);
    const createdAt = timestamp(view, at + 4);
    at += 12;
    this.#events.push({
      id,
      streamId,
      version,
      globalPosition,
      type,
      data,
      metadata,
      createdAt,
    });
    return at;
  }
}

/** Whether the `columns` columns from `at` all end by `end`. */
function whole(
  view: DataView,
  at: number,
  end: number,
  columns: number,
): boolean {
  for (let column = 0; column < columns; column++) {
    if (at + 4 > end) return false;
    const length = view.getInt32(at);
    if (length < 0) throw new BinaryCopyError("a NULL column");
    at += 4 + length;
  }
  return at <= end;
}

/** Checks that the column at `at` has the fixed width of its type. */
function fixed(view: DataView, at: number, width: number): void {
  if (view.getInt32(at) !== width) {
    throw new BinaryCopyError(
      `a column of ${view.getInt32(at)} bytes, not ${width}`,
    );
  }
}

/**
 * A uuid's canonical text (lower case, as PostgreSQL writes it). One call
 * with the 36 char codes as arguments: no array, and about a third of the
 * time of `String.fromCharCode.apply` over one (76-119 ns against 210-250).
 */
function uuid(bytes: Uint8Array, at: number): string {
  const high = (index: number) => HIGH_DIGIT[bytes[at + index]];
  const low = (index: number) => LOW_DIGIT[bytes[at + index]];
  // deno-fmt-ignore
  return String.fromCharCode(
    high(0), low(0), high(1), low(1), high(2), low(2), high(3), low(3), 0x2d,
    high(4), low(4), high(5), low(5), 0x2d,
    high(6), low(6), high(7), low(7), 0x2d,
    high(8), low(8), high(9), low(9), 0x2d,
    high(10), low(10), high(11), low(11), high(12), low(12),
    high(13), low(13), high(14), low(14), high(15), low(15),
  );
}

/**
 * A `timestamptz` (microseconds since 2000, UTC) as the `Date` postgres.js
 * makes of its text: whole milliseconds, the rest dropped (floored, as the
 * text's fraction is cut); 'infinity' and '-infinity' are invalid dates.
 */
function timestamp(view: DataView, at: number): Date {
  const high = view.getInt32(at);
  const low = view.getUint32(at + 4);
  if (
    (high === INFINITE_HIGH && low === 0xffffffff) ||
    (high === MINUS_INFINITE_HIGH && low === 0)
  ) {
    return new Date(NaN);
  }
  // Exact below 2^53 microseconds (285 years from 2000); past it, a bigint.
  const micros = high * 2 ** 32 + low;
  if (Number.isSafeInteger(micros)) {
    return new Date(POSTGRES_EPOCH_MS + Math.floor(micros / 1000));
  }
  const exact = view.getBigInt64(at);
  const millis = exact / 1000n - (exact % 1000n < 0n ? 1n : 0n);
  return new Date(POSTGRES_EPOCH_MS + Number(millis));
}

/**
 * The last text a column held, and its bytes: an event type or a stream id
 * recurs row after row, and is then the same string, not decoded again.
 */
class TextCache {
  #bytes = new Uint8Array(0);
  #text = "";

  text(bytes: Uint8Array, start: number, end: number): string {
    const known = this.#bytes;
    if (known.length === end - start) {
      let same = true;
      for (let index = 0; index < known.length; index++) {
        if (known[index] !== bytes[start + index]) {
          same = false;
          break;
        }
      }
      if (same) return this.#text;
    }
    this.#bytes = bytes.slice(start, end);
    this.#text = utf8.decode(this.#bytes);
    return this.#text;
  }
}

/**
 * The last metadata a row held, parsed, and its bytes: the events of one
 * append usually carry the same metadata (a correlation id, a user), and a
 * copy of the parsed value ({@linkcode copyJson}, ~50 ns) is then made
 * instead of decoding and parsing the text again (~400 ns). When rows
 * differ, the cost is a comparison that stops at the first differing byte.
 */
class MetadataCache {
  #bytes = new Uint8Array(0);
  #parsed: unknown = undefined;

  value(
    bytes: Uint8Array,
    start: number,
    end: number,
  ): Record<string, unknown> {
    const known = this.#bytes;
    let same = known.length === end - start && this.#parsed !== undefined;
    for (let index = 0; same && index < known.length; index++) {
      same = known[index] === bytes[start + index];
    }
    if (!same) {
      this.#bytes = bytes.slice(start, end);
      this.#parsed = JSON.parse(utf8.decode(this.#bytes));
    }
    return copyJson(this.#parsed) as Record<string, unknown>;
  }
}
