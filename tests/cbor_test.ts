/**
 * The codec's own CBOR encoder and decoder (src/_cbor_encode.ts,
 * src/_cbor_decode.ts) against cborg, the reference: the same bytes for
 * every value (or the same refusal), the same value for every encoding the
 * codec writes, and the same outcome (that value, or an error) for any
 * bytes at all.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import fc from "fast-check";
import { cborCodec } from "../mod.ts";
import {
  codecTags,
  decodeCborRange,
  decodeWithCborg,
  encodeWithCborg,
} from "../src/codec.ts";
import { encodeFast } from "../src/_cbor_encode.ts";
import { decodeFast } from "../src/_cbor_decode.ts";
import { codecValueArb as valueArb } from "./_codec_values.ts";

/** What decoding `bytes` gives: a value (with its shape), or that it threw. */
function outcome(
  decode: (bytes: Uint8Array) => unknown,
  bytes: Uint8Array,
): { value: unknown; shape: string } | { threw: true } {
  try {
    const value = decode(bytes);
    return { value, shape: shapeOf(value) };
  } catch {
    return { threw: true };
  }
}

/**
 * A value's shape, deeper than `deepStrictEqual` looks here: each object's
 * prototype and own property names (so that a key that became a prototype
 * shows), each number's sign of zero.
 */
function shapeOf(value: unknown): string {
  if (typeof value === "number") return Object.is(value, -0) ? "-0" : "number";
  if (typeof value !== "object" || value === null) return typeof value;
  const prototype = Object.getPrototypeOf(value);
  const kind = prototype === Object.prototype
    ? "Object"
    : prototype === null
    ? "null-prototype"
    : prototype?.constructor?.name ?? "unknown";
  if (value instanceof Uint8Array || value instanceof Date) return kind;
  const entries = Object.getOwnPropertyNames(value).map((name) =>
    `${JSON.stringify(name)}:${
      shapeOf((value as Record<string, unknown>)[name])
    }`
  );
  return `${kind}{${entries.join(",")}}`;
}

Deno.test("cbor decode: the codec's encodings decode as cborg decodes them", () => {
  fc.assert(
    fc.property(valueArb, (value) => {
      const bytes = cborCodec.encode(value);
      assert.deepStrictEqual(
        outcome((input) => cborCodec.decode(input), bytes),
        outcome(decodeWithCborg, bytes),
      );
    }),
    { numRuns: 2_000 },
  );
});

Deno.test("cbor decode: the codec's encodings never need cborg", () => {
  // The fast path takes all of them itself: the test above compares it,
  // not cborg with itself.
  fc.assert(
    fc.property(valueArb, (value) => {
      const bytes = cborCodec.encode(value);
      const decoded = decodeFast(bytes, codecTags, () => {
        throw new Error("the fast path gave up on the codec's own encoding");
      });
      assert.deepStrictEqual(decoded, decodeWithCborg(bytes));
    }),
    { numRuns: 1_000 },
  );
});

Deno.test("cbor decode: any bytes have the same outcome as with cborg", () => {
  // Valid encodings changed a little (a byte flipped, cut short, a byte
  // more) and plain random bytes: the same value, or both refuse.
  const changedArb = fc.tuple(valueArb, fc.nat(), fc.nat(255), fc.nat(3))
    .map(([value, at, byte, how]) => {
      const bytes = cborCodec.encode(value);
      const index = bytes.length === 0 ? 0 : at % bytes.length;
      if (how === 0) {
        const changed = bytes.slice();
        changed[index] = byte;
        return changed;
      }
      if (how === 1) return bytes.slice(0, index);
      if (how === 2) return Uint8Array.of(...bytes, byte);
      return Uint8Array.of(byte, ...bytes);
    });
  fc.assert(
    fc.property(
      fc.oneof(changedArb, fc.uint8Array({ maxLength: 64 })),
      (bytes) => {
        assert.deepStrictEqual(
          outcome((input) => cborCodec.decode(input), bytes),
          outcome(decodeWithCborg, bytes),
        );
      },
    ),
    { numRuns: 5_000 },
  );
});

