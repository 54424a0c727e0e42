/**
 * The PostgreSQL store's options and its pool: checking the options, opening
 * a postgres.js pool by URL, describing the server without the password, and
 * ending the pools this package opened. Private to the package.
 *
 * @module
 */

import postgres from "postgres";
import type { Codec } from "../codec.ts";
import { InvalidArgumentError } from "../errors.ts";
import type { Logger } from "../logger.ts";
import type { Sql } from "../migrations.ts";
import { checkVersion } from "../_input.ts";
import type { Route } from "./route.ts";
import { type Farewell, resilientSocketOptions } from "./socket.ts";
import { isSql, type PostgresSql, quoteSchema, redactUrl } from "./driver.ts";

/** Options of {@linkcode PostgresEventStore}, named as postgres.js users expect. */
export interface PostgresEventStoreOptions {
  /** Pool size: at most this many connections. 10 by default. */
  max?: number;
  /** Seconds an idle connection stays open; kept forever by default. */
  idleTimeout?: number;
  /** Seconds a new connection may take to be ready before its calls fail. 10 by default. */
  connectTimeout?: number;
  /** Milliseconds a statement may run before PostgreSQL cancels it; no limit by default. */
  statementTimeout?: number;
  /**
   * Milliseconds an operation may wait for a free connection of the pool
   * (every one busy with other operations) before it fails with
   * {@linkcode StoreUnavailableError}, having written nothing; no limit by
   * default. Operations wait in line, first come first served.
   */
  acquireTimeout?: number;
  /**
   * Milliseconds the store waits for the answer to one of its statements
   * before the call fails with {@linkcode StoreUnavailableError}; no limit by
   * default. Unlike `statementTimeout` it needs no server: it ends the wait
   * of a call whose connection went silent (a network that drops packets
   * without a reset). The statement is not cancelled, so an append that
   * timed out may still commit: retry it with the same event ids. Keep it
   * above `statementTimeout`.
   */
  responseTimeout?: number;
  /**
   * Whether the store's statements are named prepared statements, parsed
   * and planned once per connection (`true`, the default), or parsed with
   * every call (`false`, postgres.js's own option of that name). Set it to
   * `false` behind a pooler in transaction mode (PgBouncer's
   * `pool_mode = transaction`, and the poolers managed PostgreSQL puts in
   * front by default), where consecutive statements of one client run on
   * different server connections; the store detects such a pooler at
   * `connect()` and refuses to start without it.
   */
  prepare?: boolean;
  /** Shown in `pg_stat_activity`; `deno-eventstore` by default. */
  applicationName?: string;
  /** The schema that holds the tables; `public` by default. */
  schema?: string;
  /** Encodes `data` and snapshot `state`; {@linkcode cborCodec} by default. */
  codec?: Codec;
  /** Receives structured log records; silent by default. */
  logger?: Logger;
  /** Generates ids for events given without one; `crypto.randomUUID` by default. */
  generateId?: () => string;
  /**
   * Milliseconds committed events may stay hidden from `readAll` (held back
   * by an older open transaction anywhere in the cluster, or a prepared
   * one) before the store logs a `warn` record naming what holds them,
   * repeated while it lasts; 5000 by default, 0 turns the warning off. It
   * is watched only while readers (`readAll`, subscriptions, projections)
   * are active. See {@linkcode PostgresEventStore.readAllLag}.
   */
  heldBackThreshold?: number;
}

/** Options that configure the pool, so they only apply when connecting by URL. */
const POOL_OPTIONS = [
  "max",
  "idleTimeout",
  "connectTimeout",
  "statementTimeout",
  "acquireTimeout",
  "applicationName",
] as const;

/** Connections of a pool opened by URL, unless `max` says otherwise. */
export const DEFAULT_POOL_SIZE = 10;

/** The application name a pool this package opens shows, unless told. */
export const DEFAULT_APPLICATION_NAME = "deno-eventstore";

/**
 * Seconds a new connection may take to be ready. Shorter than postgres.js's
 * 30: it bounds how long a call waits for a connection that cannot be made
 * (a server that accepts but does not answer), which is the longest a call
 * can wait after a restart.
 */
export const DEFAULT_CONNECT_TIMEOUT_S = 10;

/** How long `close()` lets the store's own calls finish before ending the pool. */
const CLOSE_GRACE_MS = 5_000;

/** How long `close()` waits for idle sockets to close before destroying them. */
const SOCKET_CLOSE_TIMEOUT_S = 0.5;

/** The pools this module opened, and so must end on close. */
export const ownedPools = new WeakSet<object>();

