/**
 * `deno task bench:report`: runs every workload of `_workloads.ts` (in
 * memory, and W1–W5 on PostgreSQL next to their raw baselines), several
 * times, and prints one table of medians: events per second, the ratio to
 * the baseline, whether it meets 10,000 events/s and the workload's own
 * target. It also writes the figures as JSON (`--json PATH`, by default
 * `bench/results/report.json`).
 *
 * PostgreSQL is `DATABASE_URL` (a database is created next to it and dropped
 * afterwards) or the throwaway cluster the tests use, started with durable
 * commits. `--smoke` runs a few iterations of each, to prove the workloads
 * still run (CI does), and judges nothing. `--runs N` sets the repetitions
 * (3 by default); `--only W1,W3` runs just those workloads and their
 * baselines; `--fast` uses a cluster without durable commits (fsync and
 * synchronous_commit off), to show how much of a figure the disk's flush
 * rate decides.
 *
 * @module
 */
import postgres from "postgres";
import { PostgresEventStore } from "../mod.ts";
import { createTestDatabase } from "../tests/_database.ts";
import {
  deliveryLatency,
  inMemoryWorkloads,
  postgresWorkloads,
  type Workload,
} from "./_workloads.ts";

/** The seed design's promise. */
const TEN_K = 10_000;

/** The issue's targets: events/s and ratio to the raw baseline. */
const TARGETS: Record<string, { eventsPerSecond?: number; ratio?: number }> = {
  W1: { ratio: 0.9 },
  W2: { eventsPerSecond: 60_000, ratio: 0.85 },
  W3: { eventsPerSecond: 12_000, ratio: 0.85 },
  W4: { eventsPerSecond: 250_000 },
  M100: { eventsPerSecond: 500_000 },
  W6: { eventsPerSecond: 200_000 },
};

/** The issue's target for the delivery delay to a live subscriber. */
const LATENCY_P99_TARGET_MS = 50;

interface Options {
  smoke: boolean;
  runs: number;
  json: string;
  /** Workload ids to run (with their baselines); all when empty. */
  only: string[];
  /** A cluster without durable commits, to show what fsync costs. */
  fast: boolean;
}

function parseOptions(args: string[]): Options {
  const options: Options = {
    smoke: false,
    runs: 3,
    json: new URL("./results/report.json", import.meta.url).pathname,
    only: [],
    fast: false,
  };
  for (let index = 0; index < args.length; index++) {
    const arg = args[index];
    if (arg === "--smoke") options.smoke = true;
    else if (arg === "--runs") options.runs = Number(args[++index]);
    else if (arg === "--json") options.json = args[++index];
    else if (arg === "--only") options.only = args[++index].split(",");
    else if (arg === "--fast") options.fast = true;
    else throw new Error(`Unknown argument ${arg}`);
  }
  if (!Number.isInteger(options.runs) || options.runs < 1) {
    throw new Error("--runs takes a whole number of at least 1");
  }
  if (options.smoke) options.runs = 1;
  return options;
}

/** Events per second of one timed run of `workload`. */
async function measure(workload: Workload, smoke: boolean): Promise<number> {
  const iterations = smoke ? 2 : workload.iterations;
  const warmup = smoke ? 1 : Math.max(2, Math.ceil(iterations / 10));
  for (let iteration = 0; iteration < warmup; iteration++) await workload.run();
  const started = performance.now();
  for (let iteration = 0; iteration < iterations; iteration++) {
    await workload.run();
  }
  const seconds = (performance.now() - started) / 1000;
  return (iterations * workload.eventsPerIteration) / seconds;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1
    ? sorted[middle]
    : (sorted[middle - 1] + sorted[middle]) / 2;
}

interface Row {
  id: string;
  name: string;
  eventsPerSecond: number;
  runs: number[];
  baseline?: string;
  baselineEventsPerSecond?: number;
  ratio?: number;
  meetsTenK: boolean;
  target?: { eventsPerSecond?: number; ratio?: number; met: boolean };
}

function rowsOf(results: Map<Workload, number[]>): Row[] {
  const byId = new Map([...results].map(([workload, runs]) => [workload.id, {
    workload,
    runs,
  }]));
  return [...results].map(([workload, runs]) => {
    const eventsPerSecond = median(runs);
    const baseline = workload.baseline === undefined
      ? undefined
      : byId.get(workload.baseline);
    const baselineEventsPerSecond = baseline && median(baseline.runs);
    const ratio = baselineEventsPerSecond && eventsPerSecond /
        baselineEventsPerSecond;
    const target = TARGETS[workload.id];
    return {
      id: workload.id,
      name: workload.name,
      eventsPerSecond,
      runs,
      baseline: workload.baseline,
      baselineEventsPerSecond,
      ratio,
      meetsTenK: eventsPerSecond >= TEN_K,
      target: target && {
        ...target,
        met: (target.eventsPerSecond === undefined ||
          eventsPerSecond >= target.eventsPerSecond) &&
          (target.ratio === undefined ||
            (ratio !== undefined && ratio >= target.ratio)),
      },
    };
  });
}

