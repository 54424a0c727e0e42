/**
 * The migration runner: applies the SQL files of `migrations/` (or a list of
 * the application's own) to a PostgreSQL schema, in order, each in its own
 * transaction, and records each with a checksum so that an applied file that
 * changed afterwards is refused instead of silently re-run.
 *
 * @module
 */

import type postgres from "postgres";
import { InvalidArgumentError, MigrationError } from "./errors.ts";
import { type Logger, silentLogger } from "./logger.ts";
import { asPostgres, quoteSchema, translateError } from "./_postgres.ts";

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
 * missing. Each migration runs in its own transaction with `search_path` set
 * to the schema and is recorded in `<schema>.schema_migrations` with the
 * SHA-256 of its text (line endings normalised). A session advisory lock per
 * schema makes concurrent runs, from any number of processes, safe: one
 * applies, the others wait and then find nothing to do. Running it again is
 * a no-op.
 *
 * @param sql A postgres.js instance; one of its connections is reserved for
 *   the run.
 * @param options The schema, the migrations and a logger.
 * @returns Which migrations were applied now and which were already applied.
 * @throws {MigrationError} An applied migration's text changed, or a
 *   migration failed (it was rolled back; earlier ones stay applied).
 * @throws {InvalidArgumentError} The schema name or a migration is malformed.
 * @throws {StoreUnavailableError} The database cannot be reached.
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
  const schema = options.schema ?? "public";
  const quoted = quoteSchema(schema);
  const logger = options.logger ?? silentLogger;
  const migrations = checkMigrations(
    options.migrations ?? await bundledMigrations(),
  );
  const checksums = await Promise.all(
    migrations.map((migration) => checksum(migration.sql)),
  );
  const context = {
    operation: `migrate schema "${schema}"`,
    server: "the database",
    schema,
  };

  let connection: postgres.ReservedSql;
  try {
    connection = await asPostgres(sql).reserve();
  } catch (error) {
    throw translateError(error, context);
  }
  const lockKey = `deno-eventstore migrations ${schema}`;
  try {
    await connection`SELECT pg_advisory_lock(hashtextextended(${lockKey}, 0))`;
    try {
      return await applyPending(connection, {
        schema,
        quoted,
        migrations,
        checksums,
        logger,
      });
    } finally {
      // Fails only when the connection died, which released the lock anyway;
      // the error that matters is the one already on its way.
      await connection`SELECT pg_advisory_unlock(hashtextextended(${lockKey}, 0))`
        .catch(() => {});
    }
  } catch (error) {
    throw translateError(error, context);
  } finally {
    connection.release();
  }
}

interface ApplyPlan {
  schema: string;
  quoted: string;
  migrations: Migration[];
  checksums: string[];
  logger: Logger;
}

/** The part that runs under the advisory lock. */
async function applyPending(
  connection: postgres.ReservedSql,
  plan: ApplyPlan,
): Promise<MigrationResult> {
  const { schema, quoted, migrations, checksums, logger } = plan;
  await connection.unsafe(`CREATE SCHEMA IF NOT EXISTS ${quoted}`);
  await connection.unsafe(
    `CREATE TABLE IF NOT EXISTS ${quoted}.schema_migrations (
       name text PRIMARY KEY,
       checksum text NOT NULL,
       applied_at timestamptz NOT NULL DEFAULT now()
     )`,
  );
  const rows = await connection.unsafe<{ name: string; checksum: string }[]>(
    `SELECT name, checksum FROM ${quoted}.schema_migrations`,
  );
  const recorded = new Map(rows.map((row) => [row.name, row.checksum]));

  // Refuse a changed file before applying anything after it.
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
  const known = new Set(migrations.map((migration) => migration.name));
  for (const name of recorded.keys()) {
    if (!known.has(name)) {
      logger({
        level: "warn",
        message: "Applied migration is unknown to this version",
        fields: { schema, migration: name },
      });
    }
  }

  const result: MigrationResult = { applied: [], alreadyApplied: [] };
  for (const [index, migration] of migrations.entries()) {
    if (recorded.has(migration.name)) {
      result.alreadyApplied.push(migration.name);
      continue;
    }
    const started = performance.now();
    await applyOne(connection, quoted, migration, checksums[index], schema);
    result.applied.push(migration.name);
    logger({
      level: "info",
      message: "Applied migration",
      fields: {
        schema,
        migration: migration.name,
        durationMs: Math.round(performance.now() - started),
      },
    });
  }
  if (result.applied.length === 0) {
    logger({
      level: "debug",
      message: "Migrations are up to date",
      fields: { schema, count: result.alreadyApplied.length },
    });
  }
  return result;
}

async function applyOne(
  connection: postgres.ReservedSql,
  quoted: string,
  migration: Migration,
  checksum: string,
  schema: string,
): Promise<void> {
  await connection.unsafe("BEGIN");
  try {
    await connection.unsafe(`SET LOCAL search_path TO ${quoted}`);
    // No parameters: the simple protocol runs a file of many statements.
    await connection.unsafe(migration.sql);
    await connection.unsafe(
      `INSERT INTO ${quoted}.schema_migrations (name, checksum) VALUES ($1, $2)`,
      [migration.name, checksum],
    );
    await connection.unsafe("COMMIT");
  } catch (cause) {
    await connection.unsafe("ROLLBACK").catch(() => {});
    const problem = cause instanceof Error ? cause.message : String(cause);
    const sqlState = (cause as { code?: unknown })?.code;
    if (typeof sqlState === "string" && /^(08|57P0)/.test(sqlState)) {
      throw cause; // the connection went away: reported as unavailable
    }
    throw new MigrationError(
      `Cannot migrate schema "${schema}": migration ${migration.name} failed and was rolled back: ${problem}`,
      { cause, migration: migration.name },
    );
  }
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
