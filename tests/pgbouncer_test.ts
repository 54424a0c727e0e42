/**
 * The PostgreSQL store behind a real PgBouncer (Debian's package), with
 * PgBouncer's defaults but for `pool_mode`: the whole conformance suite in
 * session and in transaction mode, every event read back through the pooler
 * and directly and compared byte for byte, projections whose locks must hold
 * across server connections, subscriptions, the statement timeout and READ
 * COMMITTED that no startup parameter can carry through PgBouncer, the
 * example end to end, and the refusals: statement mode, and named prepared
 * statements insisted on in transaction mode.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import {
  type LogRecord,
  type NewEvent,
  PostgresEventStore,
  type PostgresEventStoreOptions,
  type RecordedEvent,
  StoreUnavailableError,
  UnsupportedServerError,
} from "../mod.ts";
import { newCategory, newStreamId, testEventStore } from "./conformance.ts";
import {
  createDatabase,
  createTestDatabaseOrFail,
  type TestDatabase,
  testServerUrl,
} from "./_database.ts";
import { type PgBouncer, type PoolMode, startPgBouncer } from "./_pgbouncer.ts";

const LABEL = "PostgresEventStore behind PgBouncer";

const database = await createTestDatabaseOrFail(LABEL);
let bouncers: Record<PoolMode, PgBouncer> | undefined;
if (database !== undefined) {
  try {
    const [session, transaction, statement] = await Promise.all(
      (["session", "transaction", "statement"] as const).map((mode) =>
        startPgBouncer(database.url, { mode })
      ),
    );
    bouncers = { session, transaction, statement };
  } catch (error) {
    // Never a silent skip: the tests fail, saying how to install it.
    Deno.test(`${LABEL}: PgBouncer runs`, () => {
      throw error;
    });
  }
}
if (database !== undefined && bouncers !== undefined) {
  await registerTests(database, bouncers);
}

type Data = { writer: number; n: number; bytes: Uint8Array; text: string };

/** Data of every kind the codec keeps, and bytes that look like text. */
function dataOf(writer: number, n: number): Data {
  const bytes = crypto.getRandomValues(new Uint8Array(1 + (n * 37) % 300));
  // The corruption seen behind transaction pooling stored `\xa16e74…`
  // as text: bytes that start like a CBOR map must come back as bytes.
  bytes.set([0xa1, 0x6e, 0x74].slice(0, bytes.length));
  return { writer, n, bytes, text: `écrit ${writer}/${n} ✓` };
}

/** What must be equal between two reads of the same event. */
function contentOf(event: RecordedEvent<unknown>) {
  return {
    id: event.id,
    streamId: event.streamId,
    version: event.version,
    globalPosition: event.globalPosition,
    type: event.type,
    data: event.data,
    metadata: event.metadata,
    createdAt: event.createdAt.getTime(),
  };
}

function urlOf(bouncer: PgBouncer, name: string): string {
  const url = new URL(bouncer.url);
  url.pathname = `/${name}`;
  return url.href;
}

