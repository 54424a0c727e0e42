/**
 * Transactions that end with their connection: postgres.js's `sql.begin`,
 * guarded so that nothing more is sent on a connection once it closed.
 * Private to the package.
 *
 * postgres.js 3.4.9 lets a transaction's scope go on after its connection
 * closed (the server's `idle_in_transaction_session_timeout`, a terminated
 * backend, a restart): `sql.begin` rejects at once, but the scope still
 * holds the connection object, and its next statement (the handler's, or
 * the COMMIT or ROLLBACK that `sql.begin` sends when the callback settles)
 * goes to it. With no socket left, that throws in a timer, out of every
 * caller's reach: "Uncaught TypeError: Cannot read properties of null
 * (reading 'write')", and the process dies. Once the pool reconnected the
 * same object, it would run on a new session instead: outside any
 * transaction, or inside another caller's. So here:
 *
 * - every statement of the transaction (the caller's, through the
 *   transaction it is given) first checks that the connection is still
 *   there, and is refused with the error that ended it otherwise;
 * - once it closed, the callback given to `sql.begin` never settles, so
 *   that postgres.js sends neither COMMIT nor ROLLBACK (the server rolled
 *   back already); the promise of {@linkcode inTransaction} rejects when
 *   the caller's body is done, never while it still runs;
 * - the error says what the server said before it closed the connection
 *   (a FATAL error that postgres.js drops when no statement is in flight),
 *   when the store's socket heard it: `25P03`, not only "connection closed".
 *
 * @module
 */

import { setImmediate } from "node:timers";
import type postgres from "postgres";
import type { PostgresSql } from "./driver.ts";
import type { PoolEvents } from "./connection.ts";

/** A postgres.js transaction, as a projection's handler gets it. */
// deno-lint-ignore no-explicit-any
export type TransactionSql = postgres.TransactionSql<any>;

/** What {@linkcode inTransaction} needs besides the instance. */
export interface TransactionOptions {
  /** What follows BEGIN, e.g. `isolation level read committed`. */
  readonly mode: string;
  /**
   * The pool's events, for a pool the store opened: a statement then only
   * waits for the connection's state when a connection of the pool closed
   * since the last one. Without them (the application's instance) every
   * statement waits a turn of the event loop first.
   */
  readonly events: PoolEvents | undefined;
}

/**
 * Runs `body` in a transaction: committed when it resolves, rolled back
 * when it throws. If the connection closes before that, the promise
 * rejects, once `body` settled, with the error that closed it (the
 * server's, when it sent one), and nothing more is sent on it.
 *
 * @returns What `body` returned, once committed.
 * @throws `body`'s error (after the rollback), the error of BEGIN or
 *   COMMIT, or the error that ended the connection.
 */
export function inTransaction<T>(
  sql: PostgresSql,
  options: TransactionOptions,
  body: (transaction: TransactionSql) => Promise<T>,
): Promise<T> {
  const { events } = options;
  return new Promise<T>((resolve, reject) => {
    // "body" from the callback's start until it hands its outcome back to
    // postgres.js, which then sends COMMIT or ROLLBACK.
    let state: "begin" | "body" | "done" = "begin";
    let lost: unknown;
    let seenCloses = events?.closes;
    const lostSignal = Promise.withResolvers<never>();
    lostSignal.promise.catch(() => {}); // only raced, never required

    // Whether the connection still stands, before a statement is sent:
    // `sql.begin` learns of a close within the same turn of the event loop
    // (a chain of promise callbacks), so after a close one turn tells.
    const check = (): Promise<void> => {
      if (lost !== undefined) return Promise.reject(lost);
      const closes = events?.closes;
      if (closes !== undefined && closes === seenCloses) return STANDING;
      return nextTurn().then(() => {
        if (lost !== undefined) throw lost;
        seenCloses = closes;
      });
    };
    // The end of a savepoint's scope: its outcome, unless the connection
    // went (then never: postgres.js would send ROLLBACK TO on it).
    const endScope = async <R>(outcome: Outcome<R>): Promise<R> => {
      await nextTurn();
      if (lost !== undefined) return forever();
      return unwrap(outcome);
    };
    const scope: Scope = { check, endScope, lost: lostSignal.promise };

    sql.begin(options.mode, async (transaction) => {
      state = "body";
      const outcome = await settle(() => body(guard(transaction, scope)));
      await nextTurn();
      if (lost !== undefined) {
        reject(lost);
        return forever();
      }
      state = "done";
      return unwrap(outcome);
    }).then(
      (value) => resolve(value as T),
      (error) => {
        if (state !== "body") return reject(error);
        // The connection closed under the body: its end reports it.
        lost = withFarewell(error, events);
        lostSignal.reject(lost);
      },
    );
  });
}

