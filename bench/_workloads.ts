/**
 * The benchmark workloads, written once: `deno bench` (bench/*_bench.ts)
 * and `deno task bench:report` (bench/report.ts) run the same code.
 *
 * Each PostgreSQL workload of the store (W1–W4) has a raw baseline: the same
 * rows written or read with plain postgres.js statements on a bare copy of
 * the events table (same columns and indexes), with no checks and no codec
 * (its data is encoded once, up front). The ratio store ÷ baseline says how
 * much of what PostgreSQL and the driver can do on this machine the store
 * delivers.
 *
 * @module
 */
import postgres from "postgres";
import {
  type Aggregate,
  AggregateRepository,
  cborCodec,
  InMemoryEventStore,
  type NewEvent,
  PostgresEventStore,
} from "../mod.ts";
import { orderEvents } from "./_fixtures.ts";

/** One workload: `run` does one iteration of `eventsPerIteration` events. */
export interface Workload {
  /** A short id, e.g. `W2`, `W2 raw`. */
  id: string;
  /** What it does, for the table. */
  name: string;
  /** The id of the baseline it is compared with. */
  baseline?: string;
  /** Events written or read by one iteration. */
  eventsPerIteration: number;
  /** Iterations for a full measurement. */
  iterations: number;
  /** Does one iteration. */
  run(): Promise<void>;
}

/** The writers of W3. */
export const WRITERS = 16;
/** The streams W3 writes to. */
export const STREAMS = 1000;
/** The length of the stream W4 loads. */
export const LOAD_LENGTH = 10_000;

/** Workloads on the in-memory store. */
export function inMemoryWorkloads(): Workload[] {
  const append = (size: number): () => Promise<void> => {
    const batch = orderEvents(size);
    let store = new InMemoryEventStore();
    let appends = 0;
    return async () => {
      // A fresh store now and then, so memory stays flat.
      if (++appends % 1000 === 0) store = new InMemoryEventStore();
      await store.appendEvents(`order-${appends % 100}`, batch);
    };
  };
  const loaded = new InMemoryEventStore();
  const filled = (async () => {
    for (let chunk = 0; chunk < LOAD_LENGTH / 1000; chunk++) {
      await loaded.appendEvents("order-big", orderEvents(1000));
    }
  })();
  return [
    {
      id: "M1",
      name: "in memory: append 1 event per call",
      eventsPerIteration: 1,
      iterations: 20_000,
      run: append(1),
    },
    {
      id: "M100",
      name: "in memory: append 100 events per call",
      eventsPerIteration: 100,
      iterations: 500,
      run: append(100),
    },
    {
      id: "MLOAD",
      name: `in memory: load a ${
        LOAD_LENGTH.toLocaleString("en")
      }-event stream`,
      eventsPerIteration: LOAD_LENGTH,
      iterations: 20,
      async run() {
        await filled;
        const events = await loaded.loadEvents("order-big");
        if (events.length !== LOAD_LENGTH) throw new Error("short load");
      },
    },
  ];
}

/** A state that W5's aggregate folds: a few numbers. */
interface Tally {
  items: number;
  totalCents: number;
}

const tally: Aggregate<Tally, NewEvent, NewEvent> = {
  initialState: () => ({ items: 0, totalCents: 0 }),
  evolve: (state, event) => {
    const data = event.data as { quantity: number; priceCents: number };
    return {
      items: state.items + data.quantity,
      totalCents: state.totalCents + data.quantity * data.priceCents,
    };
  },
  decide: (command) => [command],
};

/** PostgreSQL workloads, their baselines, and how to release them. */
export interface PostgresWorkloads {
  workloads: Workload[];
  close(): Promise<void>;
}

/**
 * Sets up the PostgreSQL workloads on a migrated database: the store, a
 * pool for the baselines, the bare `raw_events` table, and the streams W4
 * and W5 read.
 *
 * @param url A migrated database.
 */
