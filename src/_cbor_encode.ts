/**
 * A CBOR encoder for the values the codec takes, faster than cborg's general
 * one and byte for byte the same as `cborg.encode(value, { typeEncoders })`
 * with the codec's type encoders. Private to the package.
 *
 * It writes plain objects (keys sorted as cborg sorts them: shorter UTF-8
 * first, then bytewise), plain arrays without holes, strings, numbers
 * (integers as the shortest integer, others as the shortest float that
 * holds them, -0 as a half float), booleans, `null`, `undefined`,
 * `Uint8Array`s and plain `Date`s (tag 1); null-prototype objects as plain
 * ones. For anything else (a bigint, a `Map`, a class instance, symbol
 * keys, a hole, a
 * lone surrogate, nesting deeper than {@linkcode MAX_DEPTH}, a cycle) it
 * gives up, and the caller encodes with cborg, which writes the value or
 * throws its own error. A getter of the value may then run twice.
 *
 * @module
 */

import { halfValue } from "./_cbor_decode.ts";

/** Thrown when the fast path gives up: cborg encodes instead. */
const GIVE_UP = Symbol("give up");

/**
 * How deep the fast path follows arrays and objects: below the codec's own
 * limit of 1,000, which cborg enforces (and reports) when it takes over.
 */
const MAX_DEPTH = 900;

/** RFC 8949 §3.4: tag 1 is an epoch-based date/time. */
const TAG_EPOCH_DATE = 0xc1;

const textEncoder = new TextEncoder();

/** The bytes being written, grown as needed; one encode at a time. */
let buffer = new Uint8Array(1024);
let length = 0;
let busy = false;

const floatScratch = new DataView(new ArrayBuffer(8));

function reserve(count: number): void {
  if (length + count <= buffer.length) return;
  let size = buffer.length * 2;
  while (size < length + count) size *= 2;
  const grown = new Uint8Array(size);
  grown.set(buffer.subarray(0, length));
  buffer = grown;
}

/** An item's head: major type and argument, in the fewest bytes. */
function head(major: number, argument: number): void {
  const type = major << 5;
  if (argument < 24) {
    reserve(1);
    buffer[length++] = type | argument;
  } else if (argument < 0x100) {
    reserve(2);
    buffer[length++] = type | 24;
    buffer[length++] = argument;
  } else if (argument < 0x10000) {
    reserve(3);
    buffer[length++] = type | 25;
    buffer[length++] = argument >>> 8;
    buffer[length++] = argument & 0xff;
  } else if (argument < 0x100000000) {
    reserve(5);
    buffer[length++] = type | 26;
    buffer[length++] = argument >>> 24;
    buffer[length++] = (argument >>> 16) & 0xff;
    buffer[length++] = (argument >>> 8) & 0xff;
    buffer[length++] = argument & 0xff;
  } else {
    reserve(9);
    buffer[length++] = type | 27;
    const high = Math.floor(argument / 0x100000000);
    const low = argument >>> 0;
    buffer[length++] = high >>> 24;
    buffer[length++] = (high >>> 16) & 0xff;
    buffer[length++] = (high >>> 8) & 0xff;
    buffer[length++] = high & 0xff;
    buffer[length++] = low >>> 24;
    buffer[length++] = (low >>> 16) & 0xff;
    buffer[length++] = (low >>> 8) & 0xff;
    buffer[length++] = low & 0xff;
  }
}

function number(value: number): void {
  if (Number.isSafeInteger(value) && !Object.is(value, -0)) {
    if (value >= 0) head(0, value);
    else head(1, -1 - value);
    return;
  }
  float(value);
}

/**
 * A float in the shortest width that gives it back, as cborg chooses:
 * half, then single, then double precision (NaN is always a half).
 */
function float(value: number): void {
  const half = halfBits(value);
  if (Number.isNaN(value) || halfValue(half) === value) {
    reserve(3);
    buffer[length++] = 0xf9;
    buffer[length++] = half >>> 8;
    buffer[length++] = half & 0xff;
    return;
  }
  if (Math.fround(value) === value) {
    floatScratch.setFloat32(0, value);
    reserve(5);
    buffer[length++] = 0xfa;
    for (let index = 0; index < 4; index++) {
      buffer[length++] = floatScratch.getUint8(index);
    }
    return;
  }
  floatScratch.setFloat64(0, value);
  reserve(9);
  buffer[length++] = 0xfb;
  for (let index = 0; index < 8; index++) {
    buffer[length++] = floatScratch.getUint8(index);
  }
}

/** cborg's half-precision bits for `value` (its `encodeFloat16`). */
function halfBits(value: number): number {
  if (value === Infinity) return 0x7c00;
  if (value === -Infinity) return 0xfc00;
  if (Number.isNaN(value)) return 0x7e00;
  floatScratch.setFloat32(0, value);
  const bits = floatScratch.getUint32(0);
  const exponent = (bits & 0x7f800000) >> 23;
  const mantissa = bits & 0x7fffff;
  const sign = (bits & 0x80000000) >>> 16;
  if (exponent === 0xff) return 0x7c00;
  if (exponent === 0) return (sign | (mantissa >> 13)) & 0xffff;
  const logical = exponent - 127;
  if (logical < -24) return 0;
  if (logical < -14) return (sign | (1 << (24 + logical))) & 0xffff;
  return (sign | ((logical + 15) << 10) | (mantissa >> 13)) & 0xffff;
}

