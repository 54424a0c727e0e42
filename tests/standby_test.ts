/**
 * The PostgreSQL store on a read-only server: a real hot standby of a
 * cluster of this file's own (`pg_basebackup -R`, streaming replication),
 * and a primary turned read-only (`default_transaction_read_only`). What
 * must hold: appends, snapshots and projection resets are refused with one
 * typed error, `StoreUnavailableError` with SQLSTATE `25006`, saying the
 * server is read-only, and write nothing; `runProjection` is refused so
 * before its handler ever runs (the handler's side effects outside the
 * transaction would otherwise repeat at every retry); reads and
 * subscriptions keep working on the standby.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import {
  type NewEvent,
  PostgresEventStore,
  type RecordedEvent,
  StoreUnavailableError,
} from "../mod.ts";
import { newCategory } from "./conformance.ts";
import { type ControlledCluster, startControlledCluster } from "./_database.ts";
import { type Standby, startStandby } from "./_standby.ts";

const LABEL = "PostgresEventStore on a read-only server";

/** The longest any wait of these tests may take: replay, delivery. */
const WAIT_MS = 10_000;

let primary: ControlledCluster | undefined;
let standby: Standby | undefined;
try {
  primary = await startControlledCluster();
  // Migrated before the base backup; the events come later, by replication.
  {
    await using store = await PostgresEventStore.connect(primary.url);
    await store.migrate();
  }
  standby = await startStandby(primary);
} catch (error) {
  await standby?.remove();
  await primary?.remove();
  // Never a silent skip: the tests fail, saying what is missing.
  Deno.test(`${LABEL}: a primary and a hot standby the test controls`, () => {
    throw error;
  });
}
if (primary !== undefined && standby !== undefined) {
  registerTests(primary, standby);
}

type Data = { n: number };

function batchOf(count: number, from = 1): NewEvent<Data>[] {
  return Array.from({ length: count }, (_, index) => ({
    id: crypto.randomUUID(),
    type: "Happened",
    data: { n: from + index },
  }));
}

