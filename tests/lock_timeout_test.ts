/**
 * The PostgreSQL store under an operator's `lock_timeout` (a role setting,
 * 50 ms here) with slow commits (100 ms, from a deferred constraint trigger
 * that sleeps at commit, added by this test only): a racing append's insert
 * waits on the primary key of a racer that has not committed yet, and the
 * server cancels the wait with SQLSTATE 55P03. That is a race, not a
 * failure: `"any"` appends must all succeed, exact-version losers must get
 * `ConcurrencyConflictError`, never a `DatabaseError`; and a lock held by
 * something that is not an append (a long transaction, a DDL) is
 * "cannot serve now", a `StoreUnavailableError` that keeps 55P03.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import {
  ConcurrencyConflictError,
  type NewEvent,
  PostgresEventStore,
  StoreUnavailableError,
} from "../mod.ts";
import { newStreamId } from "./conformance.ts";
import {
  createTestDatabaseOrFail,
  type TestDatabase,
  testServerUrl,
} from "./_database.ts";

const LABEL = "PostgresEventStore under a lock_timeout";

/** How many appends race on one stream. */
const RACERS = 20;

const database = await createTestDatabaseOrFail(LABEL);
if (database !== undefined) await registerTests(database);

function event(n: number): NewEvent<{ n: number }>[] {
  return [{ type: "Happened", data: { n } }];
}

