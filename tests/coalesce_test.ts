/**
 * Coalesced appends (issue 15): appends that wait for a connection go
 * together in one statement when one comes free, each on its own terms.
 * What must hold is what holds for appends sent alone: the right winners,
 * each loser a conflict with the true actual version, repeats by id
 * answered with the first result, no gaps, order per stream, and, when the
 * server fails a whole group, every append all or nothing with its own
 * outcome.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import {
  type AppendResult,
  ConcurrencyConflictError,
  InvalidArgumentError,
  type LogRecord,
  PostgresEventStore,
  StoreUnavailableError,
} from "../mod.ts";
import { newCategory } from "./conformance.ts";
import { createTestDatabaseOrFail, type TestDatabase } from "./_database.ts";
import { sleep, within } from "./_wait.ts";

const LABEL = "PostgresEventStore coalesced appends";

const database = await createTestDatabaseOrFail(LABEL);
if (database !== undefined) await registerTests(database);

async function registerTests(database: TestDatabase) {
  {
    await using store = await PostgresEventStore.connect(database.url);
    await store.migrate();
  }
  const admin = postgres(database.url, { max: 2, onnotice: () => {} });
  await Promise.all([admin`SELECT 1`, admin`SELECT 1`]);

  /**
   * Holds the store's only connection with an append that waits for a row
   * lock of `admin`'s, so that the appends made meanwhile queue up; the
   * returned function lets it go.
   */
  async function holdTheConnection(store: PostgresEventStore, stream: string) {
    const locked = Promise.withResolvers<void>();
    const release = Promise.withResolvers<void>();
    const holding = admin.begin(async (transaction) => {
      await transaction`
        INSERT INTO events (global_position, stream_id, version, event_id, event_type, data)
        VALUES ((pg_current_xact_id()::text::bigint << 20) + 1, ${stream}, 1,
                gen_random_uuid(), 'Held', '\\x00')`;
      locked.resolve();
      await release.promise;
      throw new Error("rolled back on purpose");
    }).catch(() => {});
    await locked.promise;
    const blocked = store.appendEvents(stream, [{ type: "Blocked", data: {} }]);
    await sleep(100); // it waits on the lock now, holding the connection
    return async () => {
      release.resolve();
      await holding;
      return await blocked;
    };
  }

  Deno.test(`${LABEL}: appends that wait for a connection go in one statement`, async () => {
    const logs: LogRecord[] = [];
    await using store = await PostgresEventStore.connect(database.url, {
      max: 1,
      logger: (record) => logs.push(record),
    });
    const category = newCategory();
    const letGo = await holdTheConnection(store, `${category}-blocker`);
    const appends = Array.from(
      { length: 20 },
      (_, index) =>
        store.appendEvents(`${category}-${index}`, [{
          type: "Appended",
          data: { index },
        }], { expectedVersion: "no_stream" }),
    );
    await letGo();
    const results = await within(Promise.all(appends), 10_000, "20 appends");
    // One transaction: consecutive positions of one transaction id.
    const positions = results.map((result) => result.globalPosition);
    const transaction = positions[0] >> 20n;
    assert.ok(positions.every((position) => position >> 20n === transaction));
    assert.deepEqual(
      positions,
      positions.map((_, index) => positions[0] + BigInt(index)),
    );
    assert.ok(results.every((result) => result.version === 1));
    const coalesced = logs.filter((record) =>
      record.message === "Appends coalesced"
    );
    assert.deepEqual(coalesced.map((record) => record.fields?.appends), [20]);
    const stored = await store.readAll({ category });
    assert.equal(stored.length, 21);
  });

  Deno.test(`${LABEL}: 64 appends over 8 streams expecting no stream: one winner each, every loser a conflict with the true version`, async () => {
    await using store = await PostgresEventStore.connect(database.url, {
      max: 2,
    });
    const category = newCategory();
    const outcomes = await Promise.allSettled(
      Array.from(
        { length: 64 },
        (_, index) =>
          store.appendEvents(`${category}-${index % 8}`, [{
            type: "Appended",
            data: { index },
          }], { expectedVersion: "no_stream" }),
      ),
    );
    const won = outcomes.filter((outcome) => outcome.status === "fulfilled");
    assert.equal(won.length, 8);
    for (const outcome of outcomes) {
      if (outcome.status === "rejected") {
        assert.ok(
          outcome.reason instanceof ConcurrencyConflictError,
          String(outcome.reason),
        );
        assert.equal(outcome.reason.actualVersion, 1);
      }
    }
    for (let stream = 0; stream < 8; stream++) {
      const events = await store.loadEvents(`${category}-${stream}`);
      assert.deepEqual(events.map((event) => event.version), [1]);
    }
  });

  Deno.test(`${LABEL}: 64 appends over 8 streams, each expecting the one before: all in order, no gaps`, async () => {
    await using store = await PostgresEventStore.connect(database.url, {
      max: 2,
    });
    const category = newCategory();
    const results = await Promise.all(
      Array.from(
        { length: 64 },
        (_, index) =>
          store.appendEvents(`${category}-${index % 8}`, [{
            type: "Appended",
            data: { n: Math.floor(index / 8) + 1 },
          }], { expectedVersion: Math.floor(index / 8) }),
      ),
    );
    results.forEach((result, index) =>
      assert.equal(result.version, Math.floor(index / 8) + 1)
    );
    for (let stream = 0; stream < 8; stream++) {
      const events = await store.loadEvents<{ n: number }>(
        `${category}-${stream}`,
      );
      assert.deepEqual(events.map((event) => event.data.n), [
        1,
        2,
        3,
        4,
        5,
        6,
        7,
        8,
      ]);
      assert.deepEqual(events.map((event) => event.version), [
        1,
        2,
        3,
        4,
        5,
        6,
        7,
        8,
      ]);
    }
    // Global order follows each stream's order.
    const all = await store.readAll({ category });
    for (let stream = 0; stream < 8; stream++) {
      const versions = all.filter((event) =>
        event.streamId === `${category}-${stream}`
      ).map((event) => event.version);
      assert.deepEqual(versions, [1, 2, 3, 4, 5, 6, 7, 8]);
    }
  });

  Deno.test(`${LABEL}: one group: a conflict, a repeat by id, bad input and a fine append each get their own result`, async () => {
    const logs: LogRecord[] = [];
    await using store = await PostgresEventStore.connect(database.url, {
      max: 1,
      logger: (record) => logs.push(record),
    });
    const category = newCategory();
    await store.appendEvents(`${category}-taken`, [{ type: "A", data: {} }]);
    const id = crypto.randomUUID();
    const first = await store.appendEvents(`${category}-repeat`, [{
      id,
      type: "A",
      data: {},
    }], { expectedVersion: "no_stream" });
    const letGo = await holdTheConnection(store, `${category}-blocker`);
    const conflict = store.appendEvents(`${category}-taken`, [{
      type: "B",
      data: {},
    }], { expectedVersion: "no_stream" }).then(() => undefined, (e) => e);
    const repeat = store.appendEvents(`${category}-repeat`, [{
      id,
      type: "A",
      data: {},
    }], { expectedVersion: "no_stream" });
    const bad = store.appendEvents("", [{ type: "A", data: {} }]).then(
      () => undefined,
      (e) => e,
    );
    const fine = store.appendEvents(`${category}-fine`, [{
      type: "A",
      data: {},
    }]);
    await letGo();
    const conflictError = await conflict;
    assert.ok(conflictError instanceof ConcurrencyConflictError);
    assert.equal(conflictError.actualVersion, 1);
    assert.deepEqual(await repeat, first);
    assert.ok((await bad) instanceof InvalidArgumentError);
    assert.equal((await fine).version, 1);
    assert.deepEqual(
      logs.filter((record) => record.message === "Appends coalesced").map((
        record,
      ) => record.fields?.appends),
      [3],
    );
    assert.equal((await store.loadEvents(`${category}-repeat`)).length, 1);
    assert.equal((await store.loadEvents(`${category}-taken`)).length, 1);
  });

  Deno.test(`${LABEL}: one group of exact versions: a version taken, a version missing and fine appends each get their own result`, async () => {
    const logs: LogRecord[] = [];
    await using store = await PostgresEventStore.connect(database.url, {
      max: 1,
      logger: (record) => logs.push(record),
    });
    const category = newCategory();
    for (const stream of ["taken", "missing", "next"]) {
      await store.appendEvents(`${category}-${stream}`, [{
        type: "A",
        data: {},
      }]);
    }
    const letGo = await holdTheConnection(store, `${category}-blocker`);
    const failed = (promise: Promise<unknown>) =>
      promise.then(() => undefined, (error) => error);
    // Its version 1 is stored: the insert meets the key.
    const taken = failed(store.appendEvents(`${category}-taken`, [{
      type: "B",
      data: {},
    }], { expectedVersion: "no_stream" }));
    // Version 5 is not stored: nothing may be inserted at 6.
    const missing = failed(store.appendEvents(`${category}-missing`, [{
      type: "B",
      data: {},
    }], { expectedVersion: 5 }));
    const next = store.appendEvents(`${category}-next`, [{
      type: "B",
      data: {},
    }], { expectedVersion: 1 });
    const fresh = store.appendEvents(`${category}-fresh`, [{
      type: "B",
      data: {},
    }], { expectedVersion: "no_stream" });
    await letGo();
    for (const error of [await taken, await missing]) {
      assert.ok(error instanceof ConcurrencyConflictError, String(error));
      assert.equal(error.actualVersion, 1);
    }
    const [nextResult, freshResult] = [await next, await fresh];
    assert.equal(nextResult.version, 2);
    assert.equal(freshResult.version, 1);
    // One transaction for both: positions of one transaction id.
    assert.equal(
      nextResult.globalPosition >> 20n,
      freshResult.globalPosition >> 20n,
    );
    assert.deepEqual(
      logs.filter((record) => record.message === "Appends coalesced").map((
        record,
      ) => [record.fields?.appends, record.fields?.inserted]),
      [[4, 2]],
    );
    for (
      const [stream, versions] of [["taken", [1]], ["missing", [1]], ["next", [
        1,
        2,
      ]], ["fresh", [1]]] as const
    ) {
      const events = await store.loadEvents(`${category}-${stream}`);
      assert.deepEqual(events.map((event) => event.version), versions, stream);
    }
  });

  Deno.test(`${LABEL}: "any" appends racing in one group and from another store`, async () => {
    await using store = await PostgresEventStore.connect(database.url, {
      max: 2,
    });
    await using other = await PostgresEventStore.connect(database.url, {
      max: 4,
    });
    const category = newCategory();
    const results: AppendResult[] = await Promise.all(
      Array.from(
        { length: 80 },
        (_, index) =>
          (index % 2 === 0 ? store : other).appendEvents(
            `${category}-${index % 4}`,
            [{ type: "Appended", data: { index } }],
          ),
      ),
    );
    assert.equal(results.length, 80);
    for (let stream = 0; stream < 4; stream++) {
      const events = await store.loadEvents(`${category}-${stream}`);
      assert.deepEqual(
        events.map((event) => event.version),
        Array.from({ length: 20 }, (_, index) => index + 1),
      );
    }
  });

  Deno.test(`${LABEL}: a group whose connection is killed: every append all or nothing, retries with the same ids store each once`, async () => {
    await using store = await PostgresEventStore.connect(database.url, {
      max: 1,
      applicationName: "coalesce-kill",
    });
    const category = newCategory();
    const letGo = await holdTheConnection(store, `${category}-blocker`);
    const batches = Array.from({ length: 12 }, (_, index) => ({
      stream: `${category}-${index}`,
      events: [{ id: crypto.randomUUID(), type: "Appended", data: { index } }],
    }));
    const appends = batches.map(({ stream, events }) =>
      store.appendEvents(stream, events, { expectedVersion: "no_stream" })
        .then(() => "ok", (error) => error)
    );
    // The group's statement waits for a table lock queued before it; the
    // store's connection is killed meanwhile.
    const held = await admin.reserve();
    await held`BEGIN`;
    const locking = held.unsafe(`LOCK TABLE events IN SHARE MODE`);
    const blocker = letGo().catch(() => {});
    await locking;
    await blocker;
    await sleep(300);
    const [{ killed }] = await admin<{ killed: number }[]>`
      SELECT count(pg_terminate_backend(pid))::int AS killed
      FROM pg_stat_activity
      WHERE application_name = 'coalesce-kill' AND wait_event_type = 'Lock'`;
    assert.equal(killed, 1);
    await sleep(300);
    await held`ROLLBACK`;
    held.release();
    const outcomes = await within(Promise.all(appends), 20_000, "the appends");
    for (const outcome of outcomes) {
      assert.ok(
        outcome === "ok" || outcome instanceof StoreUnavailableError ||
          outcome instanceof ConcurrencyConflictError,
        String(outcome),
      );
    }
    // The caller retries each with the same ids: each stored once.
    for (const { stream, events } of batches) {
      for (;;) {
        try {
          const result = await store.appendEvents(stream, events, {
            expectedVersion: "no_stream",
          });
          assert.equal(result.version, 1);
          break;
        } catch (error) {
          assert.ok(error instanceof StoreUnavailableError, String(error));
          await sleep(100);
        }
      }
      const stored = await store.loadEvents(stream);
      assert.deepEqual(stored.map((event) => event.id), [events[0].id]);
    }
  });

  Deno.test(`${LABEL}: a statement timeout inside a group: each append its own typed error, nothing stored`, async () => {
    const logs: LogRecord[] = [];
    await using store = await PostgresEventStore.connect(database.url, {
      max: 1,
      statementTimeout: 200,
      logger: (record) => logs.push(record),
    });
    const category = newCategory();
    // Every append waits for this lock past its statement timeout: as a
    // group, then each alone.
    const held = await admin.reserve();
    await held`BEGIN`;
    await held.unsafe(`LOCK TABLE events IN SHARE MODE`);
    const appends = Array.from(
      { length: 6 },
      (_, index) =>
        store.appendEvents(`${category}-${index}`, [{
          type: "Appended",
          data: {},
        }]).then(() => "ok", (error) => error),
    );
    const outcomes = await within(Promise.all(appends), 20_000, "the appends");
    await held`ROLLBACK`;
    held.release();
    assert.ok(
      logs.some((record) =>
        record.message === "Appends of a group sent again alone" &&
        Number(record.fields?.appends) >= 5
      ),
    );
    for (const outcome of outcomes) {
      assert.ok(outcome instanceof StoreUnavailableError, String(outcome));
      assert.equal(outcome.sqlState, "57014");
    }
    assert.equal((await store.readAll({ category })).length, 0);
  });

  Deno.test(`${LABEL}: close the admin connection and drop the database`, async () => {
    await admin.end();
    await database.drop();
  });
}