/** Waits until `check` holds, polling; fails after {@linkcode WAIT_MS}. */
async function eventually(
  what: string,
  check: () => Promise<boolean>,
): Promise<void> {
  const deadline = Date.now() + WAIT_MS;
  while (!await check()) {
    if (Date.now() > deadline) {
      throw new Error(`Not within ${WAIT_MS} ms: ${what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** Waits until the standby has replayed `count` events of `category`. */
function replayed(
  store: PostgresEventStore,
  category: string,
  count: number,
): Promise<void> {
  return eventually(
    `the standby replays ${count} events of ${category}`,
    async () => (await store.readAll({ category })).length >= count,
  );
}

/**
 * What a call refused by a read-only server rejects with: the typed error,
 * saying why and what to do, with the server's own message when the server
 * refused it, else `detail` (the store's own check).
 */
function assertReadOnly(error: unknown, detail?: RegExp): void {
  assert.ok(
    error instanceof StoreUnavailableError,
    `expected a StoreUnavailableError, got ${
      error instanceof Error ? `${error.name}: ${error.message}` : error
    }`,
  );
  assert.equal(error.code, "unavailable");
  assert.equal(error.sqlState, "25006");
  assert.match(error.message, /the server is read-only/);
  assert.match(error.message, /need the primary/);
  if (error.cause instanceof postgres.PostgresError) {
    assert.ok(
      error.message.includes(error.cause.message),
      `the server's message "${error.cause.message}" is not in "${error.message}"`,
    );
  }
  if (detail !== undefined) assert.match(error.message, detail);
}

/** What a promise rejected with; fails the test if it resolved. */
async function rejection(promise: Promise<unknown>): Promise<unknown> {
  return await promise.then(
    (value) => assert.fail(`expected a rejection, got ${value}`),
    (error) => error,
  );
}

/** Every row the store keeps on the primary, as text: to show nothing changed. */
async function fingerprint(admin: postgres.Sql): Promise<string> {
  const [row] = await admin`
    SELECT (SELECT string_agg(e::text, ';' ORDER BY global_position) FROM events e) AS events,
           (SELECT string_agg(s::text, ';' ORDER BY stream_id) FROM snapshots s) AS snapshots,
           (SELECT string_agg(p::text, ';' ORDER BY 1) FROM projection_checkpoints p) AS checkpoints`;
  return JSON.stringify(row);
}

function registerTests(primary: ControlledCluster, standby: Standby): void {
  const connect = (url: string) => PostgresEventStore.connect(url);

  Deno.test(`${LABEL}: appends, snapshots and resets on a standby are refused, typed, and write nothing`, async () => {
    await using writer = await connect(primary.url);
    await using reader = await connect(standby.url);
    const admin = postgres(primary.url, { max: 1, onnotice: () => {} });
    try {
      const category = newCategory();
      await writer.appendEvents(`${category}-1`, batchOf(2));
      await writer.saveSnapshot(`${category}-1`, 1, { total: 1 });
      await replayed(reader, category, 2);
      const before = await fingerprint(admin);

      assertReadOnly(
        await rejection(
          reader.appendEvents(`${category}-1`, batchOf(1, 3), {
            expectedVersion: 2,
          }),
        ),
      );
      assertReadOnly(
        await rejection(
          reader.appendEvents(
            `${category}-2`,
            [{ type: "Happened", data: {} }],
            {
              expectedVersion: "no_stream",
            },
          ),
        ),
      );
      assertReadOnly(
        await rejection(reader.saveSnapshot(`${category}-1`, 2, { total: 2 })),
      );
      assertReadOnly(
        await rejection(reader.resetProjection(`${category}-projection`)),
      );

      assert.equal(await fingerprint(admin), before);
      assert.equal(await writer.streamVersion(`${category}-1`), 2);
      assert.equal(await writer.streamVersion(`${category}-2`), 0);
      assert.equal((await writer.loadSnapshot(`${category}-1`))?.version, 1);
    } finally {
      await admin.end();
    }
  });

  Deno.test(`${LABEL}: runProjection on a standby is refused before its handler runs`, async () => {
    await using writer = await connect(primary.url);
    await using reader = await connect(standby.url);
    const category = newCategory();
    await writer.appendEvents(`${category}-1`, batchOf(3));
    await replayed(reader, category, 3);

    // Events to handle at the start: the handler would get the first batch.
    let calls = 0;
    const name = `${category}-projection`;
    const refused = await rejection(reader.runProjection(name, () => {
      calls++;
    }, { category, signal: AbortSignal.timeout(WAIT_MS) }));
    assert.equal(calls, 0, `the handler ran on a read-only server: ${refused}`);
    assertReadOnly(refused, /pg_is_in_recovery\(\) is true/);
    assert.equal(await writer.projectionPosition(name), 0n);

    // Nothing to handle yet: refused at the start all the same, rather
    // than polling until the first event comes.
    const empty = newCategory();
    const refusedEmpty = await rejection(
      reader.runProjection(`${empty}-projection`, () => {
        calls++;
      }, { category: empty, signal: AbortSignal.timeout(WAIT_MS) }),
    );
    assert.equal(calls, 0);
    assertReadOnly(refusedEmpty, /pg_is_in_recovery\(\) is true/);
  });

  Deno.test(`${LABEL}: a projection whose primary turns read-only stops before the next batch's handler`, async () => {
    // The admin's own session stays writable whatever the server's default.
    const admin = postgres(primary.url, {
      max: 1,
      onnotice: () => {},
      connection: { default_transaction_read_only: false },
    });
    const setReadOnly = async (on: boolean) => {
      if (on) {
        await admin`ALTER SYSTEM SET default_transaction_read_only = on`;
      } else {
        await admin`ALTER SYSTEM RESET default_transaction_read_only`;
      }
      await admin`SELECT pg_reload_conf()`;
      // The postmaster signals every backend at once; once a backend of
      // ours reads the new value, the projection's backends have theirs.
      await eventually(`the server's reload (read-only ${on})`, async () => {
        const [row] = await admin`
          SELECT setting FROM pg_settings
          WHERE name = 'default_transaction_read_only'`;
        return row.setting === (on ? "on" : "off");
      });
    };
    try {
      await using store = await connect(primary.url);
      const category = newCategory();
      await store.appendEvents(`${category}-1`, batchOf(2));
      const name = `${category}-projection`;
      const handled: bigint[] = [];
      const refused = await rejection(
        store.runProjection(name, async (events) => {
          handled.push(...events.map((event) => event.globalPosition));
          // The first batch's transaction began read-write and commits;
          // every later one begins read-only.
          if (handled.length === 1) await setReadOnly(true);
        }, { category, batchSize: 1, signal: AbortSignal.timeout(WAIT_MS) }),
      );
      assert.equal(
        handled.length,
        1,
        `the handler ran on a read-only server: ${refused}`,
      );
      assertReadOnly(refused, /transaction_read_only is on/);
      assert.equal(await store.projectionPosition(name), handled[0]);
      // Appends on it get the same error, with the server's message.
      assertReadOnly(
        await rejection(store.appendEvents(`${category}-1`, batchOf(1, 3))),
        /read-only transaction/,
      );
      assert.equal(await store.streamVersion(`${category}-1`), 2);
    } finally {
      await setReadOnly(false).finally(() => admin.end());
    }
  });

  Deno.test(`${LABEL}: reads and subscriptions keep working on a standby`, async () => {
    await using writer = await connect(primary.url);
    await using reader = await connect(standby.url);
    const category = newCategory();
    await writer.appendEvents(`${category}-1`, batchOf(3));
    await writer.appendEvents(`${category}-2`, batchOf(2));
    await writer.saveSnapshot(`${category}-1`, 3, { total: 6 });
    await replayed(reader, category, 5);

    assert.deepEqual(
      await reader.loadEvents(`${category}-1`),
      await writer.loadEvents(`${category}-1`),
    );
    assert.deepEqual(
      await reader.loadEvents(`${category}-1`, { fromVersion: 2, maxCount: 1 }),
      await writer.loadEvents(`${category}-1`, { fromVersion: 2, maxCount: 1 }),
    );
    const all = await writer.readAll<Data>({ category });
    assert.deepEqual(await reader.readAll({ category }), all);
    assert.equal(await reader.streamVersion(`${category}-1`), 3);
    assert.equal(await reader.streamVersion(`${category}-2`), 2);
    assert.equal(await reader.streamVersion(`${category}-none`), 0);
    assert.deepEqual(
      await reader.loadSnapshot(`${category}-1`),
      await writer.loadSnapshot(`${category}-1`),
    );
    assert.equal(await reader.loadSnapshot(`${category}-2`), undefined);
    assert.equal(await reader.projectionPosition(`${category}-p`), 0n);

    // The replicated events, then those appended on the primary after the
    // subscription started: the standby's store sees them arrive by its
    // watch of the head (a read, which a standby allows).
    const controller = new AbortController();
    const timeout = setTimeout(() => controller.abort(), WAIT_MS);
    const delivered: RecordedEvent<Data>[] = [];
    const caughtUp = Promise.withResolvers<void>();
    const subscribing = (async () => {
      for await (
        const event of reader.subscribe<Data>({
          category,
          signal: controller.signal,
        })
      ) {
        delivered.push(event);
        if (delivered.length === 5) caughtUp.resolve();
        if (delivered.length === 7) controller.abort();
      }
    })();
    try {
      await Promise.race([caughtUp.promise, subscribing]);
      assert.deepEqual(delivered, all);
      await writer.appendEvents(`${category}-2`, batchOf(2, 3), {
        expectedVersion: 2,
      });
      await subscribing;
    } finally {
      clearTimeout(timeout);
      controller.abort();
    }
    assert.deepEqual(delivered, await writer.readAll<Data>({ category }));
    assert.equal(delivered.length, 7, "not every event was delivered in time");
  });

  Deno.test(`${LABEL}: remove the standby and the primary`, async () => {
    await standby.remove();
    await primary.remove();
  });
}
