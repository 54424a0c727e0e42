/**
 * `deno task bench:scale` (not in CI: it writes millions of rows): measures
 * the store's W1–W4 on an empty events table, then fills the table to 1M and
 * to 5M events and measures again, to show that append and load cost do not
 * grow with the table. The fill is done by PostgreSQL itself
 * (`generate_series`), with rows shaped like the benchmark's events: 100
 * events per stream, the same CBOR data and metadata.
 *
 * PostgreSQL is `DATABASE_URL` (a database is created next to it and
 * dropped afterwards) or a throwaway durable cluster. `--sizes 1000000,…`
 * changes the table sizes measured.
 *
 * @module
 */
import postgres from "postgres";
import { cborCodec, PostgresEventStore } from "../mod.ts";
import { createTestDatabase } from "../tests/_database.ts";
import { orderEvent } from "./_fixtures.ts";
import { postgresWorkloads } from "./_workloads.ts";

const MEASURED = ["W1", "W2", "W3", "W4"];
const FILL_CHUNK = 250_000;

function sizes(args: string[]): number[] {
  const index = args.indexOf("--sizes");
  if (index === -1) return [0, 1_000_000, 5_000_000];
  return [0, ...args[index + 1].split(",").map(Number)];
}

async function fillTo(sql: postgres.Sql, target: number): Promise<void> {
  const [{ count }] = await sql`SELECT count(*)::bigint AS count FROM events`;
  let filled = Number(count);
  const event = orderEvent(1);
  const data = cborCodec.encode(event.data);
  while (filled < target) {
    const rows = Math.min(FILL_CHUNK, target - filled);
    const started = performance.now();
    await sql`
      INSERT INTO events (global_position, stream_id, version, event_id, event_type, data, metadata)
      SELECT (pg_current_xact_id()::text::bigint << 20) + n + 1, 'fill-' || ((${filled}::bigint + n) / 100), ((${filled}::bigint + n) % 100) + 1,
             gen_random_uuid(), 'ItemAdded.v1', ${data}, ${
      sql.json(event.metadata as never)
    }
      FROM generate_series(0, ${rows - 1}) AS n`;
    filled += rows;
    console.error(
      `filled to ${filled.toLocaleString("en")} events (${
        Math.round(performance.now() - started)
      } ms for ${rows.toLocaleString("en")})`,
    );
  }
  await sql`VACUUM ANALYZE events`;
}

async function main(): Promise<void> {
  const database = await createTestDatabase({ durable: true });
  const sql = postgres(database.url, { max: 1, onnotice: () => {} });
  try {
    {
      await using store = await PostgresEventStore.connect(database.url);
      await store.migrate();
    }
    const lines = [
      "| events in the table | W1 events/s | W2 events/s | W3 events/s | W4 events/s | table + indexes |",
      "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ];
    for (const size of sizes(Deno.args)) {
      await fillTo(sql, size);
      const set = await postgresWorkloads(database.url);
      const figures: string[] = [];
      try {
        for (const id of MEASURED) {
          const workload = set.workloads.find((each) => each.id === id)!;
          for (let warmup = 0; warmup < 3; warmup++) await workload.run();
          const runs: number[] = [];
          for (let run = 0; run < 3; run++) {
            const started = performance.now();
            for (let i = 0; i < workload.iterations; i++) await workload.run();
            runs.push(
              workload.iterations * workload.eventsPerIteration /
                ((performance.now() - started) / 1000),
            );
          }
          const median = runs.sort((a, b) => a - b)[1];
          figures.push(Math.round(median).toLocaleString("en"));
          console.error(
            `${size.toLocaleString("en")} rows, ${id}: ${figures.at(-1)}`,
          );
        }
      } finally {
        await set.close();
      }
      const [{ bytes }] = await sql`
        SELECT pg_size_pretty(pg_total_relation_size('events')) AS bytes`;
      lines.push(
        `| ${size.toLocaleString("en")} | ${figures.join(" | ")} | ${bytes} |`,
      );
    }
    console.log(`\nMedians of 3 runs each.\n\n${lines.join("\n")}`);
  } finally {
    await sql.end();
    await database.drop();
  }
}

if (import.meta.main) await main();
