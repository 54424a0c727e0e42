/**
 * One subscription loop for every store: catch up with `readAll`, then wait
 * for the store's wake-up (or a slow poll) and read again. The store only has
 * to say when something may have been appended.
 *
 * @module
 */

import type {
  ProjectionHandler,
  ProjectionOptions,
  ReadAllOptions,
  RecordedEvent,
  SubscribeOptions,
} from "./event_store.ts";
import { AsyncLocalStorage } from "node:async_hooks";
import { InvalidArgumentError } from "./errors.ts";
import { checkReadAllOptions, checkVersion } from "./_input.ts";

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
 * @param ready Called before the first read, so that a store can start
 *   listening before anything could be missed.
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
  // Listen before the first read, so that no wake-up falls between them.
  await ready();
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
      await wakeups.wait(pollMs, signal, seen);
    }
  }
}

/** What a store provides to run a projection. */
export interface ProjectionStorage<D> {
  /** `readAll` of the store. */
  read(options: ReadAllOptions): Promise<RecordedEvent<D>[]>;
  /** The saved position of the projection. */
  position(): Promise<bigint>;
  /**
   * Runs the handler on a batch and saves `to` as the position, together,
   * but only while the saved position is still `from`, checked under a lock
   * per projection name: a reset, or another runner of the same name, moved
   * it otherwise. Returns whether the batch was handled.
   */
  handle(
    events: RecordedEvent<D>[],
    handler: ProjectionHandler<D>,
    from: bigint,
    to: bigint,
  ): Promise<boolean>;
}

/**
 * Runs a projection until its signal aborts: read a batch after the saved
 * position, hand it over and save, or, with nothing new, wait for a
 * wake-up or the poll.
 */
export async function runProjectionLoop<D>(
  storage: ProjectionStorage<D>,
  handler: ProjectionHandler<D>,
  wakeups: Wakeups,
  pollMs: number,
  options: ProjectionOptions = {},
  ready: () => Promise<void> = () => Promise.resolve(),
): Promise<void> {
  if (typeof handler !== "function") {
    throw new InvalidArgumentError("handler", "must be a function");
  }
  const signal = options?.signal;
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    throw new InvalidArgumentError("options.signal", "must be an AbortSignal");
  }
  const { types, category } = checkReadAllOptions({
    types: options?.types,
    category: options?.category,
  });
  const batchSize = options?.batchSize === undefined
    ? 100
    : checkVersion(options.batchSize, "options.batchSize", 1);
  // Listen before the first read, so that no wake-up falls between them.
  await ready();
  let position = await storage.position();
  while (!signal?.aborted) {
    const seen = wakeups.count;
    const batch = await storage.read({
      fromPosition: position,
      maxCount: batchSize,
      types,
      category,
    });
    if (batch.length > 0) {
      const last = batch[batch.length - 1].globalPosition;
      const handled = await storage.handle(batch, handler, position, last);
      if (signal?.aborted) return;
      position = handled ? last : await storage.position(); // reset, or handled by another runner
      continue;
    }
    await wakeups.wait(pollMs, signal, seen);
  }
}

/** The batch whose handler is running, seen from inside that handler. */
interface HandlerScope {
  readonly name: string;
  resetRequested: boolean;
}

const handlerScope = new AsyncLocalStorage<HandlerScope>();

/**
 * Runs a projection's handler so that the store can tell, from inside it,
 * which projection's batch is running (see {@linkcode resetFromHandler}).
 *
 * @returns Whether the handler asked to reset its own projection.
 */
export async function runHandler(
  name: string,
  handle: () => void | Promise<void>,
): Promise<{ resetRequested: boolean }> {
  const scope: HandlerScope = { name, resetRequested: false };
  await handlerScope.run(scope, handle);
  return scope;
}

/**
 * A reset of `name` asked for by that projection's own handler: it cannot
 * wait for the batch in flight (the batch waits for it), so it is noted,
 * and the batch, instead of saving its checkpoint, forgets it, together
 * with the handler's other writes. Returns whether it was noted so.
 */
export function resetFromHandler(name: string): boolean {
  const scope = handlerScope.getStore();
  if (scope?.name !== name) return false;
  scope.resetRequested = true;
  return true;
}
