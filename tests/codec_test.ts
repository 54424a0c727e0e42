import assert from "node:assert/strict";
import { cborCodec } from "../mod.ts";

const hex = (bytes: Uint8Array) =>
  Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");

Deno.test("cborCodec: dates are CBOR tag 1, epoch seconds", () => {
  assert.equal(hex(cborCodec.encode(new Date(0))), "c100");
  assert.equal(hex(cborCodec.encode(new Date(-5000))), "c124");
  // Milliseconds need a float: tag 1, then the shortest exact float.
  assert.equal(hex(cborCodec.encode(new Date(1500))), "c1f93e00");
  assert.match(hex(cborCodec.encode(new Date(1700000000123))), /^c1fb/);
});

Deno.test("cborCodec: dates keep every millisecond", () => {
  // Seconds as a float, times 1000, can land just below the millisecond it
  // came from; decoding must round, not truncate. A fixed-seed generator keeps
  // the run repeatable.
  let seed = 42;
  const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  for (let index = 0; index < 50_000; index++) {
    const milliseconds = Math.round((random() - 0.5) * 2 * 8.64e15);
    const decoded = cborCodec.decode(cborCodec.encode(new Date(milliseconds)));
    assert.equal((decoded as Date).getTime(), milliseconds);
  }
  for (const milliseconds of [1, -1, 999, 1700000000123, 8.64e15, -8.64e15]) {
    const decoded = cborCodec.decode(cborCodec.encode(new Date(milliseconds)));
    assert.equal((decoded as Date).getTime(), milliseconds);
  }
  assert.ok(
    Number.isNaN(
      (cborCodec.decode(cborCodec.encode(new Date(NaN))) as Date).getTime(),
    ),
  );
});

Deno.test("cborCodec: bigints are bignum tags, so they come back as bigints", () => {
  assert.equal(hex(cborCodec.encode(1n)), "c24101");
  assert.equal(hex(cborCodec.encode(-1n)), "c34100");
  for (
    const value of [
      0n,
      1n,
      -1n,
      255n,
      256n,
      2n ** 63n,
      2n ** 64n,
      -(2n ** 64n) - 1n,
      10n ** 40n,
    ]
  ) {
    assert.equal(cborCodec.decode(cborCodec.encode(value)), value);
  }
  // A plain integer from another encoder stays a number.
  assert.equal(cborCodec.decode(new Uint8Array([0x18, 0x2a])), 42);
});

Deno.test("cborCodec: numbers keep -0, NaN and the infinities", () => {
  for (
    const value of [-0, NaN, Infinity, -Infinity, 0.1, 2 ** 60, -(2 ** 53)]
  ) {
    assert.ok(
      Object.is(cborCodec.decode(cborCodec.encode(value)), value),
      String(value),
    );
  }
});

Deno.test("cborCodec: equal objects encode to equal bytes, whatever their key order", () => {
  assert.equal(
    hex(cborCodec.encode({ b: 1, a: { y: 2, x: 3 } })),
    hex(cborCodec.encode({ a: { x: 3, y: 2 }, b: 1 })),
  );
});

Deno.test("cborCodec: rejects what it could not give back unchanged", () => {
  class Money {
    constructor(readonly cents: number) {}
  }
  const cases: [unknown, RegExp][] = [
    [new Money(1), /unsupported type: Money; use a plain object/],
    [new Map(), /unsupported type: Map/],
    [new Set(), /unsupported type: Set/],
    [new Float64Array(1), /unsupported type: Float64Array/],
    [new ArrayBuffer(1), /unsupported type: ArrayBuffer/],
    [/regexp/, /unsupported type: RegExp/],
    [new Error("e"), /unsupported type: Error/],
    [() => 1, /unsupported type: Function/],
    [Symbol("s"), /unsupported type: symbol/],
    ["\ud800", /lone UTF-16 surrogate/],
    [[1, , 3], /hole at index 1/],
    [{ [Symbol("k")]: 1 }, /symbol keys/],
  ];
  for (const [value, message] of cases) {
    assert.throws(() => cborCodec.encode({ nested: [value] }), message);
  }
});

Deno.test("cborCodec: a __proto__ key decodes as a plain own property", () => {
  const decoded = cborCodec.decode(
    cborCodec.encode(JSON.parse('{"__proto__": {"polluted": true}}')),
  ) as Record<string, unknown>;
  assert.equal(Object.getPrototypeOf(decoded), Object.prototype);
  assert.deepEqual(Object.keys(decoded), ["__proto__"]);
  assert.equal(({} as Record<string, unknown>).polluted, undefined);
});

Deno.test("cborCodec: garbage and unknown tags fail to decode", () => {
  assert.throws(() => cborCodec.decode(new Uint8Array([0xff])));
  assert.throws(() => cborCodec.decode(new Uint8Array([0x82, 0x01])));
  // Tag 6 is not one this codec writes.
  assert.throws(() => cborCodec.decode(new Uint8Array([0xc6, 0x01])));
  // Tag 1 must wrap a number.
  assert.throws(
    () => cborCodec.decode(new Uint8Array([0xc1, 0x61, 0x78])),
    /tag 1/,
  );
});
