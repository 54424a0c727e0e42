/**
 * PostgreSQL store throughput, each workload next to its raw baseline (see
 * `_workloads.ts`): `deno bench -A bench/postgres_bench.ts`. It uses
 * `DATABASE_URL` or the throwaway cluster the tests use, started here with
 * durable commits (fsync and synchronous_commit on). Events per second =
 * iterations per second × events per iteration (the name says how many).
 * `deno task bench:report` prints the same as one table with ratios.
 */
import { PostgresEventStore } from "../mod.ts";
import { createTestDatabase } from "../tests/_database.ts";
import { postgresWorkloads } from "./_workloads.ts";

const database = await createTestDatabase({ durable: true });
{
  await using store = await PostgresEventStore.connect(database.url);
  await store.migrate();
}
const { workloads } = await postgresWorkloads(database.url);

for (const workload of workloads) {
  const group = (workload.baseline ?? workload.id).replace(/ raw$/, "");
  Deno.bench({
    name:
      `${workload.id}: ${workload.name} (${workload.eventsPerIteration} events)`,
    group,
    baseline: workload.id.endsWith(" raw"),
    fn: () => workload.run(),
  });
}
