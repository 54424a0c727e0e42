/**
 * One subscription loop for every store: catch up with `readAll`, then wait
 * for the store's wake-up (or a slow poll) and read again. The store only has
 * to say when something may have been appended.
 *
 * @module
 */

import type {
  ReadAllOptions,
  RecordedEvent,
  SubscribeOptions,
} from "./event_store.ts";
import { InvalidArgumentError } from "./errors.ts";
import { checkReadAllOptions } from "./_input.ts";

/** Events read per round while catching up. */
const BATCH = 1000;

/** Resolves waiters when the store may have new events. */
export class Wakeups {
  #waiters = new Set<() => void>();
  #count = 0;

  /** How many wake-ups there were: a reader notes it before it reads. */
  get count(): number {
    return this.#count;
  }

  /** Wakes every waiting subscription. */
  wake(): void {
    this.#count++;
    const waiters = [...this.#waiters];
    this.#waiters.clear();
    for (const resolve of waiters) resolve();
  }

  /**
   * Waits for a wake-up after the `seen`-th, at most `ms`, or until `signal`
   * aborts: one that came while the reader was busy returns at once.
   */
  wait(
    ms: number,
    signal: AbortSignal | undefined,
    seen: number,
  ): Promise<void> {
    if (this.#count !== seen || signal?.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", done);
        this.#waiters.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      signal?.addEventListener("abort", done, { once: true });
      this.#waiters.add(done);
    });
  }
}

/**
 * The subscription's events.
 *
 * @param read `readAll` of the store.
 * @param wakeups Where the store says something may have been appended.
 * @param pollMs How long to wait without a wake-up before reading anyway.
 * @param options The subscriber's options.
 * @param ready Called once before each wait, so that a store can start
 *   listening before the subscriber first sleeps.
 */
export async function* subscription<D>(
  read: (options: ReadAllOptions) => Promise<RecordedEvent<D>[]>,
  wakeups: Wakeups,
  pollMs: number,
  options: SubscribeOptions = {},
  ready: () => Promise<void> = () => Promise.resolve(),
): AsyncGenerator<RecordedEvent<D>> {
  const signal = options?.signal;
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    throw new InvalidArgumentError("options.signal", "must be an AbortSignal");
  }
  const { fromPosition, types, category } = checkReadAllOptions({
    fromPosition: options?.fromPosition,
    types: options?.types,
    category: options?.category,
  });
  let position = fromPosition;
  while (!signal?.aborted) {
    const seen = wakeups.count;
    const batch = await read({
      fromPosition: position,
      maxCount: BATCH,
      types,
      category,
    });
    for (const event of batch) {
      if (signal?.aborted) return;
      yield event;
      position = event.globalPosition;
    }
    if (batch.length < BATCH) {
      await ready();
      await wakeups.wait(pollMs, signal, seen);
    }
  }
}
