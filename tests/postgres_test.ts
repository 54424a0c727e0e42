/**
 * The PostgreSQL store on a real server: the whole conformance suite, the
 * seed design's nine integration tests by name, and what only PostgreSQL
 * has (races on the primary key, query plans, connection failures, secrets,
 * logging, tracing, timeouts).
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import {
  cborCodec,
  ConcurrencyConflictError,
  type EventStore,
  InvalidArgumentError,
  type LogRecord,
  MigrationError,
  type NewEvent,
  PostgresEventStore,
  type PostgresEventStoreOptions,
  StoreClosedError,
  StoreUnavailableError,
} from "../mod.ts";
import { statementsFor } from "../src/postgres/statements.ts";
import { copyReadAll } from "../src/postgres/copy_read.ts";
import { BUNDLED_MIGRATIONS } from "../src/migrations.ts";
import { newCategory, newStreamId, testEventStore } from "./conformance.ts";
import {
  createTestDatabase,
  createTestDatabaseOrFail,
  type TestDatabase,
} from "./_database.ts";
import { recordSpans } from "./_tracing.ts";

const spans = recordSpans();
const database = await createTestDatabaseOrFail("PostgresEventStore");
if (database !== undefined) await registerTests(database);

function events(count: number, type = "Happened"): NewEvent<{ n: number }>[] {
  return Array.from({ length: count }, (_, index) => ({
    type,
    data: { n: index + 1 },
  }));
}

/** Every test of this file, on one fresh database. */
async function registerTests(database: TestDatabase): Promise<void> {
  const { url } = database;
  const open = (options: PostgresEventStoreOptions = {}) =>
    PostgresEventStore.connect(url, { max: 4, ...options });

  // The schema comes from the real migration runner.
  {
    await using store = await open();
    await store.migrate();
  }
  // A connection of the test's own, to look at the tables directly.
  const admin = postgres(url, { max: 2, onnotice: () => {} });
  // Open its connections now: postgres.js starts a lifetime timer per
  // connection, which the test that happened to open it would report leaked.
  await Promise.all([admin`SELECT 1`, admin`SELECT 1`]);
  const fingerprint = async (): Promise<string> => {
    const [row] = await admin`
      SELECT md5(
        coalesce((SELECT string_agg(events::text, '|' ORDER BY global_position)
                  FROM events), '') || '#' ||
        coalesce((SELECT string_agg(snapshots::text, '|' ORDER BY stream_id)
                  FROM snapshots), '')
      ) AS digest`;
    return row.digest;
  };

  testEventStore("PostgresEventStore", () => open(), { fingerprint });

  // The seed design's nine integration tests, by their names.
  const seed = (name: string, body: (store: EventStore) => Promise<void>) =>
    Deno.test(`PostgresEventStore: ${name}`, async () => {
      await using store = await open();
      await body(store);
    });

  seed("append and load events", async (store) => {
    const streamId = newStreamId("order");
    const result = await store.appendEvents(streamId, [
      { type: "OrderPlaced", data: { total: 25 }, metadata: { user: "u-1" } },
      { type: "OrderShipped", data: { tracking: "TN-1" } },
    ]);
    assert.equal(result.version, 2);
    const loaded = await store.loadEvents(streamId);
    assert.deepEqual(
      loaded.map((event) => [event.version, event.type, event.data]),
      [[1, "OrderPlaced", { total: 25 }], [2, "OrderShipped", {
        tracking: "TN-1",
      }]],
    );
    assert.deepEqual(loaded[0].metadata, { user: "u-1" });
    assert.equal(loaded[1].globalPosition, result.globalPosition);
  });

  seed("optimistic concurrency check", async (store) => {
    const streamId = newStreamId();
    await store.appendEvents(streamId, events(2), {
      expectedVersion: "no_stream",
    });
    await assert.rejects(
      store.appendEvents(streamId, events(1), { expectedVersion: 1 }),
      (error) =>
        error instanceof ConcurrencyConflictError &&
        error.streamId === streamId && error.expectedVersion === 1 &&
        error.actualVersion === 2,
    );
    assert.equal(await store.streamVersion(streamId), 2);
  });

  seed("concurrent appends race condition", async (store) => {
    const streamId = newStreamId();
    await store.appendEvents(streamId, events(1));
    const outcomes = await Promise.allSettled([
      store.appendEvents(streamId, events(1), { expectedVersion: 1 }),
      store.appendEvents(streamId, events(1), { expectedVersion: 1 }),
    ]);
    assert.deepEqual(
      outcomes.map((outcome) => outcome.status).sort(),
      ["fulfilled", "rejected"],
    );
    const rejected = outcomes.find((outcome) => outcome.status === "rejected");
    assert.ok(
      (rejected as PromiseRejectedResult).reason instanceof
        ConcurrencyConflictError,
    );
    assert.equal(await store.streamVersion(streamId), 2);
  });

  seed("load events from version", async (store) => {
    const streamId = newStreamId();
    await store.appendEvents(streamId, events(5));
    const loaded = await store.loadEvents(streamId, { fromVersion: 3 });
    assert.deepEqual(loaded.map((event) => event.version), [3, 4, 5]);
  });

  seed("save and load snapshot", async (store) => {
    const streamId = newStreamId();
    await store.appendEvents(streamId, events(3));
    await store.saveSnapshot(streamId, 3, { count: 3, at: new Date(0) });
    const snapshot = await store.loadSnapshot(streamId);
    assert.equal(snapshot?.version, 3);
    assert.deepEqual(snapshot?.state, { count: 3, at: new Date(0) });
    assert.equal(snapshot?.streamId, streamId);
  });

  seed("snapshot upsert", async (store) => {
    const streamId = newStreamId();
    await store.appendEvents(streamId, events(4));
    await store.saveSnapshot(streamId, 2, { count: 2 });
    await store.saveSnapshot(streamId, 4, { count: 4 });
    await store.saveSnapshot(streamId, 3, { count: 3 }); // older: ignored
    assert.deepEqual((await store.loadSnapshot(streamId))?.state, {
      count: 4,
    });
    const [row] = await admin`
      SELECT count(*)::int AS rows FROM snapshots WHERE stream_id = ${streamId}`;
    assert.equal(row.rows, 1);
  });

  seed("load snapshot not found", async (store) => {
    assert.equal(await store.loadSnapshot(newStreamId()), undefined);
  });

  seed("empty event list error", async (store) => {
    const streamId = newStreamId();
    await assert.rejects(
      store.appendEvents(streamId, []),
      (error) =>
        error instanceof InvalidArgumentError && error.field === "events",
    );
    assert.equal(await store.streamVersion(streamId), 0);
  });

  seed("multiple streams isolation", async (store) => {
    const [first, second] = [newStreamId(), newStreamId()];
    await store.appendEvents(first, events(2, "First"));
    await store.appendEvents(second, events(3, "Second"));
    assert.deepEqual(
      (await store.loadEvents(first)).map((event) => event.type),
      ["First", "First"],
    );
    assert.equal(await store.streamVersion(second), 3);
    await store.appendEvents(first, events(1), { expectedVersion: 2 });
    assert.equal(await store.streamVersion(second), 3);
  });

  Deno.test("PostgresEventStore: 8 writers racing with one expected version, 20 rounds: one wins each round, no gaps", async () => {
    // Several pools, so the writers really run on separate connections.
    const stores = await Promise.all(
      Array.from({ length: 4 }, () => open({ max: 2 })),
    );
    try {
      const streamId = newStreamId();
      for (let round = 0; round < 20; round++) {
        const outcomes = await Promise.allSettled(
          Array.from(
            { length: 8 },
            (_, writer) =>
              stores[writer % stores.length].appendEvents(
                streamId,
                [{ type: "Raced", data: { round, writer } }],
                { expectedVersion: round },
              ),
          ),
        );
        const won = outcomes.filter((outcome) =>
          outcome.status === "fulfilled"
        );
        assert.equal(won.length, 1, `round ${round}`);
        for (const outcome of outcomes) {
          if (outcome.status === "fulfilled") continue;
          const error = outcome.reason;
          assert.ok(error instanceof ConcurrencyConflictError, String(error));
          assert.equal(error.expectedVersion, round);
          assert.equal(error.actualVersion, round + 1);
        }
      }
      const loaded = await stores[0].loadEvents<{ round: number }>(streamId);
      assert.deepEqual(
        loaded.map((event) => event.version),
        Array.from({ length: 20 }, (_, index) => index + 1),
      );
      assert.deepEqual(
        loaded.map((event) => event.data.round),
        Array.from({ length: 20 }, (_, index) => index),
      );
    } finally {
      await Promise.all(stores.map((store) => store.close()));
    }
  });

  Deno.test("PostgresEventStore: 20 concurrent appends with expectedVersion any all succeed, without gaps", async () => {
    await using store = await open({ max: 20 });
    const streamId = newStreamId();
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, writer) =>
        store.appendEvents(streamId, [
          { type: "Any", data: { writer, part: 1 } },
          { type: "Any", data: { writer, part: 2 } },
        ])),
    );
    assert.deepEqual(
      results.map((result) => result.version).sort((a, b) => a - b),
      Array.from({ length: 20 }, (_, index) => 2 * (index + 1)),
    );
    const loaded = await store.loadEvents<{ writer: number; part: number }>(
      streamId,
    );
    assert.equal(loaded.length, 40);
    loaded.forEach((event, index) => assert.equal(event.version, index + 1));
    // Each batch stayed together: part 1 then part 2 of the same writer.
    for (let index = 0; index < 40; index += 2) {
      assert.equal(loaded[index].data.writer, loaded[index + 1].data.writer);
      assert.deepEqual(
        [loaded[index].data.part, loaded[index + 1].data.part],
        [1, 2],
      );
    }
  });

  Deno.test("PostgresEventStore: readAll never passes a position that a running transaction may still commit", async () => {
    await using store = await open();
    const category = newCategory();
    const slowData = cborCodec.encode({ slow: true });
    const seenWhileOpen = await admin.begin(async (transaction) => {
      // A slow writer: its append takes a low position and stays uncommitted.
      await transaction.unsafe(statementsFor('"public"').appendOne, [
        `${category}-slow`,
        crypto.randomUUID(),
        "Slow",
        slowData,
        "{}",
        null,
        false,
        false,
      ] as never[], { prepare: true });
      // A fast writer commits a later, higher position first.
      const fast = await store.appendEvents(`${category}-fast`, events(1));
      assert.equal(await store.streamVersion(`${category}-fast`), 1);
      const seen = await store.readAll({ category });
      // Nor does it show up when reading from the start of the store.
      const anywhere = await store.readAll({
        fromPosition: fast.globalPosition - 1n,
      });
      return { seen, anywhere };
    });
    assert.deepEqual(seenWhileOpen.seen, []);
    assert.deepEqual(seenWhileOpen.anywhere, []);
    // Once the slow one commits, both arrive, in position order.
    const all = await store.readAll({ category });
    assert.deepEqual(all.map((event) => event.type), ["Slow", "Happened"]);
    assert.ok(all[0].globalPosition < all[1].globalPosition);
    assert.deepEqual(all[0].data, { slow: true });
  });

  Deno.test("PostgresEventStore: appends wake subscribers of other pools (other processes alike), with no NOTIFY", async () => {
    // Nothing is sent on the store's old channel: the append path pays for
    // no notification.
    let notified = 0;
    const listener = await admin.listen("eventstore_public", () => notified++);
    {
      await using writer = await open();
      await writer.appendEvents(newStreamId(), events(3));
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    await listener.unlisten();
    assert.equal(notified, 0);
    // A subscriber of another store sees an append of this one.
    await using reader = await open();
    await using writer = await open();
    const category = newCategory();
    const stop = new AbortController();
    const received = (async () => {
      for await (
        const event of reader.subscribe({ category, signal: stop.signal })
      ) {
        return event.streamId;
      }
    })();
    // Once the subscription reads (and so the reader's watch runs).
    await new Promise((resolve) => setTimeout(resolve, 100));
    await writer.appendEvents(`${category}-1`, events(1));
    const guard = setTimeout(() => stop.abort(), 10_000);
    assert.equal(await received, `${category}-1`);
    clearTimeout(guard);
    // How soon: W7 in bench:report (a benchmark, not a timed test).
  });

  Deno.test("PostgresEventStore: a projection's writes through its transaction commit with the checkpoint (exactly once)", async () => {
    await using store = await open();
    const category = newCategory();
    const name = `revenue-${crypto.randomUUID()}`;
    const table = `read_model_${crypto.randomUUID().replaceAll("-", "")}`;
    await admin.unsafe(`CREATE TABLE ${table} (event_id uuid PRIMARY KEY)`);
    await store.appendEvents(`${category}-1`, events(10));
    const expected = (await store.readAll({ category })).map((e) => e.id);
    type Transaction = postgres.TransactionSql;
    const project = (failOnBatch: number, stop: AbortController) => {
      let batches = 0;
      return store.runProjection(name, async (batch, { transaction }) => {
        const sql = transaction as Transaction;
        for (const event of batch) {
          await sql.unsafe(`INSERT INTO ${table} (event_id) VALUES ($1)`, [
            event.id,
          ]);
        }
        if (++batches === failOnBatch) {
          throw new Error("crashed after writing, before the checkpoint");
        }
        const [{ count }] = await sql.unsafe(
          `SELECT count(*)::int AS count FROM ${table}`,
        );
        if (count === expected.length) stop.abort();
      }, { category, batchSize: 4, signal: stop.signal });
    };
    await assert.rejects(project(2, new AbortController()), /crashed/);
    // The failed batch's rows went with its transaction.
    const [{ count: afterCrash }] = await admin.unsafe(
      `SELECT count(*)::int AS count FROM ${table}`,
    );
    assert.equal(afterCrash, 4);
    const stop = new AbortController();
    const guard = setTimeout(() => stop.abort(), 20_000);
    await project(0, stop);
    clearTimeout(guard);
    const rows = await admin.unsafe(`SELECT event_id FROM ${table}`);
    assert.deepEqual(
      rows.map((row) => row.event_id).sort(),
      [...expected].sort(),
    );
    assert.equal(
      await store.projectionPosition(name),
      (await store.readAll({ category })).at(-1)!.globalPosition,
    );
    await admin.unsafe(`DROP TABLE ${table}`);
  });

  Deno.test("PostgresEventStore: the first call on a brand-new store appends every column type", async () => {
    // A fresh pool of one connection: nothing has run on it before.
    await using store = await open({ max: 1 });
    const streamId = newStreamId();
    const id = crypto.randomUUID();
    const result = await store.appendEvents<unknown>(streamId, [
      {
        id,
        type: "First",
        data: { bytes: new Uint8Array([0, 255]), big: 2n ** 70n },
        metadata: { tags: ["a", "b"], nested: { quote: "\"'\\" } },
      },
      { type: "Second", data: "two" },
    ]);
    assert.equal(result.version, 2);
    const [first, second] = await store.loadEvents(streamId);
    assert.equal(first.id, id);
    assert.deepEqual(first.data, {
      bytes: new Uint8Array([0, 255]),
      big: 2n ** 70n,
    });
    assert.deepEqual(first.metadata, {
      tags: ["a", "b"],
      nested: { quote: "\"'\\" },
    });
    assert.equal(second.data, "two");
  });

  /** The forward probe of the position index that `ahead` is. */
  const aheadProbe =
    /"Scan Direction":"Forward","Index Name":"events_global_position_idx"/;

  /**
   * The plan of `statement`, prepared in `mode` (a `plan_cache_mode`) and
   * executed with `values` (SQL literals), as JSON text.
   */
  const planOfPrepared = (
    mode: string,
    statement: string,
    values: string,
    database = admin,
  ) =>
    database.begin(async (transaction) => {
      await transaction`SELECT set_config('plan_cache_mode', ${mode}, true)`;
      // Simple protocol: PREPARE's own $n are not the query's parameters.
      await transaction.unsafe(`PREPARE probed_plan AS ${statement}`).simple();
      const rows = await transaction.unsafe(
        `EXPLAIN (FORMAT JSON) EXECUTE probed_plan(${values})`,
      ).simple();
      await transaction`DEALLOCATE probed_plan`;
      return JSON.stringify(rows[0]["QUERY PLAN"]);
    });

  Deno.test("PostgresEventStore: readAll past events the statistics have not seen yet reads the position index in order, not the whole range and a sort (EXPLAIN)", async () => {
    // Statistics of a table, then 10,000 events appended after them in ten
    // transactions: positions 2^20 apart, as real appends leave them.
    await admin`ANALYZE events`;
    const [{ before }] = await admin`
      SELECT coalesce(max(global_position), 0)::text AS before FROM events`;
    for (let transaction = 0; transaction < 10; transaction++) {
      await admin`
        INSERT INTO events (global_position, stream_id, version, event_id, event_type, data)
        SELECT (pg_current_xact_id()::text::bigint << 20) + version,
               'stale-' || ${transaction}, version, gen_random_uuid(), 'Bulk', '\\x00'
        FROM generate_series(1, 1000) AS version`;
    }
    const statements = statementsFor('"public"');
    for (const mode of ["force_custom_plan", "force_generic_plan"]) {
      const plan = await planOfPrepared(
        mode,
        statements.readAllUnfiltered,
        `${before}, 100`,
      );
      assert.match(
        plan,
        /"Node Type":"Index Scan","Parent Relationship":"Outer","Parallel Aware":false,"Async Capable":false,"Scan Direction":"Forward","Index Name":"events_global_position_idx"/,
        `${mode}: ${plan}`,
      );
      assert.doesNotMatch(
        plan,
        /Bitmap|"Node Type":"Sort"/,
        `${mode}: ${plan}`,
      );
    }
    // The COPY of the rest gets the same plan.
    const copy = copyReadAll('"public"', {
      fromPosition: BigInt(before),
      maxCount: 100,
      types: undefined,
      category: undefined,
    });
    const select = copy.slice(
      copy.indexOf("(") + 1,
      copy.lastIndexOf(") TO STDOUT"),
    );
    const rows = await admin.unsafe(`EXPLAIN (FORMAT JSON) ${select}`);
    const copyPlan = JSON.stringify(rows[0]["QUERY PLAN"]);
    assert.match(
      copyPlan,
      /"Index Name":"events_global_position_idx"/,
      copyPlan,
    );
    assert.doesNotMatch(copyPlan, /Bitmap|"Node Type":"Sort"/, copyPlan);
  });

  Deno.test("PostgresEventStore: reads are primary-key index scans (EXPLAIN)", async () => {
    // Tables big enough that the planner would scan them whole if the
    // statements could not use the keys: 2,000 streams of 10 events, each
    // with a snapshot.
    await admin`
      INSERT INTO events (global_position, stream_id, version, event_id, event_type, data)
      SELECT (pg_current_xact_id()::text::bigint << 20) + stream * 10 + version,
             'plan-' || stream, version, gen_random_uuid(), 'Bulk', '\\x00'
      FROM generate_series(1, 2000) AS stream, generate_series(1, 10) AS version`;
    await admin`
      INSERT INTO snapshots (stream_id, version, state)
      SELECT 'plan-' || stream, 10, '\\x00' FROM generate_series(1, 2000) AS stream`;
    await admin`ANALYZE events`;
    await admin`ANALYZE snapshots`;
    const streamId = "plan-7";
    const statements = statementsFor('"public"');
    const plan = async (text: string, params: unknown[]) => {
      const rows = await admin.unsafe(
        `EXPLAIN (FORMAT JSON) ${text}`,
        params as never[],
      );
      return JSON.stringify(rows[0]["QUERY PLAN"]);
    };
    // For a short stream the planner may pick a bitmap scan of an index
    // that starts with stream_id (the primary key, or the event-id index of
    // migration 006) and sort the rows; never a table scan.
    const streamIndex =
      /"Index Name":"(events_pkey|events_stream_event_id_idx)"/;
    const load = await plan(statements.load, [streamId, 1, null]);
    assert.match(load, streamIndex, load);
    assert.doesNotMatch(load, /Seq Scan/, load);

    const version = await plan(statements.streamVersion, [streamId]);
    assert.match(version, streamIndex, version);
    assert.doesNotMatch(version, /Seq Scan/, version);

    const snapshot = await plan(statements.loadSnapshot, [streamId]);
    assert.match(snapshot, /"Index Name":"snapshots_pkey"/, snapshot);
    assert.doesNotMatch(snapshot, /Seq Scan/, snapshot);

    // An append with the caller's ids looks for them by index, not by
    // reading a long stream's rows: in the plan postgres.js prepares once
    // (generic) as in one made for the values.
    await admin`
      INSERT INTO events (global_position, stream_id, version, event_id, event_type, data)
      SELECT (pg_current_xact_id()::text::bigint << 20) + version,
             'plan-long', version, gen_random_uuid(), 'Bulk', '\\x00'
      FROM generate_series(1, 20000) AS version`;
    await admin`ANALYZE events`;
    const ids = Array.from({ length: 3 }, () => crypto.randomUUID());
    for (const mode of ["force_generic_plan", "force_custom_plan"]) {
      const append = await admin.begin(async (transaction) => {
        await transaction`SELECT set_config('plan_cache_mode', ${mode}, true)`;
        // Simple protocol: PREPARE's own $n are not the query's parameters.
        await transaction.unsafe(`PREPARE append_plan AS ${statements.append}`)
          .simple();
        const rows = await transaction.unsafe(
          `EXPLAIN (FORMAT JSON) EXECUTE append_plan(
             'plan-long', '{${
            ids.join(",")
          }}', '{A,B,C}', '{"\\\\x00","\\\\x00","\\\\x00"}',
             '{"{}","{}","{}"}', 20000, false, true)`,
        ).simple();
        await transaction`DEALLOCATE append_plan`;
        return JSON.stringify(rows[0]["QUERY PLAN"]);
      });
      assert.match(append, /"Index Name":"events_stream_event_id_idx"/, append);
      assert.doesNotMatch(append, /Seq Scan/, append);
      // Whether stored positions are ahead of this cluster's transaction
      // ids (migration 007): a probe of the position index, never a read of
      // the table (an EXISTS for it was planned as one: W1 fell to 0.08 of
      // its baseline).
      assert.match(append, aheadProbe, append);
      // The lean single append: the stream's version and the same probe,
      // by index both.
      const lean = await admin.begin(async (transaction) => {
        await transaction`SELECT set_config('plan_cache_mode', ${mode}, true)`;
        await transaction.unsafe(
          `PREPARE lean_plan AS ${statements.appendOneLean}`,
        ).simple();
        const rows = await transaction.unsafe(
          `EXPLAIN (FORMAT JSON) EXECUTE lean_plan(
             'plan-long', '${ids[0]}', 'A', '\\x00', '{}', 20000, false)`,
        ).simple();
        await transaction`DEALLOCATE lean_plan`;
        return JSON.stringify(rows[0]["QUERY PLAN"]);
      });
      assert.doesNotMatch(lean, /Seq Scan/, lean);
      assert.match(lean, streamIndex, lean);
      assert.match(lean, aheadProbe, lean);
      // With an exact version: that version's key, and the same probe.
      const exact = await planOfPrepared(
        mode,
        statements.appendOneExact,
        `'plan-long', '${ids[0]}', 'A', '\\x00', '{}', 20000`,
      );
      assert.doesNotMatch(exact, /Seq Scan/, exact);
      assert.match(exact, /"Index Name":"events_pkey"/, exact);
      assert.match(exact, aheadProbe, exact);
    }
  });

  Deno.test("PostgresEventStore: data of every size comes back exact through loadEvents, readAll and snapshots", async () => {
    // The reads take data as base64 text, which PostgreSQL breaks into
    // lines of 76 characters: sizes around that break and far past it.
    await using store = await open();
    const category = `sizes${crypto.randomUUID().slice(0, 8)}`;
    const streamId = `${category}-1`;
    const sizes = [0, 1, 2, 3, 56, 57, 58, 59, 1_000, 100_000, 1_000_003];
    const payloads = sizes.map((size) => {
      const bytes = new Uint8Array(size);
      for (let offset = 0; offset < size; offset += 65_536) {
        crypto.getRandomValues(bytes.subarray(offset, offset + 65_536));
      }
      return bytes;
    });
    await store.appendEvents(
      streamId,
      payloads.map((bytes) => ({ type: "Sized", data: { bytes } })),
    );
    const loaded = await store.loadEvents<{ bytes: Uint8Array }>(streamId);
    const all = await store.readAll<{ bytes: Uint8Array }>({ category });
    for (const [index, bytes] of payloads.entries()) {
      assert.deepStrictEqual(
        loaded[index].data.bytes,
        bytes,
        `size ${sizes[index]}`,
      );
      assert.deepStrictEqual(
        all[index].data.bytes,
        bytes,
        `size ${sizes[index]}`,
      );
    }
    await store.saveSnapshot(streamId, sizes.length, {
      bytes: payloads.at(-1),
    });
    const snapshot = await store.loadSnapshot<{ bytes: Uint8Array }>(streamId);
    assert.deepStrictEqual(snapshot?.state.bytes, payloads.at(-1));
  });

  Deno.test("PostgresEventStore: appends stay index probes when a few streams hold every event (EXPLAIN)", async () => {
    // Few distinct streams: the planner then expects a stream's rows among
    // the first few of the table, and an EXISTS on the stream (or on a
    // position bound it cannot estimate) may become a sequential scan that
    // reads all of it for a new stream. None of the append statements may.
    await using store = await open({ schema: "few_streams" });
    await store.migrate();
    await admin`
      INSERT INTO few_streams.events (global_position, stream_id, version, event_id, event_type, data)
      SELECT (pg_current_xact_id()::text::bigint << 20) + stream * 30000 + version,
             'few-' || stream, version, gen_random_uuid(), 'Bulk', '\\x00'
      FROM generate_series(1, 3) AS stream, generate_series(1, 30000) AS version`;
    await admin`ANALYZE few_streams.events`;
    const statements = statementsFor('"few_streams"');
    const id = crypto.randomUUID();
    const cases = [
      [
        "appendOneExact",
        statements.appendOneExact,
        `'few-new', '${id}', 'A', '\\x00', '{}', 0`,
      ],
      [
        "appendOneExact",
        statements.appendOneExact,
        `'few-1', '${id}', 'A', '\\x00', '{}', 30000`,
      ],
      [
        "appendOneLean",
        statements.appendOneLean,
        `'few-new', '${id}', 'A', '\\x00', '{}', NULL, true`,
      ],
      [
        "appendOne",
        statements.appendOne,
        `'few-new', '${id}', 'A', '\\x00', '{}', NULL, false, true`,
      ],
      [
        "appendGroup",
        statements.appendGroup,
        `'{few-new,few-2}', '{${id},${crypto.randomUUID()}}', '{A,A}', '{"\\\\x00","\\\\x00"}', '{"{}","{}"}', '{0,NULL}', '{false,false}', '{true,false}'`,
      ],
      [
        "appendGroupExact",
        statements.appendGroupExact,
        `'{few-new,few-1}', '{${id},${crypto.randomUUID()}}', '{A,A}', '{"\\\\x00","\\\\x00"}', '{"{}","{}"}', '{0,30000}'`,
      ],
    ] as const;
    for (const mode of ["force_generic_plan", "force_custom_plan"]) {
      for (const [name, statement, values] of cases) {
        const plan = await planOfPrepared(mode, statement, values);
        assert.doesNotMatch(plan, /Seq Scan/, `${name} (${mode}): ${plan}`);
        assert.match(plan, aheadProbe, `${name} (${mode}): ${plan}`);
      }
    }
  });

  Deno.test("PostgresEventStore: a password never reaches an error, a log line, a span or inspect", async () => {
    const password = `pw-${crypto.randomUUID()}`;
    const logs: LogRecord[] = [];
    const spanCount = spans.length;
    const withPassword = new URL(url);
    withPassword.password = password;

    // Nothing listens on port 1: the connection is refused.
    const refused = new URL(withPassword.href);
    refused.port = "1";
    const error = await PostgresEventStore.connect(refused.href, {
      connectTimeout: 5,
      logger: (record) => logs.push(record),
    }).then(() => undefined, (error) => error);
    assert.ok(error instanceof StoreUnavailableError, String(error));
    assert.match(error.message, /^Cannot connect \(postgres:\/\/.*:1\//);
    assert.match(error.message, /the database is unreachable/);

    // The server trusts local connections, so a URL with a password works.
    const store = await PostgresEventStore.connect(withPassword.href, {
      logger: (record) => logs.push(record),
    });
    await store.appendEvents(newStreamId(), events(1));
    await assert.rejects(
      store.appendEvents(newStreamId(), events(1), { expectedVersion: 3 }),
      ConcurrencyConflictError,
    );
    const shown = [String(store), Deno.inspect(store, { depth: 10 })];
    await store.close();

    const everything = [
      error.message,
      String(error),
      Deno.inspect(error, { depth: 20 }),
      JSON.stringify(logs),
      Deno.inspect(
        spans.slice(spanCount).map((span) => ({ ...span })),
        { depth: 20 },
      ),
      ...shown,
    ].join("\n");
    assert.ok(logs.length > 0 && spans.length > spanCount);
    assert.ok(!everything.includes(password), everything);
    assert.ok(!everything.includes(encodeURIComponent(password)));
    assert.match(
      shown[0],
      /^PostgresEventStore\(postgres:\/\/.*schema "public"\)$/,
    );
  });

  Deno.test("PostgresEventStore: a malformed URL never echoes its password", async () => {
    const server = new URL(url);
    for (
      const password of ["se#cret-1x", "p/ss?w0rd@x", "a:b%zz-pass"]
    ) {
      for (
        const bad of [
          `postgres://u:${password}@${server.host}/db`,
          `postgres://u:${password}@${server.hostname}:notaport/db`,
        ]
      ) {
        const error = await PostgresEventStore.connect(bad, {
          connectTimeout: 2,
        }).then(
          (store) => (store.close(), undefined),
          (error) => error,
        );
        assert.ok(error instanceof Error, `${bad} connected`);
        const shown = `${error.message}\n${Deno.inspect(error, { depth: 10 })}`;
        assert.ok(!shown.includes(password), shown);
      }
    }
  });

  Deno.test("PostgresEventStore: works on a database whose default isolation is SERIALIZABLE", async () => {
    const serializable = await createTestDatabase();
    try {
      await admin.unsafe(
        `ALTER DATABASE "${serializable.name}" SET default_transaction_isolation = 'serializable'`,
      );
      {
        await using store = await PostgresEventStore.connect(serializable.url);
        await store.migrate();
      }
      // An application's own instance keeps the database default: races
      // surface as serialization failures, which the store retries.
      const sql = postgres(serializable.url, { max: 8, onnotice: () => {} });
      const [isolation] = await sql`SHOW transaction_isolation`;
      assert.equal(isolation.transaction_isolation, "serializable");
      const stores: [string, PostgresEventStore][] = [
        [
          "its own pool",
          await PostgresEventStore.connect(serializable.url, { max: 8 }),
        ],
        ["the application's instance", new PostgresEventStore(sql)],
      ];
      try {
        for (const [label, store] of stores) {
          const streamId = newStreamId();
          const results = await Promise.all(
            Array.from(
              { length: 16 },
              (_, writer) =>
                store.appendEvents(streamId, [{ type: "Any", data: writer }]),
            ),
          );
          assert.deepEqual(
            results.map((result) => result.version).sort((a, b) => a - b),
            Array.from({ length: 16 }, (_, index) => index + 1),
            label,
          );
        }
      } finally {
        for (const [, store] of stores) await store.close();
        await sql.end();
      }
    } finally {
      await serializable.drop();
    }
  });

  Deno.test("PostgresEventStore: ids from a broken generateId are refused before writing", async () => {
    await using store = await open({ generateId: () => "not-a-uuid" });
    const streamId = newStreamId();
    await assert.rejects(
      store.appendEvents(streamId, events(1)),
      (error) =>
        error instanceof InvalidArgumentError &&
        error.field === "options.generateId",
    );
    assert.equal(await store.streamVersion(streamId), 0);
  });

  Deno.test("PostgresEventStore: an application instance with postgres.camel keeps metadata keys as written", async () => {
    const sql = postgres(url, {
      max: 1,
      onnotice: () => {},
      transform: postgres.camel,
    });
    try {
      const store = new PostgresEventStore(sql);
      const streamId = newStreamId();
      const metadata = { correlation_id: "c-1", nested: { user_id: "u-1" } };
      await store.appendEvents(streamId, [{ type: "A", data: 1, metadata }]);
      const [event] = await store.loadEvents(streamId);
      assert.deepEqual(event.metadata, metadata);
      assert.equal(event.version, 1);
      await store.close();
    } finally {
      await sql.end();
    }
  });

  Deno.test("PostgresEventStore: connection failures are StoreUnavailableError", async () => {
    const missing = new URL(url);
    missing.pathname = "/no_such_database";
    await assert.rejects(
      PostgresEventStore.connect(missing.href),
      (error) => {
        assert.ok(error instanceof StoreUnavailableError, String(error));
        assert.equal(error.sqlState, "3D000");
        assert.match(error.message, /the database does not exist/);
        return true;
      },
    );
  });

  Deno.test("PostgresEventStore: a connection killed mid-append: sent again once, looking for its ids, and stored once", async () => {
    const applicationName = `killed-${crypto.randomUUID().slice(0, 8)}`;
    await using store = await open({ applicationName, max: 1 });
    const streamId = newStreamId();
    await store.appendEvents(streamId, events(1));
    const waiting = async (sql: postgres.TransactionSql) => {
      // Within a transaction pg_stat_activity is read once and kept.
      await sql`SELECT pg_stat_clear_snapshot()`;
      const [row] = await sql`
        SELECT count(*)::int AS waiting FROM pg_stat_activity
        WHERE application_name = ${applicationName} AND wait_event_type = 'Lock'`;
      return row.waiting as number;
    };
    // Hold the table so that the append is surely in flight, then kill the
    // backend running it. Its events have generated ids: the store sends it
    // again on a new connection with the look-up on, which waits for the
    // lock too, and commits once the lock is gone.
    const { append } = await admin.begin(async (transaction) => {
      await transaction`LOCK TABLE events IN ACCESS EXCLUSIVE MODE`;
      const append = store.appendEvents(streamId, events(50)).then(
        (result) => result,
        (error) => error,
      );
      for (
        let poll = 0;
        poll < 500 && await waiting(transaction) === 0;
        poll++
      ) {
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      const [{ killed }] = await transaction`
        SELECT count(*)::int AS killed FROM (
          SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE application_name = ${applicationName}) AS terminated`;
      assert.equal(killed, 1);
      // In an object: a promise returned would be awaited inside the
      // transaction, whose lock the append waits for.
      return { append };
    });
    const result = await append;
    assert.ok(!(result instanceof Error), String(result));
    assert.equal(result.version, 51);
    const loaded = await store.loadEvents(streamId);
    assert.equal(loaded.length, 51);
    assert.equal(new Set(loaded.map((event) => event.id)).size, 51);
    assert.equal(loaded[50].globalPosition, result.globalPosition);
    assert.equal((await store.appendEvents(streamId, events(2))).version, 53);
  });

  Deno.test("PostgresEventStore: a schema that was never migrated says to run migrations", async () => {
    await using store = await open({ schema: "never_migrated" });
    for (
      const call of [
        () => store.appendEvents(newStreamId(), events(1)),
        () => store.loadEvents(newStreamId()),
        () => store.loadSnapshot(newStreamId()),
      ]
    ) {
      await assert.rejects(call(), (error) => {
        assert.ok(error instanceof MigrationError, String(error));
        assert.match(error.message, /run the migrations first/);
        assert.match(error.message, /schema "never_migrated"/);
        return true;
      });
    }
  });

  Deno.test("PostgresEventStore: tables live in the schema option; bad schema names are refused", async () => {
    await using store = await open({ schema: "tenant_a" });
    const result = await store.migrate();
    assert.deepEqual(result.applied, [...BUNDLED_MIGRATIONS]);
    const streamId = newStreamId();
    await store.appendEvents(streamId, events(2));
    const [row] = await admin`
      SELECT count(*)::int AS rows FROM tenant_a.events WHERE stream_id = ${streamId}`;
    assert.equal(row.rows, 2);
    const [publicRow] = await admin`
      SELECT count(*)::int AS rows FROM public.events WHERE stream_id = ${streamId}`;
    assert.equal(publicRow.rows, 0);

    for (
      const schema of [
        "",
        "public; DROP TABLE events",
        'a"b',
        "1abc",
        "x".repeat(64),
        "tenant-a",
      ]
    ) {
      await assert.rejects(
        PostgresEventStore.connect(url, { schema }),
        (error) =>
          error instanceof InvalidArgumentError &&
          error.field === "options.schema",
      );
    }
    const [events_] = await admin`SELECT to_regclass('public.events') AS t`;
    assert.equal(events_.t, "events");
  });

  Deno.test("PostgresEventStore: a 63-character schema name still notifies subscribers (the channel fits)", async () => {
    const schema = `s${crypto.randomUUID().replaceAll("-", "")}`.padEnd(
      63,
      "x",
    );
    const records: LogRecord[] = [];
    await using store = await open({
      schema,
      logger: (record) => records.push(record),
    });
    await store.migrate();
    const controller = new AbortController();
    const timeout = setTimeout(() => controller.abort(), 10_000);
    const seen: number[] = [];
    const delivered = (async () => {
      for await (
        const event of store.subscribe<{ n: number }>({
          signal: controller.signal,
        })
      ) {
        seen.push(event.data.n);
        if (seen.length === 3) controller.abort();
      }
    })();
    await store.appendEvents(newStreamId(), events(3));
    await delivered;
    clearTimeout(timeout);
    // Let the watch for other processes' appends look once more.
    await store.appendEvents(newStreamId(), events(1));
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepEqual(seen, [1, 2, 3]);
    const warnings = records.filter((record) => record.level === "warn");
    assert.deepEqual(warnings, []);
    await admin.unsafe(`DROP SCHEMA "${schema}" CASCADE`);
  });

  Deno.test("PostgresEventStore: bad options and URLs are refused before connecting", async () => {
    const bad: [string, PostgresEventStoreOptions][] = [
      ["options.max", { max: 0 }],
      ["options.max", { max: 1.5 }],
      ["options.connectTimeout", { connectTimeout: -1 }],
      ["options.statementTimeout", { statementTimeout: NaN }],
      ["options.acquireTimeout", { acquireTimeout: -5 }],
      ["options.acquireTimeout", { acquireTimeout: "1s" as never }],
      ["options.applicationName", { applicationName: "a\0b" }],
      ["options.codec", { codec: {} as never }],
      ["options.logger", { logger: "console" as never }],
      ["options.prepare", { prepare: "false" as never }],
    ];
    for (const [field, options] of bad) {
      await assert.rejects(
        PostgresEventStore.connect(url, options),
        (error) =>
          error instanceof InvalidArgumentError && error.field === field,
      );
    }
    await assert.rejects(
      PostgresEventStore.connect(""),
      (error) => error instanceof InvalidArgumentError && error.field === "url",
    );
    assert.throws(
      () => new PostgresEventStore({} as never),
      (error) => error instanceof InvalidArgumentError && error.field === "sql",
    );
  });

  Deno.test("PostgresEventStore: wraps the application's postgres.js instance and leaves it open", async () => {
    const sql = postgres(url, { max: 2, onnotice: () => {} });
    try {
      const store = await PostgresEventStore.connect(sql);
      const streamId = newStreamId();
      await store.appendEvents(streamId, events(3));
      // The application's instance parses bigint as text: the store copes.
      const loaded = await store.loadEvents(streamId);
      assert.deepEqual(loaded.map((event) => event.version), [1, 2, 3]);
      assert.equal(typeof loaded[0].globalPosition, "bigint");
      await store.close();
      await assert.rejects(store.streamVersion(streamId), StoreClosedError);
      const [row] = await sql`SELECT count(*)::int AS rows FROM events
                              WHERE stream_id = ${streamId}`;
      assert.equal(row.rows, 3);
      assert.throws(
        () => new PostgresEventStore(sql, { max: 5 }),
        (error) =>
          error instanceof InvalidArgumentError &&
          error.field === "options.max",
      );
    } finally {
      await sql.end();
    }
  });

  Deno.test("PostgresEventStore: close ends the pool it opened; applicationName is set", async () => {
    const applicationName = `closing-${crypto.randomUUID().slice(0, 8)}`;
    const store = await open({ applicationName, max: 3 });
    await Promise.all(
      Array.from({ length: 3 }, () => store.streamVersion(newStreamId())),
    );
    const connections = async () =>
      (await admin`SELECT count(*)::int AS n FROM pg_stat_activity
                   WHERE application_name = ${applicationName}`)[0].n;
    assert.ok(await connections() >= 1);
    await store.close();
    // The backend notices the closed socket right away; allow it a moment.
    for (let attempt = 0; attempt < 50 && await connections() > 0; attempt++) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    assert.equal(await connections(), 0);
  });

  Deno.test("PostgresEventStore: a statement timeout is a typed error and writes nothing", async () => {
    await using store = await open({ statementTimeout: 200 });
    const streamId = newStreamId();
    await store.appendEvents(streamId, events(1));
    const before = await fingerprint();
    // Hold a lock that makes the append wait past its timeout.
    await admin.begin(async (transaction) => {
      await transaction`LOCK TABLE events IN ACCESS EXCLUSIVE MODE`;
      await assert.rejects(
        store.appendEvents(streamId, events(3)),
        (error) => {
          assert.ok(error instanceof StoreUnavailableError, String(error));
          assert.equal(error.sqlState, "57014");
          assert.match(error.message, /timed out/);
          return true;
        },
      );
    });
    assert.equal(await fingerprint(), before);
    assert.equal(await store.streamVersion(streamId), 1);
  });

  Deno.test("PostgresEventStore: the logger gets structured records; one that throws changes nothing", async () => {
    const records: LogRecord[] = [];
    const store = await open({ logger: (record) => records.push(record) });
    const streamId = newStreamId();
    await store.appendEvents(streamId, events(1));
    await assert.rejects(
      store.appendEvents(streamId, events(1), { expectedVersion: 0 }),
      ConcurrencyConflictError,
    );
    await store.close();
    assert.deepEqual(records[0], {
      level: "info",
      message: "Connected",
      fields: {
        schema: "public",
        server: records[0].fields.server,
        route: "direct",
      },
    });
    const conflict = records.find((record) =>
      record.message === "Append refused: concurrency conflict"
    );
    assert.deepEqual(conflict?.fields, {
      schema: "public",
      streamId,
      expectedVersion: 0,
      actualVersion: 1,
    });
    assert.equal(records.at(-1)?.message, "Closed");

    await using throwing = await open({
      logger: () => {
        throw new Error("a broken logger");
      },
    });
    assert.equal((await throwing.appendEvents(streamId, events(1))).version, 2);
  });

  Deno.test("PostgresEventStore: one span per operation, with stream id, event count and version", async () => {
    await using store = await open();
    const streamId = newStreamId();
    const first = spans.length;
    await store.appendEvents(streamId, events(3));
    await store.loadEvents(streamId);
    await assert.rejects(
      store.appendEvents(streamId, events(1), { expectedVersion: 1 }),
    );
    const recorded = spans.slice(first);
    assert.deepEqual(recorded.map((span) => span.name), [
      "eventstore append events",
      "eventstore load events",
      "eventstore append events",
    ]);
    assert.ok(recorded.every((span) => span.ended));
    assert.deepEqual(recorded[0].attributes, {
      "db.system": "postgresql",
      "db.namespace": "public",
      "eventstore.stream_id": streamId,
      "eventstore.event_count": 3,
      "eventstore.expected_version": "any",
      "eventstore.version": 3,
    });
    assert.equal(recorded[1].attributes["eventstore.event_count"], 3);
    assert.equal(recorded[2].status.code, 2); // SpanStatusCode.ERROR
    assert.equal(
      recorded[2].attributes["eventstore.error_code"],
      "concurrency_conflict",
    );
    assert.ok(recorded[2].exceptions[0] instanceof ConcurrencyConflictError);
  });

  // Registered last, so it runs after every other test of this file.
  Deno.test("PostgresEventStore: drop the test database", async () => {
    await admin.end();
    await database.drop();
  });
}
