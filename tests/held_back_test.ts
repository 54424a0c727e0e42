/**
 * Readers held back by an open transaction, on a cluster of this file's own
 * (holding transactions open on the shared test server would stall every
 * other file's readers). `readAll` returns only positions below the
 * snapshot's xmin, which the oldest transaction with a transaction id holds
 * back, in any database of the cluster, prepared transactions included. What
 * must hold: the store says so (a `warn` record naming the holder, repeated
 * while it lasts, then an `info` record once readers caught up), and
 * `readAllLag()` tells how far behind the head `readAll` is and why. Three
 * holders: a writing transaction in another database, a forgotten
 * `PREPARE TRANSACTION` (which survives a restart of the server), and a
 * projection whose handler writes through `context.transaction` and then
 * takes its time.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import {
  InvalidArgumentError,
  type LogRecord,
  PostgresEventStore,
  type ReaderHold,
  type RecordedEvent,
} from "../mod.ts";
import { newCategory } from "./conformance.ts";
import {
  type ControlledCluster,
  createDatabase,
  startControlledCluster,
  type TestDatabase,
} from "./_database.ts";

const LABEL = "Readers held back";

/** The threshold the tests set: short, so that warnings come quickly. */
const THRESHOLD_MS = 300;

/** How long a test waits for anything before it fails: generous, never a speed test. */
const WAIT_MS = 10_000;

const HELD_BACK = "Readers are held back by an open transaction";
const CAUGHT_UP = "Readers caught up";

let cluster: ControlledCluster | undefined;
try {
  cluster = await startControlledCluster();
  // PREPARE TRANSACTION needs max_prepared_transactions > 0 (0 by default),
  // which only a restart applies.
  const admin = postgres(cluster.url, { max: 1, onnotice: () => {} });
  try {
    await admin`ALTER SYSTEM SET max_prepared_transactions = 4`;
  } finally {
    await admin.end({ timeout: 1 });
  }
  await cluster.restart();
} catch (error) {
  // Never a silent skip: the tests fail, saying how to get the binaries.
  Deno.test(`${LABEL}: a PostgreSQL cluster the tests control`, () => {
    throw error;
  });
}
if (cluster !== undefined) registerTests(cluster);

/** A logger that keeps every record. */
function capturingLogger() {
  const records: LogRecord[] = [];
  return { records, logger: (record: LogRecord) => records.push(record) };
}

/** The holders a warning names. */
function holdersOf(record: LogRecord): Record<string, unknown>[] {
  const holders = record.fields.holders;
  return Array.isArray(holders) ? holders : [];
}

function warnings(records: readonly LogRecord[]): LogRecord[] {
  return records.filter((record) =>
    record.level === "warn" && record.message === HELD_BACK
  );
}

/** Waits `ms` milliseconds. */
function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Polls `check` until it returns a value other than `undefined`, at most
 * {@linkcode WAIT_MS}; then fails with `failure()`'s message.
 */
async function waitFor<T>(
  check: () => T | undefined | Promise<T | undefined>,
  failure: () => string,
): Promise<T> {
  const deadline = Date.now() + WAIT_MS;
  while (true) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) {
      assert.fail(`${failure()} (waited ${WAIT_MS} ms)`);
    }
    await sleep(50);
  }
}

/** What the log holds, shortly, for a failure message. */
function logSummary(records: readonly LogRecord[]): string {
  const shown = records.filter((record) => record.level !== "debug");
  return shown.length === 0
    ? "no log record above debug"
    : shown.map((record) => `${record.level} "${record.message}"`).join(", ");
}

async function openStore(
  database: TestDatabase,
  logger: (record: LogRecord) => void,
): Promise<PostgresEventStore> {
  const store = await PostgresEventStore.connect(database.url, {
    max: 4,
    logger,
    heldBackThreshold: THRESHOLD_MS,
  });
  await store.migrate();
  return store;
}

/** A subscription of `category` in the background, collecting what it gets. */
function subscribeInBackground(store: PostgresEventStore, category: string) {
  const controller = new AbortController();
  const seen: { event: RecordedEvent; at: number }[] = [];
  const running = (async () => {
    for await (
      const event of store.subscribe({ category, signal: controller.signal })
    ) {
      seen.push({ event, at: Date.now() });
    }
  })();
  return {
    seen,
    async stop() {
      controller.abort();
      await running;
    },
  };
}

