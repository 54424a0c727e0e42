/**
 * Order processing, the seed design's example: an order aggregate (Draft →
 * Placed → Shipped or Cancelled, money in integer cents) handled through an
 * {@linkcode AggregateRepository}, on the in-memory store by default and on
 * PostgreSQL when `DATABASE_URL` is set.
 *
 * ```sh
 * deno task example                                    # in memory
 * DATABASE_URL=postgres://app:secret@localhost:5432/app deno task example
 * ```
 *
 * It places orders, ships one, cancels one and shows a refused command;
 * rebuilds an order from its stream; lets two handlers race on one order;
 * grows an order until it is snapshotted; and runs a live projection,
 * revenue per customer, that follows new orders as they come in. Every run uses fresh order ids,
 * so it can run again and again on the same database.
 *
 * @module
 */

import { isDeepStrictEqual } from "node:util";
import {
  type Aggregate,
  AggregateRepository,
  type EventStore,
  EventStoreError,
  InMemoryEventStore,
  type LoadedAggregate,
  PostgresEventStore,
  type RecordedEvent,
} from "../mod.ts";

// ── The domain ──────────────────────────────────────────────────────────────

/** One line of an order. */
export interface LineItem {
  sku: string;
  quantity: number;
  unitPriceCents: number;
}

/** Where an order is in its life. */
export type OrderStatus = "draft" | "placed" | "shipped" | "cancelled";

/** The state of an order, folded from its events. */
export interface Order {
  status: OrderStatus;
  customer: string | null;
  items: LineItem[];
  totalCents: number;
  trackingNumber: string | null;
  cancelReason: string | null;
}

/** What a user can ask of an order. */
export type OrderCommand =
  | { type: "PlaceOrder"; customer: string; items: LineItem[] }
  | { type: "AddLineItem"; item: LineItem }
  | { type: "ShipOrder"; trackingNumber: string }
  | { type: "CancelOrder"; reason: string };

/** What happened to an order. Type names carry their schema version. */
export type OrderEvent =
  | {
    type: "OrderPlaced.v1";
    data: { customer: string; items: LineItem[]; totalCents: number };
  }
  | { type: "LineItemAdded.v1"; data: { item: LineItem } }
  | { type: "OrderShipped.v1"; data: { trackingNumber: string } }
  | { type: "OrderCancelled.v1"; data: { reason: string } };

/** A command the order's rules refuse. */
export class OrderRuleError extends Error {
  override name = "OrderRuleError";
}

function lineTotal(item: LineItem): number {
  return item.quantity * item.unitPriceCents;
}

function checkItem(item: LineItem): void {
  if (!Number.isInteger(item.quantity) || item.quantity < 1) {
    throw new OrderRuleError(
      `Cannot order ${item.quantity} × ${item.sku}: quantity must be a whole number of at least 1`,
    );
  }
  if (!Number.isInteger(item.unitPriceCents) || item.unitPriceCents < 0) {
    throw new OrderRuleError(
      `Cannot price ${item.sku} at ${item.unitPriceCents}: prices are whole cents, not negative`,
    );
  }
}

function requireText(value: string, what: string): void {
  if (value.trim() === "") {
    throw new OrderRuleError(`Cannot accept an empty ${what}`);
  }
}

function requirePlaced(order: Order, action: string): void {
  if (order.status !== "placed") {
    throw new OrderRuleError(
      `Cannot ${action}: the order is ${order.status}, not placed`,
    );
  }
}

/** The order aggregate: plain functions, no I/O. */
export const orderAggregate: Aggregate<Order, OrderCommand, OrderEvent> = {
  snapshotVersion: 1,
  initialState: () => ({
    status: "draft",
    customer: null,
    items: [],
    totalCents: 0,
    trackingNumber: null,
    cancelReason: null,
  }),
  evolve(order, event) {
    switch (event.type) {
      case "OrderPlaced.v1":
        return {
          ...order,
          status: "placed",
          customer: event.data.customer,
          items: event.data.items,
          totalCents: event.data.totalCents,
        };
      case "LineItemAdded.v1":
        return {
          ...order,
          items: [...order.items, event.data.item],
          totalCents: order.totalCents + lineTotal(event.data.item),
        };
      case "OrderShipped.v1":
        return {
          ...order,
          status: "shipped",
          trackingNumber: event.data.trackingNumber,
        };
      case "OrderCancelled.v1":
        return {
          ...order,
          status: "cancelled",
          cancelReason: event.data.reason,
        };
    }
  },
  decide(command, order) {
    switch (command.type) {
      case "PlaceOrder": {
        if (order.status !== "draft") {
          throw new OrderRuleError(
            `Cannot place the order: it is already ${order.status}`,
          );
        }
        requireText(command.customer, "customer");
        if (command.items.length === 0) {
          throw new OrderRuleError("Cannot place an order without items");
        }
        command.items.forEach(checkItem);
        const totalCents = command.items.reduce(
          (sum, item) => sum + lineTotal(item),
          0,
        );
        return [{
          type: "OrderPlaced.v1",
          data: {
            customer: command.customer,
            items: command.items,
            totalCents,
          },
        }];
      }
      case "AddLineItem":
        requirePlaced(order, `add ${command.item.sku}`);
        checkItem(command.item);
        return [{ type: "LineItemAdded.v1", data: { item: command.item } }];
      case "ShipOrder":
        requirePlaced(order, "ship the order");
        requireText(command.trackingNumber, "tracking number");
        return [{
          type: "OrderShipped.v1",
          data: { trackingNumber: command.trackingNumber },
        }];
      case "CancelOrder":
        requirePlaced(order, "cancel the order");
        requireText(command.reason, "cancellation reason");
        return [{
          type: "OrderCancelled.v1",
          data: { reason: command.reason },
        }];
    }
  },
};

