/**
 * The PostgreSQL store against faults of a real server that the tests
 * control: a cluster of this file's own (never the shared test server),
 * restarted while sixteen writers append, backends killed mid-append, a pool
 * exhausted, statements timed out, a commit's acknowledgement lost. What
 * must hold through all of it: every call resolves or rejects with
 * `StoreUnavailableError`, an append is stored all or nothing, and retrying
 * it with the same event ids stores it once and returns its result.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import {
  type AppendResult,
  type ExpectedVersion,
  type NewEvent,
  PostgresEventStore,
  type PostgresEventStoreOptions,
  type RecordedEvent,
  StoreUnavailableError,
} from "../mod.ts";
import { newCategory, newStreamId } from "./conformance.ts";
import {
  type ControlledCluster,
  createDatabase,
  startControlledCluster,
} from "./_database.ts";

const LABEL = "PostgresEventStore faults";

let cluster: ControlledCluster | undefined;
try {
  cluster = await startControlledCluster();
} catch (error) {
  // Never a silent skip: the tests fail, saying how to get the binaries.
  Deno.test(`${LABEL}: a PostgreSQL cluster the tests control`, () => {
    throw error;
  });
}
if (cluster !== undefined) registerTests(cluster);

type Data = { writer: number; batch: number; n: number };

/** `count` events with ids of the caller's, as a client that may retry has. */
function batchOf(count: number, writer = 0, batch = 0): NewEvent<Data>[] {
  return Array.from({ length: count }, (_, index) => ({
    id: crypto.randomUUID(),
    type: "Appended",
    data: { writer, batch, n: index + 1 },
  }));
}

function idsOf(events: readonly NewEvent<unknown>[]): string[] {
  return events.map((event) => event.id!);
}

