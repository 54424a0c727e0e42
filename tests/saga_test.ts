/**
 * Projection handlers that call the store they run on: process managers
 * (sagas) reacting to events by appending, the usual pattern. Each batch
 * holds a connection for its transaction while its handler runs; with as
 * many projections as the pool has connections, the handlers' own appends
 * found none free and the store froze (4 of 30 reactions, then nothing).
 * What must hold: every reaction happens, calls outside the projections
 * keep answering, and aborting ends every `runProjection` soon after its
 * handler returns.
 */
import assert from "node:assert/strict";
import {
  ConcurrencyConflictError,
  type EventStore,
  PostgresEventStore,
  type RecordedEvent,
} from "../mod.ts";
import { newCategory } from "./conformance.ts";
import { sleep, within } from "./_wait.ts";
import { createTestDatabaseOrFail, type TestDatabase } from "./_database.ts";

const LABEL = "PostgresEventStore sagas";

const database = await createTestDatabaseOrFail(LABEL);
if (database !== undefined) registerTests(database);

type Request = { saga: number; n: number };

/**
 * Holds the first handlers until `count` of them run at once (or half a
 * second passed), so that the batches that can run together do: what
 * froze the store was every connection held by a batch at the same time.
 */
class Gate {
  #inside = 0;
  readonly #full = Promise.withResolvers<void>();
  constructor(readonly count: number) {}
  async enter(): Promise<void> {
    if (++this.#inside >= this.count) this.#full.resolve();
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      this.#full.promise,
      new Promise((resolve) => timer = setTimeout(resolve, 500)),
    ]);
    clearTimeout(timer);
  }
}

/**
 * A saga: for each request of its own, one reaction, in a stream of the
 * request's (so that a batch handled again reacts once: its retry is a
 * conflict, which it ignores).
 */
function saga(
  store: EventStore,
  saga: number,
  category: string,
  gate: Gate,
) {
  return async (events: RecordedEvent<Request>[]) => {
    await gate.enter();
    for (const event of events) {
      if (event.type !== "Requested" || event.data.saga !== saga) continue;
      // Calls of every kind, as a process manager makes them.
      await store.loadEvents(event.streamId);
      await store.streamVersion(event.streamId);
      try {
        await store.appendEvents(`${category}reaction-${event.id}`, [{
          type: "Reacted",
          data: event.data,
        }], { expectedVersion: "no_stream" });
      } catch (error) {
        if (!(error instanceof ConcurrencyConflictError)) throw error;
      }
    }
  };
}

function registerTests(database: TestDatabase) {
  Deno.test(`${LABEL}: 10 projections whose handlers append through the store, on the default pool`, async () => {
    await using store = await PostgresEventStore.connect(database.url);
    await store.migrate();
    const category = newCategory();
    // Every saga has work waiting when it starts: ten batches at once.
    for (let n = 0; n < 3; n++) {
      for (let index = 0; index < 10; index++) {
        await store.appendEvents(`${category}${index}-${n}`, [{
          type: "Requested",
          data: { saga: index, n },
        }]);
      }
    }
    const abort = new AbortController();
    const gate = new Gate(10);
    const running = Array.from(
      { length: 10 },
      (_, index) =>
        store.runProjection<Request>(
          `${category}saga-${index}`,
          saga(store, index, category, gate),
          // Only its own requests: every batch calls the store.
          {
            signal: abort.signal,
            batchSize: 1,
            category: `${category}${index}`,
          },
        ),
    );
    try {
      // Calls outside the projections answer meanwhile.
      await sleep(200);
      await within(
        store.appendEvents(`${category}-outside`, [{
          type: "Outside",
          data: {},
        }]),
        10_000,
        "an append outside the projections",
      );
      await within(
        store.loadEvents(`${category}0-0`),
        10_000,
        "a load outside the projections",
      );
      // Every reaction happens, while calls outside keep answering.
      const reactions = await within(
        (async () => {
          for (;;) {
            const reacted = await store.readAll({
              category: `${category}reaction`,
            });
            if (reacted.length >= 30) return reacted;
            await sleep(100);
          }
        })(),
        30_000,
        "30 reactions",
      );
      assert.equal(reactions.length, 30);
      const seen = new Set(
        reactions.map((event) =>
          `${(event.data as Request).saga}-${(event.data as Request).n}`
        ),
      );
      assert.equal(seen.size, 30);
      await within(
        store.appendEvents(`${category}-other`, [{ type: "Other", data: {} }]),
        10_000,
        "an append after the reactions",
      );
    } finally {
      abort.abort();
      // Each projection ends soon after its current handler returns.
      await within(Promise.all(running), 5_000, "the aborted projections");
    }
  });

  Deno.test(`${LABEL}: aborting ends projections that wait for a connection`, async () => {
    await using store = await PostgresEventStore.connect(database.url, {
      max: 2,
    });
    const category = newCategory();
    await store.appendEvents(`${category}-1`, [{
      type: "Requested",
      data: {},
    }]);
    const abort = new AbortController();
    let handled = 0;
    const release = Promise.withResolvers<void>();
    // Five projections on two connections: at most one batch holds one
    // at a time, whose handler waits; the others wait in line.
    const running = Array.from(
      { length: 5 },
      (_, index) =>
        store.runProjection(`${category}waiting-${index}`, async () => {
          handled++;
          await release.promise;
        }, { signal: abort.signal, category }),
    );
    await sleep(500);
    assert.equal(handled, 1);
    // Calls outside still answer.
    await within(store.streamVersion(`${category}-1`), 5_000, "a read");
    abort.abort();
    release.resolve();
    await within(Promise.all(running), 5_000, "the aborted projections");
    assert.equal(handled, 1);
  });

  Deno.test(`${LABEL}: drop the test database`, () => database.drop());
}