// ── The walkthrough ─────────────────────────────────────────────────────────

/** How many events between snapshots: small, so the example reaches one. */
export const SNAPSHOT_EVERY = 10;

/** What the walkthrough ended with, for its test. */
export interface ExampleResult {
  /** The order ids, by role. */
  ids: { shipped: string; cancelled: string; raced: string; big: string };
  /** Each order's final state, by id. */
  orders: Record<string, Order>;
  /** The message of the refused command. */
  refused: string;
  /** Whether the rebuilt order equalled the live one. */
  rebuildEqual: boolean;
  /** The retries each racing handler made, in start order. */
  raceRetries: number[];
  /** How the big order loaded after it was snapshotted. */
  bigLoad: LoadedAggregate<Order>;
  /** Revenue per customer, in cents, from the live projection: before and after two more orders. */
  revenue: { before: Record<string, number>; after: Record<string, number> };
}

function dollars(cents: number): string {
  return `$${(cents / 100).toFixed(2)}`;
}

function describe(order: Order): string {
  const lines = order.items.reduce((sum, item) => sum + item.quantity, 0);
  const detail = order.status === "shipped"
    ? `, tracking ${order.trackingNumber}`
    : order.status === "cancelled"
    ? `, "${order.cancelReason}"`
    : "";
  return `${order.status}, ${
    order.customer ?? "no customer"
  }, ${lines} item(s), ${dollars(order.totalCents)}${detail}`;
}

/**
 * Runs the walkthrough on a store, printing each step.
 *
 * @param store The store to use; left open.
 * @param print Where lines go.
 * @param runId Makes this run's order ids unique.
 * @returns What the test asserts.
 */