/**
 * What a pool this module opened reports of its connections as it happens,
 * which postgres.js tells nobody else: for the transactions of
 * `src/postgres/transaction.ts`, which must stop using a connection the
 * moment it closes.
 */
export interface PoolEvents {
  /** How many of the pool's connections closed so far. */
  readonly closes: number;
  /**
   * The last error a server sent before closing one of them, how many had
   * closed before that one, and when (`performance.now()`).
   */
  readonly farewell:
    | { readonly error: Farewell; readonly closes: number; readonly at: number }
    | undefined;
}

const poolEvents = new WeakMap<object, PoolEvents>();

/** The {@linkcode PoolEvents} of a pool this module opened; none for the application's. */
export function poolEventsOf(sql: PostgresSql): PoolEvents | undefined {
  return poolEvents.get(sql);
}

/**
 * Opens a postgres.js pool for `url` with the store's options, and records
 * it among {@linkcode ownedPools}. Does no I/O. Startup parameters that only
 * PostgreSQL takes are sent only on a `"direct"` route.
 *
 * @throws {InvalidArgumentError} postgres.js cannot parse the URL; its
 *   message, which may hold the password, is withheld.
 */
export function openPool(
  url: string,
  options: PostgresEventStoreOptions,
  route: Route = "direct",
): PostgresSql {
  let sql: PostgresSql;
  const events = {
    closes: 0,
    farewell: undefined as PoolEvents["farewell"],
  };
  try {
    sql = postgres(url, {
      max: options.max ?? DEFAULT_POOL_SIZE,
      // Behind a pooler, the pool's own default too: the transaction a
      // projection handler gets is of this pool, and postgres.js would
      // otherwise prepare the handler's statements, once per connection,
      // and run them later on whichever server the pooler picks.
      prepare: route === "direct"
        ? options.prepare ?? true
        : options.prepare === true,
      idle_timeout: options.idleTimeout,
      connect_timeout: options.connectTimeout ?? DEFAULT_CONNECT_TIMEOUT_S,
      // No query of postgres.js's own: after connecting it would fetch the
      // server's array types, and an error of that query (PgBouncer's
      // "server_login_retry" or "query_wait_timeout" while PostgreSQL
      // restarts or its pool is full) reached no caller and killed the
      // process, an unhandled rejection. The store's statements need no
      // array type: their array parameters are literals (statements.ts)
      // and their array results come as JSON.
      fetch_types: false,
      onclose: () => {
        events.closes++;
      },
      // The socket and the padding of the StartupMessage that keep
      // postgres.js 3.4.9 from losing calls when a connection dies
      // (src/postgres/socket.ts).
      ...resilientSocketOptions(url, {
        application_name: options.applicationName ?? DEFAULT_APPLICATION_NAME,
        // Only PostgreSQL itself takes these: PgBouncer refuses a connection
        // that sends them (08P01 "unsupported startup parameter"). Behind a
        // pooler the store's transactions say READ COMMITTED themselves, and
        // it cancels a statement that runs past statementTimeout.
        ...(route === "direct"
          ? {
            // The append statement is written for READ COMMITTED: a race
            // shows as a key violation. A database default of SERIALIZABLE
            // would turn races into serialization failures instead
            // (handled too, by retry, but at the cost of aborted work).
            default_transaction_isolation: "read committed",
            ...(options.statementTimeout === undefined
              ? {}
              : { statement_timeout: options.statementTimeout }),
          }
          : {}),
      }, (error) => {
        events.farewell = {
          error,
          closes: events.closes,
          at: performance.now(),
        };
      }),
      types: { bigint: postgres.BigInt },
      // postgres.js waits before reconnecting for up to 20 s, growing with
      // a count of failures shared by the whole pool: after a restart of a
      // second, calls waited 17-20 s with the server long back (measured).
      // Capped at a second, the pool is back within a second of it.
      backoff: (attempt: number) =>
        Math.min(0.05 * 2 ** attempt, 1) * (0.5 + Math.random() / 2),
      onnotice: () => {},
    });
  } catch {
    // postgres.js parses the URL eagerly, and its message echoes the URL,
    // password and all when the password has a character URLs reserve:
    // so nothing of it is repeated here.
    throw new InvalidArgumentError(
      "url",
      "is not a usable connection string (postgres://user:password@host:5432/database, with reserved characters in the password percent-encoded)",
      {
        cause: new Error(
          "the parser's message is withheld: it may hold the password",
        ),
      },
    );
  }
  ownedPools.add(sql);
  poolEvents.set(sql, events);
  return sql;
}

