/**
 * The PostgreSQL store against hostile input and careless output: no input
 * ever becomes SQL text (every value travels as a bound parameter, and the
 * schema name is checked, then double-quoted), and no password ever reaches
 * an error, a log record, a span or an inspected object, whichever way an
 * operation fails.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import {
  bundledMigrations,
  ConcurrencyConflictError,
  DuplicateEventError,
  EventStoreError,
  InvalidArgumentError,
  type LogRecord,
  MigrationError,
  type NewEvent,
  PostgresEventStore,
  type PostgresEventStoreOptions,
  type RecordedEvent,
  runMigrations,
  StoreClosedError,
  StoreUnavailableError,
} from "../mod.ts";
import { createTestDatabaseOrFail, type TestDatabase } from "./_database.ts";
import { recordSpans } from "./_tracing.ts";

const spans = recordSpans();
const database = await createTestDatabaseOrFail("PostgresEventStore security");
if (database !== undefined) await registerTests(database);

/** One statement as postgres.js built it, and the operation that sent it. */
interface SentQuery {
  operation: string;
  query: string;
  parameters: unknown[];
}

/** What an event should read back as, in the order it was appended. */
interface Expected {
  streamId: string;
  version: number;
  type: string;
  data: unknown;
  metadata: Record<string, unknown>;
}

/** A parameter as text, to look for the marker in it (bytea as UTF-8). */
function parameterText(value: unknown): string {
  if (typeof value === "string") return value;
  if (value instanceof Uint8Array) return new TextDecoder().decode(value);
  if (Array.isArray(value)) return value.map(parameterText).join("\n");
  return String(value);
}

/** A stream's category, as the contract defines it. */
function categoryOf(streamId: string): string {
  return streamId.split("-")[0];
}