export async function runExample(
  store: EventStore,
  print: (line: string) => void,
  runId: string = crypto.randomUUID().slice(0, 8),
): Promise<ExampleResult> {
  const orders = new AggregateRepository(store, orderAggregate, {
    snapshotEvery: SNAPSHOT_EVERY,
  });
  const id = (n: number) => `order-${runId}-${n}`;
  const ids = { shipped: id(1), cancelled: id(2), raced: id(3), big: id(4) };
  const final: Record<string, Order> = {};

  print("\n1. Place orders, ship one, cancel one, refuse one");
  const catalogue: Record<string, LineItem> = {
    tea: { sku: "TEA-42", quantity: 2, unitPriceCents: 1250 },
    mug: { sku: "MUG-7", quantity: 1, unitPriceCents: 899 },
    wrap: { sku: "GIFT-WRAP", quantity: 1, unitPriceCents: 300 },
  };
  for (
    const [orderId, customer, items] of [
      [ids.shipped, "Ada", [catalogue.tea, catalogue.mug]],
      [ids.cancelled, "Grace", [catalogue.mug]],
      [ids.raced, "Linus", [catalogue.tea]],
    ] as const
  ) {
    const placed = await orders.handle(orderId, {
      type: "PlaceOrder",
      customer,
      items: [...items],
    });
    print(
      `   ${orderId} PlaceOrder → ${
        describe(placed.state)
      } (v${placed.version})`,
    );
  }
  const shipped = await orders.handle(ids.shipped, {
    type: "ShipOrder",
    trackingNumber: "TN-1001",
  });
  print(
    `   ${ids.shipped} ShipOrder → ${
      describe(shipped.state)
    } (v${shipped.version})`,
  );
  const cancelled = await orders.handle(ids.cancelled, {
    type: "CancelOrder",
    reason: "customer changed their mind",
  });
  print(
    `   ${ids.cancelled} CancelOrder → ${
      describe(cancelled.state)
    } (v${cancelled.version})`,
  );
  let refused = "";
  try {
    await orders.handle(ids.cancelled, {
      type: "ShipOrder",
      trackingNumber: "TN-1002",
    });
  } catch (error) {
    if (!(error instanceof OrderRuleError)) throw error;
    refused = error.message;
    print(`   ${ids.cancelled} ShipOrder refused: ${refused}`);
  }
  print(
    `   ${ids.cancelled} is still at version ${await store.streamVersion(
      ids.cancelled,
    )}`,
  );
  const neverPlaced = id(0);
  try {
    await orders.handle(neverPlaced, {
      type: "ShipOrder",
      trackingNumber: "TN-1003",
    });
  } catch (error) {
    if (!(error instanceof OrderRuleError)) throw error;
    print(`   ${neverPlaced} ShipOrder refused: ${error.message}`);
  }
  final[ids.shipped] = shipped.state;
  final[ids.cancelled] = cancelled.state;

  print("\n2. Rebuild an order from its stream alone");
  const events = await store.loadEvents(ids.shipped);
  print(
    `   ${ids.shipped} has ${events.length} events: ${
      events.map((event) => `v${event.version} ${event.type}`).join(", ")
    }`,
  );
  const rebuilt = await orders.load(ids.shipped, { useSnapshot: false });
  const rebuildEqual = isDeepStrictEqual(rebuilt.state, shipped.state);
  print(`   rebuilt: ${describe(rebuilt.state)}`);
  print(`   equal to the live state: ${rebuildEqual ? "yes" : "NO"}`);

  print("\n3. Two handlers race on one order; the loser retries");
  // Both handlers load before either appends: a gate holds each append until
  // both are waiting, as two requests arriving at once would be.
  const racing = new AggregateRepository(
    holdAppendsUntil(2, store),
    orderAggregate,
    { snapshotEvery: SNAPSHOT_EVERY },
  );
  const race = await Promise.all(
    (["A", "B"] as const).map(async (handler) => {
      const item = handler === "A" ? catalogue.wrap : catalogue.mug;
      const result = await racing.handle(ids.raced, {
        type: "AddLineItem",
        item,
      });
      print(
        `   handler ${handler} added ${item.sku}: v${result.version}, ${
          result.retries === 0
            ? "first try"
            : `after ${result.retries} retry (it had read a stale version)`
        }`,
      );
      return result;
    }),
  );
  const raced = await orders.load(ids.raced);
  print(`   ${ids.raced} → ${describe(raced.state)} (v${raced.version})`);
  final[ids.raced] = raced.state;

  print(
    `\n4. Grow an order past snapshots (one every ${SNAPSHOT_EVERY} events)`,
  );
  await orders.handle(ids.big, {
    type: "PlaceOrder",
    customer: "Margaret",
    items: [catalogue.tea],
  });
  for (let line = 1; line < 25; line++) {
    const result = await orders.handle(ids.big, {
      type: "AddLineItem",
      item: { sku: `PART-${line}`, quantity: 1, unitPriceCents: 100 + line },
    });
    if (result.snapshotSavedAt !== undefined) {
      print(`   v${result.version}: snapshot saved`);
    }
  }
  const bigLoad = await orders.load(ids.big);
  print(
    `   next load: snapshot at v${bigLoad.snapshotAt} + ${bigLoad.eventsApplied} event(s) after it → v${bigLoad.version}`,
  );
  const fromEvents = await orders.load(ids.big, { useSnapshot: false });
  print(`   ${describe(bigLoad.state)}`);
  print(
    `   equal to a rebuild from all ${fromEvents.eventsApplied} events: ${
      isDeepStrictEqual(bigLoad.state, fromEvents.state) ? "yes" : "NO"
    }`,
  );
  final[ids.big] = bigLoad.state;

  print("\n5. A live projection: revenue per customer, as orders come in");
  const projection = revenueProjection(`order-${runId}-`);
  const stop = new AbortController();
  // Checkpointed under its name: a restarted process resumes where it was.
  const running = store.runProjection<OrderEvent["data"]>(
    `revenue-per-customer-${runId}`,
    projection.handle,
    { category: "order", signal: stop.signal },
  );
  const caughtUpWith = async (orderId: string) => {
    const [last] = await store.loadEvents(orderId, {
      fromVersion: await store.streamVersion(orderId),
    });
    while (
      await store.projectionPosition(`revenue-per-customer-${runId}`) <
        last.globalPosition
    ) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  };
  await caughtUpWith(ids.big);
  const before = projection.revenue();
  print(`   ${describeRevenue(before)}`);
  for (
    const [orderId, customer, item] of [
      [id(5), "Ada", catalogue.tea],
      [id(6), "Grace", catalogue.mug],
    ] as const
  ) {
    await orders.handle(orderId, {
      type: "PlaceOrder",
      customer,
      items: [item],
    });
    print(
      `   ${orderId} PlaceOrder by ${customer}, ${dollars(lineTotal(item))}`,
    );
  }
  await caughtUpWith(id(6));
  const after = projection.revenue();
  print(`   ${describeRevenue(after)}`);
  stop.abort();
  await running;

  return {
    ids,
    orders: final,
    refused,
    rebuildEqual,
    raceRetries: race.map((result) => result.retries),
    bigLoad,
    revenue: { before, after },
  };
}