/**
 * Calls `readAll` every 100 ms in the background, as a subscriber does, but
 * through a restart of the server: a failed read is counted, not thrown.
 */
function pollInBackground(store: PostgresEventStore, category: string) {
  let stopped = false;
  const state = { events: -1, failures: 0 };
  const running = (async () => {
    while (!stopped) {
      try {
        state.events = (await store.readAll({ category })).length;
      } catch {
        state.failures++;
      }
      await sleep(100);
    }
  })();
  return {
    state,
    async stop() {
      stopped = true;
      await running;
    },
  };
}

/**
 * `count` appends of one event each to streams `<category>-<tag><n>`, each
 * acknowledged before the next.
 */
async function appendEach(
  store: PostgresEventStore,
  category: string,
  tag: string,
  count: number,
): Promise<bigint[]> {
  const positions: bigint[] = [];
  for (let index = 0; index < count; index++) {
    const { globalPosition } = await store.appendEvents(
      `${category}-${tag}${index}`,
      [{ type: "Happened", data: { index } }],
    );
    positions.push(globalPosition);
  }
  return positions;
}

/** The holder `matches` picks among `holders`, with a message naming all of them. */
function findHolder(
  holders: readonly (ReaderHold | Record<string, unknown>)[],
  matches: (holder: Record<string, unknown>) => boolean,
): Record<string, unknown> | undefined {
  return (holders as Record<string, unknown>[]).find(matches);
}

