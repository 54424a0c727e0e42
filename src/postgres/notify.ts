/**
 * How the PostgreSQL store tells subscribers (in any process) that appends
 * committed: one NOTIFY for the appends of a few milliseconds, and one
 * LISTEN per store. Private to the package.
 *
 * @module
 */

import type { Wakeups } from "../_subscription.ts";
import type { PostgresSql } from "./driver.ts";
import type { Log } from "./read.ts";

/**
 * How long a quiet subscription sleeps between reads: the safety net behind
 * NOTIFY (a reader held back by an older running transaction is not
 * notified again when that one ends).
 */
export const POSTGRES_POLL_MS = 1_000;

/**
 * How long an append's NOTIFY waits for others to share it: a few
 * milliseconds of delivery delay against one notification per append.
 */
const NOTIFY_DELAY_MS = 5;

/** What a {@linkcode Notifier} needs of its store. */
export interface NotifierContext {
  /** The postgres.js instance. */
  readonly sql: PostgresSql;
  /** The statement that sends the NOTIFY. */
  readonly notify: string;
  /** The channel appends notify. */
  readonly channel: string;
  /** What subscribers of this store wait on. */
  readonly wakeups: Wakeups;
  /** The store's calls in flight, which `close()` lets finish. */
  readonly inFlight: Set<Promise<unknown>>;
  /** Whether the store is closed. */
  closed(): boolean;
  /** The store's log. */
  readonly log: Log;
}

/** The NOTIFY after appends and the LISTEN of one store. */
export class Notifier {
  readonly #context: NotifierContext;
  #listening: Promise<void> | undefined;
  #unlisten: (() => Promise<void>) | undefined;
  #notifyTimer: ReturnType<typeof setTimeout> | undefined;

  /** @param context The store's instance, channel, wake-ups and log. */
  constructor(context: NotifierContext) {
    this.#context = context;
  }

  /**
   * Tells subscribers (in any process) that appends committed: a NOTIFY
   * after the appends, not inside them. Inside, every committing append
   * takes PostgreSQL's notification queue lock, which serialized commits and
   * cut 16-writer throughput (W3) from 0.8 to 0.37 of its baseline
   * (measured). After, appends that commit within `NOTIFY_DELAY_MS` of each
   * other share one NOTIFY, sent without waiting for the disk.
   */
  notifyAppended(): void {
    if (this.#notifyTimer !== undefined) return;
    this.#notifyTimer = setTimeout(() => {
      this.#notifyTimer = undefined;
      this.#sendNotify();
    }, NOTIFY_DELAY_MS);
  }

  #sendNotify(): void {
    const { inFlight, log } = this.#context;
    // No parameters: the simple protocol runs both statements of `notify`
    // as one implicit transaction.
    const sending = this.#context.sql.unsafe(this.#context.notify).then(
      () => {},
      (error) => {
        // Subscribers fall back on their poll; the appends stand.
        log("warn", "Cannot notify subscribers", {
          error: error instanceof Error ? error.message : String(error),
        });
      },
    );
    inFlight.add(sending);
    sending.then(() => inFlight.delete(sending));
  }

  /**
   * Listens (once per store) for the NOTIFY that appends send.
   * A store that cannot listen still delivers, by polling: it logs why.
   */
  listen(): Promise<void> {
    // A subscription that outlived close() must not listen again.
    if (this.#context.closed()) return Promise.resolve();
    this.#listening ??= this.#context.sql.listen(
      this.#context.channel,
      () => this.#context.wakeups.wake(),
    ).then(
      ({ unlisten }) => {
        this.#unlisten = unlisten;
      },
      (error) => {
        this.#context.log(
          "warn",
          "Cannot listen for appends; subscriptions poll",
          {
            error: error instanceof Error ? error.message : String(error),
          },
        );
      },
    );
    return this.#listening;
  }

  /**
   * Sends the NOTIFY still due, then waits for the LISTEN to start and
   * stops it. Never throws.
   */
  async close(): Promise<void> {
    if (this.#notifyTimer !== undefined) {
      // Appends that were still to be announced: announce them now.
      clearTimeout(this.#notifyTimer);
      this.#notifyTimer = undefined;
      this.#sendNotify();
    }
    await this.#listening;
    await this.#unlisten?.().catch(() => {});
  }
}
