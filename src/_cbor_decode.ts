/**
 * A CBOR decoder for what the codec writes, much faster than cborg's general
 * one, giving the same value as `cborg.decode(bytes, { tags })` for every
 * input it accepts. Private to the package.
 *
 * cborg decodes through a token per item; this reads the bytes directly.
 * It takes definite lengths only, string map keys, the simple values, the
 * three float widths and the tags the codec is given; for anything else
 * (indefinite lengths, other simple values, non-string keys, unknown tags,
 * truncated or trailing bytes, nesting past {@linkcode MAX_DEPTH}) it gives
 * up, and the caller decodes with cborg, which returns the value or throws
 * its own error. The tag decoders are the codec's own, so tags come out the
 * same too. cborg stays the reference: a property test holds the two equal
 * on random values and on random bytes.
 *
 * @module
 */

/** Thrown when the fast path gives up: cborg decodes instead. */
const GIVE_UP = Symbol("give up");

/** How deep the fast path follows arrays and maps before it gives up. */
const MAX_DEPTH = 1_000;

/** What a codec's tag decoder is given: decodes the tag's content, once. */
type TagDecodeControl = () => unknown;
/** A tag decoder as cborg takes them. */
// deno-lint-ignore no-explicit-any
type TagDecoder = (decode: any) => unknown;

const textDecoder = new TextDecoder();

/** Strings this short and ASCII are built by hand, as cborg does. */
const ASCII_THRESHOLD = 32;

class Reader {
  readonly bytes: Uint8Array;
  /** Where the value's bytes end (they may be a row's, within a chunk). */
  readonly end: number;
  readonly tags: readonly (TagDecoder | undefined)[];
  position: number;
  /** The depth of the content of the tag being decoded. */
  tagDepth = 0;
  /** Whether the tag being decoded has had its content decoded. */
  tagCalled = false;
  /**
   * What a tag decoder is given: decodes the tag's content, once. Made at
   * the first tag, so a value without one costs no closure.
   */
  content: TagDecodeControl | undefined;
  /** How many short strings came before, for {@linkcode RECENT}. */
  shortTexts = 0;

  constructor(
    bytes: Uint8Array,
    start: number,
    end: number,
    tags: readonly (TagDecoder | undefined)[],
  ) {
    this.bytes = bytes;
    this.position = start;
    this.end = end;
    this.tags = tags;
  }

  /** Moves past `count` bytes, giving up if there are not that many. */
  take(count: number): number {
    const start = this.position;
    if (count > this.end - start) throw GIVE_UP;
    this.position = start + count;
    return start;
  }

  /**
   * The argument of an item whose initial byte had `minor`: a length, a
   * count, a tag number or an unsigned integer (a bigint past 2^53 - 1, as
   * cborg gives it). Indefinite lengths and reserved values give up.
   */
  argument(minor: number): number | bigint {
    if (minor < 24) return minor;
    switch (minor) {
      case 24:
        return this.bytes[this.take(1)];
      case 25: {
        const at = this.take(2);
        return (this.bytes[at] << 8) | this.bytes[at + 1];
      }
      case 26:
        return uint32(this.bytes, this.take(4));
      case 27: {
        const at = this.take(8);
        const high = uint32(this.bytes, at);
        const low = uint32(this.bytes, at + 4);
        // 2^53 - 1 is 0x001fffff_ffffffff.
        return high <= 0x1fffff
          ? high * 2 ** 32 + low
          : (BigInt(high) << 32n) + BigInt(low);
      }
      default:
        throw GIVE_UP;
    }
  }

  /** A length or count: a number that fits what is left of the bytes. */
  length(minor: number): number {
    const length = this.argument(minor);
    if (typeof length !== "number") throw GIVE_UP;
    return length;
  }

