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
 * The single-event writes (W1 and the W3 variants) also have a reference
 * outside Deno: {@linkcode preparePgbench} runs `pgbench -M prepared` of the
 * same 1-row INSERT into a table shaped like the baseline's, which says what
 * the server does for a client with no JavaScript in the way.
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
import { statementsFor } from "../src/postgres/statements.ts";

/** One workload: `run` does one iteration of `eventsPerIteration` events. */
export interface Workload {
  /** A short id, e.g. `W2`, `W2 raw`, `W3/64`. */
  id: string;
  /**
   * The id `--only` also selects it by, when not its own: `W3` for the
   * W3 variants at other writer counts.
   */
  group?: string;
  /** What it does, for the table. */
  name: string;
  /** The id of the baseline it is compared with. */
  baseline?: string;
  /**
   * The pgbench run it is compared with, by client count: the 1-row INSERT
   * at as many clients as the workload has writers.
   */
  pgbenchClients?: number;
  /** Events written or read by one iteration. */
  eventsPerIteration: number;
  /** Iterations for a full measurement. */
  iterations: number;
  /**
   * Does one iteration. Given `latencies`, a workload that times its calls
   * (the single-event appends and their baselines) pushes each call's
   * duration there, in milliseconds; others ignore it.
   */
  run(latencies?: number[]): Promise<void>;
  /**
   * For the store's appends: the sizes of the groups the store coalesced
   * appends into since the last call (its "Appends coalesced" records), and
   * forgets them. Appends that went alone are not among them.
   */
  coalesced?: () => number[];
}

/** The writers of W3. */
export const WRITERS = 16;
/** The writer counts W3 runs at: W3 itself, then `W3/4` and `W3/64`. */
export const W3_WRITERS = [4, WRITERS, 64];
/**
 * The connections of the store's pool and of the baselines' pool, at every
 * writer count: at 64 writers, appends queue for a connection, as in a busy
 * application.
 */
