/**
 * What the server, a pooler or the network can do to a connection must never
 * kill the process: every driver error reaches the call that caused it, as a
 * typed error that keeps the server's cause, and the store keeps working.
 * Each case here killed the process before (an uncaught exception from
 * postgres.js, out of every caller's reach), and `deno test` fails a file
 * whose process reports one, so a regression fails the run.
 *
 * On a cluster of this file's own (it is restarted), with PgBouncer in front
 * for the pooler cases.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import {
  EventStoreError,
  PostgresEventStore,
  StoreUnavailableError,
} from "../mod.ts";
import { newCategory } from "./conformance.ts";
import { sleep, within } from "./_wait.ts";
import {
  type ControlledCluster,
  createDatabase,
  startControlledCluster,
} from "./_database.ts";
import { startPgBouncer } from "./_pgbouncer.ts";

const LABEL = "PostgresEventStore never crashes the process";

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

/** Waits long enough for a late uncaught error of the driver to surface. */
async function letTheDriverSettle(): Promise<void> {
  await sleep(1_500);
}

function registerTests(cluster: ControlledCluster) {
  const server = { url: cluster.url, source: "local cluster" };

  Deno.test(`${LABEL}: idle_in_transaction_session_timeout ends a projection's transaction while its handler waits`, async () => {
    const database = await createDatabase(server);
    const admin = postgres(database.url, { max: 1, onnotice: () => {} });
    try {
      await admin.unsafe(
        `ALTER DATABASE "${database.name}" SET idle_in_transaction_session_timeout = '500ms'`,
      );
      await using store = await PostgresEventStore.connect(database.url);
      await store.migrate();
      const stream = `${newCategory()}-1`;
      await store.appendEvents(stream, [{ type: "Placed", data: { n: 1 } }]);

      let calls = 0;
      const failed = await within(
        store.runProjection("slow-reader", async (_events, { transaction }) => {
          calls++;
          await (transaction as postgres.Sql)`SELECT 1`;
          await sleep(1_000); // idle in the transaction past the timeout
          // After the server ended the session: refused, never sent.
          await (transaction as postgres.Sql)`SELECT 2`;
        }).then(() => undefined, (error) => error),
        10_000,
        "runProjection",
      );
      assert.ok(
        failed instanceof StoreUnavailableError,
        `a typed error, got ${failed}`,
      );
      // The server's own cause, not only "connection closed".
      assert.equal(failed.sqlState, "25P03", failed.message);
      assert.match(failed.message, /idle-in-transaction timeout/);
      assert.equal(calls, 1);
      assert.equal(await store.projectionPosition("slow-reader"), 0n);

      await letTheDriverSettle();
      // The store keeps working: appends, reads, and the same projection
      // with a handler that is quick.
      await store.appendEvents(stream, [{ type: "Shipped", data: { n: 2 } }]);
      assert.equal((await store.loadEvents(stream)).length, 2);
      const abort = new AbortController();
      const seen: string[] = [];
      const running = store.runProjection("slow-reader", (events) => {
        for (const event of events) seen.push(event.type);
        if (seen.length === 2) abort.abort();
      }, { signal: abort.signal });
      await within(running, 10_000, "the projection after the timeout");
      assert.deepEqual(seen, ["Placed", "Shipped"]);
      const [head] = await store.readAll({ fromPosition: 0n, maxCount: 2 })
        .then((events) => events.slice(-1));
      assert.equal(
        await store.projectionPosition("slow-reader"),
        head.globalPosition,
      );
    } finally {
      await admin.end();
      await database.drop();
    }
  });

  Deno.test(`${LABEL}: a projection's connection killed while its handler waits (pg_terminate_backend)`, async () => {
    const database = await createDatabase(server);
    const admin = postgres(database.url, { max: 1, onnotice: () => {} });
    try {
      await using store = await PostgresEventStore.connect(database.url);
      await store.migrate();
      const stream = `${newCategory()}-1`;
      await store.appendEvents(stream, [{ type: "Placed", data: {} }]);
      const failed = await within(
        store.runProjection("killed", async (_events, { transaction }) => {
          const [{ pid }] = await (transaction as postgres.Sql)<
            { pid: number }[]
          >`SELECT pg_backend_pid() AS pid`;
          await admin`SELECT pg_terminate_backend(${pid})`;
          await sleep(300);
        }).then(() => undefined, (error) => error),
        10_000,
        "runProjection",
      );
      assert.ok(failed instanceof StoreUnavailableError, String(failed));
      assert.equal(failed.sqlState, "57P01", failed.message);
      await letTheDriverSettle();
      await store.appendEvents(stream, [{ type: "Shipped", data: {} }]);
      assert.equal(await store.projectionPosition("killed"), 0n);
    } finally {
      await admin.end();
      await database.drop();
    }
  });

  Deno.test(`${LABEL}: behind PgBouncer in session mode, PostgreSQL stops for 3 s and starts again`, async () => {
    const database = await createDatabase(server);
    await using bouncer = await startPgBouncer(database.url, {
      mode: "session",
    });
    await using store = await PostgresEventStore.connect(bouncer.url);
    await store.migrate();
    const category = newCategory();
    const stop = new AbortController();
    const outcomes: string[] = [];
    // Writers that keep the pool's connections busy and reconnecting.
    const writers = Array.from({ length: 4 }, async (_, writer) => {
      while (!stop.signal.aborted) {
        try {
          await store.appendEvents(`${category}-${writer}`, [{
            type: "Appended",
            data: {},
          }]);
          outcomes.push("ok");
        } catch (error) {
          assert.ok(error instanceof EventStoreError, String(error));
          outcomes.push(error.code);
          await sleep(50);
        }
      }
    });
    try {
      await sleep(300);
      await cluster.stop("fast");
      await sleep(3_000);
      await cluster.start();
      await sleep(1_000);
    } finally {
      stop.abort();
      await within(Promise.all(writers), 20_000, "the writers");
    }
    // The restart reached the store: calls failed, or PgBouncer dropped
    // connections (calls that waited in PgBouncer's queue may all succeed).
    assert.ok(
      outcomes.includes("unavailable") ||
        /closing because/.test(await bouncer.log()),
      outcomes.join(","),
    );
    await letTheDriverSettle();
    // Back: PgBouncer logs in again and the store answers.
    await within(
      (async () => {
        for (;;) {
          try {
            return await store.appendEvents(`${category}-after`, [{
              type: "Appended",
              data: {},
            }]);
          } catch (error) {
            assert.ok(error instanceof StoreUnavailableError, String(error));
            await sleep(250);
          }
        }
      })(),
      20_000,
      "an append after the restart",
    );
    await database.drop();
  });

  Deno.test(`${LABEL}: behind PgBouncer, a server pool smaller than the store's (query_wait_timeout)`, async () => {
    const database = await createDatabase(server);
    await using bouncer = await startPgBouncer(database.url, {
      mode: "session",
      poolSize: 2,
      settings: { query_wait_timeout: "1" },
    });
    await using store = await PostgresEventStore.connect(bouncer.url, {
      max: 6,
    });
    await store.migrate();
    const stream = `${newCategory()}-1`;
    // Six calls at once: two get a server connection, the others wait in
    // PgBouncer past query_wait_timeout.
    const outcomes = await within(
      Promise.allSettled(
        Array.from(
          { length: 6 },
          (_, index) =>
            store.appendEvents(`${stream}${index}`, [{
              type: "Appended",
              data: {},
            }]),
        ),
      ),
      20_000,
      "six appends",
    );
    for (const outcome of outcomes) {
      if (outcome.status === "rejected") {
        assert.ok(
          outcome.reason instanceof StoreUnavailableError,
          `${outcome.reason} ${
            Deno.inspect(outcome.reason.cause, { depth: 1 })
          }`,
        );
        assert.equal(outcome.reason.sqlState, "08P01", outcome.reason.message);
      }
    }
    await letTheDriverSettle();
    await within(
      store.appendEvents(`${stream}-after`, [{ type: "Appended", data: {} }]),
      10_000,
      "an append afterwards",
    );
    await database.drop();
  });

  Deno.test(`${LABEL}: remove the cluster`, () => cluster.remove());
}