  item(depth: number): unknown {
    const initial = this.bytes[this.take(1)];
    const major = initial >> 5;
    const minor = initial & 31;
    switch (major) {
      case 0:
        return this.argument(minor);
      case 1: {
        const value = this.argument(minor);
        if (typeof value === "number") {
          const negative = -1 - value;
          if (negative >= Number.MIN_SAFE_INTEGER) return negative;
          return -1n - BigInt(value);
        }
        return -1n - value;
      }
      case 2: {
        const length = this.length(minor);
        const start = this.take(length);
        // A copy, as cborg makes: the value does not hold on to the row.
        return this.bytes.slice(start, start + length);
      }
      case 3: {
        const length = this.length(minor);
        const start = this.take(length);
        if (length >= SHORT) return text(this.bytes, start, start + length);
        // The string at the same place in the last value decoded is most
        // often this one (the keys of an event type, in order): compared
        // first, it spares the hash.
        const place = this.shortTexts++;
        const recent = place < RECENT.length ? RECENT[place] : undefined;
        if (
          recent !== undefined &&
          sameText(recent, this.bytes, start, start + length)
        ) {
          return recent;
        }
        return shortText(this.bytes, start, start + length, place);
      }
      case 4: {
        if (depth >= MAX_DEPTH) throw GIVE_UP;
        const count = this.length(minor);
        // Each element takes at least a byte: a count beyond what is left
        // is garbage, not an array to allocate.
        if (count > this.end - this.position) throw GIVE_UP;
        const array = new Array(count);
        for (let index = 0; index < count; index++) {
          array[index] = this.item(depth + 1);
        }
        return array;
      }
      case 5: {
        if (depth >= MAX_DEPTH) throw GIVE_UP;
        const count = this.length(minor);
        if (count > this.end - this.position) throw GIVE_UP;
        const object: Record<string, unknown> = {};
        for (let index = 0; index < count; index++) {
          const key = this.key(depth + 1);
          const value = this.item(depth + 1);
          if (key === "__proto__") {
            // An assignment would set the prototype, as cborg knows too.
            Object.defineProperty(object, key, {
              value,
              configurable: true,
              enumerable: true,
              writable: true,
            });
          } else {
            object[key] = value;
          }
        }
        return object;
      }
      case 6: {
        const number = this.argument(minor);
        const decoder = typeof number === "number"
          ? this.tags[number]
          : undefined;
        if (decoder === undefined) throw GIVE_UP;
        if (decoder === decodeEpochDate) {
          // A date, the tag of nearly every event: read here, without the
          // content control's bookkeeping; anything but a number is the
          // reference's to refuse.
          const seconds = this.item(depth + 1);
          if (typeof seconds !== "number") throw GIVE_UP;
          return epochDate(seconds);
        }
        // The tag's content is decoded by `content`, once: its depth and
        // whether it was called are the reader's, kept around the call for
        // a tag inside a tag, so no closure is made per tag.
        const outerDepth = this.tagDepth;
        const outerCalled = this.tagCalled;
        this.tagDepth = depth + 1;
        this.tagCalled = false;
        const value = decoder(
          this.content ??= () => {
            if (this.tagCalled) throw GIVE_UP;
            this.tagCalled = true;
            return this.item(this.tagDepth);
          },
        );
        if (!this.tagCalled) throw GIVE_UP;
        this.tagDepth = outerDepth;
        this.tagCalled = outerCalled;
        return value;
      }
      default:
        return this.simple(minor);
    }
  }

  /**
   * A map key: a string, or the fast path gives up (cborg refuses other
   * keys for objects). Short ones come from {@linkcode SHORT_TEXT}, as short
   * text values do.
   */
  key(depth: number): string {
    const key = this.item(depth);
    if (typeof key !== "string") throw GIVE_UP;
    return key;
  }

  /** Major type 7: false, true, null, undefined and floats. */
  simple(minor: number): unknown {
    switch (minor) {
      case 20:
        return false;
      case 21:
        return true;
      case 22:
        return null;
      case 23:
        return undefined;
      case 25: {
        const at = this.take(2);
        return halfValue((this.bytes[at] << 8) | this.bytes[at + 1]);
      }
      case 26:
        copyToScratch(this.bytes, this.take(4), 4);
        return SCRATCH_VIEW.getFloat32(0);
      case 27:
        copyToScratch(this.bytes, this.take(8), 8);
        return SCRATCH_VIEW.getFloat64(0);
      default:
        throw GIVE_UP;
    }
  }
}

/** Text shorter than this (in bytes) is looked up in {@linkcode SHORT_TEXT}. */
const SHORT = 24;

/**
 * Short ASCII strings decoded before, keys and values, by a hash of their
 * bytes: a slot holds the last string that hashed to it. The same few keys
 * recur in every event of a type, and values recur too (ids, states,
 * currencies): a string found here is not made again (no allocation, and a
 * key V8 has already hashed), which took a third off decoding an order
 * event's map (docs/performance.md).
 */
const SHORT_TEXT: (string | undefined)[] = new Array(1024);

/**
 * The short ASCII strings of the last values decoded, by their order in the
 * value (the first short string, the second, …). ASCII only, as in
 * {@linkcode SHORT_TEXT}: {@linkcode sameText} compares bytes with char
 * codes, which is exact for ASCII alone.
 */
const RECENT: (string | undefined)[] = new Array(64);

/**
 * A string of fewer than {@linkcode SHORT} bytes, through the cache; an
 * ASCII one is kept in {@linkcode RECENT} at `place` as well.
 */
function shortText(
  bytes: Uint8Array,
  start: number,
  end: number,
  place: number,
): string {
  let hash = end - start;
  for (let index = start; index < end; index++) {
    const byte = bytes[index];
    if (byte & 0x80) return textDecoder.decode(bytes.subarray(start, end));
    hash = (Math.imul(hash, 31) + byte) | 0;
  }
  const slot = hash & (SHORT_TEXT.length - 1);
  const cached = SHORT_TEXT[slot];
  let string = cached;
  if (string === undefined || !sameText(string, bytes, start, end)) {
    string = String.fromCharCode.apply(
      null,
      bytes.subarray(start, end) as unknown as number[],
    );
    SHORT_TEXT[slot] = string;
  }
  if (place < RECENT.length) RECENT[place] = string;
  return string;
}

