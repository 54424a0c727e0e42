/**
 * Property-based tests over hostile and odd input, on every store: stream
 * ids, event types, metadata, data and snapshot state drawn by fast-check
 * from full Unicode, NUL characters, lone surrogates, over-long strings, SQL
 * payloads, prototype keys, deep nesting and every kind of JavaScript value.
 *
 * Each property holds for every call: it either succeeds and gives back
 * exactly what the documentation promises, or throws a typed error
 * ({@linkcode InvalidArgumentError} or {@linkcode EncodingError}) and leaves
 * everything stored unchanged, byte for byte. Whether a call must succeed is
 * decided by a model written from the documented limits (README "Limits
 * that keep every store identical" and "Data and metadata", `cborCodec`'s
 * doc), not from the implementation. No run may pollute `Object.prototype`.
 *
 * fast-check prints the seed and the shrunk counterexample of a failure;
 * pass them back as `{ seed, path }` to `fc.assert` to replay it.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import postgres from "postgres";
import {
  EncodingError,
  type EventStore,
  EventStoreError,
  InMemoryEventStore,
  InvalidArgumentError,
  type NewEvent,
  PostgresEventStore,
  type RecordedEvent,
} from "../mod.ts";
import { createTestDatabaseOrFail, type TestDatabase } from "./_database.ts";

// ---------------------------------------------------------------------------
// The documented limits. Written out here, not imported, so that a changed
// limit in the implementation fails these tests instead of moving them.

/** README: stream ids and event types are at most 500 characters. */
const MAX_NAME_LENGTH = 500;
/** README: metadata nests at most 64 levels deep. */
const MAX_METADATA_DEPTH = 64;
/** `cborCodec`: arrays and objects nest at most 1,000 levels deep. */
const MAX_DATA_DEPTH = 1_000;

// ---------------------------------------------------------------------------
// Stores under test.

/** A store the properties run on, and how to digest what it holds. */
interface StoreUnderTest {
  /** Prefixed to every test name. */
  name: string;
  /** Runs per property: fewer where each run costs round trips. */
  numRuns: number;
  /** Opens a store; whoever opened it closes it. */
  open(): Promise<EventStore>;
  /**
   * Whether each run gets a store of its own rather than sharing one. The
   * in-memory digest decodes everything held, so on a shared store each run
   * would cost more than the last.
   */
  storePerRun: boolean;
  /** A digest of every event and snapshot `store` holds. */
  fingerprint(store: EventStore): Promise<string>;
}

async function registerPostgres(database: TestDatabase): Promise<void> {
  const open = () => PostgresEventStore.connect(database.url, { max: 2 });
  {
    await using store = await open();
    await store.migrate();
  }
  // Looks at the tables directly. Its connections are opened now, outside any
  // test, so that no test reports their lifetime timers as leaked.
  const admin = postgres(database.url, { max: 2, onnotice: () => {} });
  await Promise.all([admin`SELECT 1`, admin`SELECT 1`]);
  propertyTests({
    name: "PostgresEventStore",
    numRuns: 60,
    open,
    // One database for every run: runs meet each other's streams, as
    // applications do.
    storePerRun: false,
    // As in postgres_test.ts: every column of every row, in a fixed order.
    async fingerprint() {
      const [row] = await admin`
        SELECT md5(
          coalesce((SELECT string_agg(events::text, '|' ORDER BY global_position)
                    FROM events), '') || '#' ||
          coalesce((SELECT string_agg(snapshots::text, '|' ORDER BY stream_id)
                    FROM snapshots), '')
        ) AS digest`;
      return row.digest;
    },
  });
  // Registered last, so it runs after every other test of this file.
  Deno.test("PostgresEventStore: property: drop the test database", async () => {
    await admin.end();
    await database.drop();
  });
}

/**
 * The in-memory store has no tables to hash: digest everything it gives
 * back, every event of `readAll` and the snapshot of every stream (a
 * snapshot needs a stream with events, so none is missed).
 */
async function memoryFingerprint(store: EventStore): Promise<string> {
  const events = await store.readAll();
  const streamIds = [...new Set(events.map((event) => event.streamId))];
  const snapshots = [];
  for (const streamId of streamIds) {
    snapshots.push(await store.loadSnapshot(streamId));
  }
  const text = canonical([events, snapshots]);
  const digest = await crypto.subtle.digest(
    "SHA-256",
    new TextEncoder().encode(text),
  );
  return Array.from(
    new Uint8Array(digest),
    (byte) => byte.toString(16).padStart(2, "0"),
  ).join("");
}

/**
 * A text that tells apart every value the codec and JSON give back: `-0`
 * from `0`, `1n` from `1`, `undefined` from a missing key, a null prototype
 * from `Object.prototype`, a `Date` and bytes by content. Keys are sorted.
 */
