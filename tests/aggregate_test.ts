/**
 * The aggregate repository on both stores: loads with and without a
 * snapshot agree, conflicts are retried and then rethrown, a changed state
 * shape ignores old snapshots, and a snapshot that cannot be saved never
 * fails a command.
 */
import assert from "node:assert/strict";
import {
  type Aggregate,
  AggregateRepository,
  ConcurrencyConflictError,
  EncodingError,
  type EventStore,
  InMemoryEventStore,
  InvalidArgumentError,
  type LogRecord,
  PostgresEventStore,
} from "../mod.ts";
import postgres from "postgres";
import { newStreamId } from "./conformance.ts";
import { createTestDatabaseOrFail } from "./_database.ts";

type Deposited = { type: "Deposited.v1"; data: { cents: number } };
type Deposit = { cents: number; times?: number };

/** Deposits never depend on the state, so every account shape shares this. */
function decideDeposit(command: Deposit): Deposited[] {
  if (command.cents <= 0) throw new RangeError("deposits must be positive");
  return Array.from({ length: command.times ?? 1 }, () => ({
    type: "Deposited.v1" as const,
    data: { cents: command.cents },
  }));
}

/** An account whose state is its balance in cents. */
const account: Aggregate<number, Deposit, Deposited> = {
  initialState: () => 0,
  evolve: (balance, event) => balance + event.data.cents,
  decide: decideDeposit,
};

/** The same events, folded into a richer state: a new state shape. */
const accountV2: Aggregate<
  { balanceCents: number; deposits: number },
  Deposit,
  Deposited
> = {
  snapshotVersion: 2,
  initialState: () => ({ balanceCents: 0, deposits: 0 }),
  evolve: (state, event) => ({
    balanceCents: state.balanceCents + event.data.cents,
    deposits: state.deposits + 1,
  }),
  decide: decideDeposit,
};

/** The store, with some of its methods replaced. */
function wrapStore(
  store: EventStore,
  overrides: Partial<EventStore>,
): EventStore {
  return {
    appendEvents: (streamId, events, options) =>
      store.appendEvents(streamId, events, options),
    loadEvents: (streamId, options) => store.loadEvents(streamId, options),
    readAll: (options) => store.readAll(options),
    readAllLag: () => store.readAllLag(),
    subscribe: (options) => store.subscribe(options),
    runProjection: (name, handler, options) =>
      store.runProjection(name, handler, options),
    projectionPosition: (name) => store.projectionPosition(name),
    resetProjection: (name) => store.resetProjection(name),
    streamVersion: (streamId) => store.streamVersion(streamId),
    saveSnapshot: (streamId, version, state) =>
      store.saveSnapshot(streamId, version, state),
    loadSnapshot: (streamId) => store.loadSnapshot(streamId),
    close: () => store.close(),
    [Symbol.asyncDispose]: () => store.close(),
    ...overrides,
  };
}

/**
 * The store, with its appends held until `count` of them wait; later ones
 * pass at once.
 */
function holdAppendsUntil(count: number, store: EventStore): EventStore {
  let waiting = 0;
  let open = () => {};
  const opened = new Promise<void>((resolve) => open = resolve);
  return wrapStore(store, {
    async appendEvents(streamId, events, options) {
      if (++waiting === count) open();
      await opened;
      return await store.appendEvents(streamId, events, options);
    },
  });
}

/**
 * The store, with another writer slipping an event into the stream before
 * each of the first `times` appends: a real conflict, from the real store.
 */
function withCompetingWriter(store: EventStore, times: number) {
  let appends = 0;
  const competitor = wrapStore(store, {
    async appendEvents(streamId, events, options) {
      appends++;
      if (appends <= times) {
        await store.appendEvents(streamId, [{
          type: "Deposited.v1",
          data: { cents: 1000 },
        }]);
      }
      return await store.appendEvents(streamId, events, options);
    },
  });
  return { store: competitor, appends: () => appends };
}