/**
 * Ends a pool this package opened: lets the store's calls in flight finish
 * first, then closes the sockets.
 *
 * @throws The error of postgres.js's `end()`, for the caller to log.
 */
export async function endPool(
  sql: PostgresSql,
  inFlight: Iterable<Promise<unknown>>,
): Promise<void> {
  // Let this store's own calls finish first; then postgres.js only has
  // to close idle sockets, which takes milliseconds. Its end() can wait
  // for a socket the server already reset (Deno's socket shim never
  // reports it closed) until the timeout, so that is kept short.
  await settle(inFlight, CLOSE_GRACE_MS);
  await sql.end({ timeout: SOCKET_CLOSE_TIMEOUT_S });
}

/** Waits until every promise settles, or `ms` passed. */
async function settle(
  promises: Iterable<Promise<unknown>>,
  ms: number,
): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([
    Promise.allSettled(promises),
    new Promise((resolve) => timer = setTimeout(resolve, ms)),
  ]);
  clearTimeout(timer);
}

/**
 * `postgres://user@host:port/database` from a postgres.js instance's
 * options: what messages and logs show, never the password.
 */
export function describeServer(sql: PostgresSql): string {
  const options = sql.options;
  if (options === undefined) return "postgres://(unknown)";
  const hosts = (options.host ?? []).map((host: string, index: number) =>
    host.startsWith("/")
      ? host
      : `${host.includes(":") ? `[${host}]` : host}:${
        options.port?.[index] ?? 5432
      }`
  ).join(",");
  // A password is shown as *** so that readers know one is in use.
  const password = options.pass ? ":***" : "";
  const user = options.user
    ? `${encodeURIComponent(options.user)}${password}@`
    : "";
  return redactUrl(`postgres://${user}${hosts}/${options.database ?? ""}`);
}

/**
 * Checks the instance a store wraps and the store's options: pool options
 * only for a pool this package opened (the application configures its own).
 *
 * @throws {InvalidArgumentError} The instance or an option is unusable, or
 *   a pool option was given for the application's instance.
 */
export function checkInstance(
  sql: Sql,
  options: PostgresEventStoreOptions,
): void {
  if (!isSql(sql)) {
    throw new InvalidArgumentError(
      "sql",
      "must be a postgres.js sql instance",
    );
  }
  checkOptions(options);
  if (!ownedPools.has(sql)) {
    for (const name of POOL_OPTIONS) {
      if (options[name] !== undefined) {
        throw new InvalidArgumentError(
          `options.${name}`,
          "applies only when connecting by URL; configure the postgres.js instance instead",
        );
      }
    }
  }
}

/**
 * Checks the store's options, whether it connects by URL or wraps an
 * instance.
 *
 * @throws {InvalidArgumentError} An option is malformed.
 */
export function checkOptions(options: PostgresEventStoreOptions): void {
  if (typeof options !== "object" || options === null) {
    throw new InvalidArgumentError("options", "must be an object");
  }
  if (options.max !== undefined) checkVersion(options.max, "options.max", 1);
  for (
    const name of [
      "idleTimeout",
      "connectTimeout",
      "statementTimeout",
      "acquireTimeout",
      "responseTimeout",
      "heldBackThreshold",
    ] as const
  ) {
    const value = options[name];
    if (
      value !== undefined &&
      (typeof value !== "number" || !Number.isFinite(value) || value < 0)
    ) {
      throw new InvalidArgumentError(
        `options.${name}`,
        "must be a finite number of at least 0",
      );
    }
  }
  if (
    options.applicationName !== undefined &&
    (typeof options.applicationName !== "string" ||
      options.applicationName.includes("\0"))
  ) {
    throw new InvalidArgumentError(
      "options.applicationName",
      "must be a string without NUL characters",
    );
  }
  if (options.prepare !== undefined && typeof options.prepare !== "boolean") {
    throw new InvalidArgumentError("options.prepare", "must be a boolean");
  }
  if (options.schema !== undefined) quoteSchema(options.schema);
  if (
    options.codec !== undefined &&
    (typeof options.codec?.encode !== "function" ||
      typeof options.codec?.decode !== "function")
  ) {
    throw new InvalidArgumentError(
      "options.codec",
      "must have encode and decode methods",
    );
  }
  for (const name of ["logger", "generateId"] as const) {
    if (options[name] !== undefined && typeof options[name] !== "function") {
      throw new InvalidArgumentError(`options.${name}`, "must be a function");
    }
  }
}
