/**
 * The one suite every store passes: each behaviour of the {@linkcode EventStore}
 * contract, written once. A store's test file calls
 * {@linkcode testEventStore} with a factory; a case may be skipped only with
 * a stated reason, which is printed.
 *
 * @module
 */

import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import {
  ConcurrencyConflictError,
  DuplicateEventError,
  EncodingError,
  type EventStore,
  type ExpectedVersion,
  InvalidArgumentError,
  type NewEvent,
  StoreClosedError,
} from "../mod.ts";

/** A case to skip for one store, and why. */
export interface SkippedCase {
  /** The case's name, as printed after the store's name. */
  test: string;
  /** Why this store cannot pass it; printed in the test name. */
  reason: string;
}

/** Options of {@linkcode testEventStore}. */
export interface ConformanceOptions {
  /** Cases this store skips, each with its reason. */
  skip?: SkippedCase[];
  /** Deno.test's resource and op sanitizers; on by default. */
  sanitize?: boolean;
  /**
   * A digest of everything the store holds (every stream and snapshot, byte
   * for byte). When given, the bad-input cases check that refused calls
   * left it unchanged, not only the stream they targeted.
   */
  fingerprint?: () => Promise<string>;
}

/** Opens a store for one case; the case closes it. */
export type OpenStore = () => EventStore | Promise<EventStore>;

interface ConformanceCase {
  name: string;
  run(store: EventStore, storage: StorageCheck): Promise<void>;
}

/** Checks that calls changed nothing stored, where the store can tell. */
interface StorageCheck {
  unchangedBy(calls: () => Promise<void>): Promise<void>;
}

function storageCheck(fingerprint?: () => Promise<string>): StorageCheck {
  return {
    async unchangedBy(calls) {
      const before = await fingerprint?.();
      await calls();
      const after = await fingerprint?.();
      assert.equal(after, before, "refused calls changed what is stored");
    },
  };
}

/**
 * Registers one `Deno.test` per case of the contract, each on a fresh store
 * from `open`. Cases use random stream ids, so stores may share a database.
 *
 * @param name The store's name, prefixed to every case.
 * @param open Opens a store; each case closes the one it got.
 * @param options Cases to skip, with reasons.
 */
export function testEventStore(
  name: string,
  open: OpenStore,
  options: ConformanceOptions = {},
): void {
  const skipped = new Map(
    (options.skip ?? []).map((entry) => [entry.test, entry.reason]),
  );
  for (const skippedName of skipped.keys()) {
    if (!CASES.some((testCase) => testCase.name === skippedName)) {
      throw new Error(`Cannot skip unknown conformance case ${skippedName}`);
    }
  }
  for (const testCase of CASES) {
    const reason = skipped.get(testCase.name);
    Deno.test({
      name: reason === undefined
        ? `${name}: ${testCase.name}`
        : `${name}: ${testCase.name} (skipped: ${reason})`,
      ignore: reason !== undefined,
      sanitizeOps: options.sanitize ?? true,
      sanitizeResources: options.sanitize ?? true,
      async fn() {
        const store = await open();
        try {
          await testCase.run(store, storageCheck(options.fingerprint));
        } finally {
          await store.close();
        }
      },
    });
  }
}

/** A category (no `-` in it) that no other case or run uses. */
export function newCategory(): string {
  return `category${crypto.randomUUID().replaceAll("-", "")}`;
}

/** A stream id no other case or run uses. */
export function newStreamId(prefix = "stream"): string {
  return `${prefix}-${crypto.randomUUID()}`;
}

function events(count: number, type = "Happened"): NewEvent<{ n: number }>[] {
  return Array.from({ length: count }, (_, index) => ({
    type,
    data: { n: index + 1 },
  }));
}