async function registerTests(
  database: TestDatabase,
  bouncers: Record<PoolMode, PgBouncer>,
): Promise<void> {
  {
    await using store = await PostgresEventStore.connect(database.url);
    await store.migrate();
  }
  const direct = postgres(database.url, { max: 2, onnotice: () => {} });
  await Promise.all([direct`SELECT 1`, direct`SELECT 1`]);
  const fingerprintOf = async (direct: postgres.Sql): Promise<string> => {
    const [row] = await direct`
      SELECT md5(
        coalesce((SELECT string_agg(events::text, '|' ORDER BY global_position)
                  FROM events), '') || '#' ||
        coalesce((SELECT string_agg(snapshots::text, '|' ORDER BY stream_id)
                  FROM snapshots), '')
      ) AS digest`;
    return row.digest;
  };

  for (const mode of ["session", "transaction"] as const) {
    const bouncer = bouncers[mode];
    // A database of each mode's own: the conformance suite has cases with
    // fixed names (the longest stream id), which must start out empty.
    const own = await createDatabase(await testServerUrl());
    const ownUrl = urlOf(bouncer, own.name);
    {
      await using store = await PostgresEventStore.connect(own.url);
      await store.migrate();
    }
    const ownDirect = postgres(own.url, { max: 1, onnotice: () => {} });
    await ownDirect`SELECT 1`;
    testEventStore(
      `${LABEL} (${mode} mode)`,
      () => PostgresEventStore.connect(ownUrl, { max: 4 }),
      { fingerprint: () => fingerprintOf(ownDirect) },
    );
    Deno.test(`${LABEL} (${mode} mode): drop the conformance database`, async () => {
      await ownDirect.end();
      await own.drop();
    });

    const through = (options: PostgresEventStoreOptions = {}) =>
      PostgresEventStore.connect(bouncer.url, { max: 4, ...options });

    Deno.test(`${LABEL} (${mode} mode): connect finds the pooler and says so`, async () => {
      const records: LogRecord[] = [];
      await using _store = await through({
        logger: (record) => records.push(record),
      });
      const found = records.find((record) =>
        record.message === "A connection pooler is in front of PostgreSQL"
      );
      assert.ok(found, JSON.stringify(records));
      assert.equal(found.fields.prepare, false);
      if (mode === "transaction") {
        assert.equal(found.fields.route, "transaction");
      }
      const connected = records.find((record) =>
        record.message === "Connected"
      );
      assert.notEqual(connected?.fields.route, "direct");
    });

    Deno.test(`${LABEL} (${mode} mode): 16 writers' events read back exactly, through the pooler and directly`, async () => {
      const category = newCategory();
      const sent = new Map<string, Data>();
      {
        await using store = await through({ max: 10 });
        await Promise.all(
          Array.from({ length: 16 }, async (_, writer) => {
            const streamId = `${category}-${writer}`;
            for (let round = 0; round < 12; round++) {
              // Single events, batches, generated and the caller's ids.
              const count = round % 3 === 2 ? 3 : 1;
              const batch: NewEvent<Data>[] = Array.from(
                { length: count },
                (_, index) => ({
                  ...(round % 2 === 0 ? { id: crypto.randomUUID() } : {}),
                  type: count === 1 ? "Single" : "Batched",
                  data: dataOf(writer, round * 10 + index),
                  metadata: { writer, round },
                }),
              );
              await store.appendEvents(streamId, batch, {
                expectedVersion: round === 0 ? "no_stream" : "stream_exists",
              });
              for (const event of batch) {
                sent.set(`${writer}/${event.data.n}`, event.data);
              }
            }
          }),
        );
      }
      await using pooled = await through();
      await using straight = await PostgresEventStore.connect(database.url);
      const viaPooler = await pooled.readAll<Data>({ category });
      const viaDirect = await straight.readAll<Data>({ category });
      assert.equal(viaDirect.length, sent.size);
      assert.deepEqual(viaPooler.map(contentOf), viaDirect.map(contentOf));
      for (const event of viaDirect) {
        assert.deepEqual(
          event.data,
          sent.get(`${event.data.writer}/${event.data.n}`),
        );
        assert.ok(event.data.bytes instanceof Uint8Array);
      }
      // And the stored bytes themselves, not only what the codec made of
      // them: bytea whose first bytes are the codec's, never text.
      const [stored] = await direct`
        SELECT count(*)::int AS n,
               count(*) FILTER (WHERE substr(data, 1, 2) = '\\x5c78'::bytea)::int
                 AS text
        FROM events WHERE stream_id LIKE ${category + "-%"}`;
      assert.deepEqual(stored, { n: sent.size, text: 0 });
      // Streams load the same way too.
      for (let writer = 0; writer < 16; writer += 5) {
        const streamId = `${category}-${writer}`;
        assert.deepEqual(
          (await pooled.loadEvents(streamId)).map(contentOf),
          (await straight.loadEvents(streamId)).map(contentOf),
        );
      }
    });

    Deno.test(`${LABEL} (${mode} mode): two runners of one projection handle each event once`, async () => {
      const category = newCategory();
      const name = `${category}-projection`;
      await using store = await through({ max: 6 });
      for (let n = 0; n < 30; n++) {
        await store.appendEvents(`${category}-${n % 4}`, [{
          type: "Counted",
          data: n,
        }]);
      }
      const handled: bigint[] = [];
      const controller = new AbortController();
      const timeout = setTimeout(() => controller.abort(), 20_000);
      const runner = () =>
        store.runProjection(name, async (events, { transaction }) => {
          // Writes through the transaction the pooler keeps on one server.
          await (transaction as postgres.TransactionSql)`SELECT 1`;
          handled.push(...events.map((event) => event.globalPosition));
          if (handled.length >= 30) controller.abort();
        }, { category, batchSize: 4, signal: controller.signal });
      try {
        await Promise.all([runner(), runner()]);
      } finally {
        clearTimeout(timeout);
      }
      assert.equal(handled.length, 30);
      assert.equal(new Set(handled).size, 30);
      assert.equal(await store.projectionPosition(name), handled.at(-1));
      await store.resetProjection(name);
      assert.equal(await store.projectionPosition(name), 0n);
    });

    Deno.test(`${LABEL} (${mode} mode): a subscription delivers every event`, async () => {
      const category = newCategory();
      await using store = await through();
      const controller = new AbortController();
      const timeout = setTimeout(() => controller.abort(), 15_000);
      const seen: number[] = [];
      const delivered = (async () => {
        for await (
          const event of store.subscribe<number>({
            category,
            signal: controller.signal,
          })
        ) {
          seen.push(event.data);
          if (seen.length === 12) controller.abort();
        }
      })();
      for (let n = 0; n < 12; n++) {
        await store.appendEvents(`${category}-${n % 3}`, [{
          type: "Live",
          data: n,
        }]);
      }
      await delivered;
      clearTimeout(timeout);
      assert.deepEqual(seen, Array.from({ length: 12 }, (_, n) => n));
    });

    Deno.test(`${LABEL} (${mode} mode): statementTimeout holds without its startup parameter`, async () => {
      await using store = await through({ statementTimeout: 50 });
      const streamId = newStreamId();
      const events = Array.from({ length: 40_000 }, (_, n) => ({
        type: "Slow",
        data: n,
      }));
      const error = await store.appendEvents(streamId, events).then(
        () => undefined,
        (error) => error,
      );
      assert.ok(error instanceof StoreUnavailableError, String(error));
      assert.equal(error.sqlState, "57014");
      assert.equal(await store.streamVersion(streamId), 0);
      // And the store goes on working.
      assert.equal(
        (await store.appendEvents(streamId, [{ type: "Fast", data: 1 }]))
          .version,
        1,
      );
    });

    Deno.test(`${LABEL} (${mode} mode): READ COMMITTED holds on a SERIALIZABLE database`, async () => {
      const serializable = await createDatabase(await testServerUrl());
      try {
        await direct.unsafe(
          `ALTER DATABASE "${serializable.name}" SET default_transaction_isolation = 'serializable'`,
        );
        await using store = await PostgresEventStore.connect(
          urlOf(bouncer, serializable.name),
          { max: 8 },
        );
        await store.migrate();
        const streamId = newStreamId();
        const results = await Promise.all(
          Array.from(
            { length: 12 },
            (_, writer) =>
              store.appendEvents(streamId, [{ type: "Any", data: writer }]),
          ),
        );
        assert.deepEqual(
          results.map((result) => result.version).sort((a, b) => a - b),
          Array.from({ length: 12 }, (_, index) => index + 1),
        );
        const controller = new AbortController();
        let handled = 0;
        await store.runProjection("serializable", (events) => {
          handled += events.length;
          if (handled === 12) controller.abort();
        }, { signal: controller.signal });
        assert.equal(handled, 12);
        await store.resetProjection("serializable");
        assert.equal(await store.projectionPosition("serializable"), 0n);
      } finally {
        await serializable.drop();
      }
    });
  }

  Deno.test(`${LABEL} (transaction mode): prepare: true is refused at connect`, async () => {
    const error = await PostgresEventStore.connect(bouncers.transaction.url, {
      prepare: true,
    }).then(
      (store) => store.close(),
      (error) => error,
    );
    assert.ok(error instanceof UnsupportedServerError, String(error));
    assert.match(error.message, /transaction mode/);
    assert.match(error.message, /prepare: true/);
  });

  Deno.test(`${LABEL} (session mode): prepare: true is taken at its word`, async () => {
    await using store = await PostgresEventStore.connect(bouncers.session.url, {
      prepare: true,
    });
    const streamId = newStreamId();
    const data = dataOf(0, 1);
    await store.appendEvents(streamId, [{ type: "Prepared", data }]);
    assert.deepEqual((await store.loadEvents(streamId))[0].data, data);
  });

  Deno.test(`${LABEL} (statement mode): connect refuses, saying why`, async () => {
    const error = await PostgresEventStore.connect(bouncers.statement.url).then(
      (store) => store.close(),
      (error) => error,
    );
    assert.ok(error instanceof UnsupportedServerError, String(error));
    assert.match(error.message, /statement mode/);
    assert.match(error.message, /pool_mode/);
  });

  Deno.test(`${LABEL} (transaction mode): an application's own instance is refused, saying to connect by URL`, async () => {
    const sql = postgres(bouncers.transaction.url, {
      max: 2,
      onnotice: () => {},
    });
    try {
      const error = await PostgresEventStore.connect(sql).then(
        (store) => store.close(),
        (error) => error,
      );
      assert.ok(error instanceof UnsupportedServerError, String(error));
      assert.match(error.message, /connect by URL/);
      // The same at its first call, without connect(), writing nothing.
      const store = new PostgresEventStore(sql);
      const streamId = newStreamId();
      await assert.rejects(
        store.appendEvents(streamId, [{ type: "Never", data: 1 }]),
        UnsupportedServerError,
      );
      await store.close();
      const [row] = await direct`
        SELECT count(*)::int AS n FROM events WHERE stream_id = ${streamId}`;
      assert.equal(row.n, 0);
    } finally {
      await sql.end();
    }
  });

  Deno.test(`${LABEL} (transaction mode): DATABASE_URL=… deno task example runs`, async () => {
    const example = await createDatabase(await testServerUrl());
    try {
      const { code, stdout, stderr } = await new Deno.Command(
        Deno.execPath(),
        {
          args: ["task", "--quiet", "example"],
          cwd: new URL("..", import.meta.url),
          env: {
            DATABASE_URL: urlOf(bouncers.transaction, example.name),
            NO_COLOR: "1",
          },
          stdin: "null",
        },
      ).output();
      const out = new TextDecoder().decode(stdout);
      assert.equal(code, 0, new TextDecoder().decode(stderr));
      assert.match(out, /equal to a rebuild from all 25 events: yes/);
    } finally {
      await example.drop();
    }
  });

  Deno.test(`${LABEL}: stop PgBouncer and drop the test database`, async () => {
    await direct.end();
    for (const bouncer of Object.values(bouncers)) await bouncer.stop();
    await database.drop();
  });
}
