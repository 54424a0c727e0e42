/**
 * How event `data` and snapshot `state` become bytes, and back.
 *
 * @module
 */

import { decode, encode, type TagDecoder, Token, Type } from "cborg";
import {
  bigIntDecoder,
  bigNegIntDecoder,
  structBigIntEncoder,
} from "cborg/taglib";
import {
  decodeEpochDate,
  decodeFast,
  decodeFastRange,
} from "./_cbor_decode.ts";
import { encodeFast } from "./_cbor_encode.ts";

/**
 * Turns values into bytes and back. Stores take one as their `codec` option;
 * the default is {@linkcode cborCodec}.
 *
 * Both methods may throw any error: the store wraps it in an
 * {@linkcode EncodingError} that names the field.
 *
 * @example A JSON codec, for data that is plain JSON
 * ```ts
 * import { type Codec, InMemoryEventStore } from "@deno-eventstore/core";
 * import assert from "node:assert/strict";
 *
 * const jsonCodec: Codec = {
 *   encode: (value) => new TextEncoder().encode(JSON.stringify(value)),
 *   decode: (bytes) => JSON.parse(new TextDecoder().decode(bytes)),
 * };
 * const store = new InMemoryEventStore({ codec: jsonCodec });
 * await store.appendEvents("order-1", [{ type: "Placed", data: { total: 5 } }]);
 * const [event] = await store.loadEvents("order-1");
 * assert.deepEqual(event.data, { total: 5 });
 * ```
 */
export interface Codec {
  /** Encodes a value; throws when the value is not supported. */
  encode(value: unknown): Uint8Array;
  /** Decodes bytes that {@linkcode Codec.encode} produced. */
  decode(bytes: Uint8Array): unknown;
}

// RFC 8949 §3.4: tag 1 is an epoch-based date/time, tags 2 and 3 are bignums.
const TAG_EPOCH_DATE = 1;
const TAG_POSITIVE_BIGNUM = 2;
const TAG_NEGATIVE_BIGNUM = 3;

function encodeDate(date: Date): Token[] {
  // A subclass would come back as a plain Date: refused like any class.
  if (Object.getPrototypeOf(date) !== Date.prototype) {
    throw new TypeError(
      `unsupported type: ${describeType(date)}; use a plain Date`,
    );
  }
  const seconds = date.getTime() / 1000;
  // Whole seconds stay integers (shorter); others need a float to keep the
  // milliseconds.
  return [
    new Token(Type.tag, TAG_EPOCH_DATE),
    Number.isInteger(seconds)
      ? new Token(seconds < 0 ? Type.negint : Type.uint, seconds)
      : new Token(Type.float, seconds),
  ];
}

/**
 * Deepest nesting of arrays and objects in a value. Both encoding and
 * decoding recurse once per level; without a fixed limit, how deep a value
 * may nest would depend on the call stack and the JIT, and a value that
 * encoded at one call site could fail to decode at another: stored, but
 * never readable again.
 */
const MAX_DEPTH = 1_000;

/** The chain of containers cborg is inside while it encodes a value. */
interface Ancestors {
  readonly parent: Ancestors | undefined;
}

/** Rejects an array or object nested deeper than {@linkcode MAX_DEPTH}. */
function rejectTooDeep(ancestors: Ancestors | undefined): void {
  let depth = 1;
  for (let node = ancestors; node !== undefined; node = node.parent) {
    if (++depth > MAX_DEPTH) {
      throw new TypeError(
        `value nests deeper than ${MAX_DEPTH} levels of arrays and objects`,
      );
    }
  }
}

/**
 * Rejects what CBOR would store but not give back as it was: a class instance
 * would come back as a plain object, a `Map` or a typed array other than
 * `Uint8Array` as something else. Failing loudly beats losing a type silently.
 */
function rejectNonPlainObject(
  value: object,
  _type?: string,
  _options?: unknown,
  ancestors?: Ancestors,
): null {
  rejectTooDeep(ancestors);
  const prototype = Object.getPrototypeOf(value);
  if (prototype !== Object.prototype && prototype !== null) {
    throw new TypeError(
      `unsupported type: ${describeType(value)}; use a plain object`,
    );
  }
  if (Object.getOwnPropertySymbols(value).length > 0) {
    throw new TypeError("object has symbol keys, which CBOR cannot hold");
  }
  return null;
}

/** A hole would come back as `undefined`, a subclass as a plain array. */
function rejectNonPlainArray(
  value: unknown[],
  _type?: string,
  _options?: unknown,
  ancestors?: Ancestors,
): null {
  rejectTooDeep(ancestors);
  if (Object.getPrototypeOf(value) !== Array.prototype) {
    throw new TypeError(
      `unsupported type: ${describeType(value)}; use a plain array`,
    );
  }
  for (let index = 0; index < value.length; index++) {
    if (!(index in value)) {
      throw new TypeError(`array has a hole at index ${index}`);
    }
  }
  return null;
}

function rejectUnsupported(value: unknown, typeName: string): never {
  throw new TypeError(`unsupported type: ${describeType(value) ?? typeName}`);
}

/** CBOR text is UTF-8: a lone surrogate would come back as U+FFFD. */
function rejectLoneSurrogate(value: string): null {
  if (!value.isWellFormed()) {
    throw new TypeError("string has a lone UTF-16 surrogate");
  }
  return null;
}

/** Keeps -0 (integers cannot carry the sign) and falls through otherwise. */
function encodeNumber(value: number): Token[] | null {
  return Object.is(value, -0) ? [new Token(Type.float, -0)] : null;
}

function describeType(value: unknown): string {
  const constructorName = (value as { constructor?: { name?: unknown } })
    ?.constructor?.name;
  return typeof constructorName === "string" && constructorName !== ""
    ? constructorName
    : Object.prototype.toString.call(value).slice(8, -1);
}