/** Every test of this file, on one fresh database. */
async function registerTests(database: TestDatabase): Promise<void> {
  const { url } = database;
  {
    await using store = await PostgresEventStore.connect(url, { max: 1 });
    await store.migrate();
  }
  // A connection of the test's own, to look at the tables and hold locks.
  const admin = postgres(url, { max: 2, onnotice: () => {} });
  // Open its connections now: postgres.js starts a lifetime timer per
  // connection, which the test that happened to open it would report leaked.
  await Promise.all([admin`SELECT 1`, admin`SELECT 1`]);

  Deno.test("PostgresEventStore security: no statement is ever built by string concatenation of input", async () => {
    const marker = `zq${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
    const hostile = [
      `x'); DROP TABLE events; --${marker}`,
      `"; DELETE FROM snapshots; --${marker}`,
      `$1${marker}`,
      `\\'${marker}`,
      `E'${marker}`,
      `$$${marker}$$`,
      `${marker}' OR '1'='1`,
      `${marker}\\"; SELECT pg_sleep(10); --`,
      `${marker}');\nDELETE FROM events WHERE ''=('`,
      `ünïcödé ✓ 𝄞 😀 \u202e${marker}\u2028`,
      `%_${marker}*?`,
      `:name ${marker} ? %s @p1 \${1}`,
    ];
    // Categories cannot contain "-": the same strings without it.
    const categories = hostile.map((text) => text.replaceAll("-", ""));
    // A mixed-case reserved word: it works only if every statement quotes it.
    const schema = "Order";
    const bundled = (await bundledMigrations()).map(({ name }) => name);

    const sent: SentQuery[] = [];
    let operation = "setup";
    const sql = postgres(url, {
      max: 4,
      onnotice: () => {},
      types: { bigint: postgres.BigInt },
      // postgres.js calls it with every statement it builds (connection.js
      // `build`), before sending it: `(connectionId, text, parameters, types)`.
      debug: (_connection, query, parameters) =>
        sent.push({ operation, query, parameters: [...parameters] }),
    });
    const store = new PostgresEventStore(sql, { schema });
    /** Operations that carry input, with the statements each one sent. */
    const withInput: { name: string; queries: SentQuery[] }[] = [];
    const run = async <T>(
      name: string,
      body: () => Promise<T>,
      carriesInput = true,
    ): Promise<T> => {
      const start = sent.length;
      operation = name;
      try {
        return await body();
      } finally {
        operation = `after ${name}`;
        if (carriesInput) {
          withInput.push({ name, queries: sent.slice(start) });
        }
      }
    };
    const expected: Expected[] = [];
    const record = (
      streamId: string,
      version: number,
      events: NewEvent[],
    ) =>
      events.forEach((event, index) =>
        expected.push({
          streamId,
          version: version - events.length + 1 + index,
          type: event.type,
          data: event.data,
          metadata: event.metadata ?? {},
        })
      );
    const append = async (
      name: string,
      streamId: string,
      events: NewEvent[],
      options?: Parameters<typeof store.appendEvents>[2],
    ) => {
      const result = await run(
        name,
        () => store.appendEvents(streamId, events, options),
      );
      record(streamId, result.version, events);
      return result;
    };

    try {
      const migrated = await run("migrate", () => store.migrate(), false);
      assert.deepEqual(migrated.applied, bundled);

      for (const [index, text] of hostile.entries()) {
        const data = { [text]: text, text, list: [text, index] };
        const metadata = { [text]: text, nested: { [text]: [text, null] } };
        const first: NewEvent = { type: text, data, metadata };
        await append("appendEvents single, no_stream", text, [first], {
          expectedVersion: "no_stream",
        });
        const batch: NewEvent[] = [
          { id: crypto.randomUUID(), type: `${text}.v2`, data, metadata },
          { id: crypto.randomUUID(), type: text, data: text, metadata: {} },
        ];
        const stored = await append(
          "appendEvents batch with caller ids, expectedVersion 1",
          text,
          batch,
          { expectedVersion: 1 },
        );
        const repeated = await run(
          "appendEvents repeated",
          () => store.appendEvents(text, batch, { expectedVersion: 1 }),
        );
        assert.deepEqual(repeated, stored);
        await append(
          "appendEvents single with caller id, stream_exists",
          text,
          [{ id: crypto.randomUUID(), type: `${text}.v3`, data: [text] }],
          { expectedVersion: "stream_exists" },
        );
        await append("appendEvents batch, any", text, [
          { type: text, data: null, metadata: { key: text } },
          { type: `${text}.v2`, data: { [text]: { [text]: text } } },
        ]);
        await run(
          "appendEvents conflicting",
          () =>
            assert.rejects(
              store.appendEvents(text, [first], { expectedVersion: 2 }),
              (error) =>
                error instanceof ConcurrencyConflictError &&
                error.streamId === text && error.actualVersion === 6,
            ),
        );
        await run(
          "appendEvents duplicate",
          () =>
            assert.rejects(
              store.appendEvents(text, [batch[0], {
                id: crypto.randomUUID(),
                type: text,
                data: 0,
              }], { expectedVersion: 1 }),
              (error) =>
                error instanceof DuplicateEventError &&
                error.streamId === text && error.storedVersion === 2,
            ),
        );
      }
      // Streams of the hostile categories, and decoys that a LIKE pattern
      // (`%`, `_`) or a prefix match would wrongly take in.
      for (const [index, category] of categories.entries()) {
        for (const streamId of [`${category}-1`, `${category}-2-x`]) {
          await append("appendEvents to a category", streamId, [
            { type: hostile[index], data: { category } },
            { type: hostile[(index + 1) % hostile.length], data: streamId },
          ]);
        }
      }
      for (
        const decoy of [`zz${marker}*?-1`, `z${marker}*?-1`, `x'${marker}-1`]
      ) {
        await append("appendEvents to a decoy", decoy, [
          { type: hostile[0], data: decoy },
        ]);
      }

      // Every value reads back exactly as written.
      for (const text of hostile) {
        const mine = expected.filter((event) => event.streamId === text);
        const loaded = await run(
          "loadEvents",
          () => store.loadEvents(text),
        );
        assert.deepEqual(loaded.map(essentials), mine);
        const range = await run(
          "loadEvents with fromVersion and maxCount",
          () => store.loadEvents(text, { fromVersion: 2, maxCount: 3 }),
        );
        assert.deepEqual(range.map(essentials), mine.slice(1, 4));
        assert.equal(
          await run("streamVersion", () => store.streamVersion(text)),
          6,
        );
        assert.equal(
          await run(
            "streamVersion of an unknown stream",
            () => store.streamVersion(`${text}-none`),
          ),
          0,
        );
        const state = { [text]: text, list: [text], at: new Date(0) };
        await run("saveSnapshot", () => store.saveSnapshot(text, 6, state));
        const snapshot = await run(
          "loadSnapshot",
          () => store.loadSnapshot(text),
        );
        assert.deepEqual(
          { streamId: snapshot?.streamId, version: snapshot?.version },
          { streamId: text, version: 6 },
        );
        assert.deepEqual(snapshot?.state, state);
        assert.equal(
          await run(
            "loadSnapshot of an unknown stream",
            () => store.loadSnapshot(`${text}-none`),
          ),
          undefined,
        );
      }
      // readAll returns only what no running transaction can precede, and a
      // transaction of another database on the same server may hold it back
      // for a moment: wait until everything shows. Every later read then
      // sees all of it.
      const all = await run("readAll", async () => {
        for (let attempt = 1;; attempt++) {
          const events = await store.readAll();
          if (events.length >= expected.length || attempt === 100) {
            return events;
          }
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
      }, false);
      assert.deepEqual(all.map(essentials), expected);
      for (const [index, category] of categories.entries()) {
        const types = [hostile[index], `${hostile[index]}.v2`];
        const inCategory = (event: Expected) =>
          categoryOf(event.streamId) === category;
        const ofTypes = (event: Expected) => types.includes(event.type);
        const byCategory = await run(
          "readAll with category",
          () => store.readAll({ category }),
        );
        assert.deepEqual(
          byCategory.map(essentials),
          expected.filter(inCategory),
        );
        const byTypes = await run(
          "readAll with types",
          () => store.readAll({ types }),
        );
        assert.deepEqual(byTypes.map(essentials), expected.filter(ofTypes));
        const both = await run(
          "readAll with types, category, fromPosition and maxCount",
          () =>
            store.readAll({
              types,
              category,
              fromPosition: all[0].globalPosition,
              maxCount: 1_000,
            }),
        );
        assert.deepEqual(
          both.map(essentials),
          expected.slice(1).filter((event) =>
            inCategory(event) && ofTypes(event)
          ),
        );
      }

      // A subscription, briefly: it catches up with a category and types.
      {
        const category = categories[1];
        const types = [hostile[1], hostile[2]];
        const want = expected.filter((event) =>
          categoryOf(event.streamId) === category && types.includes(event.type)
        );
        assert.ok(want.length > 0);
        const controller = new AbortController();
        const timer = setTimeout(() => controller.abort(), 5_000);
        const received = await run("subscribe", async () => {
          const received: Expected[] = [];
          for await (
            const event of store.subscribe({
              category,
              types,
              signal: controller.signal,
            })
          ) {
            received.push(essentials(event));
            if (received.length === want.length) break;
          }
          return received;
        });
        clearTimeout(timer);
        assert.deepEqual(received, want);
      }

      // Projections by hostile names, with hostile filters.
      for (const [index, name] of hostile.entries()) {
        assert.equal(
          await run("projectionPosition", () => store.projectionPosition(name)),
          0n,
        );
        if (index % 4 !== 0) continue;
        const category = categories[index];
        const want = expected.filter((event) =>
          categoryOf(event.streamId) === category
        );
        const handled: Expected[] = [];
        const controller = new AbortController();
        const timer = setTimeout(() => controller.abort(), 5_000);
        await run("runProjection", () =>
          store.runProjection(name, (events) => {
            handled.push(...events.map(essentials));
            if (handled.length >= want.length) controller.abort();
          }, { category, batchSize: 2, signal: controller.signal }));
        clearTimeout(timer);
        assert.deepEqual(handled, want);
        const all = await store.readAll({ category });
        assert.equal(
          await run("projectionPosition", () => store.projectionPosition(name)),
          all.at(-1)?.globalPosition,
        );
      }
      const checkpoints = await admin`
        SELECT name FROM "Order".projection_checkpoints`;
      assert.deepEqual(
        checkpoints.map((row) => row.name).sort(),
        hostile.filter((_, index) => index % 4 === 0).sort(),
      );
      for (const name of hostile) {
        await run("resetProjection", () => store.resetProjection(name));
        assert.equal(await store.projectionPosition(name), 0n);
      }
      assert.equal(
        (await run("migrate", () => store.migrate(), false))
          .applied.length,
        0,
      );
    } finally {
      operation = "close";
      await store.close();
      await sql.end();
    }

    // 1. No statement's text holds any input. (The migration runner,
    // src/migrations.ts, does build its batch as text, with escaped literals
    // of migration NAMES and checksums: those are code the application
    // supplies, never input, so that is acceptable; no marker reaches them.)
    const offending = sent
      .filter((query) => query.query.includes(marker))
      .map((query) => `${query.operation}: ${query.query}`);
    assert.deepEqual(offending, [], "input found in SQL text");
    // ... and the input did travel, as parameters, in every such operation.
    const withoutParameter = withInput
      .filter(({ queries }) =>
        !queries.some((query) =>
          parameterText(query.parameters).includes(marker)
        )
      )
      .map(({ name }) => name);
    assert.deepEqual(withoutParameter, []);
    assert.ok(withInput.length > 200, `${withInput.length} operations`);

    // 2. The schema appears in statements only double-quoted, or inside a
    // name derived from it (advisory lock keys), which
    // the checked name (letters, digits, "_") cannot break out of.
    const unquoted = sent
      .map((query) =>
        query.query
          .replaceAll(`"${schema}"`, "")
          .replaceAll(`eventstore_${schema}`, "")
          .replaceAll(`projection ${schema} '`, "")
          .replaceAll(`migrations ${schema}'`, "")
      )
      // A word of its own: not "OrderPlaced.v1" in a migration's comment.
      .filter((text) => new RegExp(`\\b${schema}\\b`).test(text));
    assert.deepEqual(unquoted, []);
    assert.ok(sent.some((query) => query.query.includes(`"${schema}".events`)));

    // 3. Stored verbatim, and nothing dropped or deleted.
    const rows = await admin`
      SELECT stream_id, version, event_type, metadata::text AS metadata
      FROM "Order".events ORDER BY global_position`;
    assert.deepEqual(
      rows.map((row) => ({
        streamId: row.stream_id,
        version: Number(row.version),
        type: row.event_type,
        metadata: JSON.parse(row.metadata),
      })),
      expected.map(({ streamId, version, type, metadata }) => ({
        streamId,
        version,
        type,
        metadata,
      })),
    );
    const snapshots = await admin`
      SELECT stream_id FROM "Order".snapshots ORDER BY stream_id`;
    assert.deepEqual(
      snapshots.map((row) => row.stream_id).sort(),
      [...hostile].sort(),
    );
    const [tables] = await admin`
      SELECT to_regclass('"Order".events')::text AS events,
             to_regclass('"Order".snapshots')::text AS snapshots,
             to_regclass('"Order".projection_checkpoints')::text AS checkpoints,
             to_regclass('"Order".schema_migrations')::text AS migrations,
             to_regclass('public.events')::text AS public_events,
             to_regclass('public.snapshots')::text AS public_snapshots,
             (SELECT count(*)::int FROM "Order".schema_migrations) AS applied,
             (SELECT count(*)::int FROM "Order".projection_checkpoints)
               AS checkpoint_rows`;
    assert.deepEqual({ ...tables }, {
      events: '"Order".events',
      snapshots: '"Order".snapshots',
      checkpoints: '"Order".projection_checkpoints',
      migrations: '"Order".schema_migrations',
      public_events: "events",
      public_snapshots: "snapshots",
      applied: bundled.length,
      checkpoint_rows: 0,
    });
  });

  Deno.test("PostgresEventStore security: hostile schema names are refused before any query", async () => {
    const hostile: unknown[] = [
      "public; DROP TABLE events",
      'public"; DROP TABLE events; --',
      '"public"',
      'a"b',
      "public.events",
      "Public Schema",
      "tenant-a",
      "1abc",
      "x".repeat(64),
      "",
      "ünï",
      "pg_temp;",
      "$1",
      "public\0",
      "e'x'",
      42,
      null,
    ];
    // A server that only counts who connects: none should.
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    let accepted = 0;
    const accepting = (async () => {
      try {
        for await (const connection of listener) {
          accepted++;
          connection.close();
        }
      } catch {
        // The listener was closed.
      }
    })();
    const fake = `postgres://app:secret@127.0.0.1:${listener.addr.port}/app`;
    const sent: string[] = [];
    const sql = postgres(url, {
      max: 1,
      onnotice: () => {},
      debug: (_connection, query) => sent.push(query),
    });
    const refused = (error: unknown) =>
      error instanceof InvalidArgumentError && error.field === "options.schema";
    try {
      for (const schema of hostile) {
        const options = { schema } as PostgresEventStoreOptions;
        await assert.rejects(
          PostgresEventStore.connect(fake, options),
          refused,
        );
        await assert.rejects(PostgresEventStore.connect(url, options), refused);
        await assert.rejects(PostgresEventStore.connect(sql, options), refused);
        assert.throws(() => new PostgresEventStore(sql, options), refused);
        // runMigrations takes null for its default schema, like undefined.
        if (schema !== null) {
          await assert.rejects(
            runMigrations(sql, { schema: schema as string }),
            refused,
          );
        }
      }
    } finally {
      listener.close();
      await accepting;
      await sql.end();
    }
    assert.equal(accepted, 0);
    assert.deepEqual(sent, []);
    const [row] = await admin`
      SELECT to_regclass('public.events')::text AS events,
             to_regclass('public.snapshots')::text AS snapshots`;
    assert.deepEqual({ ...row }, { events: "events", snapshots: "snapshots" });
  });

  Deno.test("PostgresEventStore security: a password reaches no error, log record, span or inspected value on any failure path", async () => {
    const server = new URL(url);
    // The test server trusts local connections, so any password works; one
    // that checks passwords has its own, which is then the secret.
    const passwords = server.password === ""
      ? [`pw-${crypto.randomUUID()}`, `p@ss:w/rd?#%-${crypto.randomUUID()}`]
      : [decodeURIComponent(server.password)];
    for (const password of passwords) {
      await checkNoLeak(password);
    }
  });

  /** Runs every failure path with `password` in the URL; greps all output. */
  async function checkNoLeak(password: string): Promise<void> {
    const server = new URL(url);
    const withPassword = (changes: { port?: string; database?: string } = {}) =>
      `${server.protocol}//${server.username}:${
        encodeURIComponent(password)
      }@${server.hostname}:${changes.port ?? server.port}${
        changes.database === undefined
          ? server.pathname
          : `/${changes.database}`
      }${server.search}`;
    const firstSpan = spans.length;
    const logs: LogRecord[] = [];
    const logger = (record: LogRecord) => logs.push(record);
    const errors: { path: string; error: unknown }[] = [];
    const shown: { where: string; text: string }[] = [];
    const stores: PostgresEventStore[] = [];

    const open = async (
      path: string,
      options: PostgresEventStoreOptions = {},
      target = withPassword(),
    ): Promise<PostgresEventStore> => {
      const all = { logger, max: 2, ...options };
      shown.push({ where: `${path}: options`, text: Deno.inspect(all) });
      const store = await PostgresEventStore.connect(target, all);
      stores.push(store);
      return store;
    };
    const fails = async (
      path: string,
      attempt: () => Promise<unknown>,
      kind: abstract new (...args: never[]) => Error,
    ) => {
      const error = await attempt().then(() => undefined, (error) => error);
      assert.ok(error instanceof kind, `${path}: ${String(error)}`);
      errors.push({ path, error });
    };
    const streamId = () => `secret-${crypto.randomUUID()}`;
    const event = { type: "Happened", data: { n: 1 } };
    /** Holds public.events locked while `body` runs. */
    const whileLocked = (body: () => Promise<void>) =>
      admin.begin(async (transaction) => {
        await transaction`LOCK TABLE public.events IN ACCESS EXCLUSIVE MODE`;
        await body();
      });
    const waitingOnLock = async (applicationName: string) => {
      for (let waited = 0; waited < 300; waited++) {
        const [row] = await admin`
          SELECT count(*)::int AS waiting FROM pg_stat_activity
          WHERE application_name = ${applicationName}
            AND wait_event_type = 'Lock'`;
        if (row.waiting > 0) return;
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      assert.fail(`${applicationName} never waited on the lock`);
    };

    // Connection refused: nothing listens on port 1.
    await fails(
      "connection refused",
      () => open("refused", { connectTimeout: 5 }, withPassword({ port: "1" })),
      StoreUnavailableError,
    );
    // No such database: 3D000.
    await fails(
      "unknown database",
      () =>
        open("unknown database", {}, withPassword({ database: "no_such_db" })),
      StoreUnavailableError,
    );
    // A URL postgres.js cannot parse, with the password typed raw.
    await fails(
      "malformed URL",
      () =>
        open(
          "malformed URL",
          {},
          `postgres://${server.username}:${password}@${server.hostname}:notaport/db`,
        ),
      InvalidArgumentError,
    );
    // Bad options, refused before connecting.
    await fails(
      "bad option",
      () => open("bad option", { max: 0 }),
      InvalidArgumentError,
    );

    const store = await open("main");
    shown.push({ where: "String(store)", text: String(store) });
    shown.push({ where: "inspect(store)", text: Deno.inspect(store) });

    // Bad arguments.
    const stream = streamId();
    await store.appendEvents(stream, [event]);
    for (
      const [path, attempt] of [
        ["empty stream id", () => store.appendEvents("", [event])],
        ["no events", () => store.appendEvents(stream, [])],
        [
          "bad expectedVersion",
          () => store.appendEvents(stream, [event], { expectedVersion: -1 }),
        ],
        ["metadata not JSON", () =>
          store.appendEvents(stream, [{
            ...event,
            metadata: { f: () => password } as never,
          }])],
        ["bad maxCount", () => store.loadEvents(stream, { maxCount: 0 })],
        ["category with '-'", () => store.readAll({ category: "a-b" })],
        [
          "snapshot ahead of its stream",
          () => store.saveSnapshot(stream, 9, { password: "no" }),
        ],
        ["empty projection name", () => store.projectionPosition("")],
      ] as const
    ) {
      await fails(path, attempt, InvalidArgumentError);
    }
    // A concurrency conflict, and a duplicate event.
    await fails(
      "concurrency conflict",
      () => store.appendEvents(stream, [event], { expectedVersion: 0 }),
      ConcurrencyConflictError,
    );
    const [a, b, c] = ["a", "b", "c"].map((type) => ({
      id: crypto.randomUUID(),
      type,
      data: type,
    }));
    const duplicated = streamId();
    await store.appendEvents(duplicated, [a, b], {
      expectedVersion: "no_stream",
    });
    await fails(
      "duplicate event",
      () =>
        store.appendEvents(duplicated, [a, c], {
          expectedVersion: "no_stream",
        }),
      DuplicateEventError,
    );
    // A migration of the application's own that fails.
    await fails(
      "failed migration",
      () =>
        store.migrate({
          migrations: [{
            name: "999_broken.sql",
            sql: "SELECT * FROM no_such_table",
          }],
        }),
      MigrationError,
    );

    // Tables that were never created.
    const unmigrated = await open("never migrated", {
      schema: `never_migrated_${crypto.randomUUID().slice(0, 8)}`,
    });
    for (
      const [path, attempt] of [
        ["append", () => unmigrated.appendEvents(streamId(), [event])],
        ["load", () => unmigrated.loadEvents(streamId())],
        ["readAll", () => unmigrated.readAll()],
        ["streamVersion", () => unmigrated.streamVersion(streamId())],
        ["loadSnapshot", () => unmigrated.loadSnapshot(streamId())],
        ["projectionPosition", () => unmigrated.projectionPosition("p")],
        ["resetProjection", () => unmigrated.resetProjection("p")],
      ] as const
    ) {
      await fails(`never migrated: ${path}`, attempt, MigrationError);
    }

    // A schema that exists, holding none of the store's objects: a server
    // error of another kind (the missing function of migration 005).
    const bare = `bare_${crypto.randomUUID().slice(0, 8)}`;
    await admin.unsafe(`CREATE SCHEMA "${bare}"`);
    const bareStore = await open("bare schema", { schema: bare });
    await fails(
      "bare schema: resetProjection",
      () => bareStore.resetProjection("p"),
      EventStoreError,
    );

    // A statement timeout: the append waits on a lock past 200 ms.
    const timing = await open("statement timeout", { statementTimeout: 200 });
    await whileLocked(() =>
      fails(
        "statement timeout",
        () => timing.appendEvents(streamId(), [event]),
        StoreUnavailableError,
      )
    );

    // A backend killed while its append waits on a lock.
    const killedName = `killed-${crypto.randomUUID().slice(0, 8)}`;
    const killed = await open("killed backend", {
      applicationName: killedName,
      max: 1,
    });
    await whileLocked(async () => {
      let settled = false;
      const append = killed.appendEvents(streamId(), [event]);
      append.then(() => settled = true, () => settled = true);
      await waitingOnLock(killedName);
      // The store sends an append again after a lost connection (at most
      // twice): kill every attempt, so that the call fails.
      for (let poll = 0; !settled && poll < 1000; poll++) {
        await admin`
          SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE application_name = ${killedName}`;
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      await fails("killed backend", () => append, StoreUnavailableError);
    });

    // No connection of the pool comes free within acquireTimeout.
    const busyName = `busy-${crypto.randomUUID().slice(0, 8)}`;
    const busy = await open("acquire timeout", {
      applicationName: busyName,
      max: 1,
      acquireTimeout: 200,
    });
    let holding: Promise<unknown> = Promise.resolve();
    await whileLocked(async () => {
      holding = busy.appendEvents(streamId(), [event]);
      await waitingOnLock(busyName);
      await fails(
        "acquire timeout",
        () => busy.appendEvents(streamId(), [event]),
        StoreUnavailableError,
      );
    });
    await holding;

    // Every store closed; then every call is refused.
    for (const opened of stores) {
      await opened.close();
      shown.push({ where: "String(closed store)", text: String(opened) });
      shown.push({
        where: "inspect(closed store)",
        text: Deno.inspect(opened),
      });
    }
    for (
      const [path, attempt] of [
        ["append", () => store.appendEvents(stream, [event])],
        ["load", () => store.loadEvents(stream)],
        ["readAll", () => store.readAll()],
        ["subscribe", () => store.subscribe()[Symbol.asyncIterator]().next()],
        ["runProjection", () => store.runProjection("p", () => {})],
        ["projectionPosition", () => store.projectionPosition("p")],
        ["resetProjection", () => store.resetProjection("p")],
        ["streamVersion", () => store.streamVersion(stream)],
        ["saveSnapshot", () => store.saveSnapshot(stream, 1, {})],
        ["loadSnapshot", () => store.loadSnapshot(stream)],
        ["migrate", () => store.migrate()],
      ] as const
    ) {
      await fails(`closed: ${path}`, attempt, StoreClosedError);
    }

    // Everything the store let out, by where it was found.
    for (const { path, error } of errors) {
      let cause: unknown = error;
      for (let depth = 0; cause !== undefined && depth < 10; depth++) {
        const message = cause instanceof Error ? cause.message : String(cause);
        shown.push({
          where: `${path}: message (depth ${depth})`,
          text: message,
        });
        shown.push({
          where: `${path}: String (depth ${depth})`,
          text: String(cause),
        });
        cause = (cause as { cause?: unknown })?.cause;
      }
      shown.push({
        where: `${path}: inspect`,
        text: Deno.inspect(error, { depth: 20 }),
      });
      shown.push({
        where: `${path}: inspect, hidden properties too`,
        text: Deno.inspect(error, { depth: 20, showHidden: true }),
      });
    }
    for (const [index, log] of logs.entries()) {
      shown.push({
        where: `log record ${index} (${log.message})`,
        text: JSON.stringify(
          log,
          (_, value) => typeof value === "bigint" ? String(value) : value,
        ),
      });
    }
    shown.push({
      where: "log records",
      text: Deno.inspect(logs, { depth: 20 }),
    });
    const recorded = spans.slice(firstSpan);
    for (const [index, span] of recorded.entries()) {
      shown.push({
        where: `span ${index} (${span.name})`,
        text: Deno.inspect({ ...span }, { depth: 20 }),
      });
      shown.push({
        where: `span ${index} status message`,
        text: String(span.status.message),
      });
      for (const exception of span.exceptions) {
        shown.push({
          where: `span ${index} exception`,
          text: `${String(exception)}\n${
            Deno.inspect(exception, { depth: 20 })
          }`,
        });
      }
    }

    // Not vacuous: many errors, of many kinds; log records and failed spans.
    const kinds = new Set(
      errors.map(({ error }) => (error as EventStoreError).code),
    );
    assert.ok(errors.length >= 8, `${errors.length} errors`);
    assert.ok(
      errors.every(({ error }) => error instanceof EventStoreError),
    );
    for (
      const kind of [
        "concurrency_conflict",
        "duplicate_event",
        "invalid_argument",
        "migration",
        "store_closed",
        "unavailable",
      ]
    ) {
      assert.ok(kinds.has(kind as EventStoreError["code"]), kind);
    }
    assert.ok(
      logs.filter((log) => log.message === "Operation failed").length >= 5,
      Deno.inspect(logs),
    );
    assert.ok(logs.some((log) => log.message === "Connected"));
    const failed = recorded.filter((span) => span.status.code === 2);
    assert.ok(failed.length >= 10, `${failed.length} failed spans`);
    assert.ok(failed.every((span) => span.exceptions.length === 1));
    // The password is in use (shown as ***), just never shown.
    assert.ok(shown.some(({ text }) => text.includes(":***@")));

    const forms = new Map<string, string>();
    for (
      const [name, form] of [
        ["raw", password],
        ["percent-encoded", encodeURIComponent(password)],
        ["base64", btoa(password)],
      ]
    ) {
      if (!forms.has(form)) forms.set(form, name);
    }
    const leaks = shown.flatMap(({ where, text }) =>
      [...forms].filter(([form]) => text.includes(form)).map(([form, name]) => {
        const at = text.indexOf(form);
        return `${name} password in ${where}: …${
          text.slice(Math.max(0, at - 150), at + form.length + 50)
        }…`;
      })
    );
    assert.deepEqual(leaks, [], "the password leaked");
  }

  // Registered last, so it runs after every other test of this file.
  Deno.test("PostgresEventStore security: drop the test database", async () => {
    await admin.end();
    await database.drop();
  });
}

/** What a recorded event must read back as. */
function essentials(event: RecordedEvent): Expected {
  return {
    streamId: event.streamId,
    version: event.version,
    type: event.type,
    data: event.data,
    metadata: event.metadata,
  };
}
