/**
 * The migration runner: applies the SQL files of `migrations/` (or a list of
 * the application's own) to a PostgreSQL schema, in order, each in its own
 * transaction, and records each with a checksum so that an applied file that
 * changed afterwards is refused instead of silently re-run.
 *
 * @module
 */

import { InvalidArgumentError, MigrationError } from "./errors.ts";
import { type Logger, logSafely, silentLogger } from "./logger.ts";
import {
  asPostgres,
  isConnectionError,
  literal,
  type PostgresSql,
  quoteSchema,
  translateError,
} from "./postgres/driver.ts";

/**
 * A postgres.js `sql` instance (`postgres(url, options)` from `npm:postgres`),
 * whatever custom types it was given. Only its shape is named here, so that
 * this module's documentation does not have to carry postgres.js's.
 */
export interface Sql {
  /** The instance's parsed options (host, port, user, database, …). */
  readonly options: object;
  /** Reserves one connection. */
  reserve(): Promise<unknown>;
  /** Runs a query given as text. */
  unsafe(...args: never[]): unknown;
  /** Closes every connection. */
  end(options?: { timeout?: number | null }): Promise<void>;
}

/** One migration: a name that sorts in the order to apply, and its SQL. */
export interface Migration {
  /** E.g. `001_create_events_table.sql`; migrations apply in name order. */
  name: string;
  /** One or more statements, with unqualified names (`search_path` is set to the schema). */
  sql: string;
}

/** Options of {@linkcode runMigrations}. */
export interface MigrateOptions {
  /** The schema that holds the tables; created when missing. `public` by default. */
  schema?: string;
  /** The migrations to apply; this module's own ({@linkcode bundledMigrations}) by default. */
  migrations?: readonly Migration[];
  /** Told about each applied migration; silent by default. */
  logger?: Logger;
}

/** What {@linkcode runMigrations} did. */
export interface MigrationResult {
  /** The migrations this run applied, in order. */
  applied: string[];
  /** The migrations that were already applied before this run. */
  alreadyApplied: string[];
}

/**
 * The files in `migrations/`, in the order they apply. A test checks that
 * this list and the folder agree, so a new file cannot be forgotten.
 */
export const BUNDLED_MIGRATIONS: readonly string[] = [
  "001_create_events_table.sql",
  "002_create_snapshots_table.sql",
  "003_global_position_from_transaction.sql",
  "004_create_projection_checkpoints_table.sql",
  "005_create_reset_projection_function.sql",
  "006_index_event_ids_per_stream.sql",
  "007_position_offset.sql",
  "008_position_limit.sql",
];

/**
 * Reads this module's own migrations, from the `migrations/` folder next to
 * `src/` (a local file or the published package alike).
 *
 * @returns The migrations, in the order they apply.
 * @throws {MigrationError} A file cannot be read (run with `--allow-read`
 *   for a local checkout, or `--allow-net` for the published package).
 *
 * @example List them
 * ```ts
 * import { bundledMigrations } from "@deno-eventstore/core";
 * import assert from "node:assert/strict";
 *
 * const migrations = await bundledMigrations();
 * assert.equal(migrations[0].name, "001_create_events_table.sql");
 * assert.match(migrations[0].sql, /CREATE TABLE events/);
 * ```
 */
export async function bundledMigrations(): Promise<Migration[]> {
  return await Promise.all(BUNDLED_MIGRATIONS.map(async (name) => {
    const url = new URL(`../migrations/${name}`, import.meta.url);
    try {
      const response = await fetch(url);
      if (!response.ok) {
        await response.body?.cancel();
        throw new Error(`HTTP ${response.status}`);
      }
      return { name, sql: await response.text() };
    } catch (cause) {
      const problem = cause instanceof Error ? cause.message : String(cause);
      throw new MigrationError(
        `Cannot read migration ${name}: ${problem}`,
        { cause, migration: name },
      );
    }
  }));
}

