/**
 * How the PostgreSQL store wakes its subscribers when events may have been
 * appended, without costing the append anything: in this process at once,
 * from other processes by watching the head of the events table. Private to
 * the package.
 *
 * It used to be LISTEN/NOTIFY: every few milliseconds of appends sent a
 * NOTIFY on another connection, and that halved the rate of a single writer
 * (W1 at 0.40–0.43 of its raw baseline with it, 0.60–0.80 without, the same
 * runs alternating: docs/performance.md). Now an append only wakes the
 * subscribers of its own store (no SQL); a store whose subscriptions or
 * projections are reading asks for the highest global position every
 * {@linkcode HEAD_POLL_MS} (one backward probe of the position index) and
 * wakes them when it moved. It works behind every pooler (LISTEN did not in
 * transaction mode) and loses nothing to a dropped listening connection.
 *
 * @module
 */

import type { Wakeups } from "../_subscription.ts";
import type { PostgresSql } from "./driver.ts";
import type { Log } from "./read.ts";

/**
 * How long a quiet subscription sleeps between reads: the safety net
 * behind the wake-ups (a reader held back by an older running transaction
 * is not woken again when that one ends).
 */
export const POSTGRES_POLL_MS = 1_000;

/**
 * How often a store with active readers looks at the head of the events
 * table: the delay before a subscriber learns of another process's append.
 */
export const HEAD_POLL_MS = 25;

/** How long after their last read readers count as active. */
const ACTIVE_MS = 3_000;

/** What a {@linkcode Notifier} needs of its store. */
export interface NotifierContext {
  /** The postgres.js instance. */
  readonly sql: PostgresSql;
  /** Sends a statement when a connection of the store's pool is free for it. */
  withConnection<T>(send: () => Promise<T>): Promise<T>;
  /** The statement that reads the highest global position (`head`). */
  readonly head: string;
  /** Whether statements are prepared. */
  prepare(): boolean;
  /** What subscribers of this store wait on. */
  readonly wakeups: Wakeups;
  /** The store's calls in flight, which `close()` lets finish. */
  readonly inFlight: Set<Promise<unknown>>;
  /** Whether the store is closed. */
  closed(): boolean;
  /** The store's log. */
  readonly log: Log;
}

/** The wake-ups of one store's subscribers. */
export class Notifier {
  readonly #context: NotifierContext;
  /** The highest position seen: polled, or appended by this store. */
  #head = -1n;
  #watching = false;
  #lastRead = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #polling: Promise<void> | undefined;

  /** @param context The store's instance, statement, wake-ups and log. */
  constructor(context: NotifierContext) {
    this.#context = context;
  }

  /**
   * An append of this store committed at `position`: its subscribers read
   * at once. Costs the append nothing but this call.
   */
  notifyAppended(position: bigint): void {
    if (position > this.#head) this.#head = position;
    this.#context.wakeups.wake();
  }

  /**
   * Readers of this store are active (a subscription or projection read):
   * the head is watched for other processes' appends while they are.
   */
  readerActive(): void {
    this.#lastRead = performance.now();
    if (!this.#watching && !this.#context.closed()) this.#schedule();
  }

  /** For subscriptions, before their first read: starts the watch. */
  listen(): Promise<void> {
    this.readerActive();
    return Promise.resolve();
  }

  #schedule(): void {
    this.#watching = true;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      if (
        this.#context.closed() ||
        performance.now() - this.#lastRead > ACTIVE_MS
      ) {
        this.#watching = false; // readers gone quiet: the next read restarts it
        return;
      }
      const polling = this.#poll().finally(() => {
        this.#polling = undefined;
        if (this.#context.closed()) this.#watching = false;
        else this.#schedule();
      });
      this.#polling = polling;
      const { inFlight } = this.#context;
      inFlight.add(polling);
      polling.then(() => inFlight.delete(polling));
    }, HEAD_POLL_MS);
    unrefTimer(this.#timer);
  }

  async #poll(): Promise<void> {
    const { sql, head, log } = this.#context;
    try {
      const [row] = await this.#context.withConnection(() =>
        sql.unsafe(head, [], { prepare: this.#context.prepare() })
      );
      const position = row?.head === null || row?.head === undefined
        ? 0n
        : BigInt(row.head);
      if (this.#head >= 0n && position > this.#head) {
        this.#context.wakeups.wake();
      }
      if (position > this.#head) this.#head = position;
    } catch (error) {
      // Subscribers fall back on their poll; the next look may work.
      log("debug", "Cannot read the head of the events table", {
        error: error instanceof Error ? error.message : String(error),
      });
    }
  }

  /** Stops the watch and waits for a look in flight. Never throws. */
  async close(): Promise<void> {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#watching = false;
    await this.#polling;
  }
}

/** Lets the process exit while the timer waits. */
function unrefTimer(timer: ReturnType<typeof setTimeout>): void {
  try {
    globalThis.Deno?.unrefTimer(timer as unknown as number);
  } catch {
    (timer as { unref?: () => void }).unref?.();
  }
}