export async function postgresWorkloads(
  url: string,
): Promise<PostgresWorkloads> {
  const store = await PostgresEventStore.connect(url, { max: WRITERS });
  const sql = postgres(url, {
    max: WRITERS,
    onnotice: () => {},
    types: { bigint: postgres.BigInt },
  });
  await sql`DROP TABLE IF EXISTS raw_events`;
  await sql`CREATE TABLE raw_events (LIKE events INCLUDING ALL)`;
  // The baseline numbers its rows the plainest way: an identity column.
  await sql`ALTER TABLE raw_events ALTER COLUMN global_position
            ADD GENERATED ALWAYS AS IDENTITY`;

  const run = crypto.randomUUID().slice(0, 8);
  const batches = new Map<number, NewEvent[]>();
  const batch = (size: number) => {
    if (!batches.has(size)) batches.set(size, orderEvents(size));
    return batches.get(size)!;
  };
  // The baseline's data is encoded once: it measures the database.
  const encoded = batch(1000).map((event) => cborCodec.encode(event.data));
  const metadata = batch(1).map((event) => event.metadata ?? {})[0];

  /** The raw insert of `count` rows at versions after `version`. */
  const rawInsert = async (
    streamId: string,
    version: number,
    count: number,
  ) => {
    if (count === 1) {
      await sql`
        INSERT INTO raw_events (stream_id, version, event_id, event_type, data, metadata)
        VALUES (${streamId}, ${
        version + 1
      }, ${crypto.randomUUID()}, 'ItemAdded.v1',
                ${encoded[version % encoded.length]}, ${
        sql.json(metadata as never)
      })`;
      return;
    }
    const rows = batch(count);
    await sql`
      INSERT INTO raw_events (stream_id, version, event_id, event_type, data, metadata)
      SELECT ${streamId}, ${version} + ordinality, id, type, data, metadata
      FROM unnest(${
      sql.array(rows.map(() => crypto.randomUUID()), 2951)
    }::uuid[],
                  ${sql.array(rows.map((event) => event.type), 1009)}::text[],
                  ${
      sql.array(rows.map((_, index) => encoded[index % encoded.length]), 1001)
    }::bytea[],
                  ${
      sql.array(rows.map(() => metadata) as never[], 3807)
    }::jsonb[])
        WITH ORDINALITY AS batch(id, type, data, metadata, ordinality)`;
  };

  /**
   * One stream written by exact expected versions, store or raw. With
   * `ids`, every event carries an id of the caller's, so each append also
   * looks for its ids in the stream (what makes a retry idempotent).
   */
  const sequential = (
    label: string,
    size: number,
    raw: boolean,
    ids = false,
  ) => {
    const streamId = `bench-${label}-${run}`;
    let version = 0;
    return async () => {
      if (raw) {
        await rawInsert(streamId, version, size);
        version += size;
      } else {
        const events = ids
          ? batch(size).map((event) => ({ ...event, id: crypto.randomUUID() }))
          : batch(size);
        ({ version } = await store.appendEvents(streamId, events, {
          expectedVersion: version,
        }));
      }
    };
  };

  /**
   * W3: writers append single events to their own share of the streams
   * (stream s belongs to writer s mod WRITERS), so the store and the
   * baseline do the same work and no append conflicts.
   */
  const concurrent = (raw: boolean, appendsPerWriter: number) => {
    const versions = new Map<string, number>();
    return async () => {
      await Promise.all(
        Array.from({ length: WRITERS }, async (_, writer) => {
          for (let append = 0; append < appendsPerWriter; append++) {
            const share = STREAMS / WRITERS;
            const stream = writer + WRITERS *
                Math.floor(Math.random() * share);
            const streamId = `bench-w3-${
              raw ? "raw" : "store"
            }-${run}-${stream}`;
            const version = versions.get(streamId) ?? 0;
            if (raw) {
              await rawInsert(streamId, version, 1);
              versions.set(streamId, version + 1);
            } else {
              const result = await store.appendEvents(streamId, batch(1), {
                expectedVersion: version,
              });
              versions.set(streamId, result.version);
            }
          }
        }),
      );
    };
  };

  // W4 and W5 read streams written here, once.
  const loadStream = `bench-w4-${run}`;
  for (let chunk = 0; chunk < LOAD_LENGTH / 1000; chunk++) {
    await store.appendEvents(loadStream, batch(1000));
    await rawInsert(loadStream, chunk * 1000, 1000);
  }
  // W6 reads the same 10,000 events through readAll, from just before them.
  const [firstLoaded] = await store.loadEvents(loadStream, { maxCount: 1 });
  const beforeLoadStream = firstLoaded.globalPosition - 1n;
  const aggregateStream = `bench-w5-${run}`;
  const repository = new AggregateRepository(store, tally, {
    snapshotEvery: 100,
  });
  for (let event = 0; event < 150; event++) {
    await repository.handle(aggregateStream, batch(1)[0]);
  }
  // 150 events, a snapshot at 100: a load reads it and the 50 after it.
  const aggregateCheck = await repository.load(aggregateStream);
  if (
    aggregateCheck.snapshotAt !== 100 || aggregateCheck.eventsApplied !== 50
  ) {
    throw new Error("W5's stream is not a snapshot plus 50 events");
  }

  const appendsPerWriter = 10;
  const workloads: Workload[] = [
    {
      id: "W1",
      name: "append 1 event, one stream, one writer",
      baseline: "W1 raw",
      eventsPerIteration: 1,
      iterations: 400,
      run: sequential("w1", 1, false),
    },
    {
      id: "W1+ids",
      name: "W1 with the caller's event ids (checked against the stream)",
      baseline: "W1 raw",
      eventsPerIteration: 1,
      iterations: 400,
      run: sequential("w1-ids", 1, false, true),
    },
    {
      id: "W1 raw",
      name: "raw INSERT of 1 row",
      eventsPerIteration: 1,
      iterations: 400,
      run: sequential("w1-raw", 1, true),
    },
    ...[10, 100, 1000].flatMap((size): Workload[] => [
      {
        id: size === 100 ? "W2" : `W2/${size}`,
        name: `append ${size} events per call, one stream`,
        baseline: size === 100 ? "W2 raw" : `W2/${size} raw`,
        eventsPerIteration: size,
        iterations: Math.max(20, 20_000 / size),
        run: sequential(`w2-${size}`, size, false),
      },
      ...(size === 100
        ? [{
          id: "W2+ids",
          name: "W2 with the caller's event ids (checked against the stream)",
          baseline: "W2 raw",
          eventsPerIteration: size,
          iterations: 200,
          run: sequential("w2-ids", size, false, true),
        }]
        : []),
      {
        id: size === 100 ? "W2 raw" : `W2/${size} raw`,
        name: `raw INSERT of ${size} rows from arrays`,
        eventsPerIteration: size,
        iterations: Math.max(20, 20_000 / size),
        run: sequential(`w2-${size}-raw`, size, true),
      },
    ]),
    {
      id: "W3",
      name: `append 1 event, ${WRITERS} writers, ${STREAMS} streams`,
      baseline: "W3 raw",
      eventsPerIteration: WRITERS * appendsPerWriter,
      iterations: 40,
      run: concurrent(false, appendsPerWriter),
    },
    {
      id: "W3 raw",
      name: `raw INSERT of 1 row, ${WRITERS} writers`,
      eventsPerIteration: WRITERS * appendsPerWriter,
      iterations: 40,
      run: concurrent(true, appendsPerWriter),
    },
    {
      id: "W4",
      name: `load a ${LOAD_LENGTH.toLocaleString("en")}-event stream, decoded`,
      baseline: "W4 raw",
      eventsPerIteration: LOAD_LENGTH,
      iterations: 15,
      async run() {
        const events = await store.loadEvents(loadStream);
        if (events.length !== LOAD_LENGTH) throw new Error("short load");
      },
    },
    {
      id: "W4 raw",
      name: `raw SELECT of ${
        LOAD_LENGTH.toLocaleString("en")
      } rows, not decoded`,
      eventsPerIteration: LOAD_LENGTH,
      iterations: 15,
      async run() {
        const rows = await sql`
          SELECT * FROM raw_events WHERE stream_id = ${loadStream} ORDER BY version`;
        if (rows.length !== LOAD_LENGTH) throw new Error("short load");
      },
    },
    {
      id: "W5",
      name: "load an aggregate: snapshot + 50 events",
      eventsPerIteration: 50,
      iterations: 300,
      async run() {
        await repository.load(aggregateStream);
      },
    },
    {
      id: "W6",
      name: `readAll catch-up: ${
        LOAD_LENGTH.toLocaleString("en")
      } events in global order`,
      eventsPerIteration: LOAD_LENGTH,
      iterations: 15,
      async run() {
        const events = await store.readAll({
          fromPosition: beforeLoadStream,
          maxCount: LOAD_LENGTH,
        });
        if (events.length !== LOAD_LENGTH) throw new Error("short read");
      },
    },
  ];
  return {
    workloads,
    async close() {
      await store.close();
      await sql.end();
    },
  };
}