/** Every test of this file, on one fresh database. */
async function registerTests(database: TestDatabase): Promise<void> {
  const admin = postgres(database.url, { max: 2, onnotice: () => {} });
  await Promise.all([admin`SELECT 1`, admin`SELECT 1`]);
  {
    await using store = await PostgresEventStore.connect(database.url, {
      max: 1,
    });
    await store.migrate();
  }
  // A role of this test's own, so that no other test's sessions get the
  // setting; a role is the cluster's, so its name is unique and it is
  // dropped at the end.
  const role = `eventstore_lock_${
    crypto.randomUUID().replaceAll("-", "").slice(0, 12)
  }`;
  const password = crypto.randomUUID();
  await admin.unsafe(`CREATE ROLE ${role} LOGIN PASSWORD '${password}'`);
  await admin.unsafe(`ALTER ROLE ${role} SET lock_timeout = '50ms'`);
  await admin.unsafe(`GRANT USAGE ON SCHEMA public TO ${role}`);
  await admin.unsafe(
    `GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA public TO ${role}`,
  );
  // Slow commits: every event costs 100 ms at commit, while its
  // transaction holds the primary key entry racers wait on.
  await admin.unsafe(`
    CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      PERFORM pg_sleep(0.1);
      RETURN NULL;
    END
    $$`);
  await admin.unsafe(`
    CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON events
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()`);
  const url = new URL(database.url);
  url.username = role;
  url.password = password;
  const open = () =>
    PostgresEventStore.connect(url.href, { max: RACERS, connectTimeout: 10 });

  Deno.test(`${LABEL}: the role's sessions really have it`, async () => {
    const session = postgres(url.href, { max: 1, onnotice: () => {} });
    try {
      const [row] = await session`SELECT current_setting('lock_timeout') AS t`;
      assert.equal(row.t, "50ms");
    } finally {
      await session.end();
    }
  });

  Deno.test(`${LABEL}: ${RACERS} racing "any" appends to one stream all succeed`, async () => {
    await using store = await open();
    const streamId = newStreamId("race");
    const results = await Promise.allSettled(
      Array.from(
        { length: RACERS },
        (_, n) => store.appendEvents(streamId, event(n)),
      ),
    );
    const failures = results.flatMap((result) =>
      result.status === "rejected" ? [String(result.reason)] : []
    );
    assert.deepEqual(failures, []);
    const versions = results.map((result) =>
      (result as PromiseFulfilledResult<{ version: number }>).value.version
    ).sort((a, b) => a - b);
    assert.deepEqual(versions, Array.from({ length: RACERS }, (_, i) => i + 1));
    const stored = await store.loadEvents<{ n: number }>(streamId);
    assert.deepEqual(
      stored.map((recorded) => recorded.version),
      Array.from({ length: RACERS }, (_, i) => i + 1),
    );
    // Each racer's event once.
    assert.deepEqual(
      stored.map((recorded) => recorded.data.n).sort((a, b) => a - b),
      Array.from({ length: RACERS }, (_, i) => i),
    );
  });

  for (const expected of [1, "no_stream"] as const) {
    Deno.test(`${LABEL}: ${RACERS} racing appends expecting ${expected}: one succeeds, the others conflict`, async () => {
      await using store = await open();
      const streamId = newStreamId("race");
      if (expected === 1) await store.appendEvents(streamId, event(-1));
      const results = await Promise.allSettled(
        Array.from(
          { length: RACERS },
          (_, n) =>
            store.appendEvents(streamId, event(n), {
              expectedVersion: expected,
            }),
        ),
      );
      const won = results.filter((result) => result.status === "fulfilled");
      const lost = results.flatMap((result) =>
        result.status === "rejected" ? [result.reason] : []
      );
      const untyped = lost.filter((error) =>
        !(error instanceof ConcurrencyConflictError)
      ).map(String);
      assert.deepEqual(untyped, []);
      assert.equal(won.length, 1);
      assert.equal(lost.length, RACERS - 1);
      const version = expected === 1 ? 2 : 1;
      for (const error of lost as ConcurrencyConflictError[]) {
        assert.equal(error.expectedVersion, expected);
        assert.equal(error.actualVersion, version);
      }
      assert.equal(await store.streamVersion(streamId), version);
    });
  }

  /**
   * Runs `body` while a transaction of the test's own holds `events` in
   * `mode`, as a DDL would (`CREATE INDEX` takes SHARE, `ALTER TABLE`
   * ACCESS EXCLUSIVE).
   */
  const whileLocked = async (mode: string, body: () => Promise<void>) => {
    let release!: () => void;
    const released = new Promise<void>((resolve) => release = resolve);
    let locked!: () => void;
    const isLocked = new Promise<void>((resolve) => locked = resolve);
    const holder = admin.begin(async (transaction) => {
      await transaction.unsafe(`LOCK TABLE events IN ${mode} MODE`);
      locked();
      await released;
    });
    try {
      await Promise.race([isLocked, holder]);
      await body();
    } finally {
      release();
      await holder;
    }
  };

  Deno.test(`${LABEL}: a lock held by something else is StoreUnavailableError with 55P03, nothing written`, async () => {
    await using store = await open();
    const streamId = newStreamId("held");
    await store.appendEvents(streamId, event(0));
    const refusal = (promise: Promise<unknown>) =>
      promise.then(() => undefined, (error) => error);
    // SHARE blocks inserts but not reads: the append sees the stream's
    // version stay as it is, lock timeout after lock timeout, and gives up.
    await whileLocked("SHARE", async () => {
      for (const expectedVersion of [1, "no_stream", "any"] as const) {
        const error = await refusal(
          store.appendEvents(streamId, event(1), { expectedVersion }),
        );
        if (expectedVersion === "no_stream") {
          // The version says it all: a conflict, whatever the lock.
          assert.ok(error instanceof ConcurrencyConflictError, String(error));
          assert.equal(error.actualVersion, 1);
          continue;
        }
        assert.ok(error instanceof StoreUnavailableError, String(error));
        assert.equal(error.sqlState, "55P03");
        assert.match(
          error.message,
          /lock_timeout \(55P03: canceling statement due to lock timeout\)/,
        );
      }
    });
    // ACCESS EXCLUSIVE blocks reads too: neither an append nor a read is
    // an untyped DatabaseError.
    await whileLocked("ACCESS EXCLUSIVE", async () => {
      for (
        const operation of [
          () => store.appendEvents(streamId, event(1), { expectedVersion: 1 }),
          () => store.loadEvents(streamId),
        ]
      ) {
        const error = await refusal(operation());
        assert.ok(error instanceof StoreUnavailableError, String(error));
        assert.equal(error.sqlState, "55P03");
      }
    });
    assert.equal(await store.streamVersion(streamId), 1);
  });

  // Registered last, so it runs after every other test of this file.
  Deno.test(`${LABEL}: drop the test database and the role`, async () => {
    await admin.end();
    await database.drop();
    // From the server's admin database: the test database is gone.
    const server = postgres((await testServerUrl()).url, {
      max: 1,
      onnotice: () => {},
    });
    try {
      await server.unsafe(`DROP ROLE ${role}`);
    } finally {
      await server.end();
    }
  });
}