/** Whether `text` is all ASCII (one byte per character in UTF-8). */
function isAscii(text: string): boolean {
  for (let index = 0; index < text.length; index++) {
    if (text.charCodeAt(index) > 0x7f) return false;
  }
  return true;
}

function string(text: string): void {
  if (isAscii(text)) {
    head(3, text.length);
    reserve(text.length);
    for (let index = 0; index < text.length; index++) {
      buffer[length++] = text.charCodeAt(index);
    }
    return;
  }
  // cborg refuses a lone surrogate (the codec's type encoder): so does the
  // fallback, with its message.
  if (!text.isWellFormed()) throw GIVE_UP;
  const bytes = textEncoder.encode(text);
  head(3, bytes.length);
  reserve(bytes.length);
  buffer.set(bytes, length);
  length += bytes.length;
}

/** A map key and how cborg orders it: by its UTF-8 bytes. */
interface Key {
  readonly name: string;
  /** Its UTF-8 bytes, only when it is not ASCII. */
  readonly bytes: Uint8Array | undefined;
  readonly size: number;
}

function keyOf(name: string): Key {
  if (isAscii(name)) return { name, bytes: undefined, size: name.length };
  if (!name.isWellFormed()) throw GIVE_UP;
  const bytes = textEncoder.encode(name);
  return { name, bytes, size: bytes.length };
}

/** Shorter first, then bytewise: cborg's default order of map keys. */
function compareKeys(a: Key, b: Key): number {
  if (a.size !== b.size) return a.size - b.size;
  if (a.bytes === undefined && b.bytes === undefined) {
    return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
  }
  const left = a.bytes ?? textEncoder.encode(a.name);
  const right = b.bytes ?? textEncoder.encode(b.name);
  for (let index = 0; index < left.length; index++) {
    if (left[index] !== right[index]) return left[index] - right[index];
  }
  return 0;
}

function value(item: unknown, depth: number): void {
  switch (typeof item) {
    case "string":
      string(item);
      return;
    case "number":
      number(item);
      return;
    case "boolean":
      reserve(1);
      buffer[length++] = item ? 0xf5 : 0xf4;
      return;
    case "undefined":
      reserve(1);
      buffer[length++] = 0xf7;
      return;
    case "object":
      break;
    default:
      throw GIVE_UP; // bigint, symbol, function: cborg decides
  }
  if (item === null) {
    reserve(1);
    buffer[length++] = 0xf6;
    return;
  }
  if (depth >= MAX_DEPTH) throw GIVE_UP;
  const prototype = Object.getPrototypeOf(item);
  if (prototype === Object.prototype || prototype === null) {
    object(item as Record<string, unknown>, depth);
  } else if (prototype === Array.prototype && Array.isArray(item)) {
    array(item as unknown[], depth);
  } else if (item instanceof Uint8Array) {
    head(2, item.length);
    reserve(item.length);
    buffer.set(item, length);
    length += item.length;
  } else if (prototype === Date.prototype) {
    const seconds = (item as Date).getTime() / 1000;
    reserve(1);
    buffer[length++] = TAG_EPOCH_DATE;
    // Whole seconds as an integer, others as a float: the codec's choice.
    if (Number.isInteger(seconds)) number(seconds);
    else float(seconds);
  } else {
    throw GIVE_UP;
  }
}

function array(items: unknown[], depth: number): void {
  head(4, items.length);
  for (let index = 0; index < items.length; index++) {
    if (!(index in items)) throw GIVE_UP; // a hole: cborg refuses it
    value(items[index], depth + 1);
  }
}

function object(item: Record<string, unknown>, depth: number): void {
  if (Object.getOwnPropertySymbols(item).length > 0) throw GIVE_UP;
  const names = Object.keys(item);
  head(5, names.length);
  if (names.length === 0) return;
  const keys = names.map(keyOf).sort(compareKeys);
  for (const key of keys) {
    if (key.bytes === undefined) string(key.name);
    else {
      head(3, key.bytes.length);
      reserve(key.bytes.length);
      buffer.set(key.bytes, length);
      length += key.bytes.length;
    }
    value(item[key.name], depth + 1);
  }
}

/**
 * Encodes `item`, or returns `fallback(item)` (cborg) when the fast path
 * gives up.
 *
 * @param item The value.
 * @param fallback The reference encoder.
 */
export function encodeFast(
  item: unknown,
  fallback: (item: unknown) => Uint8Array,
): Uint8Array {
  // A getter that encodes while this encode runs gets cborg: the buffer is
  // in use.
  if (busy) return fallback(item);
  busy = true;
  length = 0;
  try {
    value(item, 0);
    return buffer.slice(0, length);
  } catch {
    // Given up, or a getter threw: cborg runs again and decides.
  } finally {
    busy = false;
    // Not held on to past its time: a large value's buffer is let go.
    if (buffer.length > 1 << 20) buffer = new Uint8Array(1024);
  }
  return fallback(item);
}