function formatTable(rows: Row[], smoke: boolean): string {
  const number = (value: number | undefined) =>
    value === undefined ? "" : Math.round(value).toLocaleString("en");
  const lines = [
    "| Workload | What | events/s | baseline events/s | ratio | ≥ 10k/s | target |",
    "| --- | --- | ---: | ---: | ---: | :---: | --- |",
  ];
  for (const row of rows) {
    const target = row.target === undefined ? "" : [
      row.target.eventsPerSecond === undefined
        ? undefined
        : `≥ ${number(row.target.eventsPerSecond)}/s`,
      row.target.ratio === undefined ? undefined : `≥ ${row.target.ratio}×`,
    ].filter(Boolean).join(", ") +
      (smoke ? "" : row.target.met ? ": met" : ": missed");
    lines.push(
      `| ${row.id} | ${row.name} | ${number(row.eventsPerSecond)} | ${
        number(row.baselineEventsPerSecond)
      } | ${row.ratio === undefined ? "" : row.ratio.toFixed(2)} | ${
        row.id.endsWith(" raw") ? "" : row.meetsTenK ? "yes" : "no"
      } | ${target} |`,
    );
  }
  return lines.join("\n");
}

async function machine(url: string): Promise<Record<string, unknown>> {
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  try {
    const [server] = await sql`
      SELECT current_setting('server_version') AS version,
             current_setting('fsync') AS fsync,
             current_setting('synchronous_commit') AS synchronous_commit,
             current_setting('shared_buffers') AS shared_buffers`;
    return {
      deno: Deno.version.deno,
      os: `${Deno.build.os} ${Deno.build.arch}`,
      cores: navigator.hardwareConcurrency,
      memoryGiB: Math.round(Deno.systemMemoryInfo().total / 2 ** 30),
      postgres: { ...server },
    };
  } finally {
    await sql.end();
  }
}

async function main(): Promise<void> {
  const options = parseOptions(Deno.args);
  const database = await createTestDatabase({ durable: !options.fast });
  try {
    {
      await using store = await PostgresEventStore.connect(database.url);
      await store.migrate();
    }
    const postgresSet = await postgresWorkloads(database.url);
    const workloads = [...inMemoryWorkloads(), ...postgresSet.workloads]
      .filter((workload) =>
        options.only.length === 0 ||
        options.only.includes(workload.id.replace(/ raw$/, ""))
      );
    const results = new Map<Workload, number[]>(
      workloads.map((workload) => [workload, []]),
    );
    try {
      // Runs interleave the workloads, so a noisy moment hurts all alike.
      for (let run = 1; run <= options.runs; run++) {
        for (const workload of workloads) {
          const eventsPerSecond = await measure(workload, options.smoke);
          results.get(workload)!.push(eventsPerSecond);
          console.error(
            `run ${run}/${options.runs} ${workload.id}: ${
              Math.round(eventsPerSecond).toLocaleString("en")
            } events/s`,
          );
        }
      }
    } finally {
      await postgresSet.close();
    }
    const latency = options.only.length > 0 && !options.only.includes("W7")
      ? undefined
      : await deliveryLatency(database.url, options.smoke ? 5 : 200);
    const rows = rowsOf(results);
    const report = {
      latency,
      date: new Date().toISOString(),
      smoke: options.smoke,
      runs: options.runs,
      source: database.source,
      machine: await machine(database.url),
      rows,
    };
    console.log(
      `\n${
        options.smoke
          ? "Smoke run: figures not judged.\n\n"
          : `Medians of ${options.runs} runs.\n\n`
      }${formatTable(rows, options.smoke)}`,
    );
    if (latency !== undefined) {
      console.log(
        `\nW7 delivery from an append's commit to a live subscriber (${latency.samples} appends, 20 ms apart): p50 ${
          latency.p50.toFixed(1)
        } ms, p99 ${
          latency.p99.toFixed(1)
        } ms (target p99 < ${LATENCY_P99_TARGET_MS} ms${
          options.smoke
            ? ""
            : latency.p99 < LATENCY_P99_TARGET_MS
            ? ": met"
            : ": missed"
        })`,
      );
    }
    await Deno.mkdir(new URL(".", `file://${options.json}`), {
      recursive: true,
    });
    await Deno.writeTextFile(options.json, JSON.stringify(report, null, 2));
    console.log(`\nFigures written to ${options.json}`);
  } finally {
    await database.drop();
  }
}

if (import.meta.main) await main();
