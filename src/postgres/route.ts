/**
 * How the store's connections reach PostgreSQL: directly, or through a
 * connection pooler (PgBouncer, and what managed PostgreSQL puts in front by
 * default), and in which of PgBouncer's modes, found by asking rather than
 * trusting the configuration. Private to the package.
 *
 * @module
 */

import postgres from "postgres";
import { UnsupportedServerError } from "../errors.ts";
import type { PostgresSql } from "./driver.ts";

/**
 * What {@linkcode probeRoute} found:
 * - `"direct"`: PostgreSQL itself answers.
 * - `"pooled"`: a pooler answers, and nothing showed it moving a client's
 *   statements between server connections (session mode, or a pooler
 *   too busy to tell).
 * - `"transaction"`: a pooler moved the probe's statements between server
 *   connections: PgBouncer's transaction mode. Named prepared statements
 *   do not work there.
 * - `"statement"`: a pooler refused a transaction: PgBouncer's statement
 *   mode, where the store cannot work (appends with ids, projections).
 */
export type Route = "direct" | "pooled" | "transaction" | "statement";

/** A route and why it was concluded, for the log. */
export interface RouteProbe {
  route: Route;
  evidence: string;
  /** Found through an application's own instance, not a pool of the store's. */
  instance?: boolean;
}

/** How long the second probe client may wait for a server connection. */
const PROBE_WAIT_MS = 1_000;

/**
 * Finds out how `url` reaches PostgreSQL, with two short-lived connections
 * of its own (one when it is direct), unprepared statements and no type
 * fetch, so that nothing of it depends on what it is finding out.
 *
 * 1. PostgreSQL sends its backend's pid in BackendKeyData; a pooler sends a
 *    key of its own. So client A compares the pid of its startup with
 *    `pg_backend_pid()`: equal means direct.
 * 2. Behind a pooler, client B opens a transaction while A is connected
 *    and idle. A pooler in statement mode refuses it. In session mode A's
 *    server belongs to A until A disconnects: if B's transaction runs on
 *    it, or A's next statement runs on another server, the pooler hands
 *    server connections from client to client (transaction mode).
 *
 * Session mode cannot be proven this way (an idle server of A's in
 * transaction mode may simply come back to A), so the store treats an
 * unproven pooler as one that may move statements: no named prepared
 * statements unless the application insists.
 *
 * @throws The driver's error when the server cannot be reached, for the
 *   caller to type.
 */
export async function probeRoute(
  url: string,
  options: { connectTimeout: number; applicationName: string },
): Promise<RouteProbe> {
  const clients: PostgresSql[] = [];
  const open = () => {
    const client = postgres(url, {
      max: 1,
      prepare: false,
      fetch_types: false,
      connect_timeout: options.connectTimeout,
      connection: { application_name: options.applicationName },
      onnotice: () => {},
    }) as PostgresSql;
    clients.push(client);
    return client;
  };
  const a = open();
  let b: PostgresSql | undefined;
  let inTransaction = false;
  try {
    const first = await a.unsafe("SELECT pg_backend_pid() AS pid");
    const pid = Number(first[0].pid);
    const startupPid = (first as unknown as { state?: { pid?: unknown } })
      .state?.pid;
    if (startupPid === pid) {
      return { route: "direct", evidence: `backend pid ${pid}` };
    }
    b = open();
    const held = await within(
      // One simple-protocol query: BEGIN and a statement inside it.
      b.unsafe("BEGIN; SELECT pg_backend_pid() AS pid").then(
        (results) => ({
          pid: Number((results as unknown as { pid: number }[][])[1][0].pid),
        }),
        (error) => ({ error }),
      ),
      PROBE_WAIT_MS,
    );
    if (held === undefined) {
      return {
        route: "pooled",
        evidence:
          `a second client got no server connection within ${PROBE_WAIT_MS} ms while the first was connected (session mode with a small pool, or a busy one)`,
      };
    }
    if ("error" in held) {
      if (refusedTransaction(held.error)) {
        return {
          route: "statement",
          evidence: "the pooler refused a transaction (BEGIN)",
        };
      }
      throw held.error;
    }
    inTransaction = true;
    if (held.pid === pid) {
      return {
        route: "transaction",
        evidence:
          `another client's transaction ran on server connection ${pid} while the first client, which had used it, stayed connected`,
      };
    }
    const again = await a.unsafe("SELECT pg_backend_pid() AS pid");
    if (Number(again[0].pid) !== pid) {
      return {
        route: "transaction",
        evidence:
          `one client's statements ran on server connections ${pid} and ${
            again[0].pid
          }`,
      };
    }
    return {
      route: "pooled",
      evidence:
        `a pooler answers (its own cancel key), and kept one client on server connection ${pid}`,
    };
  } finally {
    // Only a transaction that began: a ROLLBACK queued behind a BEGIN that
    // still waits for a server would wait as long.
    if (inTransaction) await b?.unsafe("ROLLBACK").catch(() => {});
    // timeout 0: postgres.js waits the whole timeout for a socket that a
    // pooler already closed.
    await Promise.all(
      clients.map((client) => client.end({ timeout: 0 }).catch(() => {})),
    );
  }
}