function testAggregates(label: string, open: () => Promise<EventStore>) {
  const test = (name: string, body: (store: EventStore) => Promise<void>) =>
    Deno.test(`AggregateRepository on ${label}: ${name}`, async () => {
      await using store = await open();
      await body(store);
    });

  test("loads with and without the snapshot give equal states", async (store) => {
    const accounts = new AggregateRepository(store, account, {
      snapshotEvery: 5,
    });
    const streamId = newStreamId("account");
    for (let deposit = 1; deposit <= 12; deposit++) {
      await accounts.handle(streamId, { cents: deposit * 100 });
    }
    const fromSnapshot = await accounts.load(streamId);
    const fromEvents = await accounts.load(streamId, { useSnapshot: false });
    assert.deepEqual(fromSnapshot, {
      state: 7800,
      version: 12,
      snapshotAt: 10,
      eventsApplied: 2,
    });
    assert.deepEqual(fromEvents, {
      state: 7800,
      version: 12,
      snapshotAt: undefined,
      eventsApplied: 12,
    });
    // A stream with no events loads as the initial state at version 0.
    assert.deepEqual(await accounts.load(newStreamId()), {
      state: 0,
      version: 0,
      snapshotAt: undefined,
      eventsApplied: 0,
    });
  });

  test("a load is one snapshot read and one event read", async (store) => {
    const accounts = new AggregateRepository(store, account, {
      snapshotEvery: 4,
    });
    const streamId = newStreamId();
    await accounts.handle(streamId, { cents: 5, times: 6 });
    const reads: string[] = [];
    const counting = wrapStore(store, {
      loadSnapshot(id) {
        reads.push("snapshot");
        return store.loadSnapshot(id);
      },
      loadEvents(id, options) {
        reads.push(`events from v${options?.fromVersion}`);
        return store.loadEvents(id, options);
      },
    });
    const loaded = await new AggregateRepository(counting, account).load(
      streamId,
    );
    assert.deepEqual(reads, ["snapshot", "events from v7"]);
    assert.deepEqual([loaded.state, loaded.snapshotAt], [30, 6]);
  });

  test("a retry resolves a conflict", async (store) => {
    const streamId = newStreamId();
    const logs: LogRecord[] = [];
    const racing = withCompetingWriter(store, 1);
    const accounts = new AggregateRepository(racing.store, account, {
      logger: (record) => logs.push(record),
    });
    const result = await accounts.handle(streamId, { cents: 250 });
    assert.equal(result.retries, 1);
    assert.equal(result.version, 2);
    // The retry decided on the competitor's event too.
    assert.equal(result.state, 1250);
    assert.equal(racing.appends(), 2);
    assert.equal(await store.streamVersion(streamId), 2);
    assert.deepEqual(logs.map((record) => record.message), [
      "Retrying a command after a conflict",
    ]);
    assert.deepEqual(logs[0].fields, {
      streamId,
      retry: 1,
      expectedVersion: 0,
      actualVersion: 1,
    });
  });

  test("four handlers that read the same version all succeed within the default three retries", async (store) => {
    // Every append waits until all four handlers have loaded and decided:
    // the race is certain, not a matter of timing.
    const accounts = new AggregateRepository(
      holdAppendsUntil(4, store),
      account,
    );
    const streamId = newStreamId();
    const results = await Promise.all(
      Array.from({ length: 4 }, () => accounts.handle(streamId, { cents: 1 })),
    );
    assert.equal((await accounts.load(streamId)).state, 4);
    assert.deepEqual(
      results.map((result) => result.version).sort(),
      [1, 2, 3, 4],
    );
    const retries = results.map((result) => result.retries);
    // One won the first round; each of the three others retried at least
    // once, and none needed more than three.
    assert.equal(
      retries.filter((count) => count === 0).length,
      1,
      `${retries}`,
    );
    assert.ok(retries.every((count) => count <= 3), `${retries}`);
  });

  test("exhausted retries rethrow the ConcurrencyConflictError", async (store) => {
    const streamId = newStreamId();
    const racing = withCompetingWriter(store, Infinity);
    const accounts = new AggregateRepository(racing.store, account, {
      maxRetries: 2,
    });
    await assert.rejects(
      accounts.handle(streamId, { cents: 1 }),
      (error) => {
        assert.ok(error instanceof ConcurrencyConflictError, String(error));
        assert.equal(error.streamId, streamId);
        assert.equal(error.expectedVersion, 2);
        assert.equal(error.actualVersion, 3);
        return true;
      },
    );
    assert.equal(racing.appends(), 3); // the first attempt and two retries
    // Only the competitor's events were stored.
    assert.deepEqual(
      (await store.loadEvents<{ cents: number }>(streamId)).map((event) =>
        event.data.cents
      ),
      [1000, 1000, 1000],
    );
    // The per-command option overrides the repository's.
    const once = withCompetingWriter(store, Infinity);
    await assert.rejects(
      new AggregateRepository(once.store, account).handle(
        newStreamId(),
        { cents: 1 },
        { maxRetries: 0 },
      ),
      ConcurrencyConflictError,
    );
    assert.equal(once.appends(), 1);
  });

  test("a changed snapshotVersion ignores the stored snapshot", async (store) => {
    const streamId = newStreamId();
    const v1 = new AggregateRepository(store, account, { snapshotEvery: 2 });
    await v1.handle(streamId, { cents: 10, times: 4 });
    assert.equal((await v1.load(streamId)).snapshotAt, 4);

    const v2 = new AggregateRepository(store, accountV2, { snapshotEvery: 2 });
    const rebuilt = await v2.load(streamId);
    assert.deepEqual(rebuilt, {
      state: { balanceCents: 40, deposits: 4 },
      version: 4,
      snapshotAt: undefined,
      eventsApplied: 4,
    });
    // v2 saves its own snapshot, which v2 uses and v1 ignores in turn.
    const handled = await v2.handle(streamId, { cents: 10, times: 2 });
    assert.equal(handled.snapshotSavedAt, 6);
    assert.equal((await v2.load(streamId)).snapshotAt, 6);
    assert.deepEqual(await v1.load(streamId), {
      state: 60,
      version: 6,
      snapshotAt: undefined,
      eventsApplied: 6,
    });
  });

  test("a snapshot is saved when an append crosses a multiple of snapshotEvery", async (store) => {
    const accounts = new AggregateRepository(store, account, {
      snapshotEvery: 5,
    });
    const streamId = newStreamId();
    const savedAt = [];
    for (let command = 0; command < 5; command++) {
      savedAt.push(
        (await accounts.handle(streamId, { cents: 1, times: 3 }))
          .snapshotSavedAt,
      );
    }
    // Versions 3, 6, 9, 12, 15: multiples of 5 crossed at 6, 12 and 15.
    assert.deepEqual(savedAt, [undefined, 6, undefined, 12, 15]);
    const snapshot = await store.loadSnapshot(streamId);
    assert.deepEqual(snapshot?.state, { snapshotVersion: 1, state: 15 });
    // snapshotEvery: 0 never saves one.
    const never = new AggregateRepository(store, account, { snapshotEvery: 0 });
    const other = newStreamId();
    await never.handle(other, { cents: 1, times: 250 });
    assert.equal(await store.loadSnapshot(other), undefined);
  });

  test("a snapshot that cannot be saved is logged and the command succeeds", async (store) => {
    // A Map is not something the codec stores: the snapshot save fails.
    const tally: Aggregate<Map<string, number>, Deposit, Deposited> = {
      initialState: () => new Map(),
      evolve: (counts, event) =>
        new Map(counts).set("deposits", (counts.get("deposits") ?? 0) + 1)
          .set("last", event.data.cents),
      decide: decideDeposit,
    };
    const logs: LogRecord[] = [];
    const tallies = new AggregateRepository(store, tally, {
      snapshotEvery: 1,
      logger: (record) => logs.push(record),
    });
    const streamId = newStreamId();
    const result = await tallies.handle(streamId, { cents: 7 });
    assert.equal(result.version, 1);
    assert.equal(result.snapshotSavedAt, undefined);
    assert.equal(result.state.get("deposits"), 1);
    assert.equal(await store.streamVersion(streamId), 1);
    assert.equal(await store.loadSnapshot(streamId), undefined);
    assert.equal(logs.length, 1);
    assert.equal(logs[0].level, "warn");
    assert.equal(logs[0].message, "Could not save a snapshot");
    assert.match(String(logs[0].fields.error), /Cannot encode state/);
  });

  test("a refused command appends nothing; no decided events append nothing", async (store) => {
    const accounts = new AggregateRepository(store, account);
    const streamId = newStreamId();
    await accounts.handle(streamId, { cents: 5 });
    await assert.rejects(
      accounts.handle(streamId, { cents: -1 }),
      (error) =>
        error instanceof RangeError &&
        error.message === "deposits must be positive",
    );
    const nothing = await accounts.handle(streamId, { cents: 5, times: 0 });
    assert.deepEqual(
      [nothing.version, nothing.state, nothing.events.length],
      [1, 5, 0],
    );
    assert.equal(await store.streamVersion(streamId), 1);
  });

  test("metadata given to handle is added to every event; an event's own keys win", async (store) => {
    const tagged: Aggregate<number, Deposit, Deposited> = {
      ...account,
      decide: (command) =>
        decideDeposit(command).map((event, index) =>
          index === 0 ? { ...event, metadata: { userId: "system" } } : event
        ),
    };
    const accounts = new AggregateRepository(store, tagged);
    const streamId = newStreamId();
    await accounts.handle(streamId, { cents: 5, times: 2 }, {
      metadata: { correlationId: "c-1", userId: "u-9" },
    });
    const events = await store.loadEvents(streamId);
    assert.deepEqual(events.map((event) => event.metadata), [
      { correlationId: "c-1", userId: "system" },
      { correlationId: "c-1", userId: "u-9" },
    ]);
  });

  test("a snapshot that cannot be decoded is ignored, logged, and replaced", async (store) => {
    const streamId = newStreamId();
    await new AggregateRepository(store, account, { snapshotEvery: 2 })
      .handle(streamId, { cents: 10, times: 2 });
    const logs: LogRecord[] = [];
    // The snapshot's bytes no longer decode: a codec changed, a row broke.
    const damaged = wrapStore(store, {
      loadSnapshot: () =>
        Promise.reject(
          new EncodingError(`snapshot of stream "${streamId}"`, "bad bytes", {
            operation: "decode",
          }),
        ),
    });
    const accounts = new AggregateRepository(damaged, account, {
      snapshotEvery: 2,
      logger: (record) => logs.push(record),
    });
    assert.deepEqual(await accounts.load(streamId), {
      state: 20,
      version: 2,
      snapshotAt: undefined,
      eventsApplied: 2,
    });
    const handled = await accounts.handle(streamId, { cents: 10, times: 2 });
    assert.deepEqual([handled.state, handled.snapshotSavedAt], [40, 4]);
    assert.ok(
      logs.some((record) =>
        record.level === "warn" &&
        record.message === "Ignoring a snapshot that cannot be decoded"
      ),
    );
  });

  test("malformed options and aggregates are refused", (store) => {
    const bad: [string, () => unknown][] = [
      [
        "options.snapshotEvery",
        () => new AggregateRepository(store, account, { snapshotEvery: -1 }),
      ],
      [
        "options.maxRetries",
        () => new AggregateRepository(store, account, { maxRetries: 1.5 }),
      ],
      ["aggregate.snapshotVersion", () =>
        new AggregateRepository(store, {
          ...account,
          snapshotVersion: "2" as never,
        })],
      [
        "aggregate.evolve",
        () =>
          new AggregateRepository(store, {
            ...account,
            evolve: undefined as never,
          }),
      ],
      ["store", () => new AggregateRepository({} as never, account)],
    ];
    for (const [field, create] of bad) {
      assert.throws(
        create,
        (error) =>
          error instanceof InvalidArgumentError && error.field === field,
      );
    }
    return Promise.resolve();
  });
}

