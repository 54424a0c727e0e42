/**
 * The order-processing example on both stores, as a function and as the
 * `deno task example` a user runs: its final states, a second run on the
 * same database, and one clear line for a bad `DATABASE_URL`.
 */
import assert from "node:assert/strict";
import {
  type EventStore,
  InMemoryEventStore,
  PostgresEventStore,
} from "../mod.ts";
import {
  type ExampleResult,
  openStore,
  type Order,
  orderAggregate,
  type OrderCommand,
  OrderRuleError,
  runExample,
} from "../examples/order_processing.ts";
import { createTestDatabaseOrFail } from "./_database.ts";
import { BUNDLED_MIGRATIONS } from "../src/migrations.ts";

/** What every run must end with, whatever the store. */
function assertFinalStates(result: ExampleResult, output: string): void {
  const { ids, orders } = result;
  assert.deepEqual(
    orders[ids.shipped],
    {
      status: "shipped",
      customer: "Ada",
      items: [
        { sku: "TEA-42", quantity: 2, unitPriceCents: 1250 },
        { sku: "MUG-7", quantity: 1, unitPriceCents: 899 },
      ],
      totalCents: 3399,
      trackingNumber: "TN-1001",
      cancelReason: null,
    } satisfies Order,
  );
  assert.equal(orders[ids.cancelled].status, "cancelled");
  assert.equal(
    orders[ids.cancelled].cancelReason,
    "customer changed their mind",
  );
  assert.equal(
    result.refused,
    "Cannot ship the order: the order is cancelled, not placed",
  );
  assert.equal(result.rebuildEqual, true);
  // Exactly one of the two racing handlers retried, once; both items landed.
  assert.deepEqual([...result.raceRetries].sort(), [0, 1]);
  assert.deepEqual(
    orders[ids.raced].items.map((item) => item.sku).sort(),
    ["GIFT-WRAP", "MUG-7", "TEA-42"],
  );
  assert.equal(orders[ids.raced].totalCents, 2500 + 300 + 899);
  // 25 events, snapshots every 10: the load starts at the one of version 20.
  assert.deepEqual(
    {
      version: result.bigLoad.version,
      snapshotAt: result.bigLoad.snapshotAt,
      eventsApplied: result.bigLoad.eventsApplied,
    },
    { version: 25, snapshotAt: 20, eventsApplied: 5 },
  );
  assert.equal(orders[ids.big].items.length, 25);
  // The live projection, before and after two more orders.
  assert.deepEqual(result.revenue.before, {
    Ada: 3399,
    Grace: 0,
    Linus: 2500 + 300 + 899,
    Margaret: 2500 + 2700,
  });
  assert.deepEqual(result.revenue.after, {
    ...result.revenue.before,
    Ada: 3399 + 2500,
    Grace: 899,
  });
  assert.equal(orders[ids.big].totalCents, 2500 + 2700);
  for (
    const line of [
      "1. Place orders, ship one, cancel one, refuse one",
      "2. Rebuild an order from its stream alone",
      "3. Two handlers race on one order; the loser retries",
      "4. Grow an order past snapshots (one every 10 events)",
      "equal to the live state: yes",
      "-0 ShipOrder refused: Cannot ship the order: the order is draft, not placed",
      "next load: snapshot at v20 + 5 event(s) after it → v25",
      "equal to a rebuild from all 25 events: yes",
      "5. A live projection: revenue per customer, as orders come in",
      "   Ada $58.99, Grace $8.99, Linus $36.99, Margaret $52.00",
    ]
  ) {
    assert.ok(output.includes(line), `missing "${line}" in:\n${output}`);
  }
}

async function runOn(store: EventStore, lines: string[]) {
  const result = await runExample(store, (line) => lines.push(line));
  assertFinalStates(result, lines.join("\n"));
  return result;
}

