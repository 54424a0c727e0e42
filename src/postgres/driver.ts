/**
 * What the PostgreSQL store and the migration runner share: checking and
 * quoting the schema name, keeping passwords out of text, and turning driver
 * errors into this module's typed errors. Private to the package.
 *
 * @module
 */

import type postgres from "postgres";
import type { Sql } from "../migrations.ts";
import {
  DatabaseError,
  EventStoreError,
  InvalidArgumentError,
  MigrationError,
  StoreUnavailableError,
} from "../errors.ts";

/** A postgres.js instance with its full type, for use inside this module. */
// deno-lint-ignore no-explicit-any
export type PostgresSql = postgres.Sql<any>;

/** The public {@linkcode Sql} shape as the postgres.js instance it is. */
export function asPostgres(sql: Sql): PostgresSql {
  return sql as unknown as PostgresSql;
}

/** Whether `value` looks like a postgres.js instance. */
export function isSql(value: unknown): value is Sql {
  return typeof value === "function" &&
    typeof (value as Partial<Sql>).unsafe === "function" &&
    typeof (value as Partial<Sql>).reserve === "function" &&
    typeof (value as Partial<Sql>).end === "function";
}

/**
 * Unquoted PostgreSQL identifiers we accept as a schema name: letters,
 * digits and `_`, at most 63 bytes (NAMEDATALEN − 1). Anything else is
 * refused rather than escaped, so a schema name can never carry SQL.
 */
const SCHEMA_PATTERN = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;

/**
 * Checks a schema name and returns it double-quoted for SQL text.
 *
 * @throws {InvalidArgumentError} The name is not a plain identifier.
 */
export function quoteSchema(schema: unknown, field = "options.schema"): string {
  if (typeof schema !== "string" || !SCHEMA_PATTERN.test(schema)) {
    throw new InvalidArgumentError(
      field,
      "must be a schema name of 1 to 63 letters, digits and underscores, not starting with a digit",
    );
  }
  return `"${schema}"`;
}

/**
 * Splits a connection string around its user-info's password: the text
 * before it, the password, and the text after it. The user-info ends at the
 * last `@` of the authority, so a password with a raw `@`, `#`, `/` or `?`
 * in it (which a valid URL would percent-encode, but people type) is still
 * found whole.
 */
