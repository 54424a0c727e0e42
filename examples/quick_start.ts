/**
 * A first look at the store: append events to an order's stream, load them
 * back, lose an optimistic-concurrency race on purpose, and use a snapshot.
 *
 * Run it with `deno task example:quick`. It uses the in-memory store, so it needs
 * no database and no permissions.
 */

import {
  ConcurrencyConflictError,
  type EventStore,
  InMemoryEventStore,
  InvalidArgumentError,
} from "../mod.ts";

type OrderEvent =
  | { type: "OrderPlaced.v1"; data: { customer: string; totalCents: number } }
  | { type: "ItemAdded.v1"; data: { sku: string; priceCents: number } }
  | { type: "OrderShipped.v1"; data: { trackingNumber: string } };

interface OrderState {
  customer: string;
  totalCents: number;
  status: "placed" | "shipped";
}

function evolve(state: OrderState | undefined, event: OrderEvent): OrderState {
  switch (event.type) {
    case "OrderPlaced.v1":
      return { ...event.data, status: "placed" };
    case "ItemAdded.v1":
      return {
        ...state!,
        totalCents: state!.totalCents + event.data.priceCents,
      };
    case "OrderShipped.v1":
      return { ...state!, status: "shipped" };
  }
}

function cents(amount: number): string {
  return `$${(amount / 100).toFixed(2)}`;
}

export async function main(
  store: EventStore,
  log = console.log,
): Promise<void> {
  const streamId = "order-1001";

  log("1. Append an order's first events (expecting a new stream)");
  const placed = await store.appendEvents<OrderEvent["data"]>(streamId, [
    { type: "OrderPlaced.v1", data: { customer: "Ada", totalCents: 1250 } },
    { type: "ItemAdded.v1", data: { sku: "TEA-42", priceCents: 499 } },
  ], { expectedVersion: "no_stream" });
  log(
    `   stored 2 events; stream version ${placed.version}, global position ${placed.globalPosition}`,
  );

  log("2. Load the stream and fold it into the order's state");
  const events = await store.loadEvents(streamId);
  let state: OrderState | undefined;
  for (const event of events) {
    log(`   v${event.version} ${event.type} ${JSON.stringify(event.data)}`);
    state = evolve(state, event as unknown as OrderEvent);
  }
  log(
    `   state: ${state!.customer}'s order, ${cents(state!.totalCents)}, ${
      state!.status
    }`,
  );

  log("3. Two writers both read version 2; only the first append wins");
  const first = await store.appendEvents(streamId, [
    { type: "OrderShipped.v1", data: { trackingNumber: "TN-7" } },
  ], { expectedVersion: 2 });
  log(`   writer A shipped the order: stream version ${first.version}`);
  try {
    await store.appendEvents(streamId, [
      { type: "ItemAdded.v1", data: { sku: "MUG-1", priceCents: 900 } },
    ], { expectedVersion: 2 });
    throw new Error("writer B should have been refused");
  } catch (error) {
    if (!(error instanceof ConcurrencyConflictError)) throw error;
    log(`   writer B was refused: ${error.message}`);
  }

  log("4. Snapshot the state at version 2; load it plus the events after it");
  await store.saveSnapshot(streamId, 2, state);
  const snapshot = await store.loadSnapshot<OrderState>(streamId);
  const after = await store.loadEvents(streamId, {
    fromVersion: snapshot!.version + 1,
  });
  state = after.reduce(
    (folded, event) => evolve(folded, event as unknown as OrderEvent),
    snapshot!.state,
  );
  log(
    `   snapshot at version ${
      snapshot!.version
    }, then ${after.length} event(s): ${
      after.map((event) => event.type).join(", ")
    }`,
  );
  log(
    `   state: ${state.customer}'s order, ${
      cents(state.totalCents)
    }, ${state.status}`,
  );

  log("5. Bad input is refused before anything is written");
  try {
    await store.appendEvents(streamId, []);
    throw new Error("an empty append should have been refused");
  } catch (error) {
    if (!(error instanceof InvalidArgumentError)) throw error;
    log(`   ${error.message}`);
  }
  log(`   stream version is still ${await store.streamVersion(streamId)}`);
}

if (import.meta.main) {
  console.log("Using the in-memory store (InMemoryEventStore)\n");
  await using store = new InMemoryEventStore();
  await main(store);
}