Deno.test("example: the order's rules refuse what an order cannot do", () => {
  const { decide, evolve, initialState } = orderAggregate;
  const item = { sku: "TEA-42", quantity: 1, unitPriceCents: 100 };
  const draft = initialState();
  const placed = evolve(
    draft,
    decide({ type: "PlaceOrder", customer: "Ada", items: [item] }, draft)[0],
  );
  const shipped = evolve(
    placed,
    decide({ type: "ShipOrder", trackingNumber: "TN-1" }, placed)[0],
  );
  const cancelled = evolve(
    placed,
    decide({ type: "CancelOrder", reason: "changed mind" }, placed)[0],
  );
  const refusals: [OrderCommand, Order, RegExp][] = [
    [
      { type: "ShipOrder", trackingNumber: "TN-1" },
      draft,
      /the order is draft, not placed/,
    ],
    [
      { type: "CancelOrder", reason: "r" },
      draft,
      /the order is draft, not placed/,
    ],
    [
      { type: "ShipOrder", trackingNumber: "TN-2" },
      shipped,
      /the order is shipped, not placed/,
    ],
    [
      { type: "CancelOrder", reason: "r" },
      shipped,
      /the order is shipped, not placed/,
    ],
    [
      { type: "ShipOrder", trackingNumber: "TN-2" },
      cancelled,
      /the order is cancelled, not placed/,
    ],
    [
      { type: "PlaceOrder", customer: "Ada", items: [item] },
      placed,
      /already placed/,
    ],
    [
      { type: "PlaceOrder", customer: "Ada", items: [] },
      draft,
      /without items/,
    ],
    [
      { type: "PlaceOrder", customer: " ", items: [item] },
      draft,
      /empty customer/,
    ],
    [
      {
        type: "PlaceOrder",
        customer: "Ada",
        items: [{ ...item, quantity: 0 }],
      },
      draft,
      /quantity/,
    ],
    [
      {
        type: "PlaceOrder",
        customer: "Ada",
        items: [{ ...item, unitPriceCents: 1.5 }],
      },
      draft,
      /whole cents/,
    ],
    [
      { type: "ShipOrder", trackingNumber: "" },
      placed,
      /empty tracking number/,
    ],
    [{ type: "CancelOrder", reason: "" }, placed, /empty cancellation reason/],
    [{ type: "AddLineItem", item }, draft, /the order is draft, not placed/],
  ];
  for (const [command, state, message] of refusals) {
    assert.throws(
      () => decide(command, state),
      (error) => error instanceof OrderRuleError && message.test(error.message),
      `${command.type} on a ${state.status} order`,
    );
  }
  assert.equal(placed.totalCents, 100);
  assert.equal(shipped.trackingNumber, "TN-1");
  assert.equal(cancelled.cancelReason, "changed mind");
});

Deno.test("example: order processing on the in-memory store", async () => {
  const lines: string[] = [];
  await using store = await openStore(undefined, (line) => lines.push(line));
  assert.ok(store instanceof InMemoryEventStore);
  assert.match(lines[0], /^Order processing on InMemoryEventStore/);
  await runOn(store, lines);
});

/** Runs `deno task example` as a user would, with only these variables. */
async function runTask(env: Record<string, string>) {
  const passOn = ["PATH", "HOME", "DENO_DIR", "XDG_CACHE_HOME"];
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["task", "example"],
    cwd: new URL("..", import.meta.url),
    clearEnv: true,
    env: {
      ...Object.fromEntries(
        passOn.flatMap((name) => {
          const value = Deno.env.get(name);
          return value === undefined ? [] : [[name, value]];
        }),
      ),
      NO_COLOR: "1",
      ...env,
    },
  }).output();
  return {
    code,
    stdout: new TextDecoder().decode(stdout),
    stderr: new TextDecoder().decode(stderr)
      // deno task announces the command it runs.
      .split("\n").filter((line) => !line.startsWith("Task ")).join("\n")
      .trim(),
  };
}

Deno.test("example: deno task example runs in memory without DATABASE_URL", async () => {
  const { code, stdout, stderr } = await runTask({});
  assert.equal(code, 0, stderr);
  assert.match(stdout, /^Order processing on InMemoryEventStore/);
  assert.match(stdout, /equal to a rebuild from all 25 events: yes/);
});

Deno.test("example: a bad DATABASE_URL is one clear line and exit code 1", async () => {
  const password = `pw-${crypto.randomUUID().slice(0, 8)}`;
  const { code, stdout, stderr } = await runTask({
    DATABASE_URL: `postgres://app:${password}@127.0.0.1:1/app`,
  });
  assert.equal(code, 1);
  assert.equal(stdout, "");
  assert.equal(stderr.split("\n").length, 1, stderr);
  assert.match(
    stderr,
    /^error: Cannot connect \(postgres:\/\/app:\*\*\*@127\.0\.0\.1:1\/app\): the database is unreachable/,
  );
  assert.ok(!stderr.includes(password));
});

const database = await createTestDatabaseOrFail("example");
if (database !== undefined) {
  Deno.test("example: order processing on PostgreSQL, twice on one database", async () => {
    for (let run = 1; run <= 2; run++) {
      const lines: string[] = [];
      await using store = await openStore(
        database.url,
        (line) => lines.push(line),
      );
      assert.ok(store instanceof PostgresEventStore);
      assert.match(
        lines[0],
        run === 1
          ? new RegExp(
            `^Order processing on PostgresEventStore\\(postgres://.*\\): applied ${BUNDLED_MIGRATIONS.length} migration\\(s\\)$`,
          )
          : /: schema up to date$/,
      );
      await runOn(store, lines);
    }
  });

  Deno.test("example: DATABASE_URL=… deno task example works on PostgreSQL", async () => {
    const { code, stdout, stderr } = await runTask({
      DATABASE_URL: database.url,
    });
    assert.equal(code, 0, stderr);
    assert.match(stdout, /^Order processing on PostgresEventStore\(/);
    assert.match(stdout, /equal to a rebuild from all 25 events: yes/);
  });

  Deno.test("example: drop the test database", () => database.drop());
}