/**
 * Applies the pending migrations to a schema, creating the schema when it is
 * missing. Each migration runs in its own transaction, with `search_path` set
 * to the schema and no statement timeout, and is recorded in
 * `<schema>.schema_migrations` with the SHA-256 of its text (line endings
 * normalised). Each transaction first takes a transaction-scoped advisory
 * lock per schema, so concurrent runs from any number of processes apply
 * every migration exactly once, in order; a lock held by a connection that
 * dies is released with it. When nothing is pending it runs no DDL at all,
 * so a role without CREATE privileges can call it at every start-up.
 * A file runs inside a transaction, so it must not contain transaction
 * control (`BEGIN`, `COMMIT`, `ROLLBACK`) nor statements that refuse to run in
 * one (`CREATE INDEX CONCURRENTLY`, `VACUUM`, `ALTER TYPE … ADD VALUE` before
 * PostgreSQL 12). A pending file that sorts before an applied one is refused.
 *
 * @param sql A postgres.js instance.
 * @param options The schema, the migrations and a logger.
 * @returns Which migrations this run applied and which were already applied.
 * @throws {MigrationError} An applied migration's text changed, a pending
 *   one sorts before an applied one, or a migration failed (it was rolled
 *   back; earlier ones stay applied).
 * @throws {InvalidArgumentError} The schema name or a migration is malformed.
 * @throws {StoreUnavailableError} The database cannot be reached, or the
 *   connection was lost (a migration in flight was rolled back or, if the
 *   loss came during its commit, possibly applied: run again to find out).
 *
 * @example Migrate at start-up
 * ```ts ignore
 * import postgres from "postgres";
 * import { runMigrations } from "@deno-eventstore/core";
 *
 * const sql = postgres(Deno.env.get("DATABASE_URL")!);
 * const { applied } = await runMigrations(sql, { schema: "orders" });
 * console.log(`applied ${applied.length} migration(s)`);
 * await sql.end();
 * ```
 */
export async function runMigrations(
  sql: Sql,
  options: MigrateOptions = {},
): Promise<MigrationResult> {
  // Only an absent schema means the default: null is refused, as by the store.
  const schema = options.schema === undefined ? "public" : options.schema;
  const quoted = quoteSchema(schema);
  const logger = options.logger ?? silentLogger;
  const migrations = checkMigrations(
    options.migrations ?? await bundledMigrations(),
  );
  const checksums = await Promise.all(
    migrations.map((migration) => checksum(migration.sql)),
  );
  const postgresSql = asPostgres(sql);
  const result: MigrationResult = { applied: [], alreadyApplied: [] };
  let recorded = new Map<string, string>();
  try {
    for (;;) {
      const state = await readState(postgresSql, quoted);
      recorded = state.recorded;
      checkUnchanged(schema, migrations, checksums, recorded);
      const index = migrations.findIndex((migration) =>
        !recorded.has(migration.name)
      );
      if (index === -1) break;
      checkInOrder(schema, migrations[index], recorded);
      const migration = migrations[index];
      const started = performance.now();
      const outcome = await applyOne(postgresSql, {
        schema,
        quoted,
        state,
        migration,
        checksum: checksums[index],
      });
      // Another process applied it first: read again and go on from there.
      if (outcome === "applied elsewhere") continue;
      result.applied.push(migration.name);
      logSafely(logger, "info", "Applied migration", {
        schema,
        migration: migration.name,
        durationMs: Math.round(performance.now() - started),
      });
    }
    await realignPositions(postgresSql, quoted, schema, logger);
  } catch (error) {
    throw translateError(error, {
      operation: `migrate schema "${schema}"`,
      server: "the database",
      schema,
    });
  }
  // Whatever is recorded now and this run did not apply: applied before it,
  // or by another process while it ran.
  result.alreadyApplied = migrations
    .filter((migration) =>
      recorded.has(migration.name) && !result.applied.includes(migration.name)
    )
    .map((migration) => migration.name);
  const known = new Set(migrations.map((migration) => migration.name));
  for (const name of recorded.keys()) {
    if (!known.has(name)) {
      logSafely(
        logger,
        "warn",
        "Applied migration is unknown to this version",
        {
          schema,
          migration: name,
        },
      );
    }
  }
  if (result.applied.length === 0) {
    logSafely(logger, "debug", "Migrations are up to date", {
      schema,
      count: result.alreadyApplied.length,
    });
  }
  return result;
}

/** What the schema holds now: read without locks, privileges or DDL. */
interface SchemaState {
  schemaExists: boolean;
  tableExists: boolean;
  /** Applied migrations and their checksums. */
  recorded: Map<string, string>;
}