function splitPassword(
  url: string,
): [before: string, password: string, after: string] | undefined {
  const scheme = url.match(/^[a-z][a-z0-9+.-]*:\/\//i)?.[0];
  if (scheme === undefined) return undefined;
  const rest = url.slice(scheme.length);
  const at = rest.lastIndexOf("@");
  if (at === -1) return undefined;
  const colon = rest.indexOf(":");
  if (colon === -1 || colon > at) return undefined;
  return [
    scheme + rest.slice(0, colon + 1),
    rest.slice(colon + 1, at),
    rest.slice(at),
  ];
}

/**
 * A connection string with its password replaced by `***`, both the
 * `user:password@` form and a `password=` query parameter. Safe to log.
 *
 * @example
 * ```ts ignore
 * redactUrl("postgres://app:s3cret@db:5432/app?sslmode=require");
 * // "postgres://app:***@db:5432/app?sslmode=require"
 * ```
 */
export function redactUrl(url: string): string {
  const parts = splitPassword(url);
  const redacted = parts === undefined ? url : `${parts[0]}***${parts[2]}`;
  return redacted.replace(/([?&](?:password|pass)=)[^&#]*/gi, "$1***");
}

/**
 * The password of a connection string, so that it can be scrubbed from any
 * text that might echo it; `undefined` when there is none.
 */
export function passwordOf(url: string): string | undefined {
  const password = splitPassword(url)?.[1] ??
    url.match(/[?&](?:password|pass)=([^&#]*)/i)?.[1];
  if (password === undefined || password === "") return undefined;
  try {
    return decodeURIComponent(password);
  } catch {
    return password;
  }
}

/** Replaces every occurrence of a secret (and its URL-encoded form). */
export function scrub(text: string, secret: string | undefined): string {
  if (secret === undefined || secret.length === 0) return text;
  let scrubbed = text.split(secret).join("***");
  const encoded = encodeURIComponent(secret);
  if (encoded !== secret) scrubbed = scrubbed.split(encoded).join("***");
  return scrubbed;
}

/** What an error translation needs to say where things went wrong. */
export interface ErrorContext {
  /** What was attempted, e.g. `append events to stream "order-1"`. */
  operation: string;
  /** The server, redacted, e.g. `postgres://app:***@db:5432/app`. */
  server: string;
  /** The store's schema, for the "run migrations" hint. */
  schema: string;
  /** Scrubbed from every message. */
  password?: string;
  /**
   * What a server said just before it closed one of the pool's connections
   * while the operation ran, if anything: the cause behind a socket error
   * that says only that the connection went away.
   */
  farewell?: { code: string; message: string };
}

/** The driver's error codes for a connection that failed or went away. */
const CONNECTION_ERROR_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ECONNABORTED",
  "ETIMEDOUT",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EPIPE",
  "ENOENT", // a unix socket path that does not exist
  "CONNECT_TIMEOUT",
  "CONNECTION_CLOSED",
  "CONNECTION_ENDED",
  "CONNECTION_DESTROYED",
  "RESPONSE_TIMEOUT", // the store's own: options.responseTimeout
]);

/**
 * SQLSTATEs that mean "the database cannot serve this now", rather than
 * "this request is wrong": class 08 (connection exception) is matched by
 * prefix.
 */
const UNAVAILABLE_SQLSTATES = new Map([
  ["53300", "the server has no free connection slots"],
  [
    "57P01",
    "the server ended the connection (shutting down, or its backend was terminated)",
  ],
  ["57P02", "the server crashed"],
  ["57P03", "the server is not accepting connections yet"],
  ["57014", "the statement timed out or was cancelled"],
  [
    "25P03",
    "the server ended the session: its transaction sat idle longer than idle_in_transaction_session_timeout",
  ],
  [
    "57P05",
    "the server ended the session: it sat idle longer than idle_session_timeout",
  ],
  // lock_timeout is the operator's: a lock held elsewhere for longer (a DDL,
  // a long transaction) is a wait to end, not a wrong request. An append
  // retries its own races (a racer's uncommitted key) before it gets here.
  ["55P03", "a lock it needed was held elsewhere for longer than lock_timeout"],
  ["28P01", "authentication failed"],
  ["28000", "authentication failed"],
  ["3D000", "the database does not exist"],
]);

/**
 * SQLSTATE 25006, read_only_sql_transaction: what a hot standby (in
 * recovery, every transaction is read-only) and a server with
 * `default_transaction_read_only` on answer to a write.
 */
const READ_ONLY_SQLSTATE = "25006";

/** Why a read-only server refuses, and where to go instead. */
const READ_ONLY_REASON =
  "the server is read-only (a hot standby in recovery, or default_transaction_read_only on): appends, snapshots and projections need the primary";

/**
 * The store's own finding that the server is read-only, made before it
 * runs anything that a read-only server would refuse only afterwards (a
 * projection's handler). {@linkcode translateError} types it as it types
 * the server's own 25006; the message says what showed it.
 */
export class ReadOnlyServer extends Error {
  /** The SQLSTATE the server would have answered with. */
  readonly code = READ_ONLY_SQLSTATE;
}

/**
 * Throws {@linkcode ReadOnlyServer} when a row of the store's read-only
 * check (`in_recovery`, `read_only`: see `Statements.readOnly`) says the
 * server is read-only.
 *
 * @throws {ReadOnlyServer} The server is in recovery, or the transaction
 *   is read-only.
 */
export function refuseReadOnly(
  row: Record<string, unknown> | undefined,
): void {
  if (row?.in_recovery === true) {
    throw new ReadOnlyServer(
      "pg_is_in_recovery() is true: the server is a hot standby",
    );
  }
  if (row?.read_only === true) {
    throw new ReadOnlyServer("transaction_read_only is on");
  }
}

/**
 * SQLSTATEs of a table, schema or function of the store that is not there:
 * migrations never ran, or not the latest ones (42883: `reset_projection`).
 */
const MISSING_SCHEMA_SQLSTATES = new Set(["42P01", "3F000", "42883"]);

/** A PostgreSQL server error as postgres.js reports it. */
interface ServerError {
  code: string;
  severity: string;
  message: string;
}

/**
 * Whether the connection failed or went away: the driver's socket errors,
 * SQLSTATE class 08, 57P01–57P03 and the sessions the server ends when idle
 * (25P03 in a transaction, 57P05 outside). What was in flight may or may not have
 * been committed; nothing more should be sent on that connection.
 */
export function isConnectionError(error: unknown): boolean {
  const code = (error as { code?: unknown })?.code;
  if (typeof code !== "string") return false;
  if (isServerError(error)) {
    return code.startsWith("08") || /^57P0[1235]$/.test(code) ||
      code === "25P03";
  }
  return CONNECTION_ERROR_CODES.has(code);
}

/**
 * Whether an established connection was lost (rather than never made): the
 * server ended it, or the socket closed under it. A read that failed so is
 * worth one more try; one that could not connect would only wait again.
 */
export function isLostConnection(error: unknown): boolean {
  if (!isConnectionError(error)) return false;
  const code = (error as { code: string }).code;
  return isServerError(error) ||
    [
      "CONNECTION_CLOSED",
      "CONNECTION_ENDED",
      "CONNECTION_DESTROYED",
      "ECONNRESET",
      "EPIPE",
    ].includes(code);
}

/** Whether `error` is an error PostgreSQL itself sent. */
export function isServerError(error: unknown): error is ServerError {
  if (!(error instanceof Error)) return false;
  const fields = error as {
    severity?: unknown;
    severity_local?: unknown;
    code?: unknown;
  };
  // PgBouncer's own errors carry only the localized severity (S), not V.
  return (typeof fields.severity === "string" ||
    typeof fields.severity_local === "string") &&
    typeof fields.code === "string";
}

/** The PostgreSQL error's constraint, when a constraint was violated. */
export function constraintOf(error: unknown): string | undefined {
  const name = (error as { constraint_name?: unknown })?.constraint_name;
  return typeof name === "string" ? name : undefined;
}

/**
 * Turns whatever the driver threw into one of this module's typed errors,
 * keeping the original as `cause` and no password in the message.
 */
export function translateError(
  error: unknown,
  context: ErrorContext,
): EventStoreError {
  if (error instanceof EventStoreError) return error;
  const detail = scrub(
    error instanceof Error ? error.message : String(error),
    context.password,
  );
  const where = `${context.operation} (${context.server})`;
  if (
    error instanceof ReadOnlyServer ||
    (isServerError(error) && error.code === READ_ONLY_SQLSTATE)
  ) {
    // Unavailable, not wrong: the same call succeeds on the primary.
    return new StoreUnavailableError(
      `Cannot ${where}: ${READ_ONLY_REASON} (${READ_ONLY_SQLSTATE}: ${detail})`,
      { cause: error, sqlState: READ_ONLY_SQLSTATE },
    );
  }
  if (isServerError(error)) {
    const sqlState = error.code;
    if (MISSING_SCHEMA_SQLSTATES.has(sqlState)) {
      return new MigrationError(
        `Cannot ${where}: the store's tables are missing in schema "${context.schema}" (${detail}); run the migrations first (await store.migrate(), or deno task migrate)`,
        { cause: error },
      );
    }
    const reason = UNAVAILABLE_SQLSTATES.get(sqlState) ??
      (sqlState.startsWith("08") ? "the connection failed" : undefined);
    if (reason !== undefined) {
      return new StoreUnavailableError(
        `Cannot ${where}: ${reason} (${sqlState}: ${detail})`,
        { cause: error, sqlState },
      );
    }
    return new DatabaseError(`Cannot ${where}: ${sqlState}: ${detail}`, {
      cause: error,
      sqlState,
    });
  }
  const code = (error as { code?: unknown })?.code;
  if (typeof code === "string" && CONNECTION_ERROR_CODES.has(code)) {
    const farewell = context.farewell;
    if (farewell !== undefined) {
      const said = scrub(farewell.message, context.password);
      return new StoreUnavailableError(
        `Cannot ${where}: the connection closed (${detail}); the server had said ${farewell.code}: ${said}`,
        { cause: error, sqlState: farewell.code },
      );
    }
    return new StoreUnavailableError(
      `Cannot ${where}: the database is unreachable (${detail})`,
      { cause: error },
    );
  }
  return new DatabaseError(`Cannot ${where}: ${detail}`, { cause: error });
}

/**
 * A string as an SQL literal: an escape string, with backslashes and quotes
 * doubled, so that nothing in the text can end it whatever the server's
 * `standard_conforming_strings`. Only for statements that must run as one
 * simple-protocol query, which takes no parameters.
 */
export function literal(text: string): string {
  return `E'${text.replaceAll("\\", "\\\\").replaceAll("'", "''")}'`;
}