function canonical(value: unknown): string {
  switch (typeof value) {
    case "undefined":
      return "u";
    case "boolean":
      return value ? "t" : "f";
    case "number":
      return Object.is(value, -0) ? "-0" : `d${value}`;
    case "bigint":
      return `${value}n`;
    case "string":
      return JSON.stringify(value); // escapes lone surrogates
    case "object":
      break;
    default:
      throw new TypeError(`canonical: unexpected ${typeof value}`);
  }
  if (value === null) return "n";
  if (value instanceof Date) return `D${value.getTime()}`;
  if (value instanceof Uint8Array) return `B[${value.join(",")}]`;
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  const record = value as Record<string, unknown>;
  const entries = Object.keys(record).sort().map((key) =>
    `${JSON.stringify(key)}:${canonical(record[key])}`
  );
  const prototype = Object.getPrototypeOf(value) === null ? "null" : "";
  return `${prototype}{${entries.join(",")}}`;
}

// ---------------------------------------------------------------------------
// The models: what the documentation says is refused, and what comes back.

/** Why a stream id or event type is refused, or `undefined`. */
function nameProblem(name: string): string | undefined {
  if (name.length === 0) return "empty";
  if (name.length > MAX_NAME_LENGTH) return "too long";
  return textProblem(name);
}

function textProblem(text: string): string | undefined {
  if (text.includes("\0")) return "NUL";
  if (!text.isWellFormed()) return "lone surrogate";
  return undefined;
}

function isPlainObject(value: object): boolean {
  const prototype = Object.getPrototypeOf(value);
  return prototype === Object.prototype || prototype === null;
}

/**
 * Why metadata is refused, or `undefined`: README, "metadata is a plain JSON
 * object (finite numbers, no `undefined`, no cycles, at most 64 levels
 * deep)", and the NUL and lone-surrogate rule of every stored text.
 */
function metadataProblem(metadata: unknown): string | undefined {
  if (
    typeof metadata !== "object" || metadata === null ||
    Array.isArray(metadata) || !isPlainObject(metadata)
  ) {
    return "not a plain object";
  }
  return jsonProblem(metadata, new Set(), 1);
}

function jsonProblem(
  value: unknown,
  ancestors: Set<object>,
  depth: number,
): string | undefined {
  switch (typeof value) {
    case "string":
      return textProblem(value);
    case "boolean":
      return undefined;
    case "number":
      return Number.isFinite(value) ? undefined : "not finite";
    case "object":
      if (value === null) return undefined;
      break;
    default:
      return `a ${typeof value}`;
  }
  if (depth > MAX_METADATA_DEPTH) return "too deep";
  if (ancestors.has(value)) return "a cycle";
  if (!Array.isArray(value) && !isPlainObject(value)) return "not JSON";
  if (Object.getOwnPropertySymbols(value).length > 0) return "symbol keys";
  ancestors.add(value);
  try {
    for (const key of Object.keys(value)) {
      const problem = textProblem(key) ??
        jsonProblem(
          (value as Record<string, unknown>)[key],
          ancestors,
          depth + 1,
        );
      if (problem !== undefined) return problem;
    }
    return undefined;
  } finally {
    ancestors.delete(value);
  }
}

/** Metadata as JSON keeps it: `-0` becomes `0`, null prototypes plain. */
function asJson(metadata: unknown): unknown {
  return JSON.parse(JSON.stringify(metadata));
}

/**
 * Why the codec refuses `data`, or `undefined`: `cborCodec` round-trips
 * plain objects, arrays, strings, numbers, booleans, `null`, `undefined`,
 * `bigint`, `Uint8Array` and `Date`, and refuses everything else, cycles,
 * symbol keys, holes, lone surrogates and nesting deeper than 1,000 levels.
 */
function dataProblem(
  value: unknown,
  ancestors = new Set<object>(),
  depth = 1,
): string | undefined {
  switch (typeof value) {
    case "string":
      return value.isWellFormed() ? undefined : "lone surrogate";
    case "number":
    case "boolean":
    case "undefined":
    case "bigint":
      return undefined;
    case "object":
      if (value === null) return undefined;
      break;
    default:
      return `a ${typeof value}`;
  }
  if (value instanceof Uint8Array) return undefined;
  if (Object.getPrototypeOf(value) === Date.prototype) return undefined;
  if (depth > MAX_DATA_DEPTH) return "too deep";
  if (ancestors.has(value)) return "a cycle";
  const plain = Array.isArray(value)
    ? Object.getPrototypeOf(value) === Array.prototype
    : isPlainObject(value);
  if (!plain) return "unsupported"; // a class instance, even of Array
  if (Object.getOwnPropertySymbols(value).length > 0) return "symbol keys";
  ancestors.add(value);
  try {
    if (Array.isArray(value)) {
      for (let index = 0; index < value.length; index++) {
        if (!(index in value)) return "a hole";
        const problem = dataProblem(value[index], ancestors, depth + 1);
        if (problem !== undefined) return problem;
      }
      return undefined;
    }
    for (const key of Object.keys(value)) {
      const problem = (key.isWellFormed() ? undefined : "lone surrogate") ??
        dataProblem(
          (value as Record<string, unknown>)[key],
          ancestors,
          depth + 1,
        );
      if (problem !== undefined) return problem;
    }
    return undefined;
  } finally {
    ancestors.delete(value);
  }
}