export const POOL_SIZE = 16;
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
  // The sizes of the groups the store coalesced appends into.
  let groups: number[] = [];
  const store = await PostgresEventStore.connect(url, {
    max: POOL_SIZE,
    logger: (record) => {
      if (record.message === "Appends coalesced") {
        groups.push(Number(record.fields?.appends));
      }
    },
  });
  const coalesced = () => {
    const formed = groups;
    groups = [];
    return formed;
  };
  const sql = postgres(url, {
    max: POOL_SIZE,
    onnotice: () => {},
    types: { bigint: postgres.BigInt },
  });
  await createRawTable(sql, "raw_events");

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
    streamId = `bench-${label}-${run}`,
  ) => {
    let version = 0;
    return async (latencies?: number[]) => {
      // The events are built before the clock starts: the call is timed.
      const events = raw
        ? []
        : ids
        ? batch(size).map((event) => ({ ...event, id: crypto.randomUUID() }))
        : batch(size);
      const started = performance.now();
      if (raw) {
        await rawInsert(streamId, version, size);
        version += size;
      } else {
        ({ version } = await store.appendEvents(streamId, events, {
          expectedVersion: version,
        }));
      }
      latencies?.push(performance.now() - started);
    };
  };

  // W1+sub: W1's appends while a subscriber of another store (as another
  // process would be) follows them, so that what a live subscriber costs
  // the append path shows beside W1.
  const followedCategory = `w1sub${run}`;
  const followed = sequential(
    "w1-sub",
    1,
    false,
    false,
    `${followedCategory}-1`,
  );
  const follower = await subscriberOf(url, followedCategory);

  /**
   * W3: `writers` writers append single events to their own share of the
   * streams (stream s belongs to writer s mod writers), so the store and
   * the baseline do the same work and no append conflicts.
   */
  const concurrent = (
    raw: boolean,
    writers: number,
    appendsPerWriter: number,
  ) => {
    const versions = new Map<string, number>();
    const share = Math.floor(STREAMS / writers);
    return async (latencies?: number[]) => {
      await Promise.all(
        Array.from({ length: writers }, async (_, writer) => {
          for (let append = 0; append < appendsPerWriter; append++) {
            const stream = writer + writers *
                Math.floor(Math.random() * share);
            const streamId = `bench-w3-${writers}-${
              raw ? "raw" : "store"
            }-${run}-${stream}`;
            const version = versions.get(streamId) ?? 0;
            const started = performance.now();
            if (raw) {
              await rawInsert(streamId, version, 1);
              versions.set(streamId, version + 1);
            } else {
              const result = await store.appendEvents(streamId, batch(1), {
                expectedVersion: version,
              });
              versions.set(streamId, result.version);
            }
            latencies?.push(performance.now() - started);
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
  // W6's raw baseline reads the same rows of the raw table in its order.
  const [rawFirst] = await sql`
    SELECT min(global_position) - 1 AS before FROM raw_events
    WHERE stream_id = ${loadStream}`;
  const beforeRawLoad = BigInt(rawFirst.before);
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
      pgbenchClients: 1,
      eventsPerIteration: 1,
      iterations: 400,
      run: sequential("w1", 1, false),
    },
    {
      id: "W1+ids",
      name: "W1 with the caller's event ids (checked against the stream)",
      baseline: "W1 raw",
      pgbenchClients: 1,
      eventsPerIteration: 1,
      iterations: 400,
      run: sequential("w1-ids", 1, false, true),
    },
    {
      id: "W1+sub",
      name: "W1 while a subscriber of another store follows the stream",
      baseline: "W1 raw",
      group: "W1",
      pgbenchClients: 1,
      eventsPerIteration: 1,
      iterations: 400,
      run: async (latencies?: number[]) => {
        follower.follow();
        await followed(latencies);
      },
    },
    {
      id: "W1 raw",
      name: "raw INSERT of 1 row",
      pgbenchClients: 1,
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
    ...W3_WRITERS.flatMap((writers): Workload[] => {
      const id = writers === WRITERS ? "W3" : `W3/${writers}`;
      const pool = writers > POOL_SIZE ? ` (pool of ${POOL_SIZE})` : "";
      // About 6,400 appends a measurement at every writer count.
      const iterations = Math.max(10, 6400 / (writers * appendsPerWriter));
      const common = {
        group: writers === WRITERS ? undefined : "W3",
        pgbenchClients: writers,
        eventsPerIteration: writers * appendsPerWriter,
        iterations,
      };
      return [
        {
          ...common,
          id,
          name: `append 1 event, ${writers} writers, ${STREAMS} streams${pool}`,
          baseline: `${id} raw`,
          run: concurrent(false, writers, appendsPerWriter),
          coalesced,
        },
        {
          ...common,
          id: `${id} raw`,
          name: `raw INSERT of 1 row, ${writers} writers${pool}`,
          run: concurrent(true, writers, appendsPerWriter),
        },
      ];
    }),
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
      baseline: "W6 raw",
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
    {
      id: "W6 raw",
      name: `raw SELECT of ${
        LOAD_LENGTH.toLocaleString("en")
      } rows in position order, not decoded`,
      eventsPerIteration: LOAD_LENGTH,
      iterations: 15,
      async run() {
        const rows = await sql`
          SELECT * FROM raw_events WHERE global_position > ${beforeRawLoad}
          ORDER BY global_position LIMIT ${LOAD_LENGTH}`;
        if (rows.length !== LOAD_LENGTH) throw new Error("short read");
      },
    },
  ];
  return {
    workloads,
    async close() {
      await follower.close();
      await store.close();
      await sql.end();
    },
  };
}

/**
 * A subscriber of its own store that follows `category` while appends to it
 * keep coming: started by `follow()`, live from what `readAll` can return at
 * that moment (no catch-up of earlier runs' events), it stops by itself two
 * seconds after the last call, so that it costs nothing to the workloads run
 * after.
 */
async function subscriberOf(url: string, category: string): Promise<{
  follow(): void;
  close(): Promise<void>;
}> {
  const reader = await PostgresEventStore.connect(url, { max: 2 });
  let lastCall = 0;
  let following: Promise<void> | undefined;
  let stop: AbortController | undefined;
  return {
    follow() {
      lastCall = performance.now();
      if (following !== undefined) return;
      const controller = stop = new AbortController();
      const idle = setInterval(() => {
        if (performance.now() - lastCall > 2_000) controller.abort();
      }, 250);
      following = (async () => {
        try {
          // Live from here: the stream's history, from runs before, is not
          // this run's work (a catch-up read of it, inside the timed
          // appends, was most of what W1+sub measured before).
          const { readablePosition } = await reader.readAllLag();
          for await (
            const _ of reader.subscribe({
              category,
              fromPosition: readablePosition,
              signal: controller.signal,
            })
          ) {
            // Delivered: nothing more to do with it.
          }
        } finally {
          clearInterval(idle);
          following = undefined;
        }
      })();
    },
    async close() {
      stop?.abort();
      await following;
      await reader.close();
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

/**
 * Creates (or re-creates) `name` as a bare copy of the events table: the
 * same columns and indexes, numbered by an identity column, the plainest
 * way. The raw baselines and the pgbench reference write such tables.
 *
 * @param sql A connection to a migrated database.
 * @param name The table's name.
 */
export async function createRawTable(
  sql: postgres.Sql,
  name: string,
): Promise<void> {
  await sql`DROP TABLE IF EXISTS ${sql(name)}`;
  await sql`CREATE TABLE ${sql(name)} (LIKE events INCLUDING ALL)`;
  await sql`ALTER TABLE ${sql(name)} ALTER COLUMN global_position
            ADD GENERATED ALWAYS AS IDENTITY`;
}

/** One pgbench run: its clients, threads, duration and what it did. */
export interface PgbenchRun {
  clients: number;
  threads: number;
  seconds: number;
  /** Transactions, i.e. rows, per second, without the connection time. */
  tps: number;
  /** pgbench's "latency average", in milliseconds. */
  latencyAverageMs?: number;
}

/** The pgbench reference, prepared on one database. */
export interface Pgbench {
  /** The program run: `pgbench` from PATH, or from `pg_config --bindir`. */
  program: string;
  /** What `pgbench --version` printed. */
  version: string;
  /**
   * Runs `pgbench -n -M prepared` of the 1-row INSERT for `seconds` with
   * `clients` clients, each on its own stream, and returns its figures.
   *
   * @throws {Error} When pgbench fails, or runs 30 s past its duration
   *   (then it is killed), with the end of what it printed.
   */
  run(
    clients: number,
    seconds: number,
    script?: PgbenchScript,
  ): Promise<PgbenchRun>;
  /** Removes the script file. The table stays with the database. */
  close(): Promise<void>;
}

/**
 * What a pgbench run sends: `"insert"`, the plain 1-row INSERT (the
 * reference); `"store"`, the store's own single append with an exact
 * expected version (`appendOneExact`), the same event, each client on its
 * own stream: how close the statement comes to a plain INSERT, without
 * Deno or postgres.js in the way.
 */
export type PgbenchScript = "insert" | "store";

/**
 * The store's single append as a pgbench script: its parameters become
 * pgbench's variables (`-M prepared` sends them as parameters again).
 */
function storePgbenchScript(): string {
  const statement = statementsFor('"public"').appendOneExact
    .replaceAll("$1", "(CAST(:stream AS text) || 'store-' || :client_id)")
    .replaceAll("$2::uuid", "gen_random_uuid()")
    .replaceAll("$3::text", "'ItemAdded.v1'::text")
    .replaceAll("$4::bytea", "CAST(:data AS bytea)")
    .replaceAll("$5::text", "CAST(:metadata AS text)")
    .replaceAll("$6::bigint", "CAST(:previous AS bigint)");
  if (/\$\d/.test(statement)) {
    throw new Error("appendOneExact has a parameter the pgbench script lacks");
  }
  return `\\set previous :version
\\set version :version + 1
${statement.trim().replaceAll(/\s*\n\s*/g, " ")};
`;
}

/** The pgbench script: one row per transaction, versions counted per client. */
const PGBENCH_SCRIPT = `\\set version :version + 1
INSERT INTO pgbench_events (stream_id, version, event_id, event_type, data, metadata)
VALUES (CAST(:stream AS text) || :client_id, :version, gen_random_uuid(), 'ItemAdded.v1', :data, :metadata);
`;

/**
 * Finds pgbench, on PATH first, else in `pg_config --bindir` (the server's
 * binaries, which the tests' harness uses too).
 *
 * @returns The program and its version, or `undefined` when there is none.
 */
export async function findPgbench(): Promise<
  { program: string; version: string } | undefined
> {
  const onPath = await output("pgbench", ["--version"]);
  if (onPath?.success) {
    return { program: "pgbench", version: onPath.text.trim() };
  }
  const bindir = await output("pg_config", ["--bindir"]);
  if (!bindir?.success) return undefined;
  const program = `${bindir.text.trim()}/pgbench`;
  const version = await output(program, ["--version"]);
  return version?.success
    ? { program, version: version.text.trim() }
    : undefined;
}

/**
 * Prepares the pgbench reference on a migrated database: finds pgbench,
 * creates `pgbench_events` (shaped like the raw baselines' table) and
 * writes the script to a temporary file. pgbench connects with `url`
 * itself (libpq takes a `postgres://` URL as its connection string), as the
 * current user, with the password, if any, in `PGPASSWORD` rather than on
 * its command line.
 *
 * @param url A migrated database.
 * @returns The reference, or `undefined` when there is no pgbench.
 */
export async function preparePgbench(
  url: string,
): Promise<Pgbench | undefined> {
  const found = await findPgbench();
  if (found === undefined) return undefined;
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  try {
    await createRawTable(sql, "pgbench_events");
  } finally {
    await sql.end();
  }
  const scripts: Record<PgbenchScript, string> = {
    insert: await Deno.makeTempFile({ prefix: "pgbench_", suffix: ".sql" }),
    store: await Deno.makeTempFile({ prefix: "pgbench_", suffix: ".sql" }),
  };
  await Deno.writeTextFile(scripts.insert, PGBENCH_SCRIPT);
  await Deno.writeTextFile(scripts.store, storePgbenchScript());
  const target = new URL(url);
  const password = decodeURIComponent(target.password);
  target.password = "";
  const event = orderEvents(1)[0];
  const data = Array.from(
    cborCodec.encode(event.data),
    (byte) => byte.toString(16).padStart(2, "0"),
  ).join("");
  const label = crypto.randomUUID().slice(0, 8);
  let runs = 0;
  return {
    ...found,
    async run(clients, seconds, script = "insert") {
      // One thread per core, at most one per client.
      const threads = Math.min(clients, navigator.hardwareConcurrency || 2);
      const args = [
        "-n",
        "-M",
        "prepared",
        "-c",
        String(clients),
        "-j",
        String(threads),
        "-T",
        String(seconds),
        "-D",
        "version=0",
        "-D",
        `stream=pgbench-${label}-${++runs}-`,
        "-D",
        `data=\\x${data}`,
        "-D",
        `metadata=${JSON.stringify(event.metadata)}`,
        "-f",
        scripts[script],
        target.href,
      ];
      const timeoutMs = (seconds + 30) * 1000;
      const result = await output(found.program, args, {
        env: password === "" ? {} : { PGPASSWORD: password },
        timeoutMs,
      });
      const what =
        `pgbench -c ${clients} -j ${threads} -T ${seconds} (${script})`;
      if (result === undefined) throw new Error(`Cannot run ${what}`);
      if (result.timedOut) {
        throw new Error(
          `Cannot finish ${what}: still running after ${timeoutMs} ms, killed`,
        );
      }
      const tps =
        /^tps = ([\d.]+) \((?:without initial connection time|excluding connections establishing)\)$/m
          .exec(result.text);
      if (!result.success || tps === null) {
        throw new Error(`Cannot finish ${what}: ${tail(result.text)}`);
      }
      const latency = /^latency average = ([\d.]+) ms$/m.exec(result.text);
      return {
        clients,
        threads,
        seconds,
        tps: Number(tps[1]),
        latencyAverageMs: latency ? Number(latency[1]) : undefined,
      };
    },
    async close() {
      for (const script of Object.values(scripts)) {
        await Deno.remove(script).catch(() => undefined);
      }
    },
  };
}

/**
 * Runs `program` to its end (killed after `timeoutMs`) and returns what it
 * printed, stdout then stderr; `undefined` when it cannot be started.
 */
async function output(
  program: string,
  args: string[],
  options: { env?: Record<string, string>; timeoutMs?: number } = {},
): Promise<
  { success: boolean; text: string; timedOut: boolean } | undefined
> {
  const signal = AbortSignal.timeout(options.timeoutMs ?? 10_000);
  try {
    // output() waits for the process, killed or not: nothing is left behind.
    const { success, stdout, stderr } = await new Deno.Command(program, {
      args,
      env: { PGCONNECT_TIMEOUT: "10", LC_MESSAGES: "C", ...options.env },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      signal,
    }).output();
    const decoder = new TextDecoder();
    return {
      success,
      text: decoder.decode(stdout) + decoder.decode(stderr),
      timedOut: !success && signal.aborted,
    };
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return undefined;
    throw error;
  }
}

function tail(text: string, lines = 10): string {
  return text.trimEnd().split("\n").slice(-lines).join("\n");
}
