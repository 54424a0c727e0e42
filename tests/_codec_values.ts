/**
 * Random values of every kind the default codec round-trips (cborCodec's
 * doc), nested: shared by the codec's property tests (cbor_test.ts) and the
 * binary COPY reads' (copy_read_test.ts).
 *
 * @module
 */
import fc from "fast-check";

/** Values the codec encodes: every kind it keeps, nested. */
export const codecValueArb: fc.Arbitrary<unknown> = fc.letrec((tie) => ({
  value: fc.oneof(
    { depthSize: "small" },
    fc.constantFrom(null, undefined, true, false, -0, NaN, Infinity, -Infinity),
    fc.integer(),
    fc.maxSafeInteger(),
    fc.double(),
    fc.float().map((value) => Number(value)),
    fc.bigInt({ min: -(2n ** 80n), max: 2n ** 80n }),
    fc.string({ unit: "grapheme", maxLength: 40 }),
    fc.string({ unit: "binary", maxLength: 40 }).filter((text) =>
      text.isWellFormed()
    ),
    fc.uint8Array({ maxLength: 40 }),
    fc.date({ noInvalidDate: true }),
    fc.array(tie("value"), { maxLength: 5 }),
    fc.dictionary(
      fc.oneof(fc.string({ maxLength: 40 }), fc.constant("__proto__")),
      tie("value"),
      { maxKeys: 5 },
    ),
  ),
})).value;