const UNSUPPORTED_OBJECT_TYPES = [
  "Map",
  "Set",
  "WeakMap",
  "WeakSet",
  "RegExp",
  "Error",
  "Promise",
  "URL",
  "ArrayBuffer",
  "SharedArrayBuffer",
  "DataView",
  "Int8Array",
  "Uint8ClampedArray",
  "Int16Array",
  "Uint16Array",
  "Int32Array",
  "Uint32Array",
  "Float32Array",
  "Float64Array",
  "BigInt64Array",
  "BigUint64Array",
  "Tagged",
] as const;

const typeEncoders = {
  Object: rejectNonPlainObject,
  Array: rejectNonPlainArray,
  Date: encodeDate,
  bigint: structBigIntEncoder,
  string: rejectLoneSurrogate,
  number: encodeNumber,
  ...Object.fromEntries(
    UNSUPPORTED_OBJECT_TYPES.map((name) => [name, rejectUnsupported]),
  ),
};

/**
 * cborg's encoder with the codec's type encoders: the reference the codec's
 * own encoder falls back on, and is tested against. Not part of the
 * module's public API (`mod.ts` does not export it).
 *
 * @example
 * ```ts
 * import { cborCodec } from "@deno-eventstore/core";
 * import { encodeWithCborg } from "./codec.ts";
 * import assert from "node:assert/strict";
 *
 * const value = { at: new Date(0), n: 1.5 };
 * assert.deepStrictEqual(encodeWithCborg(value), cborCodec.encode(value));
 * ```
 */
export function encodeWithCborg(value: unknown): Uint8Array {
  return encode(value, { typeEncoders });
}

/**
 * cborg's decoder with the codec's tags: the reference the codec's own
 * decoder falls back on, and is tested against. Not part of the module's
 * public API (`mod.ts` does not export it).
 *
 * @example
 * ```ts
 * import { cborCodec } from "@deno-eventstore/core";
 * import { decodeWithCborg } from "./codec.ts";
 * import assert from "node:assert/strict";
 *
 * const bytes = cborCodec.encode({ at: new Date(0) });
 * assert.deepStrictEqual(decodeWithCborg(bytes), cborCodec.decode(bytes));
 * ```
 */
export function decodeWithCborg(bytes: Uint8Array): unknown {
  return decode(bytes, { tags: codecTags as TagDecoder[] });
}

/**
 * `cborCodec.decode(bytes.subarray(start, end))`, without the view: for the
 * binary COPY parser, which decodes each row's `data` where it lies. Not
 * part of the module's API (`mod.ts` does not export it).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { cborCodec, decodeCborRange } from "./codec.ts";
 *
 * const bytes = Uint8Array.of(0xff, ...cborCodec.encode({ a: 1 }));
 * assert.deepStrictEqual(decodeCborRange(bytes, 1, bytes.length), { a: 1 });
 * ```
 */
export function decodeCborRange(
  bytes: Uint8Array,
  start: number,
  end: number,
): unknown {
  return decodeFastRange(bytes, start, end, codecTags, decodeWithCborg);
}

/**
 * The codec's tag decoders, by tag number: dates and bignums. Exported for
 * the decoder's tests (`mod.ts` does not export it).
 */
export const codecTags: readonly TagDecoder[] = tagDecoders();

function tagDecoders(): TagDecoder[] {
  const tags: TagDecoder[] = [];
  tags[TAG_EPOCH_DATE] = decodeEpochDate;
  tags[TAG_POSITIVE_BIGNUM] = bigIntDecoder;
  tags[TAG_NEGATIVE_BIGNUM] = bigNegIntDecoder;
  return tags;
}

/**
 * The default codec: CBOR (RFC 8949) through `cborg`, compact and fast.
 *
 * It round-trips, structurally equal: plain objects, arrays, strings,
 * numbers (including `NaN`, `±Infinity` and `-0`), booleans, `null`,
 * `undefined`, `bigint` (always as a bignum tag, so it comes back a `bigint`),
 * `Uint8Array` and `Date` (tag 1, millisecond precision). Everything else is
 * rejected rather than changed on the way: functions, symbols, `Map`, `Set`,
 * class instances (subclasses of `Array` and `Date` too), other typed
 * arrays, cycles, symbol keys, sparse arrays, strings with lone surrogates,
 * and arrays and objects nested more than 1,000 levels deep (so that
 * whatever is stored decodes again, whatever the call stack). Two things
 * change type on the way, by design: an object with a `null` prototype comes
 * back as a plain object, and a `Uint8Array` subclass (such as Node's
 * `Buffer`) as a `Uint8Array`. Map keys are written in RFC 8949 order, so
 * equal values encode to equal bytes.
 *
 * @example Round-trip a value
 * ```ts
 * import { cborCodec } from "@deno-eventstore/core";
 * import assert from "node:assert/strict";
 *
 * const value = { at: new Date(0), amount: 12n, bytes: new Uint8Array([1, 2]) };
 * assert.deepStrictEqual(cborCodec.decode(cborCodec.encode(value)), value);
 * ```
 */
export const cborCodec: Codec = {
  encode(value: unknown): Uint8Array {
    // The codec's own encoder, with cborg behind it for whatever it does
    // not take (src/_cbor_encode.ts): the same bytes, faster.
    return encodeFast(value, encodeWithCborg);
  },
  decode(bytes: Uint8Array): unknown {
    // The codec's own decoder, with cborg behind it for whatever it does
    // not take (src/_cbor_decode.ts): the same values, about twice as fast
    // (docs/performance.md).
    return decodeFast(bytes, codecTags, decodeWithCborg);
  },
};
