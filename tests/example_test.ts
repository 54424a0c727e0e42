import assert from "node:assert/strict";
import { InMemoryEventStore } from "../mod.ts";
import { main } from "../examples/quick_start.ts";

Deno.test("example: quick start runs and tells what it did", async () => {
  const lines: string[] = [];
  await using store = new InMemoryEventStore();
  await main(store, (line) => lines.push(line));
  const output = lines.join("\n");
  assert.match(output, /stored 2 events; stream version 2/);
  assert.match(output, /state: Ada's order, \$17\.49, placed/);
  assert.match(
    output,
    /writer B was refused: Cannot append to stream "order-1001": expected version 2, actual version 3/,
  );
  assert.match(
    output,
    /snapshot at version 2, then 1 event\(s\): OrderShipped\.v1/,
  );
  assert.match(output, /state: Ada's order, \$17\.49, shipped/);
  assert.match(output, /Invalid argument events: must hold at least one event/);
  assert.match(output, /stream version is still 3/);
});