async function readState(
  sql: PostgresSql,
  quoted: string,
): Promise<SchemaState> {
  // Unnamed statements (prepare: false) throughout: migrations are rare, and
  // a named statement is not safe behind a transaction pooler.
  const [found] = await sql.unsafe(
    `SELECT to_regnamespace($1) IS NOT NULL AS schema,
            to_regclass($2) IS NOT NULL AS table`,
    [quoted, `${quoted}.schema_migrations`],
    { prepare: false },
  );
  const rows = found.table
    ? await sql.unsafe<{ name: string; checksum: string }[]>(
      `SELECT name, checksum FROM ${quoted}.schema_migrations`,
    )
    : [];
  return {
    schemaExists: found.schema,
    tableExists: found.table,
    recorded: new Map(rows.map((row) => [row.name, row.checksum])),
  };
}

/** Refuses to go on when an applied file's text changed. */
function checkUnchanged(
  schema: string,
  migrations: Migration[],
  checksums: string[],
  recorded: Map<string, string>,
): void {
  migrations.forEach((migration, index) => {
    const stored = recorded.get(migration.name);
    if (stored !== undefined && stored !== checksums[index]) {
      throw new MigrationError(
        `Cannot migrate schema "${schema}": migration ${migration.name} was changed after it was applied (checksum ${
          checksums[index].slice(0, 12)
        }…, applied ${
          stored.slice(0, 12)
        }…); restore the file and put the change in a new migration`,
        { migration: migration.name },
      );
    }
  });
}

/**
 * Refuses a pending migration that sorts before one already applied: it was
 * added late (a merge, a renamed file), and applying it now would run it
 * after files that were written expecting it to be there first.
 */
function checkInOrder(
  schema: string,
  pending: Migration,
  recorded: Map<string, string>,
): void {
  const later = [...recorded.keys()].filter((name) => name > pending.name)
    .sort();
  if (later.length > 0) {
    throw new MigrationError(
      `Cannot migrate schema "${schema}": migration ${pending.name} is not applied, but ${
        later[0]
      }, which sorts after it, is; give the new file a name that sorts after ${
        later.at(-1)
      }`,
      { migration: pending.name },
    );
  }
}

/**
 * After a restore into another cluster, whose transaction ids start below
 * the stored positions: raises the offset that positions add to transaction
 * ids (`realign_positions()` of migration 007), so that new positions come
 * after every stored one and readers see every stored one. On a healthy
 * database the function only reads `max(global_position)`: no lock, no DDL.
 * One simple-protocol query, READ COMMITTED whatever the database's default
 * (its check under the lock must see what another process committed).
 */
async function realignPositions(
  sql: PostgresSql,
  quoted: string,
  schema: string,
  logger: Logger,
): Promise<void> {
  const [found] = await sql.unsafe(
    "SELECT to_regprocedure($1) IS NOT NULL AS function",
    [`${quoted}.realign_positions(bigint)`],
    { prepare: false },
  );
  if (!found.function) return; // migration 007 is not among these
  const results = await sql.unsafe(
    [
      "SET LOCAL transaction_isolation = 'read committed'",
      "SET LOCAL statement_timeout = 0",
      "SET LOCAL lock_timeout = 0",
      `SELECT ${quoted}.realign_positions()::text AS "offset"`,
    ].join(";\n"),
  ) as unknown as { offset: string | null }[][];
  const offset = results.at(-1)?.[0]?.offset ?? null;
  if (offset !== null) {
    logSafely(logger, "warn", "Realigned global positions after a restore", {
      schema,
      offset,
    });
  }
}

/** Raised inside a batch whose migration another process applied first. */
const APPLIED_ELSEWHERE = "deno-eventstore: migration already applied";

/**
 * Applies one migration as a single simple-protocol query: several
 * statements that PostgreSQL runs as one implicit transaction. A single
 * query, rather than `BEGIN … COMMIT` over several, because postgres.js
 * crashes the process (an uncaught TypeError) when it rolls back a
 * transaction whose connection was killed; one query just fails.
 */