/** A settled body: its value or its error. */
type Outcome<T> = { ok: true; value: T } | { ok: false; error: unknown };

async function settle<T>(run: () => Promise<T>): Promise<Outcome<T>> {
  try {
    return { ok: true, value: await run() };
  } catch (error) {
    return { ok: false, error };
  }
}

function unwrap<T>(outcome: Outcome<T>): T {
  if (outcome.ok) return outcome.value;
  throw outcome.error;
}

const STANDING = Promise.resolve();

/** A promise that never settles: postgres.js then sends no COMMIT nor ROLLBACK. */
function forever<T>(): Promise<T> {
  return new Promise<T>(() => {});
}

/**
 * Resolves after every promise callback of this turn ran: a `setImmediate`,
 * which, unlike `setTimeout(0)`, waits for no clock tick (a millisecond per
 * batch otherwise).
 */
function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * The error that ended a transaction's connection, as the server gave it
 * when the store's socket heard the server's last message just before
 * that close (its FATAL error: SQLSTATE and message), else as postgres.js
 * gave it (`CONNECTION_CLOSED`), which is then its cause.
 */
function withFarewell(error: unknown, events: PoolEvents | undefined): unknown {
  const farewell = events?.farewell;
  if (farewell === undefined || typeof error !== "object" || error === null) {
    return error;
  }
  // The farewell heard just before the close that ended this connection,
  // a few promise callbacks ago: no other connection of the pool closed
  // in between.
  if (farewell.closes + 1 !== events!.closes) return error;
  return Object.assign(new Error(farewell.error.message, { cause: error }), {
    name: "PostgresError",
    severity: farewell.error.severity,
    severity_local: farewell.error.severity,
    code: farewell.error.code,
  });
}

/** What the guard of a transaction's statements needs. */
interface Scope {
  /** Resolves if the connection stands; rejects with what ended it. */
  check(): Promise<void>;
  /** Ends a savepoint's scope with its outcome, unless the connection went. */
  endScope<R>(outcome: Outcome<R>): Promise<R>;
  /** Rejects when the connection is lost. */
  readonly lost: Promise<never>;
}

/**
 * The transaction as the caller gets it: each statement, and each
 * savepoint's scope, checks the connection first.
 */
function guard(transaction: TransactionSql, scope: Scope): TransactionSql {
  const guarded = (query: unknown) => {
    const pending = query as {
      handler?: (query: unknown) => void;
      reject?: (error: unknown) => void;
    };
    if (
      query instanceof Promise && typeof pending.handler === "function" &&
      typeof pending.reject === "function"
    ) {
      // postgres.js runs a query through its handler when it is first
      // awaited: the check goes in front of it.
      const send = pending.handler;
      pending.handler = (running) =>
        void scope.check().then(
          () => send(running),
          (error) => pending.reject!(error),
        );
    }
    return query;
  };
  return new Proxy(transaction, {
    apply(target, self, args) {
      return guarded(Reflect.apply(target, self, args));
    },
    get(target, key) {
      const value = Reflect.get(target, key);
      if (typeof value !== "function") return value;
      if (key === "unsafe" || key === "file") {
        return (...args: unknown[]) => guarded(value(...args));
      }
      if (key === "savepoint") {
        // The savepoint's scope ends like the transaction's, never on a
        // closed connection; its caller learns of the loss at once.
        return (...args: unknown[]) =>
          Promise.race([
            value(
              ...args.map((arg) =>
                typeof arg === "function"
                  ? async (inner: TransactionSql) =>
                    await scope.endScope(
                      await settle(() =>
                        Promise.resolve(arg(guard(inner, scope)))
                      ),
                    )
                  : arg
              ),
            ),
            scope.lost,
          ]);
      }
      return value;
    },
  }) as TransactionSql;
}