Deno.test("cbor decode: edges of integers, floats, tags and nesting", () => {
  const cases: Uint8Array[] = [
    // 2^53 - 1 and 2^53 as 64-bit integers: a number, then a bigint.
    Uint8Array.of(0x1b, 0x00, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff),
    Uint8Array.of(0x1b, 0x00, 0x20, 0, 0, 0, 0, 0, 0),
    Uint8Array.of(0x1b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff),
    Uint8Array.of(0x3b, 0x00, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe),
    Uint8Array.of(0x3b, 0x00, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff),
    Uint8Array.of(0x3b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff),
    // Non-minimal lengths, which cborg takes when not strict.
    Uint8Array.of(0x18, 0x01),
    Uint8Array.of(0x78, 0x01, 0x61),
    // Half floats: -0, the smallest subnormal, infinities, NaNs.
    Uint8Array.of(0xf9, 0x80, 0x00),
    Uint8Array.of(0xf9, 0x00, 0x01),
    Uint8Array.of(0xf9, 0x7c, 0x00),
    Uint8Array.of(0xf9, 0xfc, 0x00),
    Uint8Array.of(0xf9, 0x7e, 0x00),
    Uint8Array.of(0xf9, 0x7c, 0x01),
    Uint8Array.of(0xfa, 0x7f, 0x80, 0x00, 0x00),
    // Simple values the fast path leaves to cborg, and a break.
    Uint8Array.of(0xf8, 0x20),
    Uint8Array.of(0xe0),
    Uint8Array.of(0xff),
    // Indefinite lengths (cborg takes them).
    Uint8Array.of(0x9f, 0x01, 0x02, 0xff),
    Uint8Array.of(0xbf, 0x61, 0x61, 0x01, 0xff),
    Uint8Array.of(0x5f, 0x41, 0x01, 0xff),
    // Tags: a date of a string, an unknown tag, a bignum of a number.
    Uint8Array.of(0xc1, 0x61, 0x61),
    // Dates of a float, a negative, a bigint, a date, nothing.
    Uint8Array.of(0xc1, 0xfb, 0x41, 0xd4, 0x9b, 0x2c, 0x1f, 0x80, 0x00, 0x00),
    Uint8Array.of(0xc1, 0x39, 0x01, 0x00),
    Uint8Array.of(0xc1, 0x1b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff),
    Uint8Array.of(0xc1, 0xc1, 0x01),
    Uint8Array.of(0xc1),
    Uint8Array.of(0xd8, 0x64, 0x01),
    Uint8Array.of(0xc2, 0x01),
    Uint8Array.of(0xc3, 0x42, 0x01, 0x00),
    // A map with a number key, a huge count, trailing bytes, nothing.
    Uint8Array.of(0xa1, 0x01, 0x02),
    Uint8Array.of(0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff),
    Uint8Array.of(0x01, 0x02),
    new Uint8Array(0),
    // Invalid UTF-8 in a key and in a value: replacement characters.
    Uint8Array.of(0xa1, 0x62, 0xc3, 0x28, 0x01),
    Uint8Array.of(0x62, 0xff, 0xfe),
    // A __proto__ key: an own property, never the prototype.
    Uint8Array.of(
      0xa1,
      0x69,
      ...new TextEncoder().encode("__proto__"),
      0xa1,
      0x68,
      ...new TextEncoder().encode("polluted"),
      0xf5,
    ),
    Uint8Array.of(0xa1, 0x69, ...new TextEncoder().encode("__proto__"), 0x01),
    // Arrays nested 1,200 deep: past the fast path's depth.
    Uint8Array.of(...new Array(1_200).fill(0x81), 0x01),
  ];
  for (const bytes of cases) {
    assert.deepStrictEqual(
      outcome((input) => cborCodec.decode(input), bytes),
      outcome(decodeWithCborg, bytes),
      `bytes ${Buffer.from(bytes).toString("hex").slice(0, 40)}`,
    );
  }
});