/**
 * What the codec gives back for accepted `data`: the same value, except the
 * two type changes its documentation names "by design": an object with a
 * `null` prototype comes back as a plain object, a `Uint8Array` subclass as
 * a `Uint8Array`.
 */
function asDecoded(value: unknown): unknown {
  if (typeof value !== "object" || value === null) return value;
  if (value instanceof Uint8Array) return new Uint8Array(value);
  if (value instanceof Date) return value;
  if (Array.isArray(value)) return value.map(asDecoded);
  const copy: Record<string, unknown> = {};
  for (const [key, item] of Object.entries(value)) {
    // Assignment would set the prototype of a `__proto__` key's holder.
    Object.defineProperty(copy, key, {
      value: asDecoded(item),
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
  return copy;
}

// ---------------------------------------------------------------------------
// Arbitraries.

/**
 * Subclasses of what the codec keeps. The codec gives a `Uint8Array`
 * subclass back as a `Uint8Array`, by design; the others are class
 * instances, refused.
 */
class Bytes extends Uint8Array {}
class Stamp extends Date {}
class List<T> extends Array<T> {}

/** Strings that have broken stores, drivers, SQL and JSON before. */
const HOSTILE_FRAGMENTS = [
  "'; DROP TABLE events; --",
  '" OR 1=1',
  "' OR '1'='1",
  "$1",
  "$$",
  "\\",
  "\\\\",
  "E'\\''",
  "\\x00",
  "%s%n",
  "${x}",
  "__proto__",
  "constructor",
  "prototype",
  "NULL",
  "null",
  "{}",
  "{",
  "}",
  ",",
  '"',
  "'",
  " ",
  "\t\r\n",
  "-",
  "\0",
  "\uD800",
  "\uDFFF",
  "\uDBFF\uDFFF",
  "💥",
  "👩‍👩‍👧",
  "e\u0301",
  "\u202E",
  "\uFEFF",
  "\uFFFE",
  "\uFFFF",
  "Ω",
];

/** Stream ids and event types: mostly valid, often not, never boring. */
const nameArb: fc.Arbitrary<string> = fc.oneof(
  fc.string({ unit: "binary", maxLength: 40 }),
  fc.string({ unit: "grapheme", minLength: 1, maxLength: 40 }),
  fc.constantFrom(...HOSTILE_FRAGMENTS),
  fc.array(
    fc.oneof(
      fc.constantFrom(...HOSTILE_FRAGMENTS),
      fc.string({ unit: "grapheme", maxLength: 6 }),
    ),
    { minLength: 1, maxLength: 6 },
  ).map((parts) => parts.join("")),
  // Around the 500-character limit, counted in UTF-16 code units.
  fc.record({
    length: fc.integer({ min: MAX_NAME_LENGTH - 3, max: MAX_NAME_LENGTH + 3 }),
    filler: fc.constantFrom("a", "é", "-"),
    last: fc.constantFrom("", "z", "😀", "\uD800", "\0"),
  }).map(({ length, filler, last }) =>
    filler.repeat(Math.max(0, length - last.length)) + last
  ),
  fc.string({ unit: "grapheme", minLength: 450, maxLength: 600 }),
);

/** Object keys: prototype keys, JSON-hostile and SQL-hostile ones. */
const keyArb: fc.Arbitrary<string> = fc.oneof(
  fc.string({ unit: "binary", maxLength: 6 }),
  fc.string({ unit: "grapheme", maxLength: 6 }),
  fc.constantFrom(
    "__proto__",
    "constructor",
    "prototype",
    "toString",
    "valueOf",
    "hasOwnProperty",
    "__defineGetter__",
    "polluted",
    "length",
    "",
    "0",
    "-0",
    "a\0b",
    "\uD800",
    "'; DROP TABLE events; --",
    "$1",
    "\\",
    '"',
  ),
);

/** Builds an object from entries as JSON.parse would: keys always own. */
function objectFrom(
  entries: [string, unknown][],
  nullPrototype = false,
): Record<string, unknown> {
  const object: Record<string, unknown> = nullPrototype
    ? Object.create(null)
    : {};
  for (const [key, value] of entries) {
    Object.defineProperty(object, key, {
      value,
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
  return object;
}

/**
 * A string past 64 KiB once encoded, to stress buffers, cheaply generated.
 * Not larger: the PostgreSQL digest reads every stored byte on every run.
 */
const hugeStringArb = fc.record({
  unit: fc.oneof(
    fc.string({ unit: "grapheme", minLength: 1, maxLength: 4 }),
    fc.string({ unit: "binary", minLength: 1, maxLength: 4 }),
  ),
  length: fc.integer({ min: 10_000, max: 80_000 }),
}).map(({ unit, length }) => unit.repeat(Math.ceil(length / unit.length)));

const numberArb: fc.Arbitrary<number> = fc.oneof(
  fc.double(), // NaN, ±Infinity, -0, subnormals
  fc.integer(),
  fc.constantFrom(
    0,
    -0,
    Number.MAX_VALUE,
    Number.MIN_VALUE,
    Number.MAX_SAFE_INTEGER,
    2 ** 53 + 2,
    1e21,
    -1e-7,
    0.1 + 0.2,
    NaN,
    Infinity,
    -Infinity,
  ),
);

/** Values for metadata: JSON, plus what JSON would silently change. */
const metadataLeafArb: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 4, arbitrary: fc.string({ unit: "grapheme", maxLength: 12 }) },
  { weight: 2, arbitrary: fc.string({ unit: "binary", maxLength: 12 }) },
  { weight: 2, arbitrary: fc.constantFrom(...HOSTILE_FRAGMENTS) },
  { weight: 4, arbitrary: numberArb },
  { weight: 1, arbitrary: fc.boolean() },
  { weight: 1, arbitrary: fc.constant(null) },
  {
    weight: 1,
    arbitrary: fc.constantFrom<unknown>(
      undefined,
      1n,
      new Date(0),
      () => 1,
      Symbol("s"),
      new Map(),
      List.from([1, "a"]), // JSON keeps it as an array
    ),
  },
);

const metadataValueArb: fc.Arbitrary<unknown> = fc.letrec<{
  value: unknown;
  array: unknown[];
  object: Record<string, unknown>;
}>((tie) => ({
  value: fc.oneof(
    { maxDepth: 4, depthSize: "small" },
    metadataLeafArb,
    tie("array"),
    tie("object"),
  ),
  array: fc.array(tie("value"), { maxLength: 4 }),
  object: fc.record({
    entries: fc.array(fc.tuple(keyArb, tie("value")), { maxLength: 4 }),
    nullPrototype: fc.boolean(),
  }).map(({ entries, nullPrototype }) => objectFrom(entries, nullPrototype)),
})).value;

/** Arrays and objects nested `depth` levels deep, around a leaf. */
function nested(
  depth: number,
  shape: "array" | "object" | "alternate",
  key: string,
  leaf: unknown,
): unknown {
  let value = leaf;
  for (let level = depth; level >= 1; level--) {
    const array = shape === "array" ||
      (shape === "alternate" && level % 2 === 0);
    value = array ? [value] : objectFrom([[key, value]]);
  }
  return value;
}

const shapeArb = fc.constantFrom<"array" | "object" | "alternate">(
  "array",
  "object",
  "alternate",
);

const metadataArb: fc.Arbitrary<unknown> = fc.oneof(
  // Objects with hostile keys and values.
  {
    weight: 6,
    arbitrary: fc.record({
      entries: fc.array(fc.tuple(keyArb, metadataValueArb), { maxLength: 6 }),
      nullPrototype: fc.boolean(),
    }).map(({ entries, nullPrototype }) => objectFrom(entries, nullPrototype)),
  },
  // Around the depth limit: the object itself is level 1.
  {
    weight: 2,
    arbitrary: fc.record({
      depth: fc.integer({ min: MAX_METADATA_DEPTH - 3, max: 80 }),
      shape: shapeArb,
      key: keyArb,
      leaf: metadataLeafArb,
    }).map(({ depth, shape, key, leaf }) =>
      objectFrom([[key, nested(depth - 1, shape, key, leaf)]])
    ),
  },
  // A cycle, somewhere below the top.
  {
    weight: 1,
    arbitrary: fc.record({ key: keyArb, depth: fc.integer({ min: 0, max: 3 }) })
      .map(({ key, depth }) => {
        const top = objectFrom([]);
        let holder = top;
        for (let level = 0; level < depth; level++) {
          const child = objectFrom([]);
          holder[`level${level}`] = child;
          holder = child;
        }
        Object.defineProperty(holder, key, { value: top, enumerable: true });
        return top;
      }),
  },
  { weight: 1, arbitrary: hugeStringArb.map((text) => ({ text })) },
  // Not an object at all, or not a plain one.
  {
    weight: 1,
    arbitrary: fc.constantFrom<() => unknown>(
      () => null,
      () => [],
      () => [{ a: 1 }],
      () => "metadata",
      () => 5,
      () => new Date(0),
      () => new Map([["a", 1]]),
      () =>
        new (class Metadata {
          a = 1;
        })(),
      () => ({ [Symbol("key")]: 1 }),
    ).map((make) => make()),
  },
);

/** `fc.anything` with every option that matters to a codec. */
function anythingArb(stringUnit: "binary" | "grapheme"): fc.Arbitrary<unknown> {
  return fc.anything({
    key: keyArb,
    maxDepth: 4,
    maxKeys: 5,
    stringUnit,
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
}

/** Values one rarely meets, each fresh, with the codec's documented fate. */
const oddDataArb: fc.Arbitrary<unknown> = fc.constantFrom<() => unknown>(
  () => new Uint8Array([0, 255, 128]).subarray(1), // a view: bytes 255, 128
  () => new Bytes([1, 2, 3]), // comes back a Uint8Array, by design
  () => new Uint8Array(0),
  () => new Date(8.64e15),
  () => new Date(-8.64e15 + 1),
  () => new Date(-1),
  () => new Date(NaN),
  () => 2n ** 64n + 1n,
  () => -(2n ** 70n),
  () => 0n,
  () => [-0, NaN, Infinity, -Infinity, Number.MIN_VALUE, 2 ** 60],
  () => objectFrom([["__proto__", { polluted: true }]]),
  () => objectFrom([["__proto__", 1]], true),
  () => objectFrom([["constructor", { name: "Map" }], ["toString", "x"]]),
  () => ({ undefinedValue: undefined }),
  () => {
    const shared = { a: 1 };
    return { left: shared, right: [shared] }; // shared, not a cycle
  },
  () => {
    const cycle: unknown[] = [1];
    cycle.push(cycle);
    return cycle;
  },
  () => new Stamp(0),
  () => List.from([1, 2]),
  () => new Int16Array(2),
  () => new Float64Array([1.5]),
  () => new Uint8ClampedArray(1),
  () => new BigInt64Array(1),
  () => new ArrayBuffer(2),
  () => new DataView(new ArrayBuffer(1)),
  () => /regexp/g,
  () => new Error("boom"),
  () => new WeakMap(),
  () => new URL("https://example.com/"),
  () =>
    new (class Money {
      cents = 5;
    })(),
  () => Object.create(Array.prototype),
  () => () => 1,
  () => Symbol("data"),
  () => new String("boxed"),
  () => new Number(1),
  () => Object(1n),
  () => ({ [Symbol("key")]: 1 }),
  () => Promise.resolve(1),
).map((make) => make());

const dataLeafArb: fc.Arbitrary<unknown> = fc.oneof(
  fc.constantFrom<unknown>(1, "leaf", null, undefined, -0, 1n, "\uD800"),
  fc.constant(new Date(0)),
);

const dataArb: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 5, arbitrary: anythingArb("grapheme") },
  { weight: 3, arbitrary: anythingArb("binary") },
  { weight: 2, arbitrary: oddDataArb },
  // Nesting: shallow, around the limit, and far beyond it.
  {
    weight: 2,
    arbitrary: fc.record({
      depth: fc.oneof(
        fc.integer({ min: 1, max: 30 }),
        fc.integer({ min: MAX_DATA_DEPTH - 4, max: MAX_DATA_DEPTH + 4 }),
        fc.integer({ min: MAX_DATA_DEPTH + 5, max: 30_000 }),
      ),
      shape: shapeArb,
      key: keyArb,
      leaf: dataLeafArb,
    }).map(({ depth, shape, key, leaf }) => nested(depth, shape, key, leaf)),
  },
  { weight: 1, arbitrary: hugeStringArb },
);

/** A fresh stream id: a property's runs must not meet each other's streams. */
function freshStreamId(): string {
  return `property-${crypto.randomUUID()}`;
}

// ---------------------------------------------------------------------------
// Checks shared by the properties.

const objectPrototypeBefore = describeObjectPrototype();

/** Every own property of Object.prototype, with its value or accessors. */
function describeObjectPrototype(): Map<string | symbol, unknown[]> {
  return new Map(
    Reflect.ownKeys(Object.prototype).map((key) => {
      const descriptor = Object.getOwnPropertyDescriptor(
        Object.prototype,
        key,
      )!;
      return [key, [descriptor.value, descriptor.get, descriptor.set]];
    }),
  );
}

/** Nothing was added to, or replaced on, `Object.prototype`. */
function assertNoPollution(): void {
  const now = describeObjectPrototype();
  assert.deepStrictEqual([...now.keys()], [...objectPrototypeBefore.keys()]);
  for (const [key, parts] of now) {
    const before = objectPrototypeBefore.get(key)!;
    assert.ok(
      parts.every((part, index) => part === before[index]),
      `Object.prototype.${String(key)} was replaced`,
    );
  }
  assert.equal(Object.getPrototypeOf(Object.prototype), null);
  assert.equal(({} as Record<string, unknown>).polluted, undefined);
}

/** What a refused call must throw. */
interface Refusal {
  type: typeof InvalidArgumentError | typeof EncodingError;
  /** The error's `field`, exactly or (a RegExp) by pattern. */
  field: string | RegExp;
}

/** Runs `call`, and says whether it resolved (and to what) or threw. */
async function attempt<T>(call: () => Promise<T>): Promise<
  { ok: true; value: T } | { ok: false; error: unknown }
> {
  try {
    return { ok: true, value: await call() };
  } catch (error) {
    return { ok: false, error };
  }
}

function assertRefusedAs(error: unknown, refusal: Refusal): void {
  assert.ok(
    error instanceof EventStoreError,
    `expected an EventStoreError, got ${String(error)}`,
  );
  assert.ok(
    error instanceof refusal.type,
    `expected ${refusal.type.name}, got ${error.name}: ${error.message}`,
  );
  const field = (error as InvalidArgumentError | EncodingError).field;
  if (typeof refusal.field === "string") {
    assert.equal(field, refusal.field, error.message);
  } else {
    assert.match(field, refusal.field, error.message);
  }
}

/**
 * Appends `events` to `streamId` and checks the outcome: refused as
 * `refusal` says, with nothing stored changed; or, when `refusal` is
 * undefined, stored and read back (loadEvents and readAll agree) with each
 * event's stream id, type and version exact. Returns the events read back.
 */
async function appendAndCheck(
  target: StoreUnderTest,
  store: EventStore,
  streamId: string,
  events: NewEvent[],
  refusal: Refusal | undefined,
): Promise<RecordedEvent[] | undefined> {
  const fingerprint = await target.fingerprint(store);
  const before = refusal === undefined || refusal.field !== "streamId"
    ? await store.streamVersion(streamId)
    : undefined;
  const outcome = await attempt(() => store.appendEvents(streamId, events));
  if (refusal !== undefined) {
    assert.ok(!outcome.ok, "expected the append to be refused");
    assertRefusedAs(outcome.error, refusal);
    assert.equal(
      await target.fingerprint(store),
      fingerprint,
      "a refused append changed what is stored",
    );
    if (before !== undefined) {
      assert.equal(await store.streamVersion(streamId), before);
    }
    return undefined;
  }
  if (!outcome.ok) throw outcome.error;
  const version = before! + events.length;
  assert.equal(outcome.value.version, version);
  assert.equal(await store.streamVersion(streamId), version);
  const loaded = await store.loadEvents(streamId, { fromVersion: before! + 1 });
  assert.deepStrictEqual(
    loaded.map((event) => [event.streamId, event.version, event.type]),
    events.map((event, index) => [streamId, before! + 1 + index, event.type]),
  );
  assert.equal(loaded.at(-1)!.globalPosition, outcome.value.globalPosition);
  const fromPosition = loaded[0].globalPosition - 1n;
  assert.deepStrictEqual(await store.readAll({ fromPosition }), loaded);
  return loaded;
}

/**
 * One Deno.test per property: `predicate` runs on each value `arbitrary`
 * draws, on the store the target shares between runs or on a fresh one.
 */
function property<T>(
  target: StoreUnderTest,
  name: string,
  arbitrary: fc.Arbitrary<T>,
  predicate: (store: EventStore, value: T) => Promise<void>,
): void {
  Deno.test(`${target.name}: property: ${name}`, async () => {
    const shared = target.storePerRun ? undefined : await target.open();
    try {
      await fc.assert(
        fc.asyncProperty(arbitrary, async (value) => {
          const store = shared ?? await target.open();
          try {
            await predicate(store, value);
          } finally {
            if (shared === undefined) await store.close();
          }
          assertNoPollution();
        }),
        { numRuns: target.numRuns },
      );
    } finally {
      await shared?.close();
    }
  });
}

// ---------------------------------------------------------------------------
// The properties, registered once per store.

function propertyTests(target: StoreUnderTest): void {
  property(
    target,
    "stream ids and event types round-trip exactly, or are refused and change nothing",
    fc.tuple(nameArb, fc.array(nameArb, { minLength: 1, maxLength: 3 })),
    async (store, [streamId, types]) => {
      const badType = types.findIndex((type) =>
        nameProblem(type) !== undefined
      );
      const refusal: Refusal | undefined = nameProblem(streamId) !== undefined
        ? { type: InvalidArgumentError, field: "streamId" }
        : badType !== -1
        ? { type: InvalidArgumentError, field: `events[${badType}].type` }
        : undefined;
      const events = types.map((type, n) => ({ type, data: { n } }));
      const loaded = await appendAndCheck(
        target,
        store,
        streamId,
        events,
        refusal,
      );
      if (loaded !== undefined) {
        assert.deepStrictEqual(
          loaded.map((event) => [event.data, event.metadata]),
          events.map((event) => [event.data, {}]),
        );
        await checkNamesReadBack(store, streamId, loaded);
      } else {
        await checkNamesRefusedEverywhere(store, streamId, types);
      }
    },
  );

  property(
    target,
    "metadata round-trips as JSON keeps it, or is refused and changes nothing",
    fc.tuple(metadataArb, fc.nat({ max: 2 })),
    async (store, [metadata, others]) => {
      // Alone, or among others: PostgreSQL has one statement for one
      // event and another, with arrays, for several.
      const at = others === 0 ? 0 : others - 1;
      const events: NewEvent[] = Array.from(
        { length: others + 1 },
        (_, index) => ({ type: "MetadataTested", data: index }),
      );
      events[at].metadata = metadata as Record<string, unknown>;
      const refusal: Refusal | undefined =
        metadataProblem(metadata) === undefined ? undefined : {
          type: InvalidArgumentError,
          field: new RegExp(`^events\\[${at}\\]\\.metadata`),
        };
      const loaded = await appendAndCheck(
        target,
        store,
        freshStreamId(),
        events,
        refusal,
      );
      if (loaded !== undefined) {
        const stored = loaded[at].metadata;
        assert.equal(Object.getPrototypeOf(stored), Object.prototype);
        // README: metadata is plain JSON, so it comes back as JSON keeps
        // it (-0 as 0, a null prototype as Object.prototype), exactly.
        assert.deepStrictEqual(stored, asJson(metadata));
        for (const [index, event] of loaded.entries()) {
          if (index !== at) assert.deepStrictEqual(event.metadata, {});
        }
      }
    },
  );

  property(
    target,
    "data round-trips exactly as the codec documents, or is refused and changes nothing",
    fc.tuple(dataArb, fc.boolean()),
    async (store, [data, withOther]) => {
      const events: NewEvent[] = [{ type: "DataTested", data }];
      if (withOther) events.unshift({ type: "DataTested", data: "other" });
      const at = events.length - 1;
      const refusal: Refusal | undefined = dataProblem(data) === undefined
        ? undefined
        : { type: EncodingError, field: `events[${at}].data` };
      const loaded = await appendAndCheck(
        target,
        store,
        freshStreamId(),
        events,
        refusal,
      );
      if (loaded !== undefined) {
        assert.deepStrictEqual(loaded[at].data, asDecoded(data));
      }
    },
  );

  property(
    target,
    "snapshot state round-trips exactly as the codec documents, or is refused and changes nothing",
    dataArb,
    async (store, state) => {
      const streamId = freshStreamId();
      await store.appendEvents(streamId, [
        { type: "SnapshotTested", data: 1 },
        { type: "SnapshotTested", data: 2 },
      ]);
      await store.saveSnapshot(streamId, 1, { good: true });
      const fingerprint = await target.fingerprint(store);
      const outcome = await attempt(() =>
        store.saveSnapshot(streamId, 2, state)
      );
      const snapshot = await store.loadSnapshot(streamId);
      if (dataProblem(state) !== undefined) {
        assert.ok(!outcome.ok, "expected the snapshot to be refused");
        assertRefusedAs(outcome.error, {
          type: EncodingError,
          field: "state",
        });
        assert.equal(await target.fingerprint(store), fingerprint);
        assert.equal(snapshot?.version, 1);
        assert.deepStrictEqual(snapshot?.state, { good: true });
      } else {
        if (!outcome.ok) throw outcome.error;
        assert.equal(snapshot?.streamId, streamId);
        assert.equal(snapshot?.version, 2);
        assert.deepStrictEqual(snapshot?.state, asDecoded(state));
      }
    },
  );

  property(
    target,
    "a batch with one bad event among good ones stores nothing",
    fc.tuple(
      fc.array(goodEventArb, { maxLength: 4 }),
      badEventArb,
      fc.nat(),
      fc.boolean(),
    ),
    async (store, [good, bad, position, existing]) => {
      const streamId = freshStreamId();
      if (existing) {
        await store.appendEvents(streamId, [{ type: "Existing", data: 0 }]);
      }
      const at = position % (good.length + 1);
      const events = [...good.slice(0, at), bad, ...good.slice(at)]
        .map((event) => withFreshId(event));
      await appendAndCheck(target, store, streamId, events, {
        type: bad.refusedWith,
        field: new RegExp(`^events\\[${at}\\]($|\\.|\\[)`),
      });
      assert.equal(await store.streamVersion(streamId), existing ? 1 : 0);
    },
  );
}

/** With a successful append: every other way of reading names agrees. */
async function checkNamesReadBack(
  store: EventStore,
  streamId: string,
  loaded: RecordedEvent[],
): Promise<void> {
  const fromPosition = loaded[0].globalPosition - 1n;
  const type = loaded[0].type;
  assert.deepStrictEqual(
    await store.readAll({ fromPosition, types: [type] }),
    loaded.filter((event) => event.type === type),
  );
  const dash = streamId.indexOf("-");
  const category = dash === -1 ? streamId : streamId.slice(0, dash);
  if (nameProblem(category) === undefined) {
    assert.deepStrictEqual(
      await store.readAll({ fromPosition, category }),
      loaded,
    );
  }
  const version = loaded.at(-1)!.version;
  await store.saveSnapshot(streamId, version, { version });
  const snapshot = await store.loadSnapshot(streamId);
  assert.equal(snapshot?.streamId, streamId);
  assert.deepStrictEqual(snapshot?.state, { version });
}

/** With a refused name: every other method taking it refuses it too. */
async function checkNamesRefusedEverywhere(
  store: EventStore,
  streamId: string,
  types: string[],
): Promise<void> {
  if (nameProblem(streamId) !== undefined) {
    const streamIdRefusal: Refusal = {
      type: InvalidArgumentError,
      field: "streamId",
    };
    const calls: (() => Promise<unknown>)[] = [
      () => store.streamVersion(streamId),
      () => store.loadEvents(streamId),
      () => store.loadSnapshot(streamId),
      () => store.saveSnapshot(streamId, 1, {}),
    ];
    for (const call of calls) {
      const outcome = await attempt(call);
      assert.ok(!outcome.ok, "expected a refusal");
      assertRefusedAs(outcome.error, streamIdRefusal);
    }
  }
  for (const type of types) {
    if (nameProblem(type) === undefined) continue;
    const outcome = await attempt(() => store.readAll({ types: [type] }));
    assert.ok(!outcome.ok, "expected readAll to refuse the type");
    assertRefusedAs(outcome.error, {
      type: InvalidArgumentError,
      field: "options.types[0]",
    });
  }
}

// ---------------------------------------------------------------------------
// Events for the batch property.

const validNameArb = nameArb.filter((name) => nameProblem(name) === undefined);

/** A valid event; `id` says whether to give it a fresh UUID. */
interface GoodEvent extends NewEvent {
  withId?: boolean;
}

const goodEventArb: fc.Arbitrary<GoodEvent> = fc.record({
  type: validNameArb,
  data: anythingArb("grapheme").filter((data) =>
    dataProblem(data) === undefined
  ),
  metadata: fc.option(
    metadataArb.filter((metadata) => metadataProblem(metadata) === undefined),
    { nil: undefined },
  ) as fc.Arbitrary<Record<string, unknown> | undefined>,
  withId: fc.boolean(),
});

/** An event the store must refuse, and the error it must refuse it with. */
type BadEvent = GoodEvent & {
  refusedWith: typeof InvalidArgumentError | typeof EncodingError;
};

function bad(
  arbitrary: fc.Arbitrary<unknown>,
  refusedWith: BadEvent["refusedWith"],
): fc.Arbitrary<BadEvent> {
  return arbitrary.map((event) =>
    Object.assign(event as BadEvent, { refusedWith })
  );
}

const badEventArb: fc.Arbitrary<BadEvent> = fc.oneof(
  bad(
    nameArb.filter((name) => nameProblem(name) !== undefined)
      .map((type) => ({ type, data: 1 })),
    InvalidArgumentError,
  ),
  bad(
    metadataArb.filter((metadata) => metadataProblem(metadata) !== undefined)
      .map((metadata) => ({ type: "Bad", data: 1, metadata })),
    InvalidArgumentError,
  ),
  bad(
    dataArb.filter((data) => dataProblem(data) !== undefined)
      .map((data) => ({ type: "Bad", data })),
    EncodingError,
  ),
  bad(
    fc.oneof(
      fc.string({ maxLength: 40 }),
      fc.constantFrom(
        "00000000-0000-4000-8000-00000000000g",
        "'; DROP TABLE events; --",
        "00000000-0000-4000-8000-0000000000000",
        " 00000000-0000-4000-8000-000000000000",
      ),
    ).map((id) => ({ type: "Bad", data: 1, id })),
    InvalidArgumentError,
  ),
  // Not an event, or one whose fields cannot even be read. A wrapper object
  // carries `refusedWith`; `withFreshId` unwraps it.
  bad(
    fc.constantFrom<() => unknown>(
      () => null,
      () => 42,
      () => "event",
      () => [],
      () =>
        new Proxy({}, {
          get() {
            throw new Error("a hostile getter");
          },
        }),
    ).map((make) => ({ unwrapped: make() })),
    InvalidArgumentError,
  ),
);

/** The event to append: fresh UUIDs where asked, wrappers unwrapped. */
function withFreshId(event: GoodEvent | BadEvent): NewEvent {
  if ("unwrapped" in event) return event.unwrapped as NewEvent;
  const { withId, ...rest } = event;
  delete (rest as Partial<BadEvent>).refusedWith;
  return withId ? { ...rest, id: crypto.randomUUID() } : rest;
}

// ---------------------------------------------------------------------------
// Registration, last: the arbitraries above must exist first.

propertyTests({
  name: "InMemoryEventStore",
  numRuns: 150,
  open: () => Promise.resolve(new InMemoryEventStore()),
  storePerRun: true,
  fingerprint: memoryFingerprint,
});

const database = await createTestDatabaseOrFail("PostgresEventStore");
if (database !== undefined) await registerPostgres(database);
