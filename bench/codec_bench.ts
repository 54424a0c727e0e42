/**
 * What cborg's options cost, on the event data the stores encode. The
 * project's codec adds type checks (reject what would not round-trip) and
 * keeps cborg's default RFC 8949 key order; the others show what each of
 * those choices costs. `deno bench bench/codec_bench.ts`
 */
import { decode, encode } from "cborg";
import { cborCodec } from "../mod.ts";
import { orderEvents } from "./_fixtures.ts";

const values = orderEvents(100).map((event) => event.data);
const encoded = values.map((value) => cborCodec.encode(value));
const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder();
const jsonEncoded = values.map((value) =>
  textEncoder.encode(JSON.stringify(value))
);

// Dates need the codec's type encoder; cborg alone rejects them, so the raw
// cborg runs use the same data with the date as a number.
const plainValues = values.map((value) => ({
  ...(value as Record<string, unknown>),
  addedAt: 1_764_000_000_000,
}));

function encodeAll(
  fn: (value: unknown) => Uint8Array,
  inputs: unknown[],
): () => void {
  return () => {
    for (const value of inputs) fn(value);
  };
}

Deno.bench({
  name: "cborCodec.encode (type checks, sorted keys)",
  group: "encode 100 events",
  baseline: true,
  fn: encodeAll((value) => cborCodec.encode(value), values),
});
Deno.bench({
  name: "cborg encode, defaults (sorted keys, no type checks)",
  group: "encode 100 events",
  fn: encodeAll((value) => encode(value), plainValues),
});
Deno.bench({
  name: "cborg encode, keys unsorted (mapSorter off)",
  group: "encode 100 events",
  fn: encodeAll(
    (value) => encode(value, { mapSorter: undefined }),
    plainValues,
  ),
});
Deno.bench({
  name: "cborg encode, float64 always",
  group: "encode 100 events",
  fn: encodeAll((value) => encode(value, { float64: true }), plainValues),
});
Deno.bench({
  name: "JSON.stringify + TextEncoder (reference)",
  group: "encode 100 events",
  fn: encodeAll((value) => textEncoder.encode(JSON.stringify(value)), values),
});

Deno.bench({
  name: "cborCodec.decode (date and bignum tags)",
  group: "decode 100 events",
  baseline: true,
  fn() {
    for (const bytes of encoded) cborCodec.decode(bytes);
  },
});
const plainEncoded = plainValues.map((value) => encode(value));
Deno.bench({
  name: "cborg decode, defaults (no tags; date as a number)",
  group: "decode 100 events",
  fn() {
    for (const bytes of plainEncoded) decode(bytes);
  },
});
Deno.bench({
  name: "TextDecoder + JSON.parse (reference)",
  group: "decode 100 events",
  fn() {
    for (const bytes of jsonEncoded) JSON.parse(textDecoder.decode(bytes));
  },
});
