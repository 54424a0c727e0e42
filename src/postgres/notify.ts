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

/** How long a notification of the store's own may take to show that LISTEN works. */
const LISTEN_PROBE_MS = 1_000;

/** What a {@linkcode Notifier} needs of its store. */
export interface NotifierContext {
  /** The postgres.js instance. */
  readonly sql: PostgresSql;
  /**
   * Whether LISTEN can work on this route: `"yes"` (PostgreSQL itself),
   * `"verify"` (a pooler that may or may not keep a listening client on one
   * server connection: a notification of its own must get through first),
   * `"no"` (a pooler in transaction mode). Subscriptions poll regardless.
   */
  listens(): "yes" | "verify" | "no";
  /** Sends a statement when a connection of the store's pool is free for it. */
  withConnection<T>(send: () => Promise<T>): Promise<T>;
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
    const sending = this.#context.withConnection(() =>
      this.#context.sql.unsafe(this.#context.notify)
    ).then(
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
    this.#listening ??= this.#startListening().catch((error) => {
      this.#context.log(
        "warn",
        "Cannot listen for appends; subscriptions poll",
        { error: error instanceof Error ? error.message : String(error) },
      );
    });
    return this.#listening;
  }

  async #startListening(): Promise<void> {
    const { sql, channel, wakeups, log } = this.#context;
    const listens = this.#context.listens();
    if (listens === "no") {
      log("info", "Not listening through a pooler in transaction mode", {
        pollMs: POSTGRES_POLL_MS,
      });
      return;
    }
    const probe = listens === "verify" ? crypto.randomUUID() : undefined;
    const heard = Promise.withResolvers<void>();
    const { unlisten } = await sql.listen(channel, (payload) => {
      if (probe !== undefined && payload === probe) heard.resolve();
      wakeups.wake();
    });
    this.#unlisten = unlisten;
    if (probe === undefined) return;
    // Behind a pooler in transaction mode the listening server connection
    // goes back to the pool, and notifications reach nobody: only one of
    // our own that arrives shows that LISTEN works here.
    await this.#context.withConnection(() =>
      sql.unsafe(`SELECT pg_notify($1, $2)`, [channel, probe], {
        prepare: false,
      })
    );
    let timer: ReturnType<typeof setTimeout> | undefined;
    const arrived = await Promise.race([
      heard.promise.then(() => true),
      new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(false), LISTEN_PROBE_MS);
      }),
    ]);
    clearTimeout(timer);
    if (!arrived) {
      this.#unlisten = undefined;
      await unlisten().catch(() => {});
      log(
        "info",
        "Notifications do not get through the pooler; subscriptions poll",
        {
          pollMs: POSTGRES_POLL_MS,
        },
      );
    }
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