/** Whether `string` is the ASCII text of `bytes[start, end)`. */
function sameText(
  string: string,
  bytes: Uint8Array,
  start: number,
  end: number,
): boolean {
  if (string.length !== end - start) return false;
  for (let index = 0; index < string.length; index++) {
    if (string.charCodeAt(index) !== bytes[start + index]) return false;
  }
  return true;
}

/** UTF-8 text, decoded as cborg decodes it (invalid bytes become U+FFFD). */
function text(bytes: Uint8Array, start: number, end: number): string {
  if (end - start < ASCII_THRESHOLD) {
    for (let index = start; index < end; index++) {
      if (bytes[index] & 0x80) {
        return textDecoder.decode(bytes.subarray(start, end));
      }
    }
    // One string from the char codes: about half the time of adding them
    // one by one (12- and 7-character values, 72 against 132 ns).
    return String.fromCharCode.apply(
      null,
      bytes.subarray(start, end) as unknown as number[],
    );
  }
  return textDecoder.decode(bytes.subarray(start, end));
}

/** Where floats are read: one buffer for every decode (no view per call). */
const SCRATCH = new Uint8Array(8);
const SCRATCH_VIEW = new DataView(SCRATCH.buffer);

/** Copies `count` bytes from `at` to {@linkcode SCRATCH}: no view is made. */
function copyToScratch(bytes: Uint8Array, at: number, count: number): void {
  for (let index = 0; index < count; index++) {
    SCRATCH[index] = bytes[at + index];
  }
}

/**
 * The codec's decoder of tag 1 (an epoch-based date/time, RFC 8949 §3.4.2):
 * a number of seconds, as a `Date`. Here so that the fast path knows it and
 * decodes the tag's number itself.
 */
export function decodeEpochDate(decodeInner: TagDecodeControl): Date {
  const seconds = decodeInner();
  if (typeof seconds !== "number") {
    throw new TypeError("CBOR tag 1 must wrap a number of seconds");
  }
  return epochDate(seconds);
}

/** The `Date` of a number of seconds since 1970, to the millisecond. */
function epochDate(seconds: number): Date {
  // Float seconds only approximate the milliseconds, and Date truncates, so
  // round. Whole and fraction are scaled apart: far from 1970, seconds * 1000
  // exceeds 2^51 and its own rounding error would add to the first one.
  const whole = Math.floor(seconds);
  return new Date(whole * 1000 + Math.round((seconds - whole) * 1000));
}

/** A big-endian unsigned 32-bit integer at `at`. */
function uint32(bytes: Uint8Array, at: number): number {
  return bytes[at] * 2 ** 24 +
    ((bytes[at + 1] << 16) | (bytes[at + 2] << 8) | bytes[at + 3]);
}

/**
 * The value of IEEE 754 half-precision bits, as cborg's `readFloat16` reads
 * them (the encoder uses it too, to see whether a half holds a number).
 */
export function halfValue(bits: number): number {
  const exponent = (bits >> 10) & 0x1f;
  const mantissa = bits & 0x3ff;
  const magnitude = exponent === 0
    ? mantissa * 2 ** -24
    : exponent !== 31
    ? (mantissa + 1024) * 2 ** (exponent - 25)
    : mantissa === 0
    ? Infinity
    : NaN;
  return bits & 0x8000 ? -magnitude : magnitude;
}

/**
 * Decodes `bytes` as one CBOR item, or returns `fallback(bytes)` (cborg)
 * when the fast path gives up or the input is not what the codec writes.
 * Errors of the tag decoders go to the fallback too, which meets them again
 * and throws them as cborg does.
 *
 * @param bytes One encoded value.
 * @param tags The codec's tag decoders, by tag number.
 * @param fallback The reference decoder.
 */
export function decodeFast(
  bytes: Uint8Array,
  tags: readonly (TagDecoder | undefined)[],
  fallback: (bytes: Uint8Array) => unknown,
): unknown {
  return decodeFastRange(bytes, 0, bytes.length, tags, fallback);
}

/**
 * {@linkcode decodeFast} of `bytes[start, end)`, without a view of them:
 * the binary COPY parser decodes each row's `data` where it lies in the
 * socket's chunk (a view per row is an allocation more per event).
 *
 * @param bytes Holds the value at `[start, end)`.
 * @param fallback The reference decoder, given a view of the value alone.
 */
export function decodeFastRange(
  bytes: Uint8Array,
  start: number,
  end: number,
  tags: readonly (TagDecoder | undefined)[],
  fallback: (bytes: Uint8Array) => unknown,
): unknown {
  try {
    // A Buffer (postgres.js gives bytea so) as a plain Uint8Array, as cborg
    // does: byte strings sliced from it are Uint8Arrays then, not Buffers.
    const plain = Object.getPrototypeOf(bytes) === Uint8Array.prototype
      ? bytes
      : new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const reader = new Reader(plain, start, end, tags);
    const value = reader.item(0);
    if (reader.position === end) return value;
  } catch {
    // Given up, or a tag decoder's error: the reference decides.
  }
  return fallback(
    start === 0 && end === bytes.length ? bytes : bytes.subarray(start, end),
  );
}