Deno.test("cbor decode: values one after another whose strings share places", () => {
  // The decoder first compares a short string with the one at the same
  // place in the last value decoded. Arrays of short text items from a few
  // bytes (ASCII, UTF-8 "é", and bytes that are not UTF-8: a lone 0xe9 is
  // as long as "é" is in characters) make such places agree and differ,
  // one value after another.
  const textArb = fc.array(fc.constantFrom(0x61, 0x62, 0xc3, 0xa9, 0xe9), {
    minLength: 0,
    maxLength: 4,
  }).map((bytes) => [0x60 | bytes.length, ...bytes]);
  const valueBytesArb = fc.array(textArb, { maxLength: 6 }).map((items) =>
    Uint8Array.of(0x80 | items.length, ...items.flat())
  );
  fc.assert(
    fc.property(fc.array(valueBytesArb, { maxLength: 8 }), (values) => {
      for (const bytes of values) {
        assert.deepStrictEqual(
          outcome((input) => cborCodec.decode(input), bytes),
          outcome(decodeWithCborg, bytes),
          `bytes ${Buffer.from(bytes).toString("hex")}`,
        );
      }
    }),
    { numRuns: 3_000 },
  );
  // The case itself: "é", then a lone 0xe9 at the same place.
  for (
    const bytes of [
      Uint8Array.of(0x81, 0x62, 0xc3, 0xa9),
      Uint8Array.of(0x81, 0x61, 0xe9),
    ]
  ) {
    assert.deepStrictEqual(cborCodec.decode(bytes), decodeWithCborg(bytes));
  }
});

Deno.test("cbor decode: a value within other bytes decodes as it alone does", () => {
  // The binary COPY parser decodes a row's data where it lies in a chunk:
  // bytes before and after it are not read, whatever they are, and what the
  // fast path leaves to cborg (here an indefinite-length array) reaches
  // cborg as the value's bytes alone.
  const withinArb = fc.tuple(
    fc.oneof(
      valueArb.map((value) => cborCodec.encode(value)),
      fc.constant(Uint8Array.of(0x9f, 0x01, 0x02, 0xff)),
      fc.uint8Array({ maxLength: 16 }),
    ),
    fc.uint8Array({ maxLength: 8 }),
    fc.uint8Array({ maxLength: 8 }),
  );
  fc.assert(
    fc.property(withinArb, ([value, before, after]) => {
      const bytes = Uint8Array.of(...before, ...value, ...after);
      const start = before.length;
      assert.deepStrictEqual(
        outcome(
          (input) => decodeCborRange(input, start, start + value.length),
          bytes,
        ),
        outcome(decodeWithCborg, value),
      );
    }),
    { numRuns: 2_000 },
  );
});

Deno.test("cbor decode: bytes from a Buffer come back as Uint8Arrays", () => {
  // postgres.js gives bytea as a Buffer; cborg gives plain Uint8Arrays.
  const encoded = cborCodec.encode({ bytes: Uint8Array.of(1, 2, 3) });
  const decoded = cborCodec.decode(Buffer.from(encoded)) as {
    bytes: Uint8Array;
  };
  assert.equal(Object.getPrototypeOf(decoded.bytes), Uint8Array.prototype);
  assert.deepStrictEqual(decoded, { bytes: Uint8Array.of(1, 2, 3) });
  // A copy: changing it leaves the input alone.
  const input = Buffer.from(encoded);
  (cborCodec.decode(input) as { bytes: Uint8Array }).bytes[0] = 9;
  assert.deepStrictEqual(cborCodec.decode(input), {
    bytes: Uint8Array.of(1, 2, 3),
  });
});

/** What encoding `value` gives: bytes, or that it threw (and its message). */
function encoded(
  encode: (value: unknown) => Uint8Array,
  value: unknown,
): { bytes: string } | { threw: string } {
  try {
    return { bytes: Buffer.from(encode(value)).toString("hex") };
  } catch (error) {
    return { threw: error instanceof Error ? error.message : String(error) };
  }
}

/** Everything fast-check makes, the codec's refusals included. */
const anythingArb = fc.anything({
  maxDepth: 4,
  maxKeys: 5,
  withBigInt: true,
  withDate: true,
  withTypedArray: true,
  withNullPrototype: true,
  withObjectString: true,
  withBoxedValues: true,
  withMap: true,
  withSet: true,
  withSparseArray: true,
});

