/**
 * In-memory store throughput: `deno bench bench/in_memory_bench.ts`. Events
 * per second = iterations per second × events per iteration (the name says
 * how many).
 */
import { inMemoryWorkloads } from "./_workloads.ts";

for (const workload of inMemoryWorkloads()) {
  Deno.bench({
    name: `${workload.name} (${workload.eventsPerIteration} events)`,
    group: workload.id === "MLOAD" ? "load" : "append",
    fn: () => workload.run(),
  });
}
