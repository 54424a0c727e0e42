/**
 * `deno task bench:emmett` (`deno run -A --no-lock bench/emmett.ts`; no
 * lock, so that Emmett's packages stay out of `deno.lock`): W4's read beside
 * Emmett's (a peer event
 * store for Node, on PostgreSQL through node-postgres): the same 10,000
 * order events appended to one stream by each store, then loaded whole,
 * again and again, interleaved with a raw undecoded SELECT of the store's
 * rows. Prints events per second (medians) and the ratios. Not run by CI:
 * it downloads Emmett from the npm registry at run time (a dynamic import,
 * so that `deno check` and the project's dependencies stay without it).
 *
 * PostgreSQL is `DATABASE_URL` or the tests' throwaway cluster, as for
 * `bench:report`.
 *
 * @module
 */
import postgres from "postgres";
import { PostgresEventStore } from "../mod.ts";
import { createTestDatabase } from "../tests/_database.ts";
import { orderEvents } from "./_fixtures.ts";

/** Emmett's PostgreSQL event store, as far as this bench uses it. */
interface EmmettStore {
  appendToStream(
    streamName: string,
    events: { type: string; data: unknown; metadata?: unknown }[],
  ): Promise<unknown>;
  readStream(streamName: string): Promise<{ events: unknown[] }>;
  close(): Promise<void>;
}

const EMMETT = "npm:@event-driven-io/emmett-postgresql";
const EVENTS = 10_000;
const ROUNDS = Number(Deno.args[0] ?? 9);

const median = (values: number[]) =>
  [...values].sort((a, b) => a - b)[values.length >> 1];

async function main(): Promise<void> {
  const database = await createTestDatabase({ durable: true });
  const { getPostgreSQLEventStore } = await import(EMMETT) as {
    getPostgreSQLEventStore(connectionString: string): EmmettStore;
  };
  const emmett = getPostgreSQLEventStore(database.url);
  const store = await PostgresEventStore.connect(database.url, { max: 4 });
  const sql = postgres(database.url, {
    max: 2,
    onnotice: () => {},
    types: { bigint: postgres.BigInt },
  });
  try {
    await store.migrate();
    const stream = `w4emmett-${crypto.randomUUID().slice(0, 8)}`;
    for (let chunk = 0; chunk < EVENTS / 1000; chunk++) {
      const events = orderEvents(1000);
      await store.appendEvents(stream, events);
      await emmett.appendToStream(
        stream,
        events.map((event) => ({
          type: event.type,
          data: event.data,
          metadata: event.metadata,
        })),
      );
    }
    const variants: Record<string, () => Promise<number>> = {
      "store.loadEvents": async () => (await store.loadEvents(stream)).length,
      "Emmett readStream": async () =>
        (await emmett.readStream(stream)).events.length,
      "raw SELECT, undecoded": async () =>
        (await sql`SELECT * FROM events WHERE stream_id = ${stream}
                   ORDER BY version`).length,
    };
    const rates: Record<string, number[]> = {};
    for (let round = 0; round <= ROUNDS; round++) {
      for (const [name, read] of Object.entries(variants)) {
        const started = performance.now();
        const count = await read();
        const seconds = (performance.now() - started) / 1000;
        if (count !== EVENTS) throw new Error(`${name} read ${count} events`);
        if (round > 0) (rates[name] ??= []).push(EVENTS / seconds);
      }
    }
    const store_ = median(rates["store.loadEvents"]);
    console.log(
      `Medians of ${ROUNDS} interleaved rounds, ${
        EVENTS.toLocaleString("en")
      } events each:`,
    );
    for (const [name, values] of Object.entries(rates)) {
      console.log(
        `${name.padEnd(22)} ${
          Math.round(median(values)).toLocaleString("en").padStart(9)
        } events/s   store ÷ this: ${(store_ / median(values)).toFixed(2)}`,
      );
    }
  } finally {
    await emmett.close();
    await store.close();
    await sql.end();
    await database.drop();
  }
}

if (import.meta.main) await main();