/** Waits `ms` milliseconds. */
function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Resolves with `undefined` after `ms`, unless `promise` settles first. */
async function within<T>(
  promise: Promise<T>,
  ms: number,
): Promise<T | undefined> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<undefined>((resolve) => {
        timer = setTimeout(() => resolve(undefined), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** What a rejected call was, for the counts and messages of a test. */
function describe(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const cause = error.cause as { code?: unknown } | undefined;
  const code = error instanceof StoreUnavailableError
    ? error.sqlState ?? cause?.code
    : cause?.code;
  return `${error.name}${code === undefined ? "" : ` (${code})`}: ${
    error.message.slice(0, 300)
  }`;
}

/** The short kind of a `StoreUnavailableError`: SQLSTATE or driver code. */
function kindOf(error: StoreUnavailableError): string {
  const cause = error.cause as { code?: unknown } | undefined;
  return String(error.sqlState ?? cause?.code ?? "unknown");
}

/**
 * A TCP proxy in front of the server that can lose the server's replies: a
 * commit the server made, whose acknowledgement never reaches the client.
 */
interface ReplyDroppingProxy {
  /** The port to connect to instead of the server's. */
  readonly port: number;
  /** While true, what the server sends is dropped, not passed on. */
  dropReplies: boolean;
  /** Closes every connection through the proxy, both ends. */
  cut(): void;
  /** Stops accepting, cuts every connection, and waits for its tasks. */
  close(): Promise<void>;
}

function startReplyDroppingProxy(target: number): ReplyDroppingProxy {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const connections = new Set<Deno.Conn>();
  const tasks = new Set<Promise<void>>();
  const closeQuietly = (connection: Deno.Conn) => {
    connections.delete(connection);
    try {
      connection.close();
    } catch {
      // Closed already.
    }
  };
  const proxy: ReplyDroppingProxy = {
    port: listener.addr.port,
    dropReplies: false,
    cut() {
      for (const connection of [...connections]) closeQuietly(connection);
    },
    async close() {
      listener.close();
      proxy.cut();
      while (tasks.size > 0) await Promise.allSettled([...tasks]);
    },
  };
  const pump = async (
    from: Deno.Conn,
    to: Deno.Conn,
    drop: () => boolean,
  ) => {
    const buffer = new Uint8Array(64 * 1024);
    try {
      for (;;) {
        const count = await from.read(buffer);
        if (count === null) break;
        if (drop()) continue;
        let written = 0;
        while (written < count) {
          written += await to.write(buffer.subarray(written, count));
        }
      }
    } catch {
      // Either side closed: the pair is over.
    } finally {
      closeQuietly(from);
      closeQuietly(to);
    }
  };
  const track = (task: Promise<void>) => {
    tasks.add(task);
    task.finally(() => tasks.delete(task));
  };
  track((async () => {
    try {
      for await (const client of listener) {
        connections.add(client);
        const server = await Deno.connect({
          hostname: "127.0.0.1",
          port: target,
        })
          .catch(() => undefined);
        if (server === undefined) {
          closeQuietly(client);
          continue;
        }
        connections.add(server);
        track(pump(client, server, () => false));
        track(pump(server, client, () => proxy.dropReplies));
      }
    } catch {
      // The listener was closed.
    }
  })());
  return proxy;
}

/** Every test of this file, on `cluster`. */
function registerTests(cluster: ControlledCluster): void {
  const server = { url: cluster.url, source: "controlled cluster" };

  /**
   * A fresh database, migrated, and an admin connection to it whose
   * connections are open already (so no test reports postgres.js's
   * per-connection timers as its own leak). Dropped by `close`.
   */
  async function freshDatabase(): Promise<{
    url: string;
    admin: postgres.Sql;
    close(): Promise<void>;
  }> {
    const database = await createDatabase(server);
    {
      await using store = await PostgresEventStore.connect(database.url, {
        max: 1,
      });
      await store.migrate();
    }
    const admin = postgres(database.url, { max: 2, onnotice: () => {} });
    await Promise.all([admin`SELECT 1`, admin`SELECT 1`]);
    return {
      url: database.url,
      admin,
      async close() {
        await admin.end();
        await database.drop();
      },
    };
  }

  /** Waits until `count` sessions of `applicationName` wait for a lock. */
  /**
   * Runs `call` while `admin` holds the events table, killing the backend
   * of `applicationName` that waits for the lock, at most `maxKills` times;
   * the lock goes once the call settled or was killed that often.
   */
  async function killWhileItWaits<T>(
    admin: postgres.Sql,
    applicationName: string,
    call: () => Promise<T>,
    maxKills = Infinity,
  ): Promise<{ kills: number; outcome: T | { error: unknown } }> {
    let kills = 0;
    const { running } = await admin.begin(async (transaction) => {
      await transaction`LOCK TABLE events IN ACCESS EXCLUSIVE MODE`;
      let settled = false;
      const running = call().then(
        (result) => result,
        (error: unknown) => ({ error }),
      ).finally(() => settled = true);
      for (let poll = 0; !settled && kills < maxKills; poll++) {
        assert.ok(poll < 1000, "the call neither waited nor failed");
        await transaction`SELECT pg_stat_clear_snapshot()`;
        const [{ killed }] = await transaction`
          SELECT count(*)::int AS killed FROM (
            SELECT pg_terminate_backend(pid) FROM pg_stat_activity
            WHERE application_name = ${applicationName}
              AND wait_event_type = 'Lock') AS terminated`;
        kills += killed;
        await sleep(10);
      }
      // In an object: a promise returned would be awaited inside the
      // transaction, whose lock it waits for.
      return { running };
    });
    return { kills, outcome: await running };
  }

  async function waitForLockWaiters(
    sql: postgres.Sql | postgres.TransactionSql,
    applicationName: string,
    count: number,
  ): Promise<void> {
    let waiting = 0;
    for (let attempt = 0; attempt < 500; attempt++) {
      // Within a transaction, pg_stat_activity is read once and then kept:
      // forget it, to see the sessions as they are now.
      await sql`SELECT pg_stat_clear_snapshot()`;
      const [row] = await sql`
        SELECT count(*)::int AS waiting FROM pg_stat_activity
        WHERE application_name = ${applicationName}
          AND wait_event_type = 'Lock'`;
      waiting = row.waiting;
      if (waiting >= count) return;
      await sleep(10);
    }
    await sql`SELECT pg_stat_clear_snapshot()`;
    const sessions = await sql`
      SELECT application_name, state, wait_event_type, wait_event,
             left(query, 60) AS query
      FROM pg_stat_activity WHERE backend_type = 'client backend'`;
    assert.fail(
      `${count} appends of ${applicationName} should wait for the lock; ${waiting} do after 5 s. Sessions:\n${
        sessions.map((session) => JSON.stringify(session)).join("\n")
      }`,
    );
  }

  /** How many of `ids` the events table holds. */
  async function storedCount(
    admin: postgres.Sql,
    ids: string[],
  ): Promise<number> {
    const [row] = await admin`
      SELECT count(*)::int AS stored FROM events
      WHERE event_id = ANY(${admin.array(ids)}::uuid[])`;
    return row.stored;
  }

  /** Checks a stream holds `batches` exactly: in order, once, no gaps. */
  async function assertStream(
    store: PostgresEventStore,
    streamId: string,
    batches: { events: NewEvent<unknown>[]; result: AppendResult }[],
  ): Promise<void> {
    const loaded = await store.loadEvents(streamId);
    assert.deepEqual(
      loaded.map((event) => event.id),
      batches.flatMap((batch) => idsOf(batch.events)),
      `stream ${streamId}: its writer's event ids, each once, in order`,
    );
    loaded.forEach((event, index) =>
      assert.equal(event.version, index + 1, `stream ${streamId}: no gaps`)
    );
    for (const { events, result } of batches) {
      const last = loaded[result.version - 1];
      assert.equal(
        last?.id,
        events.at(-1)!.id,
        `stream ${streamId}: the result's version ${result.version} is the batch's last event`,
      );
      assert.equal(
        last.globalPosition,
        result.globalPosition,
        `stream ${streamId}: the result's global position is its last event's`,
      );
    }
  }

  Deno.test(`${LABEL}: PostgreSQL restarts (pg_ctl restart -m fast) while 16 writers append`, async () => {
    const WRITERS = 16;
    /** Successful appends before the restart: all writers well under way. */
    const BEFORE_RESTART = 400;
    /** Successful appends each writer makes after the restart. */
    const AFTER_RESTART = 10;
    /** How long one append may keep failing before the test gives up. */
    const RETRY_DEADLINE_MS = 20_000;
    /**
     * How long any one call may take, however the restart hits it: the
     * bound the README states. A call waits at most for its connection to
     * be made again (connectTimeout, 10 s by default) and its statement;
     * measured: at most about 1.3 s. Before the socket of
     * src/postgres/socket.ts, postgres.js lost calls on a connection that
     * died (they never settled, or Deno exited with "Promise resolution is
     * still pending") and stalled reconnects until connectTimeout.
     */
    const CALL_BOUND_MS = 12_000;
    /** Past this, the writers are stuck: a call hangs. */
    const STUCK_CALL_GUARD_MS = 40_000;
    const RETRY_SLEEP_MS = 25;

    const database = await freshDatabase();
    // The store's default options: nothing bounds a call but the store.
    const store = await PostgresEventStore.connect(database.url);
    const category = newCategory();
    type Batch = {
      events: NewEvent<Data>[];
      result: AppendResult;
      afterRestart: boolean;
    };
    const appended: Batch[][] = Array.from({ length: WRITERS }, () => []);
    const failures = new Map<string, number>();
    const unexpected: string[] = [];
    let appendFailures = 0;
    let probeFailures = 0;
    let alreadyStored = 0;
    let successes = 0;
    let restarted = false;
    let done = false;
    const restartDue = Promise.withResolvers<void>();
    let longestRetryMs = 0;
    /** The slowest store call, and how it ended. */
    let slowest = { ms: 0, call: "none" };
    /** Calls not settled yet, for the message when one hangs. */
    const pending = new Set<{ call: string; started: number }>();
    const timed = async <T>(call: string, body: () => Promise<T>) => {
      const started = performance.now();
      let outcome = "resolved";
      const entry = { call, started };
      pending.add(entry);
      try {
        return await body();
      } catch (error) {
        outcome = describe(error).slice(0, 160);
        throw error;
      } finally {
        pending.delete(entry);
        const ms = Math.round(performance.now() - started);
        if (ms > slowest.ms) {
          slowest = {
            ms,
            call: `${call} at ${
              Math.round(started - testStarted)
            } ms (restart at ${Math.round(restartAt)} ms): ${outcome}`,
          };
        }
      }
    };

    const fail = (message: string) => {
      unexpected.push(message);
      done = true;
      restartDue.resolve();
    };

    /** The batch as stored at versions after `previous`, if it is. */
    const probe = async (
      streamId: string,
      previous: number,
      events: NewEvent<Data>[],
    ): Promise<"stored" | "absent" | "failed"> => {
      let loaded;
      try {
        loaded = await timed("loadEvents", () =>
          store.loadEvents(streamId, {
            fromVersion: previous + 1,
            maxCount: events.length,
          }));
      } catch (error) {
        if (!(error instanceof StoreUnavailableError)) {
          fail(`loadEvents of ${streamId}: ${describe(error)}`);
        }
        probeFailures++;
        return "failed";
      }
      const ids = loaded.map((event) => event.id);
      if (ids.length === 0) return "absent";
      if (
        ids.length === events.length &&
        ids.every((id, index) => id === events[index].id)
      ) {
        return "stored";
      }
      fail(
        `stream ${streamId} after version ${previous}: a failed append left ${ids.length} of its ${events.length} events, or others: ${ids}`,
      );
      return "failed";
    };

    /**
     * Appends the batch, and after a `StoreUnavailableError` the very same
     * append again (same ids, same expected version) until it resolves.
     * Before each retry, a read says whether the failed attempt was stored
     * after all (an ambiguous commit), which the retry must then return.
     */
    const appendUntilStored = async (
      streamId: string,
      events: NewEvent<Data>[],
      previous: number,
    ): Promise<AppendResult | undefined> => {
      const expectedVersion: ExpectedVersion = previous === 0
        ? "no_stream"
        : previous;
      let firstFailure: number | undefined;
      let knownStored = false;
      for (;;) {
        if (firstFailure !== undefined) {
          // Something else failed the test already: stop retrying.
          if (unexpected.length > 0) return undefined;
          if (Date.now() - firstFailure > RETRY_DEADLINE_MS) {
            fail(
              `stream ${streamId}: an append kept failing for ${RETRY_DEADLINE_MS} ms; the store did not reconnect`,
            );
            return undefined;
          }
          await sleep(RETRY_SLEEP_MS);
          const found = await probe(streamId, previous, events);
          if (unexpected.length > 0) return undefined;
          if (found === "failed") continue;
          knownStored = found === "stored";
        }
        try {
          const result = await timed(
            "appendEvents",
            () => store.appendEvents(streamId, events, { expectedVersion }),
          );
          if (knownStored) alreadyStored++;
          if (firstFailure !== undefined) {
            longestRetryMs = Math.max(
              longestRetryMs,
              Date.now() - firstFailure,
            );
          }
          return result;
        } catch (error) {
          if (!(error instanceof StoreUnavailableError)) {
            fail(
              `stream ${streamId}: an append ${
                firstFailure === undefined ? "" : "retried "
              }${
                knownStored
                  ? "whose first attempt was stored (an ambiguous commit) "
                  : ""
              }rejected with ${describe(error)}`,
            );
            return undefined;
          }
          appendFailures++;
          const kind = kindOf(error);
          failures.set(kind, (failures.get(kind) ?? 0) + 1);
          firstFailure ??= Date.now();
        }
      }
    };

    const runWriter = async (writer: number) => {
      const streamId = `${category}-${writer}`;
      let version = 0;
      let afterRestart = 0;
      // Until this writer appended a few times on the restarted server.
      for (let batch = 0; !done && afterRestart < AFTER_RESTART; batch++) {
        const events = batchOf(2 + (batch + writer) % 2, writer, batch);
        const result = await appendUntilStored(streamId, events, version);
        if (result === undefined) return;
        version = result.version;
        appended[writer].push({ events, result, afterRestart: restarted });
        if (restarted) afterRestart++;
        if (++successes === BEFORE_RESTART) restartDue.resolve();
      }
    };

    const testStarted = performance.now();
    let restartAt = 0;
    let restartMs = 0;
    const writers = Promise.all(
      Array.from({ length: WRITERS }, (_, writer) => runWriter(writer)),
    );
    try {
      await Promise.race([restartDue.promise, writers]);
      if (!done) {
        const restarting = performance.now();
        restartAt = restarting - testStarted;
        try {
          await cluster.restart("fast");
        } catch (error) {
          fail(`the restart failed: ${describe(error)}`);
          throw error;
        }
        restartMs = performance.now() - restarting;
        restarted = true;
      }
      // Each append has its deadline; this one is for a call that hangs.
      const finished = await within(
        writers.then(() => true),
        STUCK_CALL_GUARD_MS,
      );
      if (finished === undefined) {
        fail(
          `the writers did not finish: a call hung. Pending: ${
            [...pending].map(({ call, started }) =>
              `${call} since ${Math.round(started - testStarted)} ms`
            ).join("; ")
          } (restart at ${Math.round(restartAt)} ms, now ${
            Math.round(performance.now() - testStarted)
          } ms)`,
        );
      }
      const elapsedMs = performance.now() - testStarted;

      console.log(
        `restart under load: ${successes} appends by ${WRITERS} writers in ${
          Math.round(elapsedMs)
        } ms; restart took ${Math.round(restartMs)} ms; ${appendFailures} ` +
          `appends rejected with StoreUnavailableError (${
            [...failures].map(([kind, count]) => `${kind}: ${count}`).join(
              ", ",
            )
          }), ${probeFailures} reads too; ${alreadyStored} retries returned ` +
          `an append already stored (ambiguous commits); the longest retry ` +
          `took ${longestRetryMs} ms; the slowest call: ${slowest.ms} ms, ${slowest.call}`,
      );
      assert.deepEqual(unexpected, [], unexpected.join("\n"));
      assert.ok(
        slowest.ms <= CALL_BOUND_MS,
        `a call took ${slowest.ms} ms, past the bound of ${CALL_BOUND_MS} ms: ${slowest.call}`,
      );
      assert.ok(
        appendFailures > 0,
        "no append failed: the restart hit no work in flight",
      );
      const ids = new Set<string>();
      for (let writer = 0; writer < WRITERS; writer++) {
        const batches = appended[writer];
        assert.ok(
          batches.filter((batch) => batch.afterRestart).length >=
            AFTER_RESTART,
          `writer ${writer} appended after the restart`,
        );
        await assertStream(store, `${category}-${writer}`, batches);
        for (const batch of batches) {
          for (const id of idsOf(batch.events)) ids.add(id);
        }
      }
      const [row] = await database.admin`
        SELECT count(*)::int AS stored, count(DISTINCT event_id)::int AS ids
        FROM events WHERE split_part(stream_id, '-', 1) = ${category}`;
      assert.deepEqual(row, { stored: ids.size, ids: ids.size });
    } finally {
      done = true;
      await store.close();
      // Calls that hung end with the pool.
      await within(writers, 10_000);
      await database.close();
    }
  });

  Deno.test(`${LABEL}: a connection killed mid-append (pg_terminate_backend): all or nothing, and a retry with the same ids stores it once`, async () => {
    const database = await freshDatabase();
    const { admin } = database;
    const applicationName = `killed-${crypto.randomUUID().slice(0, 8)}`;
    const store = await PostgresEventStore.connect(database.url, {
      max: 1,
      applicationName,
    });
    try {
      const streamId = newStreamId();
      const firstBatch = batchOf(1);
      const first = await store.appendEvents(streamId, firstBatch, {
        expectedVersion: "no_stream",
      });
      const batch = batchOf(100);
      const ids = idsOf(batch);
      // Hold the table so that the append is surely in flight, then kill
      // the backend running it. The store sends an append again after a
      // lost connection (looking for its ids, so that it cannot store it
      // twice), at most twice: kill every attempt, and the call fails.
      const { kills, outcome } = await killWhileItWaits(
        admin,
        applicationName,
        () => store.appendEvents(streamId, batch, { expectedVersion: 1 }),
      );
      assert.ok(kills >= 1 && kills <= 3, `${kills} attempts killed`);
      assert.ok("error" in outcome, "the killed append resolved");
      assert.ok(
        outcome.error instanceof StoreUnavailableError,
        describe(outcome.error),
      );
      assert.equal(await storedCount(admin, ids), 0);

      // The same append again: the first call after the kill may still get
      // the dead connection's farewell, which a client retries like any
      // StoreUnavailableError.
      const failures: string[] = [];
      let result: AppendResult | undefined;
      for (let attempt = 1; result === undefined; attempt++) {
        try {
          result = await store.appendEvents(streamId, batch, {
            expectedVersion: 1,
          });
        } catch (error) {
          assert.ok(error instanceof StoreUnavailableError, describe(error));
          failures.push(describe(error));
          assert.ok(attempt < 5, `retries keep failing:\n${failures}`);
          await sleep(25);
        }
      }
      console.log(
        `the killed append: ${describe(outcome.error)}\nthe retry ${
          failures.length === 0
            ? "resolved at once"
            : `failed first with: ${failures.join("; ")}`
        }`,
      );
      assert.equal(result.version, 101);
      assert.equal(await storedCount(admin, ids), 100);
      await assertStream(store, streamId, [
        { events: firstBatch, result: first },
        { events: batch, result },
      ]);
      assert.equal(await store.streamVersion(streamId), 101);
    } finally {
      await store.close();
      await database.close();
    }
  });

  Deno.test(`${LABEL}: a read whose connection is killed (pg_terminate_backend): repeated once with the same events, else a typed error, and the next read works`, async () => {
    const database = await freshDatabase();
    const { admin } = database;
    const applicationName = `killed-read-${crypto.randomUUID().slice(0, 8)}`;
    const store = await PostgresEventStore.connect(database.url, {
      max: 1,
      applicationName,
    });
    try {
      const streamId = newStreamId();
      await store.appendEvents(streamId, batchOf(200));
      const expected = await store.loadEvents(streamId);
      // Killed once: the store repeats a read after a lost connection.
      const once = await killWhileItWaits(
        admin,
        applicationName,
        () => store.loadEvents(streamId),
        1,
      );
      assert.equal(once.kills, 1);
      assert.ok(
        !("error" in once.outcome),
        "error" in once.outcome ? describe(once.outcome.error) : "",
      );
      assert.deepStrictEqual(once.outcome, expected);

      // Killed every time: a typed error, never a crash or a hang.
      const always = await killWhileItWaits(
        admin,
        applicationName,
        () => store.readAll({ fromPosition: 0n }),
      );
      assert.ok(always.kills >= 2, `${always.kills} attempts killed`);
      assert.ok("error" in always.outcome, "the killed read resolved");
      assert.ok(
        always.outcome.error instanceof StoreUnavailableError,
        describe(always.outcome.error),
      );

      // The next reads work (the first may still meet the farewell of the
      // dead connection, which a client retries like any
      // StoreUnavailableError).
      let events: RecordedEvent[] | undefined;
      for (let attempt = 1; events === undefined; attempt++) {
        try {
          events = await store.readAll({ fromPosition: 0n });
        } catch (error) {
          assert.ok(error instanceof StoreUnavailableError, describe(error));
          assert.ok(attempt < 5, "reads keep failing");
          await sleep(25);
        }
      }
      assert.deepStrictEqual(events, expected);
    } finally {
      await store.close();
      await database.close();
    }
  });

  Deno.test(`${LABEL}: a connection killed mid-COPY (the binary read of a long stream): the events, or a typed error, and the next read works`, async () => {
    const database = await freshDatabase();
    const { admin } = database;
    const applicationName = `killed-copy-${crypto.randomUUID().slice(0, 8)}`;
    const store = await PostgresEventStore.connect(database.url, {
      max: 1,
      applicationName,
    });
    try {
      const streamId = newStreamId();
      // Long enough that its COPY streams for a while after it started.
      for (let batch = 0; batch < 4; batch++) {
        await store.appendEvents(
          streamId,
          Array.from({ length: 5_000 }, (_, n) => ({
            type: "Appended",
            data: { batch, n, padding: "x".repeat(200) },
          })),
        );
      }
      const expected = await store.loadEvents(streamId);
      assert.equal(expected.length, 20_000);
      let copiesKilled = 0;
      for (let attempt = 0; copiesKilled < 3 && attempt < 30; attempt++) {
        let settled = false;
        const running = store.loadEvents(streamId).then(
          (events) => ({ events }),
          (error: unknown) => ({ error }),
        ).finally(() => settled = true);
        while (!settled) {
          const [{ killed }] = await admin`
            SELECT count(*)::int AS killed FROM (
              SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE application_name = ${applicationName}
                AND state = 'active' AND query LIKE 'COPY%') AS terminated`;
          copiesKilled += killed;
        }
        const outcome = await running;
        if ("error" in outcome) {
          assert.ok(
            outcome.error instanceof StoreUnavailableError,
            describe(outcome.error),
          );
        } else {
          assert.deepStrictEqual(outcome.events, expected);
        }
        // The next read works (after at most a farewell of the dead
        // connection, typed as the other killed reads').
        let events: RecordedEvent[] | undefined;
        for (let retry = 1; events === undefined; retry++) {
          try {
            events = await store.loadEvents(streamId);
          } catch (error) {
            assert.ok(error instanceof StoreUnavailableError, describe(error));
            assert.ok(retry < 5, "reads keep failing");
            await sleep(25);
          }
        }
        assert.deepStrictEqual(events, expected);
      }
      assert.ok(copiesKilled >= 1, "no COPY was caught running");
    } finally {
      await store.close();
      await database.close();
    }
  });

  Deno.test(`${LABEL}: pool exhaustion: 500 concurrent appends through a pool of 4 all complete`, async () => {
    const database = await freshDatabase();
    const store = await PostgresEventStore.connect(database.url, { max: 4 });
    try {
      const category = newCategory();
      const STREAMS = 50;
      const appends = Array.from({ length: 500 }, (_, index) => ({
        streamId: `${category}-${index % STREAMS}`,
        events: batchOf(1 + index % 3, index % STREAMS, index),
      }));
      const results = await Promise.all(
        appends.map(({ streamId, events }) =>
          store.appendEvents(streamId, events, { expectedVersion: "any" })
        ),
      );
      for (let stream = 0; stream < STREAMS; stream++) {
        const streamId = `${category}-${stream}`;
        const mine = appends
          .map((append, index) => ({ ...append, result: results[index] }))
          .filter((append) => append.streamId === streamId)
          .sort((a, b) => a.result.version - b.result.version);
        const loaded = await store.loadEvents(streamId);
        assert.equal(
          loaded.length,
          mine.reduce((sum, append) => sum + append.events.length, 0),
        );
        // The order the appends committed in: each batch whole, no gaps.
        await assertStream(store, streamId, mine);
      }
      const [row] = await database.admin`
        SELECT count(*)::int AS stored, count(DISTINCT event_id)::int AS ids
        FROM events`;
      const total = appends.reduce((sum, a) => sum + a.events.length, 0);
      assert.deepEqual(row, { stored: total, ids: total });
    } finally {
      await store.close();
      await database.close();
    }
  });

  Deno.test(`${LABEL}: acquireTimeout: with all 4 connections busy, an append that waits longer for one rejects and writes nothing`, async () => {
    const database = await freshDatabase();
    const { admin } = database;
    const applicationName = `exhausted-${crypto.randomUUID().slice(0, 8)}`;
    // Not a literal: this compiles before PostgresEventStoreOptions has
    // acquireTimeout, and then the test fails at run time, as it should.
    const options = { max: 4, applicationName, acquireTimeout: 300 };
    const store = await PostgresEventStore.connect(
      database.url,
      options as PostgresEventStoreOptions,
    );
    try {
      const category = newCategory();
      const blockedBatches = Array.from({ length: 4 }, () => batchOf(2));
      const lateBatch = batchOf(2);
      let blocked: Promise<AppendResult[]> | undefined;
      let late: Promise<AppendResult | { error: unknown }> | undefined;
      const { outcome, elapsedMs } = await admin.begin(async (transaction) => {
        await transaction`LOCK TABLE events IN ACCESS EXCLUSIVE MODE`;
        blocked = Promise.all(
          blockedBatches.map((events, index) =>
            store.appendEvents(`${category}-${index}`, events, {
              expectedVersion: "no_stream",
            })
          ),
        );
        // Failing fast if one of them does, rather than waiting 5 s.
        blocked.catch(() => {});
        await waitForLockWaiters(transaction, applicationName, 4);
        const started = performance.now();
        late = store.appendEvents(`${category}-late`, lateBatch, {
          expectedVersion: "no_stream",
        }).then((result) => result, (error: unknown) => ({ error }));
        const outcome = await within(late, 5_000);
        return { outcome, elapsedMs: performance.now() - started };
      });
      // The lock is released: the four complete.
      const results = await blocked!;
      assert.deepEqual(results.map((result) => result.version), [2, 2, 2, 2]);
      const lateOutcome = await late!;
      assert.ok(
        outcome !== undefined,
        `the fifth append was still waiting after 5 s; it then ${
          "error" in lateOutcome
            ? `rejected with ${describe(lateOutcome.error)}`
            : `was stored at version ${lateOutcome.version}`
        }`,
      );
      assert.ok(
        "error" in outcome,
        `the fifth append resolved (version ${
          (outcome as AppendResult).version
        }) within ${Math.round(elapsedMs)} ms`,
      );
      assert.ok(
        outcome.error instanceof StoreUnavailableError,
        describe(outcome.error),
      );
      assert.ok(
        elapsedMs >= 250 && elapsedMs < 5_000,
        `rejected after ${Math.round(elapsedMs)} ms; acquireTimeout is 300`,
      );
      assert.equal(await storedCount(admin, idsOf(lateBatch)), 0);
      assert.equal(await store.streamVersion(`${category}-late`), 0);
      for (const [index, events] of blockedBatches.entries()) {
        assert.equal(await storedCount(admin, idsOf(events)), 2, `${index}`);
      }
    } finally {
      await store.close();
      await database.close();
    }
  });

  Deno.test(`${LABEL}: a statement timeout gives a typed error and leaves no partial batch`, async () => {
    const database = await freshDatabase();
    const { admin } = database;
    const store = await PostgresEventStore.connect(database.url, {
      max: 2,
      statementTimeout: 200,
    });
    try {
      const streamId = newStreamId();
      await store.appendEvents(streamId, batchOf(1), {
        expectedVersion: "no_stream",
      });
      const batch = batchOf(1000);
      const ids = idsOf(batch);
      const started = performance.now();
      await admin.begin(async (transaction) => {
        await transaction`LOCK TABLE events IN ACCESS EXCLUSIVE MODE`;
        await assert.rejects(
          store.appendEvents(streamId, batch, { expectedVersion: 1 }),
          (error) => {
            assert.ok(error instanceof StoreUnavailableError, describe(error));
            assert.equal(error.sqlState, "57014");
            assert.match(error.message, /timed out/);
            return true;
          },
        );
      });
      assert.ok(performance.now() - started >= 190, "waited for the timeout");
      assert.equal(await storedCount(admin, ids), 0);
      assert.equal(await store.streamVersion(streamId), 1);

      const result = await store.appendEvents(streamId, batch, {
        expectedVersion: 1,
      });
      assert.equal(result.version, 1001);
      assert.equal(await storedCount(admin, ids), 1000);
      const loaded = await store.loadEvents(streamId, { fromVersion: 2 });
      assert.deepEqual(loaded.map((event) => event.id), ids);
      assert.equal(loaded.at(-1)!.globalPosition, result.globalPosition);
    } finally {
      await store.close();
      await database.close();
    }
  });

  Deno.test(`${LABEL}: a commit whose acknowledgement is lost: the store sends it again and returns the stored result, stored once`, async () => {
    const database = await freshDatabase();
    const { admin } = database;
    const proxy = startReplyDroppingProxy(cluster.port);
    const viaProxy = new URL(database.url);
    viaProxy.port = String(proxy.port);
    const store = await PostgresEventStore.connect(viaProxy.href, { max: 1 });
    try {
      const streamId = newStreamId();
      // Of the same shape as the next one: its statement is then prepared
      // already, and the next append goes out whole, without waiting for
      // the server to describe it.
      await store.appendEvents(streamId, batchOf(2), {
        expectedVersion: "no_stream",
      });
      const batch = batchOf(3);
      const ids = idsOf(batch);
      // The server commits the append; its reply is lost, and then the
      // connection: the client cannot know that it was stored.
      proxy.dropReplies = true;
      const append = store.appendEvents(streamId, batch, {
        expectedVersion: 2,
      }).then((result) => result, (error: unknown) => ({ error }));
      for (let attempt = 0; await storedCount(admin, ids) < 3; attempt++) {
        assert.ok(attempt < 500, "the append did not commit within 5 s");
        await sleep(10);
      }
      // The store sends it again on a new connection, and that one gets
      // its reply: the repeat finds the committed events by id.
      proxy.dropReplies = false;
      proxy.cut();
      const outcome = await append;
      assert.ok(!("error" in outcome), describe(outcome));
      assert.equal(await storedCount(admin, ids), 3, "stored once");

      // A caller's own retry of the same append gets the same result.
      const failures: string[] = [];
      let result: AppendResult | undefined;
      for (let attempt = 1; result === undefined; attempt++) {
        try {
          result = await store.appendEvents(streamId, batch, {
            expectedVersion: 2,
          });
        } catch (error) {
          assert.ok(error instanceof StoreUnavailableError, describe(error));
          failures.push(describe(error));
          assert.ok(attempt < 5, `retries keep failing:\n${failures}`);
          await sleep(25);
        }
      }
      assert.deepEqual(result, outcome);
      assert.equal(await storedCount(admin, ids), 3, "stored once");
      const loaded = await store.loadEvents(streamId);
      assert.deepEqual(loaded.slice(2).map((event) => event.id), ids);
      assert.equal(result.version, 5);
      assert.equal(result.globalPosition, loaded[4].globalPosition);
    } finally {
      await store.close();
      await proxy.close();
      await database.close();
    }
  });

  // Registered last, so it runs after every other test of this file.
  Deno.test(`${LABEL}: remove the cluster`, () => cluster.remove());
}