/**
 * A read model: revenue per customer, in cents. Placed orders and added
 * lines count; a cancelled order's total is taken back. It keeps to the
 * orders whose ids start with `prefix` (this run's).
 */
function revenueProjection(prefix: string) {
  const revenue = new Map<string, number>();
  const customers = new Map<string, string>();
  const totals = new Map<string, number>();
  const add = (orderId: string, cents: number) => {
    const customer = customers.get(orderId)!;
    revenue.set(customer, (revenue.get(customer) ?? 0) + cents);
    totals.set(orderId, (totals.get(orderId) ?? 0) + cents);
  };
  return {
    handle(events: RecordedEvent<OrderEvent["data"]>[]): void {
      for (const event of events) {
        if (!event.streamId.startsWith(prefix)) continue;
        const { streamId, type, data } = event as unknown as OrderEvent & {
          streamId: string;
        };
        if (type === "OrderPlaced.v1") {
          customers.set(streamId, data.customer);
          add(streamId, data.totalCents);
        } else if (type === "LineItemAdded.v1") {
          add(streamId, lineTotal(data.item));
        } else if (type === "OrderCancelled.v1") {
          add(streamId, -(totals.get(streamId) ?? 0));
        }
      }
    },
    revenue: (): Record<string, number> =>
      Object.fromEntries([...revenue].sort(([a], [b]) => a < b ? -1 : 1)),
  };
}

function describeRevenue(revenue: Record<string, number>): string {
  return Object.entries(revenue).map(([customer, cents]) =>
    `${customer} ${dollars(cents)}`
  ).join(", ");
}

/**
 * The store, with its appends held until `count` of them wait; later ones
 * pass at once. Everything else goes straight through.
 */
function holdAppendsUntil(count: number, store: EventStore): EventStore {
  let waiting = 0;
  let open = () => {};
  const opened = new Promise<void>((resolve) => open = resolve);
  return {
    async appendEvents(streamId, events, options) {
      if (++waiting === count) open();
      await opened;
      return await store.appendEvents(streamId, events, options);
    },
    loadEvents: (streamId, options) => store.loadEvents(streamId, options),
    readAll: (options) => store.readAll(options),
    readAllLag: () => store.readAllLag(),
    subscribe: (options) => store.subscribe(options),
    runProjection: (name, handler, options) =>
      store.runProjection(name, handler, options),
    projectionPosition: (name) => store.projectionPosition(name),
    resetProjection: (name) => store.resetProjection(name),
    streamVersion: (streamId) => store.streamVersion(streamId),
    saveSnapshot: (streamId, version, state) =>
      store.saveSnapshot(streamId, version, state),
    loadSnapshot: (streamId) => store.loadSnapshot(streamId),
    close: () => store.close(),
    [Symbol.asyncDispose]: () => store.close(),
  };
}

// ── Choosing the store ──────────────────────────────────────────────────────

/**
 * The in-memory store, or PostgreSQL (migrated) when `databaseUrl` is set.
 *
 * @param databaseUrl `DATABASE_URL`, if any.
 * @param print Where to say which store it is.
 * @returns The store.
 * @throws {EventStoreError} PostgreSQL cannot be used (unreachable, bad URL).
 */
export async function openStore(
  databaseUrl: string | undefined,
  print: (line: string) => void,
): Promise<EventStore> {
  if (databaseUrl === undefined || databaseUrl.trim() === "") {
    print(
      "Order processing on InMemoryEventStore (nothing is kept; set DATABASE_URL=postgres://… to use PostgreSQL)",
    );
    return new InMemoryEventStore();
  }
  const store = await PostgresEventStore.connect(databaseUrl, { max: 4 });
  try {
    const { applied } = await store.migrate();
    print(
      `Order processing on ${store}: ${
        applied.length === 0
          ? "schema up to date"
          : `applied ${applied.length} migration(s)`
      }`,
    );
    return store;
  } catch (error) {
    await store.close();
    throw error;
  }
}

if (import.meta.main) {
  const print = (line: string) => console.log(line);
  try {
    await using store = await openStore(Deno.env.get("DATABASE_URL"), print);
    await runExample(store, print);
  } catch (error) {
    // One clear line (never with the password) instead of a stack trace.
    if (!(error instanceof EventStoreError)) throw error;
    console.error(`error: ${error.message}`);
    Deno.exit(1);
  }
}
