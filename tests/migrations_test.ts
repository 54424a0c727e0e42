/**
 * The migration runner and `deno task migrate`, on a real PostgreSQL: in
 * order, once, safely concurrent, refusing a changed file, rolling back a
 * failing one.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import {
  bundledMigrations,
  InvalidArgumentError,
  type Migration,
  MigrationError,
  PostgresEventStore,
  runMigrations,
  StoreUnavailableError,
} from "../mod.ts";
import { BUNDLED_MIGRATIONS } from "../src/migrations.ts";
import { main as migrateCommand } from "../migrate.ts";
import { createTestDatabaseOrFail, type TestDatabase } from "./_database.ts";

Deno.test("migrations: the bundled list names every file of migrations/, in order", async () => {
  const files: string[] = [];
  for await (
    const entry of Deno.readDir(new URL("../migrations/", import.meta.url))
  ) {
    if (entry.name.endsWith(".sql")) files.push(entry.name);
  }
  assert.deepEqual([...BUNDLED_MIGRATIONS], files.sort());
  const migrations = await bundledMigrations();
  assert.deepEqual(migrations.map((migration) => migration.name), files);
  assert.ok(migrations.every((migration) => migration.sql.length > 0));
});

const database = await createTestDatabaseOrFail("migrations");
if (database !== undefined) await registerTests(database);

async function registerTests(database: TestDatabase): Promise<void> {
  const sql = postgres(database.url, { max: 4, onnotice: () => {} });
  // Open the connections now: postgres.js starts a lifetime timer per
  // connection, which the test that happened to open it would report leaked.
  await Promise.all(Array.from({ length: 4 }, () => sql`SELECT 1`));
  let schemaCount = 0;
  /** A schema no other test of this file uses. */
  const freshSchema = () =>
    `migrations_${++schemaCount}_${Date.now() % 100_000}`;
  const tableExists = async (qualified: string) =>
    (await sql`SELECT to_regclass(${qualified}) IS NOT NULL AS found`)[0].found;

  Deno.test("migrations: the first run applies every file, the second is a no-op", async () => {
    const schema = freshSchema();
    const first = await runMigrations(sql, { schema });
    assert.deepEqual(first, {
      applied: [...BUNDLED_MIGRATIONS],
      alreadyApplied: [],
    });
    const recorded = await sql.unsafe(
      `SELECT name, checksum, applied_at FROM "${schema}".schema_migrations ORDER BY name`,
    );
    assert.deepEqual(recorded.map((row) => row.name), [...BUNDLED_MIGRATIONS]);
    for (const row of recorded) assert.match(row.checksum, /^[0-9a-f]{64}$/);

    const second = await runMigrations(sql, { schema });
    assert.deepEqual(second, {
      applied: [],
      alreadyApplied: [...BUNDLED_MIGRATIONS],
    });
    const again = await sql.unsafe(
      `SELECT name, applied_at FROM "${schema}".schema_migrations ORDER BY name`,
    );
    assert.deepEqual(
      again.map((row) => row.applied_at.getTime()),
      recorded.map((row) => row.applied_at.getTime()),
    );
  });

  Deno.test("migrations: every table and column says why it is so (COMMENT ON)", async () => {
    const schema = freshSchema();
    await runMigrations(sql, { schema });
    const uncommented = await sql`
      SELECT c.relname AS table_name, a.attname AS column_name
      FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
      WHERE n.nspname = ${schema} AND c.relname IN ('events', 'snapshots')
        AND col_description(c.oid, a.attnum) IS NULL`;
    assert.deepEqual([...uncommented], []);
    const tables = await sql`
      SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = ${schema} AND c.relname IN ('events', 'snapshots')
        AND obj_description(c.oid, 'pg_class') IS NOT NULL`;
    assert.equal(tables.length, 2);
  });

  Deno.test("migrations: two concurrent runs both succeed and apply each file once", async () => {
    const schema = freshSchema();
    // Separate pools: the runs really are two sessions racing.
    const other = postgres(database.url, { max: 1, onnotice: () => {} });
    try {
      const [first, second] = await Promise.all([
        runMigrations(sql, { schema }),
        runMigrations(other, { schema }),
      ]);
      assert.deepEqual(
        [...first.applied, ...second.applied].sort(),
        [...BUNDLED_MIGRATIONS],
      );
      // Each file was applied by exactly one of them (which one is a race),
      // and each run accounts for every file: applied by it, or already.
      assert.equal(
        new Set([...first.applied, ...second.applied]).size,
        first.applied.length + second.applied.length,
        JSON.stringify([first, second]),
      );
      for (const run of [first, second]) {
        assert.deepEqual(
          [...run.applied, ...run.alreadyApplied].sort(),
          [...BUNDLED_MIGRATIONS],
          JSON.stringify(run),
        );
      }
      const [row] = await sql.unsafe(
        `SELECT count(*)::int AS n FROM "${schema}".schema_migrations`,
      );
      assert.equal(row.n, BUNDLED_MIGRATIONS.length);
    } finally {
      await other.end();
    }
  });

  Deno.test("migrations: a changed applied file is refused and nothing after it runs", async () => {
    const schema = freshSchema();
    const original: Migration[] = [
      // A quote in the name, and a last line that is a comment.
      { name: "001_a's.sql", sql: "CREATE TABLE a (id int) -- no newline" },
    ];
    await runMigrations(sql, { schema, migrations: original });
    const changed: Migration[] = [
      { name: "001_a's.sql", sql: "CREATE TABLE a (id bigint);" },
      { name: "002_b.sql", sql: "CREATE TABLE b (id int);" },
    ];
    await assert.rejects(
      runMigrations(sql, { schema, migrations: changed }),
      (error) => {
        assert.ok(error instanceof MigrationError, String(error));
        assert.equal(error.migration, "001_a's.sql");
        assert.match(error.message, /was changed after it was applied/);
        return true;
      },
    );
    assert.equal(await tableExists(`${schema}.b`), false);
    // Line endings alone are not a change.
    const crlf = [{ name: "001_a.sql", sql: "CREATE TABLE a (id int);" }];
    const withCrlf = [{ ...crlf[0], sql: crlf[0].sql + "\r\n" }];
    await runMigrations(sql, {
      schema: `${schema}_eol`,
      migrations: [{ ...crlf[0], sql: crlf[0].sql + "\n" }],
    });
    await runMigrations(sql, { schema: `${schema}_eol`, migrations: withCrlf });
  });

  Deno.test("migrations: a failing file is rolled back whole; the ones before it stay", async () => {
    const schema = freshSchema();
    const migrations: Migration[] = [
      { name: "001_ok.sql", sql: "CREATE TABLE ok (id int);" },
      {
        name: "002_broken.sql",
        sql: "CREATE TABLE half (id int); SELECT no_such_function();",
      },
      { name: "003_later.sql", sql: "CREATE TABLE later (id int);" },
    ];
    await assert.rejects(
      runMigrations(sql, { schema, migrations }),
      (error) => {
        assert.ok(error instanceof MigrationError, String(error));
        assert.equal(error.migration, "002_broken.sql");
        assert.match(error.message, /failed and was rolled back/);
        return true;
      },
    );
    assert.equal(await tableExists(`${schema}.ok`), true);
    assert.equal(await tableExists(`${schema}.half`), false);
    assert.equal(await tableExists(`${schema}.later`), false);
    const names = await sql.unsafe(
      `SELECT name FROM "${schema}".schema_migrations`,
    );
    assert.deepEqual(names.map((row) => row.name), ["001_ok.sql"]);
  });

  Deno.test("migrations: a connection lost mid-migration is a typed error; the next run applies it", async () => {
    const schema = freshSchema();
    const applicationName = `migrating-${schemaCount}`;
    // Slow only on the connection that the test kills.
    const migrations: Migration[] = [
      { name: "001_fast.sql", sql: "CREATE TABLE fast (id int);" },
      {
        name: "002_slow.sql",
        sql: `CREATE TABLE slow (id int);
              SELECT pg_sleep(CASE WHEN current_setting('application_name') LIKE 'migrating-%'
                                   THEN 30 ELSE 0 END);`,
      },
    ];
    const doomed = postgres(database.url, {
      max: 1,
      onnotice: () => {},
      connection: { application_name: applicationName },
    });
    try {
      const run = runMigrations(doomed, { schema, migrations }).then(
        () => undefined,
        (error) => error,
      );
      for (let waited = 0; waited < 500; waited++) {
        const [row] = await sql`
          SELECT count(*)::int AS sleeping FROM pg_stat_activity
          WHERE application_name = ${applicationName} AND query LIKE '%pg_sleep%'`;
        if (row.sleeping > 0) break;
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      await sql`SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                WHERE application_name = ${applicationName}`;
      const error = await run;
      assert.ok(error instanceof StoreUnavailableError, String(error));
    } finally {
      await doomed.end({ timeout: 1 });
    }
    assert.equal(await tableExists(`${schema}.slow`), false);
    const again = await runMigrations(sql, { schema, migrations });
    assert.deepEqual(again, {
      applied: ["002_slow.sql"],
      alreadyApplied: ["001_fast.sql"],
    });
  });

  Deno.test("migrations: the store's statementTimeout does not cut a migration short", async () => {
    const schema = freshSchema();
    await using store = await PostgresEventStore.connect(database.url, {
      schema,
      max: 1,
      statementTimeout: 100,
    });
    const result = await store.migrate({
      migrations: [{
        name: "001_slow.sql",
        sql: "SELECT pg_sleep(0.3); CREATE TABLE t (id int);",
      }],
    });
    assert.deepEqual(result.applied, ["001_slow.sql"]);
  });

  Deno.test("migrations: a role without CREATE privileges can run an up-to-date migrate()", async () => {
    const schema = freshSchema();
    await runMigrations(sql, { schema });
    const role = `app_${schemaCount}_${Date.now() % 100_000}`;
    await sql.unsafe(`CREATE ROLE ${role} LOGIN`);
    await sql.unsafe(`GRANT USAGE ON SCHEMA "${schema}" TO ${role}`);
    await sql.unsafe(
      `GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA "${schema}" TO ${role}`,
    );
    const url = new URL(database.url);
    url.username = role;
    const restricted = postgres(url.href, { max: 1, onnotice: () => {} });
    try {
      // It really may not create anything.
      await assert.rejects(
        restricted.unsafe(`CREATE TABLE "${schema}".forbidden (id int)`),
      );
      const result = await runMigrations(restricted, { schema });
      assert.deepEqual(result, {
        applied: [],
        alreadyApplied: [...BUNDLED_MIGRATIONS],
      });
    } finally {
      await restricted.end();
      await sql.unsafe(`DROP OWNED BY ${role}`);
      await sql.unsafe(`DROP ROLE ${role}`);
    }
  });

  Deno.test("migrations: a logger that throws changes nothing", async () => {
    const schema = freshSchema();
    const result = await runMigrations(sql, {
      schema,
      logger: () => {
        throw new Error("a broken logger");
      },
    });
    assert.deepEqual(result.applied, [...BUNDLED_MIGRATIONS]);
  });

  Deno.test("migrations: concurrent runs are safe under a REPEATABLE READ default and a lock_timeout", async () => {
    const schema = freshSchema();
    const strict = {
      default_transaction_isolation: "repeatable read" as const,
      lock_timeout: 100,
    };
    const migrations: Migration[] = [
      {
        name: "001_t.sql",
        sql: "CREATE TABLE t (id int); SELECT pg_sleep(0.3);",
      },
      { name: "002_u.sql", sql: "CREATE TABLE u (id int);" },
    ];
    const pools = Array.from(
      { length: 3 },
      () =>
        postgres(database.url, {
          max: 1,
          onnotice: () => {},
          connection: strict,
        }),
    );
    try {
      const results = await Promise.all(
        pools.map((pool) => runMigrations(pool, { schema, migrations })),
      );
      assert.deepEqual(
        results.flatMap((result) => result.applied).sort(),
        ["001_t.sql", "002_u.sql"],
      );
    } finally {
      await Promise.all(pools.map((pool) => pool.end()));
    }
  });

  Deno.test("migrations: a pending file that sorts before an applied one is refused", async () => {
    const schema = freshSchema();
    const first: Migration = {
      name: "001_a.sql",
      sql: "CREATE TABLE a (id int);",
    };
    const third: Migration = {
      name: "003_c.sql",
      sql: "CREATE TABLE c (id int);",
    };
    const late: Migration = {
      name: "002_b.sql",
      sql: "CREATE TABLE b (id int);",
    };
    await runMigrations(sql, { schema, migrations: [first, third] });
    await assert.rejects(
      runMigrations(sql, { schema, migrations: [first, late, third] }),
      (error) => {
        assert.ok(error instanceof MigrationError, String(error));
        assert.equal(error.migration, "002_b.sql");
        assert.match(
          error.message,
          /sorts after it, is; give the new file a name/,
        );
        return true;
      },
    );
    assert.equal(await tableExists(`${schema}.b`), false);
  });

  Deno.test("migrations: names with quotes, backslashes and dollar signs are stored as they are", async () => {
    const schema = freshSchema();
    const names = [
      "001_it's.sql",
      "002_back\\slash.sql",
      "003_$lit$.sql",
      "004_$check$ END $$.sql",
    ];
    const migrations = names.map((name, index) => ({
      name,
      sql: `CREATE TABLE t${index} (id int);`,
    }));
    const result = await runMigrations(sql, { schema, migrations });
    assert.deepEqual(result.applied, names);
    const rows = await sql.unsafe(
      `SELECT name FROM "${schema}".schema_migrations ORDER BY name`,
    );
    assert.deepEqual(rows.map((row) => row.name), names);
  });

  Deno.test("migrations: malformed lists and schema names are refused before any SQL", async () => {
    for (
      const [field, migrations] of [
        ["options.migrations[0].name", [{ name: "", sql: "SELECT 1" }]],
        ["options.migrations[0].sql", [{ name: "001", sql: " " }]],
        ["options.migrations[1].name", [{ name: "001", sql: "SELECT 1" }, {
          name: "001",
          sql: "SELECT 2",
        }]],
      ] as [string, Migration[]][]
    ) {
      await assert.rejects(
        runMigrations(sql, { schema: freshSchema(), migrations }),
        (error) =>
          error instanceof InvalidArgumentError && error.field === field,
      );
    }
    await assert.rejects(
      runMigrations(sql, { schema: 'x"; DROP SCHEMA public; --' }),
      (error) =>
        error instanceof InvalidArgumentError &&
        error.field === "options.schema",
    );
  });

  Deno.test("migrations: the store's migrate() runs the bundled files in its schema", async () => {
    const schema = freshSchema();
    await using store = await PostgresEventStore.connect(database.url, {
      schema,
      max: 1,
    });
    assert.deepEqual((await store.migrate()).applied, [...BUNDLED_MIGRATIONS]);
    assert.deepEqual((await store.migrate()).applied, []);
    assert.equal(await tableExists(`${schema}.events`), true);
    assert.equal(await tableExists(`${schema}.snapshots`), true);
  });

  Deno.test("migrations: deno task migrate applies them to DATABASE_URL", async () => {
    const schema = freshSchema();
    const lines: string[] = [];
    const env = (name: string) =>
      ({ DATABASE_URL: database.url } as Record<string, string>)[name];
    const print = (line: string) => lines.push(line);
    assert.equal(
      await migrateCommand({ args: ["--schema", schema], env, print }),
      0,
    );
    assert.match(lines.join("\n"), /applied 001_create_events_table\.sql/);
    assert.equal(await tableExists(`${schema}.events`), true);
    lines.length = 0;
    assert.equal(
      await migrateCommand({ args: [`--schema=${schema}`], env, print }),
      0,
    );
    assert.match(
      lines.join("\n"),
      new RegExp(`Up to date: ${BUNDLED_MIGRATIONS.length} migration\\(s\\)`),
    );
    assert.equal(
      await migrateCommand({ args: [], env: () => undefined, print }),
      2,
    );
    assert.equal(
      await migrateCommand({ args: ["--bogus"], env, print }),
      2,
    );
  });

  Deno.test("migrations: the task itself runs as a new user would run it", async () => {
    const schema = freshSchema();
    const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
      args: ["task", "migrate", "--schema", schema],
      cwd: new URL("..", import.meta.url),
      env: { DATABASE_URL: database.url, NO_COLOR: "1" },
    }).output();
    const output = new TextDecoder().decode(stdout) +
      new TextDecoder().decode(stderr);
    assert.equal(code, 0, output);
    assert.match(
      output,
      new RegExp(`Applied ${BUNDLED_MIGRATIONS.length} migration\\(s\\)`),
    );
    assert.equal(await tableExists(`${schema}.events`), true);
  });

  Deno.test("migrations: drop the test database", async () => {
    await sql.end();
    await database.drop();
  });
}
