/**
 * In-memory store throughput. `deno bench bench/in_memory_bench.ts`; events
 * per second = iterations per second × events per iteration (the name says
 * how many).
 */
import { InMemoryEventStore } from "../mod.ts";
import { orderEvents } from "./_fixtures.ts";

/** Appends go to a fresh store now and then, so memory stays flat. */
function appendBench(batchSize: number): () => Promise<void> {
  const batch = orderEvents(batchSize);
  let store = new InMemoryEventStore();
  let appends = 0;
  return async () => {
    if (++appends % 1000 === 0) store = new InMemoryEventStore();
    await store.appendEvents(`order-${appends % 100}`, batch);
  };
}

Deno.bench({
  name: "append 1 event per call",
  group: "append",
  fn: appendBench(1),
});

Deno.bench({
  name: "append 100 events per call",
  group: "append",
  baseline: true,
  fn: appendBench(100),
});

const loadStore = new InMemoryEventStore();
for (let chunk = 0; chunk < 10; chunk++) {
  await loadStore.appendEvents("order-big", orderEvents(1000));
}

Deno.bench({
  name: "load a 10,000-event stream",
  group: "load",
  async fn() {
    const events = await loadStore.loadEvents("order-big");
    if (events.length !== 10_000) throw new Error("expected 10,000 events");
  },
});