function registerTests(cluster: ControlledCluster): void {
  const server = { url: cluster.url, source: "local cluster" };

  Deno.test(`${LABEL}: a writing transaction in another database: a warning names its pid and database, readAllLag reports it, and both clear when it ends`, async () => {
    const database = await createDatabase(server);
    const elsewhere = await createDatabase(server);
    const { records, logger } = capturingLogger();
    const store = await openStore(database, logger);
    const other = postgres(elsewhere.url, { max: 1, onnotice: () => {} });
    // A second store on the application's own instance, with the warning
    // turned off: the option is allowed there, and 0 means silence.
    const instance = postgres(database.url, { max: 2, onnotice: () => {} });
    const quietLog = capturingLogger();
    const quiet = new PostgresEventStore(instance, {
      logger: quietLog.logger,
      heldBackThreshold: 0,
    });
    const release = Promise.withResolvers<void>();
    let holding: Promise<unknown> | undefined;
    const category = newCategory();
    const subscriber = subscribeInBackground(store, category);
    const quietReader = pollInBackground(quiet, category);
    try {
      await other`CREATE TABLE other_table (n int)`;
      const [first] = await appendEach(store, category, "before", 1);
      await waitFor(
        () => subscriber.seen.length === 1 || undefined,
        () => "the subscriber never got the first event",
      );

      // Another database, another application: it holds readers back all
      // the same, since transaction ids are the cluster's.
      const started = Promise.withResolvers<number>();
      holding = other.begin(async (transaction) => {
        await transaction`INSERT INTO other_table VALUES (1)`;
        const [{ pid }] = await transaction`SELECT pg_backend_pid() AS pid`;
        started.resolve(pid);
        await release.promise;
      });
      holding.catch((error) => started.reject(error));
      const pid = await started.promise;

      const appended = await appendEach(store, category, "during", 10);
      const readable = await store.readAll({ fromPosition: 0n });
      assert.deepEqual(
        readable.map((event) => event.globalPosition),
        [first],
        "readAll returns only the event appended before the transaction began",
      );

      const warning = await waitFor(
        () =>
          warnings(records).find((record) =>
            findHolder(
              holdersOf(record),
              (holder) =>
                holder.pid === pid && holder.database === elsewhere.name,
            )
          ),
        () =>
          `no warn record named pid ${pid} in database ${elsewhere.name}: 10 appends acknowledged, readers saw ${subscriber.seen.length} of 11 events; log: ${
            logSummary(records)
          }`,
      );
      assert.equal(warning.fields.hiddenEvents, 10);
      assert.ok(
        typeof warning.fields.heldForMs === "number" &&
          warning.fields.heldForMs >= THRESHOLD_MS,
        `heldForMs ${warning.fields.heldForMs}`,
      );
      const named = findHolder(
        holdersOf(warning),
        (holder) => holder.pid === pid,
      )!;
      assert.equal(named.kind, "transaction");
      assert.equal(typeof named.ageMs, "number");
      assert.equal(typeof named.queryStart, "string", "queryStart, ISO text");
      assert.equal(typeof named.transactionStart, "string");
      assert.ok(!("query" in named), "never the query text");

      const lag = await store.readAllLag();
      assert.equal(lag.hiddenEvents, 10);
      assert.equal(lag.headPosition, appended.at(-1));
      assert.equal(lag.readablePosition, first);
      const holder = findHolder(lag.heldBy, (holder) => holder.pid === pid);
      assert.ok(holder, `heldBy ${JSON.stringify(lag.heldBy)}`);
      assert.equal(holder.kind, "transaction");
      assert.equal(holder.database, elsewhere.name);
      assert.ok(holder.transactionStart instanceof Date);
      assert.ok(holder.queryStart instanceof Date);
      assert.ok(
        typeof holder.ageMs === "number" && holder.ageMs >= 0,
        `ageMs ${holder.ageMs}`,
      );
      assert.ok(!("query" in holder), "never the query text");

      // It lasts: the warning comes again, at a slower rate.
      const firstWarnings = warnings(records).length;
      await waitFor(
        () => warnings(records).length > firstWarnings || undefined,
        () => `the warning was not repeated; log: ${logSummary(records)}`,
      );
      assert.equal(subscriber.seen.length, 1, "still held back");
      assert.equal(quietReader.state.events, 1);
      assert.equal((await quiet.readAllLag()).hiddenEvents, 10);

      release.resolve();
      await holding;
      await waitFor(
        () => subscriber.seen.length === 11 || undefined,
        () =>
          `the subscriber got ${subscriber.seen.length} of 11 events after the transaction ended`,
      );
      assert.equal((await store.readAll()).length, 11);
      const after = await store.readAllLag();
      assert.deepEqual(after, {
        headPosition: appended.at(-1),
        readablePosition: appended.at(-1),
        hiddenEvents: 0,
        heldBy: [],
      });
      const caughtUp = await waitFor(
        () =>
          records.find((record) =>
            record.level === "info" && record.message === CAUGHT_UP
          ),
        () =>
          `no info record said readers caught up; log: ${logSummary(records)}`,
      );
      assert.equal(typeof caughtUp.fields.heldForMs, "number");
      assert.ok(
        !records.some((record) => record.level === "error"),
        logSummary(records),
      );
      assert.deepEqual(
        warnings(quietLog.records),
        [],
        "heldBackThreshold: 0 turns the warning off",
      );
    } finally {
      release.resolve();
      await holding?.catch(() => {});
      await subscriber.stop();
      await quietReader.stop();
      await quiet.close();
      await instance.end({ timeout: 1 });
      await store.close();
      await other.end({ timeout: 1 });
      await database.drop();
      await elsewhere.drop();
    }
  });

  Deno.test(`${LABEL}: a forgotten PREPARE TRANSACTION: the warning names its gid, it holds readers through a restart, COMMIT PREPARED and ROLLBACK PREPARED release them`, async () => {
    const database = await createDatabase(server);
    const elsewhere = await createDatabase(server);
    const { records, logger } = capturingLogger();
    const store = await openStore(database, logger);
    const category = newCategory();
    const gid = `forgotten-${crypto.randomUUID()}`;
    let prepared: string | undefined;
    const connect = () =>
      postgres(elsewhere.url, { max: 1, onnotice: () => {} });
    const reader = pollInBackground(store, category);
    try {
      let other = connect();
      await other`CREATE TABLE other_table (n int)`;
      const [first] = await appendEach(store, category, "before", 1);
      await other.begin(async (transaction) => {
        await transaction`INSERT INTO other_table VALUES (1)`;
        transaction.prepare(gid);
      });
      prepared = gid;
      // No session is left: the transaction lives on in the server alone.
      await other.end({ timeout: 1 });

      const appended = await appendEach(store, category, "during", 10);
      const readable = await store.readAll({ fromPosition: 0n });
      assert.deepEqual(
        readable.map((event) => event.globalPosition),
        [first],
      );
      const namesGid = (record: LogRecord) =>
        findHolder(holdersOf(record), (holder) =>
          holder.gid === gid &&
          holder.kind === "prepared transaction" &&
          holder.database === elsewhere.name) !== undefined;
      await waitFor(
        () => warnings(records).find(namesGid),
        () =>
          `no warn record named prepared transaction ${gid}: 10 appends acknowledged, readers saw ${reader.state.events} of 11 events; log: ${
            logSummary(records)
          }`,
      );
      const lag = await store.readAllLag();
      assert.equal(lag.hiddenEvents, 10);
      const holder = findHolder(lag.heldBy, (holder) => holder.gid === gid);
      assert.ok(holder, `heldBy ${JSON.stringify(lag.heldBy)}`);
      assert.equal(holder.kind, "prepared transaction");
      assert.equal(holder.database, elsewhere.name);
      assert.equal(
        holder.pid,
        undefined,
        "a prepared transaction has no session",
      );
      assert.ok(holder.transactionStart instanceof Date);

      // A restart ends every session, and not this transaction.
      await cluster.restart("fast");
      const sinceRestart = records.length;
      const lagAfter = await waitFor(
        () => store.readAllLag().catch(() => undefined),
        () => "readAllLag never succeeded after the restart",
      );
      assert.equal(lagAfter.hiddenEvents, 10);
      assert.ok(lagAfter.heldBy.some((holder) => holder.gid === gid));
      assert.equal(
        (await store.readAll({ fromPosition: 0n })).length,
        1,
        "still held back after the restart",
      );
      await waitFor(
        () => warnings(records.slice(sinceRestart)).find(namesGid),
        () =>
          `no warn record named ${gid} after the restart; log: ${
            logSummary(records.slice(sinceRestart))
          }`,
      );

      other = connect();
      await other.unsafe(`COMMIT PREPARED '${gid}'`);
      prepared = undefined;
      await waitFor(
        () => reader.state.events === 11 || undefined,
        () => `readers saw ${reader.state.events} of 11 after COMMIT PREPARED`,
      );
      assert.deepEqual(await store.readAllLag(), {
        headPosition: appended.at(-1),
        readablePosition: appended.at(-1),
        hiddenEvents: 0,
        heldBy: [],
      });
      await waitFor(
        () =>
          records.slice(sinceRestart).find((record) =>
            record.level === "info" && record.message === CAUGHT_UP
          ),
        () =>
          `no info record said readers caught up; log: ${logSummary(records)}`,
      );

      // A second one, rolled back this time.
      const second = `${gid}-b`;
      await other.begin(async (transaction) => {
        await transaction`INSERT INTO other_table VALUES (2)`;
        transaction.prepare(second);
      });
      prepared = second;
      const [last] = await appendEach(store, category, "again", 1);
      const held = await store.readAllLag();
      assert.equal(held.hiddenEvents, 1);
      assert.equal(held.headPosition, last);
      assert.ok(held.heldBy.some((holder) => holder.gid === second));
      await other.unsafe(`ROLLBACK PREPARED '${second}'`);
      prepared = undefined;
      await waitFor(
        () => reader.state.events === 12 || undefined,
        () =>
          `readers saw ${reader.state.events} of 12 after ROLLBACK PREPARED`,
      );
      assert.equal((await store.readAllLag()).hiddenEvents, 0);
      await other.end({ timeout: 1 });
    } finally {
      await reader.stop();
      if (prepared !== undefined) {
        // Left behind, it would hold every other test's readers back.
        const cleanup = connect();
        await cleanup.unsafe(`ROLLBACK PREPARED '${prepared}'`).catch(() => {});
        await cleanup.end({ timeout: 1 });
      }
      await store.close();
      await database.drop();
      await elsewhere.drop();
    }
  });

  Deno.test(`${LABEL}: a projection that writes through context.transaction and then takes its time delays another subscriber; the warning and readAllLag name its connection`, async () => {
    const database = await createDatabase(server);
    const { records, logger } = capturingLogger();
    const store = await openStore(database, logger);
    const direct = postgres(database.url, { max: 1, onnotice: () => {} });
    const category = newCategory();
    const subscriber = subscribeInBackground(store, category);
    const controller = new AbortController();
    const writing = Promise.withResolvers<number>();
    const release = Promise.withResolvers<void>();
    let handlerReturnedAt: number | undefined;
    let projecting: Promise<void> | undefined;
    let fallback: ReturnType<typeof setTimeout> | undefined;
    try {
      await direct`CREATE TABLE read_model (id uuid PRIMARY KEY)`;
      const [first] = await appendEach(store, category, "before", 1);
      await waitFor(
        () => subscriber.seen.length === 1 || undefined,
        () => "the subscriber never got the first event",
      );
      projecting = store.runProjection(
        "slow",
        async (events, context) => {
          const transaction = context.transaction as postgres.TransactionSql;
          for (const event of events) {
            await transaction`INSERT INTO read_model (id) VALUES (${event.id})`;
          }
          if (events[0].globalPosition !== first) return;
          const [{ pid }] = await transaction`SELECT pg_backend_pid() AS pid`;
          writing.resolve(pid);
          // About 2 s, or until the test has seen what it looks for
          // (never more than the fallback).
          fallback = setTimeout(release.resolve, 15_000);
          await Promise.all([sleep(2_000), release.promise]);
          handlerReturnedAt = Date.now();
        },
        { category, signal: controller.signal },
      );
      projecting.catch((error) => writing.reject(error));
      const pid = await writing.promise;

      const [second] = await appendEach(store, category, "during", 1);
      const warning = await waitFor(
        () =>
          warnings(records).find((record) =>
            findHolder(holdersOf(record), (holder) => holder.pid === pid)
          ),
        () =>
          `no warn record named the projection's connection (pid ${pid}); the subscriber got ${subscriber.seen.length} of 2 events; log: ${
            logSummary(records)
          }`,
      );
      const named = findHolder(
        holdersOf(warning),
        (holder) => holder.pid === pid,
      )!;
      assert.equal(named.database, database.name);
      assert.equal(named.applicationName, "deno-eventstore");
      const lag = await store.readAllLag();
      assert.equal(lag.hiddenEvents, 1);
      assert.equal(lag.headPosition, second);
      assert.equal(lag.readablePosition, first);
      assert.ok(
        lag.heldBy.some((holder) =>
          holder.pid === pid && holder.kind === "transaction"
        ),
        `heldBy ${JSON.stringify(lag.heldBy)}`,
      );
      assert.deepEqual(
        subscriber.seen.map(({ event }) => event.globalPosition),
        [first],
        "the other subscriber waits for the projection's transaction",
      );

      release.resolve();
      const delivered = await waitFor(
        () =>
          subscriber.seen.find(({ event }) => event.globalPosition === second),
        () => `the subscriber never got the second event`,
      );
      assert.ok(handlerReturnedAt !== undefined);
      assert.ok(
        delivered.at >= handlerReturnedAt,
        "delivered only after the projection's transaction ended",
      );
      await waitFor(
        () =>
          store.projectionPosition("slow").then((position) =>
            position === second || undefined
          ),
        () => "the projection never handled the second event",
      );
      assert.equal((await store.readAllLag()).hiddenEvents, 0);
      await waitFor(
        () =>
          records.find((record) =>
            record.level === "info" && record.message === CAUGHT_UP
          ),
        () =>
          `no info record said readers caught up; log: ${logSummary(records)}`,
      );
    } finally {
      release.resolve();
      clearTimeout(fallback);
      controller.abort();
      await projecting?.catch(() => {});
      await subscriber.stop();
      await store.close();
      await direct.end({ timeout: 1 });
      await database.drop();
    }
  });

  Deno.test(`${LABEL}: another role's transaction, seen by a role without pg_read_all_stats: named by pid and database, without times, and the warning says why`, async () => {
    const database = await createDatabase(server);
    const elsewhere = await createDatabase(server);
    const role = `reader_${crypto.randomUUID().slice(0, 8)}`;
    const admin = postgres(cluster.url, { max: 1, onnotice: () => {} });
    const owner = postgres(database.url, { max: 1, onnotice: () => {} });
    const other = postgres(elsewhere.url, { max: 1, onnotice: () => {} });
    const { records, logger } = capturingLogger();
    const release = Promise.withResolvers<void>();
    let holding: Promise<unknown> | undefined;
    let store: PostgresEventStore | undefined;
    let reader: ReturnType<typeof pollInBackground> | undefined;
    try {
      await admin.unsafe(`CREATE ROLE ${role} LOGIN`);
      await admin.unsafe(`ALTER DATABASE ${database.name} OWNER TO ${role}`);
      await owner.unsafe(`ALTER SCHEMA public OWNER TO ${role}`);
      await other`CREATE TABLE other_table (n int)`;
      const url = new URL(database.url);
      url.username = role;
      store = await PostgresEventStore.connect(url.href, {
        max: 4,
        logger,
        heldBackThreshold: THRESHOLD_MS,
      });
      await store.migrate();
      const category = newCategory();
      await appendEach(store, category, "before", 1);
      reader = pollInBackground(store, category);

      // The superuser's session: the store's role may not see its times.
      const started = Promise.withResolvers<number>();
      holding = other.begin(async (transaction) => {
        await transaction`INSERT INTO other_table VALUES (1)`;
        const [{ pid }] = await transaction`SELECT pg_backend_pid() AS pid`;
        started.resolve(pid);
        await release.promise;
      });
      holding.catch((error) => started.reject(error));
      const pid = await started.promise;
      await appendEach(store, category, "during", 3);

      const warning = await waitFor(
        () =>
          warnings(records).find((record) =>
            findHolder(holdersOf(record), (holder) => holder.pid === pid)
          ),
        () => `no warn record named pid ${pid}; log: ${logSummary(records)}`,
      );
      assert.match(String(warning.fields.hint), /pg_read_all_stats/);
      const named = findHolder(
        holdersOf(warning),
        (holder) => holder.pid === pid,
      )!;
      assert.equal(named.database, elsewhere.name);
      assert.equal(named.user, "postgres");
      assert.equal(named.transactionStart, undefined);
      assert.equal(named.ageMs, 0);
      const lag = await store.readAllLag();
      assert.equal(lag.hiddenEvents, 3);
      const holder = findHolder(lag.heldBy, (holder) => holder.pid === pid);
      assert.ok(holder, `heldBy ${JSON.stringify(lag.heldBy)}`);
      assert.equal(holder.database, elsewhere.name);
      assert.equal(holder.transactionStart, undefined);
      assert.equal(holder.queryStart, undefined);
      assert.equal(holder.ageMs, 0);
    } finally {
      release.resolve();
      await holding?.catch(() => {});
      await reader?.stop();
      await store?.close();
      await other.end({ timeout: 1 });
      await owner.end({ timeout: 1 });
      await database.drop();
      await elsewhere.drop();
      await admin.unsafe(`DROP ROLE IF EXISTS ${role}`).catch(() => {});
      await admin.end({ timeout: 1 });
    }
  });

  Deno.test(`${LABEL}: appends in flight, 8 writers at once, raise no warning and leave nothing hidden`, async () => {
    // Under load most checks see a committed event above the bound (an
    // append with a lower transaction id still running): each is hidden
    // for milliseconds, and only one hidden past the threshold counts.
    const database = await createDatabase(server);
    const { records, logger } = capturingLogger();
    const store = await PostgresEventStore.connect(database.url, {
      max: 10,
      logger,
      heldBackThreshold: 500,
    });
    await store.migrate();
    const category = newCategory();
    const subscriber = subscribeInBackground(store, category);
    let stop = false;
    try {
      assert.deepEqual(await store.readAllLag(), {
        headPosition: 0n,
        readablePosition: 0n,
        hiddenEvents: 0,
        heldBy: [],
      }, "an empty store");
      let head = 0n;
      const writers = Array.from({ length: 8 }, async (_, writer) => {
        let appended = 0;
        while (!stop) {
          const { globalPosition } = await store.appendEvents(
            `${category}-${writer}`,
            [{ type: "Happened", data: { appended } }],
          );
          if (globalPosition > head) head = globalPosition;
          appended++;
        }
        return appended;
      });
      await sleep(2_000);
      stop = true;
      const total = (await Promise.all(writers)).reduce((a, b) => a + b, 0);
      await waitFor(
        () => subscriber.seen.length === total || undefined,
        () => `the subscriber got ${subscriber.seen.length} of ${total} events`,
      );
      assert.deepEqual(warnings(records), [], logSummary(records));
      assert.deepEqual(await store.readAllLag(), {
        headPosition: head,
        readablePosition: head,
        hiddenEvents: 0,
        heldBy: [],
      });
    } finally {
      stop = true;
      await subscriber.stop();
      await store.close();
      await database.drop();
    }
  });

  Deno.test(`${LABEL}: heldBackThreshold must be a finite number of at least 0`, async () => {
    const instance = postgres(cluster.url, { max: 1, onnotice: () => {} });
    try {
      for (const value of [-1, Number.NaN, Infinity, "5s"]) {
        const options = { heldBackThreshold: value as number };
        const refused = (error: unknown) =>
          error instanceof InvalidArgumentError &&
          error.field === "options.heldBackThreshold";
        await assert.rejects(
          PostgresEventStore.connect(cluster.url, options),
          refused,
        );
        assert.throws(() => new PostgresEventStore(instance, options), refused);
      }
    } finally {
      await instance.end({ timeout: 1 });
    }
  });

  Deno.test(`${LABEL}: remove the cluster`, () => cluster.remove());
}
