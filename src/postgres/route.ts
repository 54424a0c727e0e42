/**
 * How the store's connections reach PostgreSQL: directly, or through a
 * connection pooler (PgBouncer, and what managed PostgreSQL puts in front by
 * default), and in which of PgBouncer's modes, found by asking rather than
 * trusting the configuration. Private to the package.
 *
 * @module
 */

import postgres from "postgres";
import type { PostgresSql } from "./driver.ts";

/**
 * What {@linkcode probeRoute} found:
 * - `"direct"`: PostgreSQL itself answers.
 * - `"pooled"`: a pooler answers, and nothing showed it moving a client's
 *   statements between server connections (session mode, or a pooler
 *   too busy to tell).
 * - `"transaction"`: a pooler moved the probe's statements between server
 *   connections: PgBouncer's transaction mode. Named prepared statements
 *   and LISTEN do not work there.
 * - `"statement"`: a pooler refused a transaction: PgBouncer's statement
 *   mode, where the store cannot work (appends with ids, projections).
 */
export type Route = "direct" | "pooled" | "transaction" | "statement";

/** A route and why it was concluded, for the log. */
export interface RouteProbe {
  route: Route;
  evidence: string;
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