/** Delivery delay from an append's commit to a live subscriber, in ms. */
export interface DeliveryLatency {
  p50: number;
  p99: number;
  samples: number;
}

/**
 * Appends `count` single events, 20 ms apart (an idle store between them),
 * through one store while another store's subscription receives them, and
 * measures from each append's return to its delivery.
 *
 * @param url A migrated database.
 * @param count How many appends.
 */
export async function deliveryLatency(
  url: string,
  count: number,
): Promise<DeliveryLatency> {
  const reader = await PostgresEventStore.connect(url, { max: 2 });
  const writer = await PostgresEventStore.connect(url, { max: 2 });
  const category = `latency${crypto.randomUUID().replaceAll("-", "")}`;
  const sent = new Map<string, number>();
  const delays: number[] = [];
  const stop = new AbortController();
  try {
    const received = (async () => {
      for await (
        const event of reader.subscribe({ category, signal: stop.signal })
      ) {
        delays.push(performance.now() - sent.get(event.id)!);
        if (delays.length === count) return;
      }
    })();
    // The first read and LISTEN of the subscription, before timing starts.
    await new Promise((resolve) => setTimeout(resolve, 300));
    for (let append = 0; append < count; append++) {
      const id = crypto.randomUUID();
      await writer.appendEvents(`${category}-1`, [{
        id,
        type: "Ping",
        data: append,
      }]);
      sent.set(id, performance.now());
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const guard = setTimeout(() => stop.abort(), 10_000);
    await received;
    clearTimeout(guard);
  } finally {
    await reader.close();
    await writer.close();
  }
  const sorted = delays.sort((a, b) => a - b);
  const at = (share: number) =>
    sorted[Math.min(sorted.length - 1, Math.floor(share * sorted.length))];
  return { p50: at(0.5), p99: at(0.99), samples: sorted.length };
}
