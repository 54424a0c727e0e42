/**
 * One batch of a PostgreSQL projection: its handler and its checkpoint in one
 * transaction. Private to the package.
 *
 * @module
 */

import type { Attributes, Span } from "@opentelemetry/api";
import type { ProjectionHandler, RecordedEvent } from "../event_store.ts";
import {
  isConnectionError,
  type PostgresSql,
  refuseReadOnly,
} from "./driver.ts";
import type { Statements } from "./statements.ts";
import { answer, type QueryContext, read } from "./read.ts";
import type { PoolEvents } from "./connection.ts";
import { inTransaction } from "./transaction.ts";
import { runHandler } from "../_subscription.ts";
import { StoreClosedError } from "../errors.ts";
import type { Slots } from "../_slots.ts";

/** What a projection's batch needs of the store. */
export interface BatchContext {
  /** The postgres.js instance. */
  readonly sql: PostgresSql;
  /** The statements of the store's schema. */
  readonly statements: Statements;
  /** Whether statements are prepared (see {@linkcode QueryContext.prepare}). */
  readonly prepare: boolean;
  /** The statement timeout the store enforces itself (see {@linkcode QueryContext.cancelAfter}). */
  readonly cancelAfter: number | undefined;
  /** Its pool's events, for a pool the store opened (see `transaction.ts`). */
  readonly poolEvents: PoolEvents | undefined;
  /** Runs one operation of the store: its span and its typed errors. */
  run<T>(
    operation: string,
    attributes: Attributes,
    body: (span: Span) => Promise<T>,
  ): Promise<T>;
}

/**
 * Runs a projection's handler and saves its checkpoint in one transaction,
 * so that the handler's writes through it and the checkpoint commit
 * together. The handler's own error comes out unchanged; the database's
 * are typed like every other.
 *
 * @returns Whether the batch was handled: `false` when the checkpoint was
 *   no longer at `from`.
 * @throws The handler's error, or the store's typed error.
 */
export function handleBatch<D>(
  context: BatchContext,
  name: string,
  events: RecordedEvent<D>[],
  handler: ProjectionHandler<D>,
  from: bigint,
  to: bigint,
): Promise<boolean> {
  const { sql, statements } = context;
  let handlerError: { error: unknown } | undefined;
  return context.run(
    "run a projection",
    { "eventstore.projection": name },
    () =>
      // READ COMMITTED whatever the database's default, which a pooler
      // does not let the store set per connection: the checkpoint read
      // after the lock must see what the previous batch committed. Not
      // sql.begin itself: see inTransaction, which ends with the
      // connection (the handler may wait long enough for the server to
      // end an idle transaction).
      inTransaction(sql, {
        mode: READ_COMMITTED,
        events: context.poolEvents,
      }, async (transaction) => {
        if (context.cancelAfter !== undefined) {
          // Behind a pooler: the statementTimeout a startup parameter
          // cannot carry, for this transaction's statements (a whole
          // number of milliseconds, checked by the options).
          await transaction.unsafe(
            `SET LOCAL statement_timeout = ${Math.ceil(context.cancelAfter)}`,
          );
        }
        // One batch of a name at a time, in any process; then check that
        // nobody moved the checkpoint meanwhile (a reset, another runner).
        const [lock] = await transaction.unsafe(
          statements.lockProjection,
          [name],
          { prepare: context.prepare },
        );
        // A server that turned read-only since the start: refused before
        // the handler, whose effects outside this transaction would repeat.
        refuseReadOnly(lock);
        const [saved] = await transaction.unsafe(
          statements.projectionPosition,
          [name],
          { prepare: context.prepare },
        );
        if ((saved === undefined ? 0n : BigInt(saved.position)) !== from) {
          return false;
        }
        let resetRequested: boolean;
        try {
          ({ resetRequested } = await runHandler(
            name,
            () => handler(events, { transaction }),
          ));
        } catch (error) {
          // The handler's own error comes out unchanged; one of the
          // transaction's lost connection is the store's to type.
          if (!isConnectionError(error)) handlerError = { error };
          throw error;
        }
        if (resetRequested) {
          // Its own handler reset it: forgotten with this batch's commit
          // (the function takes the lock this transaction holds already).
          await transaction.unsafe(statements.resetProjection, [name], {
            prepare: context.prepare,
          });
          return false;
        }
        await transaction.unsafe(
          statements.saveProjectionPosition,
          [name, to] as never[],
          { prepare: context.prepare },
        );
        return true;
      }).then((handled) => handled === true),
  ).catch((error) => {
    throw handlerError === undefined ? error : handlerError.error;
  });
}

/** A projection's checkpoint, 0n if it has none: a read. */
export async function readPosition(
  context: QueryContext,
  name: string,
): Promise<bigint> {
  const [row] = await read(
    context,
    () =>
      context.sql.unsafe(context.statements.projectionPosition, [name], {
        prepare: context.prepare,
      }),
  );
  return row === undefined ? 0n : BigInt(row.position);
}

/**
 * Forgets a projection's checkpoint (after any batch in flight), so that it
 * starts over. In a READ COMMITTED transaction of its own, whatever the
 * database's default: the function's delete must take its snapshot after
 * its lock, to see a checkpoint that the batch in flight saved.
 */
export async function resetPosition(
  context: QueryContext & Pick<BatchContext, "poolEvents">,
  name: string,
): Promise<void> {
  await answer(
    context,
    inTransaction(
      context.sql,
      { mode: READ_COMMITTED, events: context.poolEvents },
      (transaction) =>
        transaction.unsafe(context.statements.resetProjection, [name], {
          prepare: context.prepare,
        }),
    ),
  );
}

/**
 * Refuses a read-only server (a hot standby, or `default_transaction_read_only`
 * on) before a projection's first read: there, every batch would run its
 * handler and only then fail to save its checkpoint.
 *
 * @throws {ReadOnlyServer} The server is read-only, for the caller to type.
 */
export async function checkWritable(context: QueryContext): Promise<void> {
  const [row] = await read(
    context,
    () =>
      context.sql.unsafe(context.statements.readOnly, [], {
        prepare: context.prepare,
      }),
  );
  refuseReadOnly(row);
}

/** What `sql.begin` puts after BEGIN: the isolation the store's transactions need. */
const READ_COMMITTED = "isolation level read committed";

/** Why a projection's wait for a batch's turn ended: its signal aborted. */
const ABORTED = Symbol("aborted");

/**
 * Runs a batch once it has a turn of `turns` (the store's batches that may
 * run at once), waiting in line without holding a connection. An abort of
 * `signal` ends the wait: the batch is not handled (`false`), and the
 * projection's loop then stops.
 *
 * @throws {StoreClosedError} The store closed during the wait.
 */
export async function handleInTurn(
  turns: Slots,
  signal: AbortSignal | undefined,
  handle: () => Promise<boolean>,
): Promise<boolean> {
  let release: () => void;
  try {
    release = await turns.acquire(undefined, {
      timedOut: () => new StoreClosedError("run a projection"),
      closed: () => new StoreClosedError("run a projection"),
      aborted: () => ABORTED,
    }, signal);
  } catch (error) {
    if (error === ABORTED) return false;
    throw error;
  }
  try {
    return await handle();
  } finally {
    release();
  }
}