/**
 * For an application's own postgres.js instance, which the store cannot
 * open probe connections beside: one query, whose BackendKeyData pid tells
 * PostgreSQL from a pooler. A pooler's mode stays unknown (`"pooled"`),
 * flagged `instance` for {@linkcode refuseRoute}.
 *
 * @throws The driver's error, for the caller to type.
 */
export async function routeOfInstance(
  sql: PostgresSql,
): Promise<RouteProbe> {
  const rows = await sql.unsafe("SELECT pg_backend_pid() AS pid");
  const startupPid = (rows as unknown as { state?: { pid?: unknown } }).state
    ?.pid;
  return startupPid === Number(rows[0].pid)
    ? { route: "direct", evidence: `backend pid ${rows[0].pid}` }
    : {
      route: "pooled",
      evidence: "the instance's cancel key is not its backend's pid",
      instance: true,
    };
}

/**
 * Refuses a route the store cannot work on, naming the fix: a pooler in
 * statement mode; `prepare: true` where transaction mode was seen; and an
 * application's own instance behind any pooler, unless `prepare: true` says
 * the pooler is in session mode (postgres.js pipelines statements of
 * different callers on one connection, and a pooler in transaction mode
 * passes what was pipelined to a server connection it already gave back:
 * that call never answers; a pool the store opens sends one statement at a
 * time per connection).
 *
 * @throws {UnsupportedServerError} With the fix in its message.
 */
export function refuseRoute(
  { route, evidence, instance }: RouteProbe,
  options: { server: string; prepare: boolean | undefined },
): void {
  const { server, prepare } = options;
  if (instance && route !== "direct" && prepare !== true) {
    throw new UnsupportedServerError(
      `Cannot use the application's postgres.js instance (${server}): a connection pooler is in front of PostgreSQL (${evidence}), and postgres.js pipelines statements of different callers on one connection, which a pooler in transaction mode sends on to a server connection it already gave back (the call then never answers); connect by URL instead (PostgresEventStore.connect(url) opens a pool that sends one statement at a time per connection), or pass prepare: true to the store if the pooler is in session mode`,
    );
  }
  const where = `Cannot connect (${server})`;
  if (route === "statement") {
    throw new UnsupportedServerError(
      `${where}: a connection pooler in statement mode is in front of PostgreSQL (${evidence}), and the store needs transactions (projections, and appends that must be checked and written together); set the pooler's pool_mode to transaction or session, or connect to PostgreSQL directly`,
    );
  }
  if (route === "transaction" && prepare === true) {
    throw new UnsupportedServerError(
      `${where}: a connection pooler in transaction mode is in front of PostgreSQL (${evidence}), where a named prepared statement can run on another server connection than the one that prepared it (and write wrong data); remove the option prepare: true (the store then sends unnamed statements), or use the pooler's session mode`,
    );
  }
}

/**
 * Whether a pooler refused a transaction: PgBouncer's statement mode answers
 * BEGIN with FATAL 08P01 ("transaction blocks not allowed in statement
 * pooling mode") and closes the connection, which postgres.js may report as
 * CONNECTION_CLOSED before it reads the error.
 */
function refusedTransaction(error: unknown): boolean {
  const { code, message } = error as { code?: unknown; message?: unknown };
  return (code === "08P01" && /statement pooling/.test(String(message))) ||
    code === "CONNECTION_CLOSED";
}

/** `promise`'s value, or `undefined` after `ms` (its outcome then ignored). */
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