testAggregates(
  "InMemoryEventStore",
  () => Promise.resolve(new InMemoryEventStore()),
);

const database = await createTestDatabaseOrFail("AggregateRepository");
if (database !== undefined) {
  {
    await using store = await PostgresEventStore.connect(database.url);
    await store.migrate();
  }
  testAggregates(
    "PostgresEventStore",
    () => PostgresEventStore.connect(database.url, { max: 6 }),
  );
  Deno.test("AggregateRepository on PostgresEventStore: a damaged snapshot row does not block commands", async () => {
    await using store = await PostgresEventStore.connect(database.url, {
      max: 2,
    });
    const streamId = newStreamId();
    const accounts = new AggregateRepository(store, account, {
      snapshotEvery: 2,
    });
    await accounts.handle(streamId, { cents: 10, times: 2 });
    const sql = postgres(database.url, { max: 1, onnotice: () => {} });
    try {
      await sql`UPDATE snapshots SET state = '\\xff' WHERE stream_id = ${streamId}`;
    } finally {
      await sql.end();
    }
    await assert.rejects(store.loadSnapshot(streamId), EncodingError);
    const handled = await accounts.handle(streamId, { cents: 10 });
    assert.deepEqual([handled.state, handled.version], [30, 3]);
  });

  Deno.test("AggregateRepository: drop the test database", () =>
    database.drop());
}
