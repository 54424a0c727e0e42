/**
 * A counting semaphore with a FIFO queue and an optional wait limit: how the
 * PostgreSQL store bounds the wait for a connection of its pool.
 *
 * postgres.js has no such limit: when every connection is busy it pipelines
 * a query behind another's, or queues it, for as long as it takes. The store
 * takes one slot per operation (an operation uses one connection at a time)
 * from as many slots as the pool has connections, so that an operation
 * which cannot start in time fails with a typed error instead of waiting
 * forever behind a stuck one.
 *
 * @module
 */

interface Waiter {
  resolve(release: () => void): void;
  reject(error: unknown): void;
  closed: () => unknown;
  timer: ReturnType<typeof setTimeout> | undefined;
}

/** Slots for at most `size` operations at once. */
export class Slots {
  #free: number;
  readonly #waiting: Waiter[] = [];

  /** @param size How many operations may hold a slot at once. */
  constructor(readonly size: number) {
    this.#free = size;
  }

  /**
   * Takes a slot, waiting in line for one when none is free.
   *
   * @param timeoutMs How long to wait at most; no limit when `undefined`.
   * @param errors Make the error to reject with when the wait is over, or
   *   when {@linkcode Slots.close} ends it, or when `signal` aborts it.
   * @param signal Ends the wait, if it aborts first.
   * @returns Gives the slot back; calling it again does nothing.
   */
  acquire(
    timeoutMs: number | undefined,
    errors: {
      timedOut: () => unknown;
      closed: () => unknown;
      aborted?: () => unknown;
    },
    signal?: AbortSignal,
  ): Promise<() => void> {
    if (signal?.aborted) {
      return Promise.reject((errors.aborted ?? errors.closed)());
    }
    if (this.#free > 0) {
      this.#free--;
      return Promise.resolve(this.#releaser());
    }
    return new Promise((resolve, reject) => {
      const leave = () => {
        const index = this.#waiting.indexOf(waiter);
        if (index !== -1) this.#waiting.splice(index, 1);
        clearTimeout(waiter.timer);
        signal?.removeEventListener("abort", onAbort);
      };
      const onAbort = () => {
        leave();
        reject((errors.aborted ?? errors.closed)());
      };
      const waiter: Waiter = {
        resolve: (release) => {
          signal?.removeEventListener("abort", onAbort);
          resolve(release);
        },
        reject,
        closed: errors.closed,
        timer: undefined,
      };
      if (timeoutMs !== undefined) {
        waiter.timer = setTimeout(() => {
          leave();
          reject(errors.timedOut());
        }, timeoutMs);
      }
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#waiting.push(waiter);
    });
  }

  /** Rejects everyone still waiting, with their `closed` error. */
  close(): void {
    for (const waiter of this.#waiting.splice(0)) {
      clearTimeout(waiter.timer);
      waiter.reject(waiter.closed());
    }
  }

  /** How many wait for a slot. */
  get waiting(): number {
    return this.#waiting.length;
  }

  #releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.#waiting.shift();
      if (next === undefined) {
        this.#free++;
        return;
      }
      // The slot passes straight to the next in line.
      clearTimeout(next.timer);
      next.resolve(this.#releaser());
    };
  }
}