async function applyOne(
  sql: PostgresSql,
  step: {
    schema: string;
    quoted: string;
    state: SchemaState;
    migration: Migration;
    checksum: string;
  },
): Promise<"applied" | "applied elsewhere"> {
  const { schema, quoted, state, migration, checksum } = step;
  const name = literal(migration.name);
  const batch = [
    // First, before anything takes a snapshot: under REPEATABLE READ or
    // SERIALIZABLE (a database default, say) the check below would not see
    // what another process committed while this one waited for the lock.
    "SET LOCAL transaction_isolation = 'read committed'",
    // The store's statementTimeout is for appends, and a lock_timeout for
    // the application's queries: neither is for waiting on another
    // migrator or for DDL on a large table.
    "SET LOCAL statement_timeout = 0",
    "SET LOCAL lock_timeout = 0",
    `SELECT pg_advisory_xact_lock(hashtextextended(${
      literal(`deno-eventstore migrations ${schema}`)
    }, 0))`,
    // Only with something to do, and only what is missing: DDL needs
    // privileges that an up-to-date schema never asks for.
    ...(state.schemaExists ? [] : [`CREATE SCHEMA IF NOT EXISTS ${quoted}`]),
    ...(state.tableExists ? [] : [
      `CREATE TABLE IF NOT EXISTS ${quoted}.schema_migrations (
         name text PRIMARY KEY,
         checksum text NOT NULL,
         applied_at timestamptz NOT NULL DEFAULT now()
       )`,
    ]),
    // Under the lock: another process may have applied it meanwhile.
    doBlock(`BEGIN
       IF EXISTS (SELECT 1 FROM ${quoted}.schema_migrations WHERE name = ${name}) THEN
         RAISE EXCEPTION ${literal(APPLIED_ELSEWHERE)};
       END IF;
     END`),
    `SET LOCAL search_path TO ${quoted}`,
    migration.sql,
    `INSERT INTO ${quoted}.schema_migrations (name, checksum)
     VALUES (${name}, ${literal(checksum)})`,
    // The newline before each semicolon ends a `--` comment that a file's
    // last line may be.
  ].join("\n;\n");
  try {
    await sql.unsafe(batch);
    return "applied";
  } catch (cause) {
    if (isConnectionError(cause)) throw cause; // reported as unavailable
    const problem = cause instanceof Error ? cause.message : String(cause);
    if (problem === APPLIED_ELSEWHERE) return "applied elsewhere";
    throw new MigrationError(
      `Cannot migrate schema "${schema}": migration ${migration.name} failed and was rolled back: ${problem}`,
      { cause, migration: migration.name },
    );
  }
}

/** A `DO` statement, dollar-quoted with a tag its body does not contain. */
function doBlock(body: string): string {
  let tag = "check";
  while (body.includes(`$${tag}$`)) tag += "_";
  return `DO $${tag}$ ${body} $${tag}$`;
}

/** Checks the list and sorts it by name, the order in which it applies. */
function checkMigrations(migrations: readonly Migration[]): Migration[] {
  if (!Array.isArray(migrations)) {
    throw new InvalidArgumentError(
      "options.migrations",
      "must be an array of { name, sql }",
    );
  }
  const names = new Set<string>();
  migrations.forEach((migration, index) => {
    const field = `options.migrations[${index}]`;
    if (
      typeof migration?.name !== "string" || migration.name.trim() === ""
    ) {
      throw new InvalidArgumentError(
        `${field}.name`,
        "must be a non-empty string",
      );
    }
    if (typeof migration.sql !== "string" || migration.sql.trim() === "") {
      throw new InvalidArgumentError(
        `${field}.sql`,
        "must be a non-empty string",
      );
    }
    if (names.has(migration.name)) {
      throw new InvalidArgumentError(
        `${field}.name`,
        `repeats ${JSON.stringify(migration.name)}`,
      );
    }
    names.add(migration.name);
  });
  return [...migrations].sort((a, b) =>
    a.name < b.name ? -1 : a.name > b.name ? 1 : 0
  );
}

/** SHA-256 of the text, hex; CRLF counts as LF so a checkout's line endings do not matter. */
async function checksum(text: string): Promise<string> {
  const bytes = new TextEncoder().encode(text.replaceAll("\r\n", "\n"));
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(
    new Uint8Array(digest),
    (byte) => byte.toString(16).padStart(2, "0"),
  ).join("");
}