Deno.test("cbor encode: the same bytes as cborg, or the same refusal", () => {
  fc.assert(
    fc.property(fc.oneof(valueArb, anythingArb), (value) => {
      assert.deepStrictEqual(
        encoded((input) => cborCodec.encode(input), value),
        encoded(encodeWithCborg, value),
      );
    }),
    { numRuns: 3_000 },
  );
});

Deno.test("cbor encode: what the codec keeps never needs cborg", () => {
  // bigints are left to cborg on purpose: the rest is the fast path's.
  const keptArb = valueArb.filter((value) => !hasBigInt(value));
  fc.assert(
    fc.property(keptArb, (value) => {
      const bytes = encodeFast(value, () => {
        throw new Error("the fast path gave up on a value the codec keeps");
      });
      // cborg's bytes come as a Buffer under Deno; the codec's as a plain
      // Uint8Array: the bytes are what must be equal.
      assert.deepStrictEqual(
        Buffer.from(bytes).toString("hex"),
        Buffer.from(encodeWithCborg(value)).toString("hex"),
      );
    }),
    { numRuns: 1_000 },
  );
});

Deno.test("cbor encode: edges of numbers, dates, keys and nesting", () => {
  const deep: unknown[] = [];
  let cursor = deep;
  for (let level = 0; level < 999; level++) {
    const next: unknown[] = [];
    cursor.push(next);
    cursor = next;
  }
  const cycle: unknown[] = [];
  cycle.push(cycle);
  const values: unknown[] = [
    0,
    -0,
    1,
    -1,
    23,
    24,
    255,
    256,
    65535,
    65536,
    2 ** 32 - 1,
    2 ** 32,
    Number.MAX_SAFE_INTEGER,
    -Number.MAX_SAFE_INTEGER,
    2 ** 53,
    -(2 ** 53),
    2 ** 60,
    1.5,
    -1.5,
    0.1,
    65504,
    65505,
    1e-8,
    5.96e-8,
    6e-5,
    3.4e38,
    1e300,
    2 ** -14,
    2 ** -15,
    2 ** -20,
    2 ** -24,
    -(2 ** -17),
    2 ** -25,
    2 ** -126,
    2 ** -149,
    2 ** 15 * 1.5,
    2 ** 16,
    2 ** 128,
    2 ** -1074,
    Number.MIN_VALUE,
    -Number.MIN_VALUE,
    NaN,
    Infinity,
    -Infinity,
    new Date(0),
    new Date(-1),
    new Date(1_764_000_000_123),
    new Date(NaN),
    new Date(8.64e15),
    new Date(-8.64e15),
    { b: 1, a: 2, aa: 3, "é": 4, "z": 5, "": 6, "ab": 7, "\u{1F600}": 8 },
    { "\u00e9": 1, "\u00ff": 2, "aa": 3 },
    { __proto__: null, a: 1 },
    { "lone\ud800": 1 },
    "lone\udc00",
    deep,
    [deep],
    cycle,
    Buffer.from([1, 2, 3]),
    new Uint8Array(0),
    [undefined, null, true, false],
    new (class Point {
      x = 1;
    })(),
    new Map([[1, 2]]),
    Object.assign([1, 2], { extra: true }),
    // Objects that only look like what the codec keeps.
    Object.create(Array.prototype),
    Object.create(Date.prototype),
    Object.create(Uint8Array.prototype),
  ];
  for (const value of values) {
    assert.deepStrictEqual(
      encoded((input) => cborCodec.encode(input), value),
      encoded(encodeWithCborg, value),
      Deno.inspect(value, { depth: 2 }).slice(0, 200),
    );
  }
});

Deno.test("cbor encode: a getter that encodes while an encode runs", () => {
  const inner = { n: 1 };
  const value = {
    get nested() {
      return cborCodec.encode(inner);
    },
  };
  assert.deepStrictEqual(cborCodec.encode(value), encodeWithCborg(value));
});

/** Whether a value holds a bigint anywhere. */
function hasBigInt(value: unknown): boolean {
  if (typeof value === "bigint") return true;
  if (typeof value !== "object" || value === null) return false;
  if (value instanceof Uint8Array || value instanceof Date) return false;
  return Object.values(value).some(hasBigInt);
}