/** The same events, each with an id of the caller's. */
function withIds<D>(batch: NewEvent<D>[]): (NewEvent<D> & { id: string })[] {
  return batch.map((event) => ({ ...event, id: crypto.randomUUID() }));
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

async function assertConflict(
  attempt: Promise<unknown>,
  expected: {
    streamId: string;
    expectedVersion: ExpectedVersion;
    actualVersion: number;
  },
): Promise<void> {
  await assert.rejects(attempt, (error) => {
    assert.ok(error instanceof ConcurrencyConflictError, String(error));
    assert.equal(error.code, "concurrency_conflict");
    assert.equal(error.streamId, expected.streamId);
    assert.equal(error.expectedVersion, expected.expectedVersion);
    assert.equal(error.actualVersion, expected.actualVersion);
    assert.match(error.message, /^Cannot append to stream "/);
    return true;
  });
}

async function assertInvalid(
  attempt: Promise<unknown>,
  field: string,
): Promise<void> {
  await assert.rejects(attempt, (error) => {
    assert.ok(error instanceof InvalidArgumentError, String(error));
    assert.equal(error.code, "invalid_argument");
    assert.equal(error.field, field);
    assert.ok(error.message.includes(field), error.message);
    return true;
  });
}

/** The stream must be exactly as before: the same events, nothing added. */
async function assertUnchanged(
  store: EventStore,
  streamId: string,
  expectedVersion: number,
): Promise<void> {
  assert.equal(await store.streamVersion(streamId), expectedVersion);
  assert.equal((await store.loadEvents(streamId)).length, expectedVersion);
}

/** Invalid appends: each call, the field its error must name. */
function invalidAppends(streamId: string): [string, () => unknown[]][] {
  const cyclic: Record<string, unknown> = {};
  cyclic.self = cyclic;
  const symbolKeyed = { [Symbol("hidden")]: 1 };
  const valid = { type: "Happened", data: {} };
  return [
    ["events", () => [streamId, []]],
    ["events", () => [streamId, "not events"]],
    ["events[0]", () => [streamId, [null]]],
    ["events[1].type", () => [streamId, [valid, { type: "", data: {} }]]],
    ["events[0].type", () => [streamId, [{ type: 7, data: {} }]]],
    ["events[0].type", () => [streamId, [{ data: {} }]]],
    ["events[0].type", () => [streamId, [{ type: "a\0b", data: {} }]]],
    ["events[0].type", () => [streamId, [{ type: "x".repeat(501), data: {} }]]],
    ["events[0].metadata", () => [streamId, [{ ...valid, metadata: [1] }]]],
    ["events[0].metadata", () => [streamId, [{ ...valid, metadata: "m" }]]],
    ["events[0].metadata", () => [streamId, [{ ...valid, metadata: null }]]],
    [
      "events[0].metadata",
      () => [streamId, [{ ...valid, metadata: new Date() }]],
    ],
    [
      "events[0].metadata.big",
      () => [streamId, [{ ...valid, metadata: { big: 1n } }]],
    ],
    [
      "events[0].metadata.fn",
      () => [streamId, [{ ...valid, metadata: { fn: () => 1 } }]],
    ],
    [
      "events[0].metadata.u",
      () => [streamId, [{ ...valid, metadata: { u: undefined } }]],
    ],
    [
      "events[0].metadata.n",
      () => [streamId, [{ ...valid, metadata: { n: NaN } }]],
    ],
    [
      "events[0].metadata.self",
      () => [streamId, [{ ...valid, metadata: cyclic }]],
    ],
    [
      "events[0].metadata.s",
      () => [streamId, [{ ...valid, metadata: { s: "\0" } }]],
    ],
    [
      "events[0].metadata.d",
      () => [streamId, [{ ...valid, metadata: { d: new Date() } }]],
    ],
    [
      "events[0].metadata",
      () => [streamId, [{ ...valid, metadata: symbolKeyed }]],
    ],
    ["events[0].id", () => [streamId, [{ ...valid, id: "not-a-uuid" }]]],
    ["events[0].id", () => [streamId, [{ ...valid, id: 42 }]]],
    ["events[1].id", () => {
      const id = crypto.randomUUID();
      return [streamId, [{ ...valid, id }, { ...valid, id: id.toUpperCase() }]];
    }],
    ["options", () => [streamId, [valid], "any"]],
    ["options", () => [streamId, [valid], [1]]],
    ["events[0]", () => [streamId, [{
      ...valid,
      get metadata(): Record<string, unknown> {
        throw new Error("a throwing getter");
      },
    }]]],
    ["options.expectedVersion", () => [streamId, [valid], {
      get expectedVersion(): number {
        throw new Error("a throwing getter");
      },
    }]],
    ...[-1, 1.5, Number.MAX_SAFE_INTEGER + 1, NaN, "latest", null, 2n].map(
      (expectedVersion): [string, () => unknown[]] => [
        "options.expectedVersion",
        () => [streamId, [valid], { expectedVersion }],
      ],
    ),
  ];
}

const CASES: ConformanceCase[] = [
  // The seed design's nine scenarios.
  {
    name: "appends and loads events",
    async run(store) {
      const streamId = newStreamId("order");
      const before = Date.now();
      const result = await store.appendEvents(streamId, [
        {
          type: "OrderPlaced",
          data: { totalCents: 2500 },
          metadata: { userId: "u-1" },
        },
        { type: "OrderShipped", data: { trackingNumber: "TN-1" } },
      ]);
      assert.equal(result.version, 2);

      const loaded = await store.loadEvents(streamId);
      assert.equal(loaded.length, 2);
      assert.deepEqual(loaded.map((event) => event.version), [1, 2]);
      assert.deepEqual(loaded.map((event) => event.streamId), [
        streamId,
        streamId,
      ]);
      assert.deepEqual(loaded.map((event) => event.type), [
        "OrderPlaced",
        "OrderShipped",
      ]);
      assert.deepEqual(loaded[0].data, { totalCents: 2500 });
      assert.deepEqual(loaded[1].data, { trackingNumber: "TN-1" });
      assert.deepEqual(loaded[0].metadata, { userId: "u-1" });
      assert.deepEqual(loaded[1].metadata, {});
      assert.equal(result.globalPosition, loaded[1].globalPosition);
      assert.ok(loaded[0].globalPosition < loaded[1].globalPosition);
      for (const event of loaded) {
        assert.match(event.id, UUID);
        assert.equal(typeof event.globalPosition, "bigint");
        assert.ok(event.createdAt instanceof Date);
        // The store's clock may be a database's: allow a little skew.
        assert.ok(Math.abs(event.createdAt.getTime() - before) < 60_000);
      }
      assert.notEqual(loaded[0].id, loaded[1].id);
      assert.equal(
        loaded[0].createdAt.getTime(),
        loaded[1].createdAt.getTime(),
      );
    },
  },
  {
    name: "optimistic concurrency check rejects a stale expected version",
    async run(store) {
      const streamId = newStreamId();
      await store.appendEvents(streamId, events(3));
      await assertConflict(
        store.appendEvents(streamId, events(1), { expectedVersion: 2 }),
        { streamId, expectedVersion: 2, actualVersion: 3 },
      );
      await assertUnchanged(store, streamId, 3);
      const result = await store.appendEvents(streamId, events(1), {
        expectedVersion: 3,
      });
      assert.equal(result.version, 4);
    },
  },
  {
    name: "concurrent appends with one expected version: exactly one wins",
    async run(store) {
      const streamId = newStreamId();
      await store.appendEvents(streamId, events(1));
      const writers = 10;
      const outcomes = await Promise.allSettled(
        Array.from({ length: writers }, (_, writer) =>
          store.appendEvents(
            streamId,
            [{ type: "Raced", data: { writer } }, {
              type: "Raced",
              data: { writer },
            }],
            { expectedVersion: 1 },
          )),
      );
      const winners = outcomes.filter((outcome) =>
        outcome.status === "fulfilled"
      );
      const losers = outcomes.filter((outcome) =>
        outcome.status === "rejected"
      );
      assert.equal(winners.length, 1);
      assert.equal(losers.length, writers - 1);
      for (const loser of losers) {
        const error = (loser as PromiseRejectedResult).reason;
        assert.ok(error instanceof ConcurrencyConflictError, String(error));
        assert.equal(error.expectedVersion, 1);
        assert.equal(error.actualVersion, 3);
      }
      const loaded = await store.loadEvents<{ writer: number }>(streamId);
      assert.equal(loaded.length, 3);
      // Both events of the batch come from the one winning writer.
      assert.equal(loaded[1].data.writer, loaded[2].data.writer);
    },
  },
  {
    name: "loads from a version",
    async run(store) {
      const streamId = newStreamId();
      await store.appendEvents(streamId, events(5));
      const fromThree = await store.loadEvents<{ n: number }>(streamId, {
        fromVersion: 3,
      });
      assert.deepEqual(fromThree.map((event) => event.version), [3, 4, 5]);
      assert.deepEqual(fromThree.map((event) => event.data.n), [3, 4, 5]);
      assert.deepEqual(
        await store.loadEvents(streamId, { fromVersion: 6 }),
        [],
      );
      assert.equal(
        (await store.loadEvents(streamId, { fromVersion: 1 })).length,
        5,
      );
      // 0 reads as "from the start": no event has version 0.
      assert.equal(
        (await store.loadEvents(streamId, { fromVersion: 0 })).length,
        5,
      );
    },
  },
  {
    name: "saves and loads a snapshot",
    async run(store) {
      const streamId = newStreamId();
      await store.appendEvents(streamId, events(4));
      const before = Date.now();
      await store.saveSnapshot(streamId, 4, {
        status: "placed",
        totalCents: 900n,
      });
      const snapshot = await store.loadSnapshot(streamId);
      assert.ok(snapshot !== undefined);
      assert.equal(snapshot.streamId, streamId);
      assert.equal(snapshot.version, 4);
      assert.deepStrictEqual(snapshot.state, {
        status: "placed",
        totalCents: 900n,
      });
      assert.ok(snapshot.createdAt instanceof Date);
      assert.ok(Math.abs(snapshot.createdAt.getTime() - before) < 60_000);
    },
  },
  {
    name: "snapshot upsert keeps the highest version",
    async run(store) {
      const streamId = newStreamId();
      await store.appendEvents(streamId, events(10));
      await store.saveSnapshot(streamId, 5, { at: 5 });
      await store.saveSnapshot(streamId, 8, { at: 8 });
      assert.deepEqual(
        await store.loadSnapshot(streamId).then((s) => [s?.version, s?.state]),
        [8, { at: 8 }],
      );
      // An older snapshot arriving late is a no-op.
      await store.saveSnapshot(streamId, 6, { at: 6 });
      assert.deepEqual(
        await store.loadSnapshot(streamId).then((s) => [s?.version, s?.state]),
        [8, { at: 8 }],
      );
      // The same version replaces the stored state.
      await store.saveSnapshot(streamId, 8, { at: "8 again" });
      assert.deepEqual(
        await store.loadSnapshot(streamId).then((s) => [s?.version, s?.state]),
        [8, { at: "8 again" }],
      );
    },
  },
  {
    name: "snapshot not found gives undefined",
    async run(store) {
      assert.equal(await store.loadSnapshot(newStreamId()), undefined);
      const streamId = newStreamId();
      await store.appendEvents(streamId, events(1));
      assert.equal(await store.loadSnapshot(streamId), undefined);
    },
  },
  {
    name: "an empty event list is an error and writes nothing",
    async run(store) {
      const streamId = newStreamId();
      await assertInvalid(store.appendEvents(streamId, []), "events");
      await assertUnchanged(store, streamId, 0);
      await store.appendEvents(streamId, events(1));
      await assertInvalid(
        store.appendEvents(streamId, [], { expectedVersion: 1 }),
        "events",
      );
      await assertUnchanged(store, streamId, 1);
    },
  },
  {
    name: "streams are isolated from each other",
    async run(store) {
      const first = newStreamId("a");
      const second = newStreamId("b");
      await store.appendEvents(first, events(2, "First"));
      await store.appendEvents(second, events(3, "Second"));
      await store.appendEvents(first, events(1, "First"), {
        expectedVersion: 2,
      });
      assert.equal(await store.streamVersion(first), 3);
      assert.equal(await store.streamVersion(second), 3);
      assert.ok(
        (await store.loadEvents(first)).every((event) =>
          event.type === "First"
        ),
      );
      assert.ok(
        (await store.loadEvents(second)).every((event) =>
          event.type === "Second"
        ),
      );
      await store.saveSnapshot(first, 3, "first");
      assert.equal(await store.loadSnapshot(second), undefined);
    },
  },

  // Every form of expectedVersion.
  {
    name: "expectedVersion any appends to new and existing streams",
    async run(store) {
      const streamId = newStreamId();
      assert.equal(
        (await store.appendEvents(streamId, events(1), {
          expectedVersion: "any",
        })).version,
        1,
      );
      assert.equal((await store.appendEvents(streamId, events(2))).version, 3);
      assert.equal(
        (await store.appendEvents(streamId, events(1), {})).version,
        4,
      );
    },
  },
  {
    name: "concurrent appends with expectedVersion any all succeed",
    async run(store) {
      const streamId = newStreamId();
      const writers = 20;
      const results = await Promise.all(
        Array.from(
          { length: writers },
          (_, writer) =>
            store.appendEvents(streamId, [
              { type: "Any", data: { writer, part: 1 } },
              { type: "Any", data: { writer, part: 2 } },
            ]),
        ),
      );
      assert.deepEqual(
        results.map((result) => result.version).sort((a, b) => a - b),
        Array.from({ length: writers }, (_, index) => 2 * (index + 1)),
      );
      const loaded = await store.loadEvents<{ writer: number; part: number }>(
        streamId,
      );
      assert.deepEqual(
        loaded.map((event) => event.version),
        Array.from({ length: 2 * writers }, (_, index) => index + 1),
      );
      // Each append's events are adjacent: no interleaving inside a batch.
      for (let index = 0; index < loaded.length; index += 2) {
        assert.equal(loaded[index].data.writer, loaded[index + 1].data.writer);
        assert.deepEqual(
          [loaded[index].data.part, loaded[index + 1].data.part],
          [1, 2],
        );
      }
    },
  },
  {
    name: "expectedVersion no_stream",
    async run(store) {
      const streamId = newStreamId();
      assert.equal(
        (await store.appendEvents(streamId, events(2), {
          expectedVersion: "no_stream",
        })).version,
        2,
      );
      await assertConflict(
        store.appendEvents(streamId, events(1), {
          expectedVersion: "no_stream",
        }),
        { streamId, expectedVersion: "no_stream", actualVersion: 2 },
      );
      await assertUnchanged(store, streamId, 2);
    },
  },
  {
    name: "expectedVersion stream_exists",
    async run(store) {
      const streamId = newStreamId();
      await assertConflict(
        store.appendEvents(streamId, events(1), {
          expectedVersion: "stream_exists",
        }),
        { streamId, expectedVersion: "stream_exists", actualVersion: 0 },
      );
      await assertUnchanged(store, streamId, 0);
      await store.appendEvents(streamId, events(1));
      assert.equal(
        (await store.appendEvents(streamId, events(1), {
          expectedVersion: "stream_exists",
        })).version,
        2,
      );
    },
  },
  {
    name: "expectedVersion as a number",
    async run(store) {
      const streamId = newStreamId();
      await assertConflict(
        store.appendEvents(streamId, events(1), { expectedVersion: 1 }),
        { streamId, expectedVersion: 1, actualVersion: 0 },
      );
      assert.equal(
        (await store.appendEvents(streamId, events(2), { expectedVersion: 0 }))
          .version,
        2,
      );
      await assertConflict(
        store.appendEvents(streamId, events(1), { expectedVersion: 0 }),
        { streamId, expectedVersion: 0, actualVersion: 2 },
      );
      await assertConflict(
        store.appendEvents(streamId, events(1), { expectedVersion: 5 }),
        { streamId, expectedVersion: 5, actualVersion: 2 },
      );
      assert.equal(
        (await store.appendEvents(streamId, events(1), { expectedVersion: 2 }))
          .version,
        3,
      );
      await assertUnchanged(store, streamId, 3);
    },
  },

  // Idempotent appends: a retry with the same event ids stores nothing twice.
  {
    name: "a repeated append returns the first one's result and stores nothing",
    async run(store, storage) {
      const cases: [(version: number) => ExpectedVersion, number][] = [
        [() => "no_stream", 0],
        [(version) => version, 0],
        [(version) => version, 2],
        [() => "stream_exists", 1],
        [() => "any", 0],
        [() => "any", 3],
      ];
      for (const [expect, before] of cases) {
        for (const size of [1, 3]) {
          const streamId = newStreamId();
          if (before > 0) await store.appendEvents(streamId, events(before));
          const batch = withIds(events(size));
          const options = { expectedVersion: expect(before) };
          const first = await store.appendEvents(streamId, batch, options);
          assert.equal(first.version, before + size);
          // Others append meanwhile; the repeat still finds its events.
          await store.appendEvents(streamId, events(2));
          await storage.unchangedBy(async () => {
            assert.deepEqual(
              await store.appendEvents(streamId, batch, options),
              first,
            );
            // Upper-case ids are the same ids.
            const upper = batch.map((event) => ({
              ...event,
              id: event.id.toUpperCase(),
            }));
            assert.deepEqual(
              await store.appendEvents(streamId, upper, options),
              first,
            );
          });
          const stored = await store.loadEvents(streamId);
          assert.equal(stored.length, before + size + 2);
          assert.deepEqual(
            stored.slice(before, before + size).map((event) => event.id),
            batch.map((event) => event.id),
          );
          assert.equal(
            stored[before + size - 1].globalPosition,
            first.globalPosition,
          );
        }
      }
    },
  },
  {
    name: "an append that partly repeats a stored one is a DuplicateEventError",
    async run(store, storage) {
      const streamId = newStreamId();
      const [a, b, c] = withIds(events(3));
      await store.appendEvents(streamId, events(1));
      await store.appendEvents(streamId, [a, b], { expectedVersion: 1 });
      await store.appendEvents(streamId, events(1));
      const refusals: [NewEvent<{ n: number }>[], ExpectedVersion, string][] = [
        [[a, b, c], 1, `events[2] (${c.id}) is not stored`],
        [[c, a, b], 1, `events[0] (${c.id}) is not stored`],
        [[b, a], 1, "not stored consecutively"],
        [[a, b], 0, "followed version 1"],
        [[a, b], "no_stream", "followed version 1"],
        [[a, b], 3, "followed version 1"],
      ];
      await storage.unchangedBy(async () => {
        for (const [batch, expectedVersion, reason] of refusals) {
          await assert.rejects(
            store.appendEvents(streamId, batch, { expectedVersion }),
            (error) => {
              assert.ok(error instanceof DuplicateEventError, String(error));
              assert.equal(error.code, "duplicate_event");
              assert.equal(error.streamId, streamId);
              assert.equal(error.eventId, batch.find((e) => e !== c)!.id);
              assert.equal(error.storedVersion, batch[0] === b ? 3 : 2);
              assert.ok(error.message.includes(reason), error.message);
              return true;
            },
          );
        }
      });
      await assertUnchanged(store, streamId, 4);
      // A prefix or suffix of a stored batch is where it was: a repeat.
      assert.equal(
        (await store.appendEvents(streamId, [b], { expectedVersion: 2 }))
          .version,
        3,
      );
      // The same id in another stream is another event.
      const elsewhere = newStreamId();
      assert.equal((await store.appendEvents(elsewhere, [a, b])).version, 2);
      await assertUnchanged(store, streamId, 4);
    },
  },
  {
    name:
      "limits: a 16 MiB event and a 10,000-event batch are stored; larger is refused before writing",
    async run(store, storage) {
      const streamId = newStreamId();
      const big = new Uint8Array(16 * 1024 * 1024);
      crypto.getRandomValues(big.subarray(0, 65536));
      big[big.length - 1] = 7;
      await store.appendEvents(streamId, [{ type: "Big", data: big }]);
      const [loaded] = await store.loadEvents<Uint8Array>(streamId);
      assert.equal(loaded.data.byteLength, big.byteLength);
      assert.ok(Buffer.from(loaded.data).equals(Buffer.from(big)));

      const many = await store.appendEvents(streamId, events(10_000));
      assert.equal(many.version, 10_001);
      const tail = await store.loadEvents<{ n: number }>(streamId, {
        fromVersion: 10_001,
      });
      assert.equal(tail[0].data.n, 10_000);

      await storage.unchangedBy(async () => {
        const tooLarge = new Uint8Array(128 * 1024 * 1024 + 1);
        await assert.rejects(
          store.appendEvents(streamId, [{ type: "Huge", data: tooLarge }]),
          (error) => {
            assert.ok(error instanceof InvalidArgumentError, String(error));
            assert.equal(error.field, "events[0]");
            assert.match(error.message, /over the limit of 134217728/);
            return true;
          },
        );
        const tooMany = new Array(2 ** 20).fill({ type: "Tiny", data: 0 });
        await assert.rejects(
          store.appendEvents(streamId, tooMany),
          (error) => {
            assert.ok(error instanceof InvalidArgumentError, String(error));
            assert.equal(error.field, "events");
            assert.match(error.message, /at most 1048575 events/);
            return true;
          },
        );
      });
      await assertUnchanged(store, streamId, 10_001);
    },
  },

  // Atomicity, ranges, positions, ids.
  {
    name: "a batch with one bad event stores nothing",
    async run(store) {
      const streamId = newStreamId();
      await store.appendEvents(streamId, events(1));
      await assert.rejects(
        store.appendEvents<unknown>(streamId, [
          { type: "Good", data: 1 },
          { type: "Good", data: 2 },
          { type: "Bad", data: () => 3 },
        ]),
        (error) =>
          error instanceof EncodingError && error.field === "events[2].data",
      );
      await assertInvalid(
        store.appendEvents(streamId, [{ type: "Good", data: 1 }, {
          type: "",
          data: 2,
        }]),
        "events[1].type",
      );
      await assertUnchanged(store, streamId, 1);
      assert.equal(
        (await store.appendEvents(streamId, events(1), { expectedVersion: 1 }))
          .version,
        2,
      );
    },
  },
  {
    name: "maxCount limits a load",
    async run(store) {
      const streamId = newStreamId();
      await store.appendEvents(streamId, events(10));
      const versions = async (
        options: { fromVersion?: number; maxCount?: number },
      ) =>
        (await store.loadEvents(streamId, options)).map((event) =>
          event.version
        );
      assert.deepEqual(await versions({ maxCount: 3 }), [1, 2, 3]);
      assert.deepEqual(await versions({ fromVersion: 4, maxCount: 2 }), [4, 5]);
      assert.deepEqual(await versions({ fromVersion: 9, maxCount: 5 }), [
        9,
        10,
      ]);
      assert.deepEqual(await versions({ maxCount: 1 }), [1]);
      assert.deepEqual(await versions({ fromVersion: 11, maxCount: 5 }), []);
      assert.deepEqual(await versions({ maxCount: Number.MAX_SAFE_INTEGER }), [
        1,
        2,
        3,
        4,
        5,
        6,
        7,
        8,
        9,
        10,
      ]);
    },
  },
  {
    name: "streamVersion counts events and is 0 for a missing stream",
    async run(store) {
      const streamId = newStreamId();
      assert.equal(await store.streamVersion(streamId), 0);
      assert.deepEqual(await store.loadEvents(streamId), []);
      await store.appendEvents(streamId, events(3));
      assert.equal(await store.streamVersion(streamId), 3);
      await store.appendEvents(streamId, events(4));
      assert.equal(await store.streamVersion(streamId), 7);
    },
  },
  {
    name: "global positions increase strictly across streams",
    async run(store) {
      const first = newStreamId();
      const second = newStreamId();
      const results = [];
      for (let round = 0; round < 3; round++) {
        results.push(await store.appendEvents(first, events(2)));
        results.push(await store.appendEvents(second, events(1)));
      }
      for (let index = 1; index < results.length; index++) {
        assert.ok(
          results[index].globalPosition > results[index - 1].globalPosition,
        );
      }
      const all = [
        ...await store.loadEvents(first),
        ...await store.loadEvents(second),
      ]
        .map((event) => event.globalPosition)
        .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
      assert.equal(new Set(all).size, 9);
      const firstPositions = (await store.loadEvents(first)).map((event) =>
        event.globalPosition
      );
      for (let index = 1; index < firstPositions.length; index++) {
        assert.ok(firstPositions[index] > firstPositions[index - 1]);
      }
      assert.equal(
        results.at(-1)?.globalPosition,
        (await store.loadEvents(second)).at(-1)?.globalPosition,
      );
    },
  },
  {
    name: "event ids: the caller's are kept (lower case), others generated",
    async run(store) {
      const streamId = newStreamId();
      const given = crypto.randomUUID();
      const upper = crypto.randomUUID().toUpperCase();
      await store.appendEvents(streamId, [
        { type: "WithId", data: null, id: given },
        { type: "WithoutId", data: null },
        { type: "Upper", data: null, id: upper },
      ]);
      const loaded = await store.loadEvents(streamId);
      assert.equal(loaded[0].id, given);
      assert.match(loaded[1].id, UUID);
      assert.equal(loaded[2].id, upper.toLowerCase());
      assert.equal(new Set(loaded.map((event) => event.id)).size, 3);
    },
  },
  {
    name: "data round-trips through the codec",
    async run(store) {
      const streamId = newStreamId();
      const data = {
        object: { nested: { deeper: [1, "two", { three: 3 }] } },
        array: [1, -2, 3.5, "x", true, null, undefined, [[]]],
        string: "plain, ünïcödé, 😀, \u0000 too",
        numbers: [
          0,
          -0,
          1,
          -1,
          2 ** 53 - 1,
          -(2 ** 53) + 1,
          1.5,
          1e300,
          -1e-300,
          NaN,
          Infinity,
          -Infinity,
        ],
        booleans: [true, false],
        null: null,
        undefined: undefined,
        bigints: [
          0n,
          1n,
          -1n,
          2n ** 64n,
          -(2n ** 100n),
          123456789012345678901234567890n,
        ],
        bytes: new Uint8Array([0, 1, 2, 254, 255]),
        emptyBytes: new Uint8Array(0),
        dates: [
          new Date(0),
          new Date("2026-11-24T12:34:56.789Z"),
          new Date(-1),
          new Date(8.64e15),
        ],
        __proto__key: JSON.parse('{"__proto__": {"polluted": true}}'),
      };
      const scalars = [
        "text",
        42,
        4.25,
        true,
        false,
        null,
        undefined,
        7n,
        new Date(1),
        new Uint8Array([9]),
      ];
      await store.appendEvents<unknown>(streamId, [
        { type: "Everything", data },
        ...scalars.map((value) => ({ type: "Scalar", data: value })),
      ]);
      const loaded = await store.loadEvents(streamId);
      assert.deepStrictEqual(loaded[0].data, data);
      assert.deepStrictEqual(
        loaded.slice(1).map((event) => event.data),
        scalars,
      );
      assert.equal(({} as Record<string, unknown>).polluted, undefined);

      await store.saveSnapshot(streamId, loaded.length, data);
      assert.deepStrictEqual((await store.loadSnapshot(streamId))?.state, data);
    },
  },
  {
    name: "data the codec cannot encode is rejected",
    async run(store, storage) {
      const streamId = newStreamId();
      const cyclic: Record<string, unknown> = {};
      cyclic.self = cyclic;
      class Money {
        constructor(readonly cents: number) {}
      }
      const unencodable: [string, unknown][] = [
        ["function", () => 1],
        ["symbol", Symbol("s")],
        ["Map", new Map([["a", 1]])],
        ["Set", new Set([1])],
        ["class instance", new Money(5)],
        ["Int16Array", new Int16Array([1])],
        ["cycle", cyclic],
        ["lone surrogate", "\ud800"],
        ["sparse array", [1, , 3]],
        ["symbol key", { [Symbol("k")]: 1 }],
      ];
      await storage.unchangedBy(async () => {
        for (const [label, value] of unencodable) {
          await assert.rejects(
            store.appendEvents(streamId, [{ type: "Bad", data: { value } }]),
            (error) => {
              assert.ok(error instanceof EncodingError, `${label}: ${error}`);
              assert.equal(error.code, "encoding");
              assert.equal(error.field, "events[0].data");
              assert.equal(error.operation, "encode");
              assert.match(
                error.message,
                /^Cannot encode events\[0\]\.data: /,
              );
              return true;
            },
          );
        }
      });
      await assertUnchanged(store, streamId, 0);
      await store.appendEvents(streamId, events(1));
      await assert.rejects(
        store.saveSnapshot(streamId, 1, { fn: () => 1 }),
        (error) => error instanceof EncodingError && error.field === "state",
      );
      assert.equal(await store.loadSnapshot(streamId), undefined);
    },
  },
  {
    name: "metadata round-trips as plain JSON",
    async run(store) {
      const streamId = newStreamId();
      const metadata = {
        correlationId: crypto.randomUUID(),
        nested: {
          list: [1, 2.5, -7, "three", null, true, { deep: [] }],
          empty: {},
        },
        unicode: "ünïcödé 😀",
        "key with spaces": 1,
        "'; DROP TABLE events; --": "stored verbatim",
        ownProtoKey: JSON.parse('{"__proto__": {"polluted": true}}'),
      };
      const nullPrototype = Object.assign(Object.create(null), {
        plain: "yes",
      });
      await store.appendEvents(streamId, [
        { type: "WithMetadata", data: null, metadata },
        { type: "NullPrototype", data: null, metadata: nullPrototype },
      ]);
      const [first, second] = await store.loadEvents(streamId);
      assert.deepStrictEqual(first.metadata, metadata);
      assert.deepEqual(second.metadata, { plain: "yes" });
      assert.equal(({} as Record<string, unknown>).polluted, undefined);
    },
  },
  {
    name: "stored events are isolated from the caller's objects",
    async run(store) {
      const streamId = newStreamId();
      const data = { items: [1, 2] };
      const metadata = { tags: ["a"] };
      await store.appendEvents(streamId, [{ type: "Mutable", data, metadata }]);
      data.items.push(3);
      metadata.tags.push("b");
      const [first] = await store.loadEvents<{ items: number[] }>(streamId);
      assert.deepEqual(first.data, { items: [1, 2] });
      assert.deepEqual(first.metadata, { tags: ["a"] });
      first.data.items.push(99);
      (first.metadata.tags as string[]).push("z");
      const [again] = await store.loadEvents(streamId);
      assert.deepEqual(again.data, { items: [1, 2] });
      assert.deepEqual(again.metadata, { tags: ["a"] });

      const state = { count: 1 };
      await store.saveSnapshot(streamId, 1, state);
      state.count = 2;
      assert.deepEqual((await store.loadSnapshot(streamId))?.state, {
        count: 1,
      });
    },
  },

  // Reading every stream in global order.
  {
    name:
      "readAll returns events in global order, after a position, up to a count",
    async run(store) {
      const category = newCategory();
      const [first, second] = [`${category}-1`, `${category}-2`];
      await store.appendEvents(first, events(2, "A"));
      await store.appendEvents(second, events(1, "B"));
      await store.appendEvents(first, events(1, "C"));
      const all = await store.readAll<{ n: number }>({ category });
      assert.deepEqual(
        all.map((event) => [event.streamId, event.version, event.type]),
        [[first, 1, "A"], [first, 2, "A"], [second, 1, "B"], [first, 3, "C"]],
      );
      for (let index = 1; index < all.length; index++) {
        assert.ok(all[index - 1].globalPosition < all[index].globalPosition);
      }
      // The same events as loadEvents gives, field for field.
      assert.deepEqual(
        all.slice(0, 2),
        (await store.loadEvents(first)).slice(0, 2),
      );
      const after = await store.readAll({
        category,
        fromPosition: all[1].globalPosition,
      });
      assert.deepEqual(after.map((event) => event.type), ["B", "C"]);
      const limited = await store.readAll({ category, maxCount: 3 });
      assert.deepEqual(limited.map((event) => event.type), ["A", "A", "B"]);
      const last = all[3].globalPosition;
      assert.deepEqual(
        await store.readAll({ category, fromPosition: last }),
        [],
      );
      // Without a filter it starts at the beginning of the store.
      const everything = await store.readAll({ maxCount: 1 });
      assert.equal(everything.length, 1);
      assert.ok(everything[0].globalPosition <= all[0].globalPosition);
    },
  },
  {
    name: "readAll filters by event types and by category",
    async run(store) {
      const category = newCategory();
      await store.appendEvents(`${category}-1`, events(1, "Placed"));
      await store.appendEvents(category, events(1, "Shipped")); // no dash: its own category
      await store.appendEvents(`${category}x-1`, events(1, "Placed"));
      await store.appendEvents(`${category}-2`, events(1, "Cancelled"));
      const types = (read: { type: string }[]) =>
        read.map((event) => event.type);
      assert.deepEqual(types(await store.readAll({ category })), [
        "Placed",
        "Shipped",
        "Cancelled",
      ]);
      assert.deepEqual(
        types(
          await store.readAll({ category, types: ["Placed", "Cancelled"] }),
        ),
        ["Placed", "Cancelled"],
      );
      assert.deepEqual(
        await store.readAll({ category, types: ["NoSuchType"] }),
        [],
      );
      assert.deepEqual(
        (await store.readAll({ category: `${category}x` })).map((event) =>
          event.streamId
        ),
        [`${category}x-1`],
      );
    },
  },
  {
    name: "readAllLag: nothing stays hidden once appends are acknowledged",
    async run(store) {
      const streamId = newStreamId();
      const { globalPosition } = await store.appendEvents(streamId, events(3));
      // On PostgreSQL another session's short transaction (autovacuum's
      // ANALYZE, say) can hide new events for a moment: let it end.
      let lag = await store.readAllLag();
      for (let attempt = 0; attempt < 100 && lag.hiddenEvents > 0; attempt++) {
        await new Promise((resolve) => setTimeout(resolve, 100));
        lag = await store.readAllLag();
      }
      assert.equal(lag.hiddenEvents, 0, JSON.stringify(lag.heldBy));
      assert.deepEqual(lag.heldBy, []);
      assert.equal(typeof lag.headPosition, "bigint");
      assert.ok(lag.headPosition >= globalPosition);
      assert.equal(lag.readablePosition, lag.headPosition);
      // The head is an event, and readAll returns it.
      const [head] = await store.readAll({
        fromPosition: lag.readablePosition - 1n,
        maxCount: 1,
      });
      assert.equal(head.globalPosition, lag.readablePosition);
    },
  },
  {
    name: "bad readAll options are rejected",
    async run(store) {
      const bad: [string, unknown][] = [
        ["options.fromPosition", { fromPosition: -1n }],
        ["options.fromPosition", { fromPosition: 1 }],
        ["options.fromPosition", { fromPosition: "1" }],
        ["options.fromPosition", { fromPosition: 2n ** 63n }],
        ["options.maxCount", { maxCount: 0 }],
        ["options.maxCount", { maxCount: 1.5 }],
        ["options.types", { types: "Placed" }],
        ["options.types[1]", { types: ["Placed", ""] }],
        ["options.category", { category: "" }],
        ["options.category", { category: "order-42" }],
        ["options", 3],
      ];
      for (const [field, options] of bad) {
        await assertInvalid(store.readAll(options as never), field);
      }
    },
  },

  // Following every stream as it grows.
  {
    name: "subscribe catches up, then delivers every new event once, in order",
    async run(store) {
      const category = newCategory();
      const before = await store.appendEvents(`${category}-0`, events(3));
      const expected = new Set(
        (await store.loadEvents(`${category}-0`)).map((event) => event.id),
      );
      const writers = 4;
      const perWriter = 500;
      const total = 3 + writers * perWriter;
      const stop = new AbortController();
      const timer = setTimeout(() => stop.abort(), 60_000);
      const received: { id: string; position: bigint }[] = [];
      const subscriber = (async () => {
        for await (
          const event of store.subscribe({ category, signal: stop.signal })
        ) {
          received.push({ id: event.id, position: event.globalPosition });
          if (received.length === total) break;
        }
      })();
      // Four writers, while the subscriber is live.
      await Promise.all(
        Array.from({ length: writers }, async (_, writer) => {
          for (let append = 0; append < perWriter; append++) {
            const id = crypto.randomUUID();
            expected.add(id);
            await store.appendEvents(`${category}-${writer + 1}`, [{
              id,
              type: "Written",
              data: { writer, append },
            }]);
          }
        }),
      );
      await subscriber;
      clearTimeout(timer);
      assert.equal(received.length, total, "events missing");
      assert.deepEqual(new Set(received.map((event) => event.id)), expected);
      for (let index = 1; index < received.length; index++) {
        assert.ok(received[index - 1].position < received[index].position);
      }
      assert.equal(received[2].position, before.globalPosition);
    },
  },
  {
    name: "a subscription ends on abort and on break, and checks its options",
    async run(store) {
      const category = newCategory();
      await store.appendEvents(`${category}-1`, events(2));
      const stop = new AbortController();
      const seen: number[] = [];
      const aborted = (async () => {
        for await (
          const event of store.subscribe<{ n: number }>({
            category,
            signal: stop.signal,
          })
        ) {
          seen.push(event.data.n);
          if (seen.length === 2) stop.abort(); // then it waits no more
        }
      })();
      await aborted;
      assert.deepEqual(seen, [1, 2]);
      // fromPosition skips what was already read; break ends it cleanly.
      const [first] = await store.readAll({ category, maxCount: 1 });
      for await (
        const event of store.subscribe({
          category,
          fromPosition: first.globalPosition,
        })
      ) {
        assert.equal(event.version, 2);
        break;
      }
      const iterator = store.subscribe({ category: "a-b" })[
        Symbol.asyncIterator
      ]();
      await assertInvalid(iterator.next(), "options.category");
    },
  },

  // Projections with durable checkpoints.
  {
    name:
      "a projection resumes from its checkpoint after a stop, losing nothing",
    async run(store) {
      const category = newCategory();
      const name = `projection-${crypto.randomUUID()}`;
      for (let stream = 1; stream <= 3; stream++) {
        await store.appendEvents(`${category}-${stream}`, events(10));
      }
      const expected = (await store.readAll({ category })).map((e) => e.id);
      assert.equal(await store.projectionPosition(name), 0n);
      const handled: string[] = [];
      // First run: stopped after two batches of 7.
      const first = new AbortController();
      await store.runProjection(name, (batch) => {
        handled.push(...batch.map((event) => event.id));
        if (handled.length >= 14) first.abort();
      }, { category, batchSize: 7, signal: first.signal });
      assert.equal(handled.length, 14);
      const saved = await store.projectionPosition(name);
      const all = await store.readAll({ category });
      assert.equal(saved, all[13].globalPosition);
      // Second run: resumes there, and follows appends made while it runs.
      const second = new AbortController();
      const running = store.runProjection(name, (batch) => {
        handled.push(...batch.map((event) => event.id));
        if (handled.length >= expected.length + 5) second.abort();
      }, { category, batchSize: 7, signal: second.signal });
      const late = Array.from({ length: 5 }, () => crypto.randomUUID());
      for (const id of late) {
        await store.appendEvents(`${category}-4`, [{
          id,
          type: "Late",
          data: 1,
        }]);
      }
      const guard = setTimeout(() => second.abort(), 20_000);
      await running;
      clearTimeout(guard);
      assert.deepEqual(handled, [...expected, ...late]);
    },
  },
  {
    name:
      "a failing handler leaves the checkpoint; a reset replays from the start",
    async run(store) {
      const category = newCategory();
      const name = `projection-${crypto.randomUUID()}`;
      await store.appendEvents(`${category}-1`, events(6));
      const all = await store.readAll({ category });
      let calls = 0;
      await assert.rejects(
        store.runProjection(name, () => {
          if (++calls === 2) throw new RangeError("read model refused");
        }, { category, batchSize: 3 }),
        (error) => error instanceof RangeError,
      );
      assert.equal(await store.projectionPosition(name), all[2].globalPosition);
      // The next run gets the refused batch again (at least once).
      const again: number[] = [];
      const stop = new AbortController();
      await store.runProjection<{ n: number }>(name, (batch) => {
        again.push(...batch.map((event) => event.data.n));
        if (again.length === 3) stop.abort();
      }, { category, batchSize: 3, signal: stop.signal });
      assert.deepEqual(again, [4, 5, 6]);
      await store.resetProjection(name);
      assert.equal(await store.projectionPosition(name), 0n);
      const replayed: number[] = [];
      const replay = new AbortController();
      await store.runProjection<{ n: number }>(name, (batch) => {
        replayed.push(...batch.map((event) => event.data.n));
        if (replayed.length === 6) replay.abort();
      }, { category, signal: replay.signal });
      assert.deepEqual(replayed, [1, 2, 3, 4, 5, 6]);
      // Bad arguments.
      await assertInvalid(store.runProjection("", () => {}), "name");
      await assertInvalid(
        store.runProjection(name, () => {}, { batchSize: 0 }),
        "options.batchSize",
      );
      await assertInvalid(
        store.runProjection(name, "nope" as never),
        "handler",
      );
      await assertInvalid(store.projectionPosition(""), "name");
    },
  },
  {
    name:
      "a handler may call the store, even to reset its own projection: it starts over after that batch",
    async run(store) {
      const category = newCategory();
      const name = `projection-${crypto.randomUUID()}`;
      await store.appendEvents(`${category}-1`, events(4));
      const seen: number[] = [];
      const stop = new AbortController();
      let resets = 0;
      await store.runProjection<{ n: number }>(name, async (batch) => {
        seen.push(...batch.map((event) => event.data.n));
        // Every other method, from inside the handler.
        await store.appendEvents(`${category}-seen`, [{
          type: "Seen",
          data: { n: batch[0].data.n },
        }]);
        await store.loadEvents(`${category}-1`);
        await store.readAll({ category, maxCount: 1 });
        await store.streamVersion(`${category}-1`);
        await store.projectionPosition(name);
        if (batch.some((event) => event.data.n === 4) && resets === 0) {
          resets++;
          await store.resetProjection(name); // would wait for this very batch
        }
        if (seen.length === 8) stop.abort();
      }, {
        category,
        batchSize: 2,
        signal: stop.signal,
        types: ["Happened"],
      });
      // 1-2, 3-4 (reset), then everything again from the start.
      assert.deepEqual(seen, [1, 2, 3, 4, 1, 2, 3, 4]);
      assert.equal(resets, 1);
    },
  },

  {
    name:
      "two runners of one projection handle each event once; a reset while running replays",
    async run(store) {
      const category = newCategory();
      const name = `projection-${crypto.randomUUID()}`;
      await store.appendEvents(`${category}-1`, events(20));
      const handled: string[] = [];
      const stop = new AbortController();
      const guard = setTimeout(() => stop.abort(), 20_000);
      const runner = () =>
        store.runProjection(name, async (batch) => {
          await Promise.resolve(); // let the other runner interleave
          handled.push(...batch.map((event) => event.id));
          if (handled.length >= 20) stop.abort();
        }, { category, batchSize: 3, signal: stop.signal });
      await Promise.all([runner(), runner()]);
      assert.equal(handled.length, 20);
      assert.equal(new Set(handled).size, 20);

      // A reset while a runner follows the stream: it starts over.
      const replay = `projection-${crypto.randomUUID()}`;
      const seen: number[] = [];
      const again = new AbortController();
      const reached = Promise.withResolvers<void>();
      const guardAgain = setTimeout(() => again.abort(), 20_000);
      const running = store.runProjection<{ n: number }>(replay, (batch) => {
        seen.push(...batch.map((event) => event.data.n));
        if (seen.length === 20) reached.resolve();
        if (seen.length >= 41) again.abort();
      }, { category, signal: again.signal });
      await reached.promise;
      await store.resetProjection(replay);
      await store.appendEvents(`${category}-1`, events(1)); // n: 1 again
      await running;
      clearTimeout(guardAgain);
      clearTimeout(guard);
      const numbers = Array.from({ length: 20 }, (_, index) => index + 1);
      assert.deepEqual(seen, [...numbers, ...numbers, 1]);
    },
  },

  // Bad input: rejected with a typed error naming the field, nothing written.
  {
    name: "bad stream ids are rejected by every method",
    async run(store, storage) {
      const badIds: unknown[] = [
        "",
        42,
        undefined,
        null,
        {},
        "a\0b",
        "\udc00",
        "s".repeat(501),
      ];
      await storage.unchangedBy(async () => {
        for (const streamId of badIds) {
          const id = streamId as string;
          await assertInvalid(store.appendEvents(id, events(1)), "streamId");
          await assertInvalid(store.loadEvents(id), "streamId");
          await assertInvalid(store.streamVersion(id), "streamId");
          await assertInvalid(store.saveSnapshot(id, 1, {}), "streamId");
          await assertInvalid(store.loadSnapshot(id), "streamId");
        }
      });
      // The longest allowed id works.
      const longest = "s".repeat(500);
      await store.appendEvents(longest, events(1));
      assert.equal(await store.streamVersion(longest), 1);
    },
  },
  {
    name: "bad events and append options are rejected and write nothing",
    async run(store, storage) {
      const streamId = newStreamId();
      await store.appendEvents(streamId, events(1));
      await storage.unchangedBy(async () => {
        for (const [field, args] of invalidAppends(streamId)) {
          const [id, batch, options] = args();
          await assertInvalid(
            store.appendEvents(
              id as string,
              batch as NewEvent[],
              options as undefined,
            ),
            field,
          );
        }
      });
      await assertUnchanged(store, streamId, 1);
    },
  },
  {
    name: "deep nesting is refused cleanly, within the limit it round-trips",
    async run(store, storage) {
      const streamId = newStreamId();
      const nest = (levels: number): Record<string, unknown> => {
        let value: Record<string, unknown> = {};
        for (let level = 1; level < levels; level++) value = { a: value };
        return value;
      };
      // 64 levels of metadata objects are allowed; the 65th is refused.
      await store.appendEvents(streamId, [{
        type: "Deep",
        data: null,
        metadata: nest(64),
      }]);
      assert.deepEqual(
        (await store.loadEvents(streamId))[0].metadata,
        nest(64),
      );
      await storage.unchangedBy(async () => {
        await assertInvalid(
          store.appendEvents(streamId, [{
            type: "Deep",
            data: null,
            metadata: nest(65),
          }]),
          `events[0].metadata${".a".repeat(64)}`,
        );
        // Data so deep that encoding overflows the stack is an EncodingError.
        let deepData: unknown[] = [];
        for (let level = 0; level < 100_000; level++) deepData = [deepData];
        await assert.rejects(
          store.appendEvents(streamId, [{ type: "Deep", data: deepData }]),
          (error) =>
            error instanceof EncodingError && error.field === "events[0].data",
        );
      });
      await assertUnchanged(store, streamId, 1);
    },
  },
  {
    name: "bad load options are rejected",
    async run(store) {
      const streamId = newStreamId();
      await store.appendEvents(streamId, events(2));
      for (
        const fromVersion of [
          -1,
          1.5,
          Number.MAX_SAFE_INTEGER + 1,
          NaN,
          "1",
          Infinity,
        ]
      ) {
        await assertInvalid(
          store.loadEvents(streamId, { fromVersion: fromVersion as number }),
          "options.fromVersion",
        );
      }
      for (
        const maxCount of [
          0,
          -1,
          2.5,
          Number.MAX_SAFE_INTEGER + 1,
          NaN,
          "5",
          Infinity,
        ]
      ) {
        await assertInvalid(
          store.loadEvents(streamId, { maxCount: maxCount as number }),
          "options.maxCount",
        );
      }
      await assertInvalid(
        store.loadEvents(streamId, 3 as unknown as undefined),
        "options",
      );
    },
  },
  {
    name: "bad snapshot versions are rejected and save nothing",
    async run(store, storage) {
      const streamId = newStreamId();
      await store.appendEvents(streamId, events(3));
      await storage.unchangedBy(async () => {
        for (
          const version of [0, -1, 1.5, Number.MAX_SAFE_INTEGER + 1, NaN, "2"]
        ) {
          await assertInvalid(
            store.saveSnapshot(streamId, version as number, {}),
            "version",
          );
        }
        // A snapshot cannot be ahead of its stream.
        await assertInvalid(store.saveSnapshot(streamId, 4, {}), "version");
        await assertInvalid(
          store.saveSnapshot(newStreamId(), 1, {}),
          "version",
        );
      });
      assert.equal(await store.loadSnapshot(streamId), undefined);
    },
  },
  {
    name: "a closed store rejects every call",
    async run(store) {
      const streamId = newStreamId();
      await store.appendEvents(streamId, events(1));
      await store.close();
      await store.close(); // idempotent
      const calls: Promise<unknown>[] = [
        store.appendEvents(streamId, events(1)),
        store.loadEvents(streamId),
        store.streamVersion(streamId),
        store.saveSnapshot(streamId, 1, {}),
        store.loadSnapshot(streamId),
        store.readAll(),
        store.readAllLag(),
      ];
      for (const call of calls) {
        await assert.rejects(call, (error) => {
          assert.ok(error instanceof StoreClosedError, String(error));
          assert.equal(error.code, "store_closed");
          return true;
        });
      }
    },
  },
  {
    name: "await using closes the store",
    async run(store) {
      {
        await using scoped = store;
        await scoped.appendEvents(newStreamId(), events(1));
      }
      await assert.rejects(
        store.streamVersion(newStreamId()),
        StoreClosedError,
      );
    },
  },
];
