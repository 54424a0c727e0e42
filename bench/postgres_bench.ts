/**
 * PostgreSQL store append throughput, each next to a raw baseline run in the
 * same process against the same server: the same rows inserted by plain
 * postgres.js statements into a bare copy of the events table (same columns
 * and indexes, no version check, no codec).
 *
 * `deno bench -A bench/postgres_bench.ts`. It uses `DATABASE_URL` or the
 * throwaway cluster the tests use, started here with durable commits
 * (fsync and synchronous_commit on). Events per second = iterations per
 * second × events per iteration (the name says how many).
 */
import postgres from "postgres";
import { cborCodec, PostgresEventStore } from "../mod.ts";
import { createTestDatabase } from "../tests/_database.ts";
import { orderEvents } from "./_fixtures.ts";

const WRITERS = 16;
const APPENDS_PER_WRITER = 10;
const STREAMS = 1000;

const database = await createTestDatabase({ durable: true });
const store = await PostgresEventStore.connect(database.url, { max: WRITERS });
await store.migrate();
const sql = postgres(database.url, { max: WRITERS, onnotice: () => {} });
await sql`CREATE TABLE raw_events (LIKE events INCLUDING ALL)`;

const batch100 = orderEvents(100);
const single = orderEvents(1);
// The baseline gets pre-encoded data: it measures the database, not CBOR.
const encoded = batch100.map((event) => cborCodec.encode(event.data));

/** The raw baseline's insert: the rows our append writes, without checks. */
async function rawInsert(streamId: string, version: number, count: number) {
  const events = count === 1 ? single : batch100;
  const ids = events.map(() => crypto.randomUUID());
  const data = events.map((_, index) => encoded[index % encoded.length]);
  await sql`
    INSERT INTO raw_events (stream_id, version, event_id, event_type, data, metadata)
    SELECT ${streamId}, ${version} + ordinality, id, type, data, metadata
    FROM unnest(${sql.array(ids, 2951)}::uuid[],
                ${sql.array(events.map((event) => event.type), 1009)}::text[],
                ${sql.array(data, 1001)}::bytea[],
                ${
    sql.array(events.map((event) => event.metadata ?? {}) as never[], 3807)
  }::jsonb[])
      WITH ORDINALITY AS batch(id, type, data, metadata, ordinality)`;
}

let storeVersion = 0;
const w2Stream = `bench-w2-${crypto.randomUUID()}`;
Deno.bench({
  name: "W2 store: 100 events per append, one stream",
  group: "W2",
  async fn() {
    const result = await store.appendEvents(w2Stream, batch100, {
      expectedVersion: storeVersion,
    });
    storeVersion = result.version;
  },
});

let rawVersion = 0;
const rawStream = `bench-raw-${crypto.randomUUID()}`;
Deno.bench({
  name: "W2 raw: 100 rows per INSERT, one stream",
  group: "W2",
  baseline: true,
  async fn() {
    await rawInsert(rawStream, rawVersion, 100);
    rawVersion += 100;
  },
});

const versions = new Map<string, number>();
Deno.bench({
  name:
    `W3 store: ${WRITERS} writers × ${APPENDS_PER_WRITER} single-event appends, ${STREAMS} streams (${
      WRITERS * APPENDS_PER_WRITER
    } events)`,
  group: "W3",
  async fn() {
    await Promise.all(Array.from({ length: WRITERS }, async () => {
      for (let append = 0; append < APPENDS_PER_WRITER; append++) {
        const streamId = `bench-w3-${Math.floor(Math.random() * STREAMS)}`;
        // Exact expected version, as a command handler would send; a writer
        // that lost a race to the same stream simply reads and retries.
        for (;;) {
          const expected = versions.get(streamId) ?? 0;
          try {
            const result = await store.appendEvents(streamId, single, {
              expectedVersion: expected,
            });
            versions.set(streamId, result.version);
            break;
          } catch {
            versions.set(streamId, await store.streamVersion(streamId));
          }
        }
      }
    }));
  },
});

const rawVersions = new Map<string, number>();
Deno.bench({
  name:
    `W3 raw: ${WRITERS} writers × ${APPENDS_PER_WRITER} single-row INSERTs, ${STREAMS} streams`,
  group: "W3",
  baseline: true,
  async fn() {
    await Promise.all(Array.from({ length: WRITERS }, async () => {
      for (let append = 0; append < APPENDS_PER_WRITER; append++) {
        const streamId = `bench-w3-${Math.floor(Math.random() * STREAMS)}`;
        const version = (rawVersions.get(streamId) ?? 0) + 1;
        rawVersions.set(streamId, version);
        await rawInsert(streamId, version - 1, 1);
      }
    }));
  },
});
