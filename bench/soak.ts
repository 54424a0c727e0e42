/**
 * `deno task soak` (not in CI): a bounded soak test. For `--duration`
 * seconds it runs every kind of client of one store at once, then stops by
 * itself and checks, through the store and (on PostgreSQL) directly in the
 * database with postgres.js, that nothing the clients were told was lost,
 * doubled, reordered or invented:
 *
 * - **writers** append batches of 1–20 events with their own event ids, mostly
 *   with the stream version they believe in (a conflict makes them read the
 *   stream's version again), some with `"any"`, some with `"no_stream"` on
 *   new streams; an append that fails with code `"unavailable"` is sent again
 *   unchanged (same ids, same expected version), which an idempotent store
 *   answers with the first append's result;
 * - **readers** load streams and check each load has no gap and is not behind
 *   a version an append already acknowledged;
 * - an **aggregate** loop loads a snapshot and the events after it, and saves
 *   a newer snapshot;
 * - **subscribers** follow every stream from position 0, and a projection
 *   counts events.
 *
 * What a passing run proves, under that concurrency: every stream's versions
 * are 1..n without gaps; global positions are unique and strictly increasing
 * in `readAll` order (and the same in `ORDER BY global_position`); every
 * event whose append was acknowledged is stored exactly once, where its
 * append's result says, and nothing else is stored besides events of
 * appends whose outcome the writer never learned; every subscriber received
 * every stored event exactly once, in global order, and the projection
 * counted each once; no snapshot is ahead of its stream. Any of these
 * failing, or an error no client expects, makes the exit code 1.
 *
 * Figures: appends, events, loads and snapshots per second, append latency
 * (one call, p50/p99/max), delivery lag from an append's return to each
 * subscriber (approximate: it includes the subscriber's own scheduling),
 * errors by code, retries, and peak RSS of this process (which includes the
 * soak's own bookkeeping: about 100 bytes per appended event).
 *
 * PostgreSQL is `DATABASE_URL`'s server (the soak creates a database of its
 * own next to it and drops it afterwards) or the throwaway cluster the tests
 * use, started with durable commits; loopback only. `--chaos` terminates
 * one of the store's server sessions every second, so that appends fail as
 * "unavailable" and the retry path is exercised. `--store memory` soaks the
 * in-memory store instead. Ctrl-C ends the workload early and still checks
 * and cleans up; a second Ctrl-C exits at once.
 *
 * @module
 */
import postgres from "postgres";
import {
  type AppendResult,
  type EventStore,
  type ExpectedVersion,
  InMemoryEventStore,
  type NewEvent,
  PostgresEventStore,
  type RecordedEvent,
} from "../mod.ts";
import { createTestDatabase, type TestDatabase } from "../tests/_database.ts";

const HELP = `Usage: deno task soak [options]

A bounded soak test of the event store: writers, readers, an aggregate loop,
subscribers and a projection run at once for --duration seconds; then the
store is checked for lost, doubled or reordered events. Exit code 1 when an
invariant fails or an unexpected error occurred.

Options:
  --duration <seconds>  How long the workload runs (default 60)
  --writers <n>         Concurrent writers (default 8)
  --subscribers <n>     Subscribers following every stream from 0 (default 2)
  --streams <n>         Streams the writers share (default 200)
  --store <name>        postgres (default) or memory
  --max-events <n>      Stop the workload early at this many appended events
                        (default 2000000): bounds memory and check time
  --chaos               PostgreSQL only: terminate one of the store's server
                        sessions every second, to exercise retries
  --json <path>         Also write the figures as JSON to <path>
  --help                Show this help

PostgreSQL: DATABASE_URL's server (a fresh database is created and dropped;
the role needs CREATEDB), else a throwaway local cluster with durable commits.`;

/** Concurrent readers loading streams. */
const READERS = 2;
/** Share of appends to a brand-new stream, with `"no_stream"`. */
const FRESH_SHARE = 0.03;
/** Share of appends with `"any"`. */
const ANY_SHARE = 0.12;
/** An append failing as unavailable is sent again at most this often. */
const MAX_APPEND_RETRIES = 20;
/** Background loops (subscribers, projection) restart at most this often. */
const MAX_RESTARTS = 100;
/** How long subscribers and the projection get to catch up at the end. */
const CATCH_UP_MS = 60_000;
/** PostgreSQL cancels any statement of the store that runs longer. */
const STATEMENT_TIMEOUT_MS = 30_000;
/** Loops let timers run this often: the in-memory store never yields. */
const YIELD_EVERY = 16;
/** Page size of the final reads. */
const PAGE = 5_000;
/** Unexpected errors printed in full; the rest are only counted. */
const PRINTED_ERRORS = 10;
/** The store's sessions, for `--chaos` to find them in pg_stat_activity. */
const APPLICATION_NAME = "deno-eventstore-soak";
const PROJECTION = "soak-count";

interface Options {
  duration: number;
  writers: number;
  subscribers: number;
  streams: number;
  store: "postgres" | "memory";
  maxEvents: number;
  chaos: boolean;
  json?: string;
}

/** What the soak's events carry: where in its batch each one was. */
interface SoakData {
  writer: number;
  index: number;
  of: number;
  note: string;
}

/** What the aggregate loop folds: the state must equal its version. */
interface Tally {
  events: number;
  noteChars: number;
}

class UsageError extends Error {}

function parseOptions(args: string[]): Options | undefined {
  const options: Options = {
    duration: 60,
    writers: 8,
    subscribers: 2,
    streams: 200,
    store: "postgres",
    maxEvents: 2_000_000,
    chaos: false,
  };
  const value = (index: number) => {
    const next = args[index + 1];
    if (next === undefined) {
      throw new UsageError(`${args[index]} needs a value`);
    }
    return next;
  };
  const whole = (index: number, min: number) => {
    const number = Number(value(index));
    if (!Number.isInteger(number) || number < min) {
      throw new UsageError(
        `${args[index]} takes a whole number of at least ${min}`,
      );
    }
    return number;
  };
  for (let index = 0; index < args.length; index++) {
    const arg = args[index];
    if (arg === "--help" || arg === "-h") return undefined;
    if (arg === "--duration") {
      options.duration = Number(value(index));
      if (!(options.duration > 0) || !Number.isFinite(options.duration)) {
        throw new UsageError("--duration takes a positive number of seconds");
      }
      index++;
    } else if (arg === "--writers") options.writers = whole(index++, 1);
    else if (arg === "--subscribers") options.subscribers = whole(index++, 0);
    else if (arg === "--streams") options.streams = whole(index++, 1);
    else if (arg === "--max-events") options.maxEvents = whole(index++, 1);
    else if (arg === "--json") options.json = value(index++);
    else if (arg === "--chaos") options.chaos = true;
    else if (arg === "--store") {
      const store = value(index++);
      if (store !== "postgres" && store !== "memory") {
        throw new UsageError("--store takes postgres or memory");
      }
      options.store = store;
    } else throw new UsageError(`Unknown argument ${arg}`);
  }
  if (options.chaos && options.store === "memory") {
    throw new UsageError("--chaos needs --store postgres");
  }
  return options;
}

// ---------------------------------------------------------------------------
// Bookkeeping

/**
 * A global order as seen by one reader: positions and a 32-bit fingerprint of
 * each event id, in typed arrays, so that several subscribers can keep
 * millions of events without the soak's own memory swamping the RSS figure.
 */
class OrderLog {
  #positions = new BigInt64Array(4096);
  #prints = new Uint32Array(4096);
  length = 0;
  /** Events whose position was not above the one before. */
  regressions = 0;

  get last(): bigint {
    return this.length === 0 ? 0n : this.#positions[this.length - 1];
  }

  push(position: bigint, id: string): void {
    if (this.length > 0 && position <= this.last) this.regressions++;
    if (this.length === this.#positions.length) {
      const positions = new BigInt64Array(this.length * 2);
      positions.set(this.#positions);
      this.#positions = positions;
      const prints = new Uint32Array(this.length * 2);
      prints.set(this.#prints);
      this.#prints = prints;
    }
    this.#positions[this.length] = position;
    this.#prints[this.length] = fingerprint(id);
    this.length++;
  }

  positionAt(index: number): bigint {
    return this.#positions[index];
  }

  printAt(index: number): number {
    return this.#prints[index];
  }
}

/** FNV-1a of the id: a different event at the same position shows. */
function fingerprint(id: string): number {
  let hash = 0x811c9dc5;
  for (let index = 0; index < id.length; index++) {
    hash ^= id.charCodeAt(index);
    hash = Math.imul(hash, 0x01000193);
  }
  return hash >>> 0;
}

/** How `actual` differs from `expected`, by a merge of the two orders. */
interface OrderComparison {
  equal: boolean;
  missing: number;
  extra: number;
  differentEvent: number;
  firstDifference?: string;
}

function compareOrders(expected: OrderLog, actual: OrderLog): OrderComparison {
  const result: OrderComparison = {
    equal: true,
    missing: 0,
    extra: 0,
    differentEvent: 0,
  };
  const differ = (what: string) => {
    result.equal = false;
    result.firstDifference ??= what;
  };
  let i = 0;
  let j = 0;
  while (i < expected.length || j < actual.length) {
    const want = i < expected.length ? expected.positionAt(i) : undefined;
    const got = j < actual.length ? actual.positionAt(j) : undefined;
    if (got === undefined || (want !== undefined && want < got)) {
      result.missing++;
      differ(`position ${want} (index ${i}) is missing`);
      i++;
    } else if (want === undefined || got < want) {
      result.extra++;
      differ(`position ${got} (index ${j}) is not in the store's order`);
      j++;
    } else {
      if (expected.printAt(i) !== actual.printAt(j)) {
        result.differentEvent++;
        differ(`position ${got} holds another event id`);
      }
      i++;
      j++;
    }
  }
  if (actual.regressions > 0) {
    differ(`${actual.regressions} events came after a higher position`);
  }
  return result;
}

/** What the soak sent to one stream and what it was told. */
interface StreamRecord {
  streamId: string;
  /** Ids of acknowledged appends, and the versions their results imply. */
  ackIds: string[];
  ackVersions: number[];
  /** Acknowledged appends' results: the last event's version and position. */
  results: AppendResult[];
  /** Ids of appends whose outcome the writer never learned. */
  unknownIds: string[];
}

/**
 * Delivery lag of each append's last event to each subscriber: from the
 * append's return to the subscriber's receipt, 0 when the subscriber had it
 * first (possible in memory, where the append wakes subscribers itself).
 */
class DeliveryLag {
  readonly samples: number[] = [];
  beforeReturn = 0;
  #pending = new Map<bigint, { returnedAt?: number; received: number }>();

  constructor(readonly subscribers: number) {}

  returned(position: bigint, at: number): void {
    if (this.subscribers === 0) return;
    const entry = this.#pending.get(position);
    if (entry === undefined) {
      this.#pending.set(position, { returnedAt: at, received: 0 });
      return;
    }
    entry.returnedAt = at;
    for (let index = 0; index < entry.received; index++) this.samples.push(0);
    if (entry.received >= this.subscribers) this.#pending.delete(position);
  }

  received(position: bigint, at: number): void {
    const entry = this.#pending.get(position);
    if (entry === undefined) {
      this.beforeReturn++;
      this.#pending.set(position, { received: 1 });
      return;
    }
    entry.received++;
    if (entry.returnedAt === undefined) {
      this.beforeReturn++;
      return;
    }
    this.samples.push(at - entry.returnedAt);
    if (entry.received >= this.subscribers) this.#pending.delete(position);
  }
}

/** Failures of one invariant, with the first few described. */
class Violations {
  count = 0;
  readonly examples: string[] = [];

  add(what: string): void {
    this.count++;
    if (this.examples.length < 5) this.examples.push(what);
  }
}

interface Counters {
  appends: number;
  events: number;
  anyAppends: number;
  freshStreams: number;
  conflicts: number;
  versionReloads: number;
  retries: number;
  retriedAppendsAcknowledged: number;
  /** Appends that failed as unavailable and ended without a result. */
  unknownOutcomes: number;
  loads: number;
  loadedEvents: number;
  snapshotLoads: number;
  snapshotSaves: number;
  subscriberRestarts: number;
  projectionRestarts: number;
  sessionsTerminated: number;
}

/** Everything the soak's clients share. */
class Run {
  readonly counters: Counters = {
    appends: 0,
    events: 0,
    anyAppends: 0,
    freshStreams: 0,
    conflicts: 0,
    versionReloads: 0,
    retries: 0,
    retriedAppendsAcknowledged: 0,
    unknownOutcomes: 0,
    loads: 0,
    loadedEvents: 0,
    snapshotLoads: 0,
    snapshotSaves: 0,
    subscriberRestarts: 0,
    projectionRestarts: 0,
    sessionsTerminated: 0,
  };
  readonly errorsByCode: Record<string, number> = {};
  readonly unexpected = new Violations();
  readonly appendResults = new Violations();
  readonly runtimeLoads = new Violations();
  readonly runtimeSnapshots = new Violations();
  readonly appendLatencies: number[] = [];
  readonly lag: DeliveryLag;
  readonly records = new Map<string, StreamRecord>();
  /** Streams readers and the aggregate loop pick from. */
  readonly knownStreams: string[] = [];
  /** The highest version each stream is known to have reached. */
  readonly believed = new Map<string, number>();
  readonly pool: string[];
  readonly subscriberLogs: OrderLog[];
  readonly projection = { log: new OrderLog(), redelivered: 0 };
  /** Ends the workload: its deadline, the event cap or Ctrl-C. */
  readonly workload = new AbortController();
  /** Ends subscribers and the projection, after they caught up. */
  readonly followers = new AbortController();
  startedAt = 0;
  endedAt = 0;
  endedBy = "duration";
  peakRss = 0;

  constructor(readonly store: EventStore, readonly options: Options) {
    this.lag = new DeliveryLag(options.subscribers);
    this.pool = Array.from(
      { length: options.streams },
      (_, index) => `soak-${index}`,
    );
    for (const streamId of this.pool) this.record(streamId);
    this.subscriberLogs = Array.from(
      { length: options.subscribers },
      () => new OrderLog(),
    );
  }

  get stopping(): boolean {
    return this.workload.signal.aborted;
  }

  stop(reason: string): void {
    if (this.stopping) return;
    this.endedBy = reason;
    this.endedAt = performance.now();
    this.workload.abort();
  }

  record(streamId: string): StreamRecord {
    let record = this.records.get(streamId);
    if (record === undefined) {
      record = {
        streamId,
        ackIds: [],
        ackVersions: [],
        results: [],
        unknownIds: [],
      };
      this.records.set(streamId, record);
      this.knownStreams.push(streamId);
    }
    return record;
  }

  believe(streamId: string, version: number): void {
    if (version > (this.believed.get(streamId) ?? 0)) {
      this.believed.set(streamId, version);
    }
  }

  countError(code: string): void {
    this.errorsByCode[code] = (this.errorsByCode[code] ?? 0) + 1;
  }

  /** An error no client expects: reported, and the run fails. */
  fail(what: string, error: unknown): void {
    const described = `${what}: ${describe(error)}`;
    if (this.unexpected.count < PRINTED_ERRORS) {
      console.error(
        `soak: unexpected error in ${what}:`,
        error instanceof Error ? error.stack ?? error.message : error,
      );
    }
    this.unexpected.add(described);
  }

  sampleRss(): void {
    this.peakRss = Math.max(this.peakRss, Deno.memoryUsage().rss);
  }
}

function codeOf(error: unknown): string {
  if (typeof error === "object" && error !== null && "code" in error) {
    const code = (error as { code: unknown }).code;
    if (typeof code === "string") return code;
  }
  return error instanceof Error ? error.name : "thrown_value";
}

function describe(error: unknown): string {
  return error instanceof Error
    ? `${error.name} (${codeOf(error)}): ${error.message}`
    : String(error);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function pick<T>(items: readonly T[]): T {
  return items[Math.floor(Math.random() * items.length)];
}

/**
 * Errors of readers and other loops: `"unavailable"` is counted and waited
 * out; anything else fails the run.
 */
async function tolerate(run: Run, what: string, error: unknown): Promise<void> {
  const code = codeOf(error);
  run.countError(code);
  if (code === "unavailable") await sleep(50);
  else run.fail(what, error);
}

// ---------------------------------------------------------------------------
// The workload

function batchOf(writer: number): NewEvent<SoakData>[] {
  const size = 1 + Math.floor(Math.random() * 20);
  return Array.from({ length: size }, (_, index) => ({
    id: crypto.randomUUID(),
    type: pick(["ItemAdded.v1", "ItemRemoved.v1", "PriceChanged.v1"]),
    data: {
      writer,
      index,
      of: size,
      note: "x".repeat(Math.floor(Math.random() * 64)),
    },
    metadata: { writer, soak: true },
  }));
}

async function writer(run: Run, index: number): Promise<void> {
  let fresh = 0;
  for (let iteration = 1; !run.stopping; iteration++) {
    if (run.counters.events >= run.options.maxEvents) {
      run.stop("event cap");
      break;
    }
    const roll = Math.random();
    let streamId: string;
    let expected: ExpectedVersion;
    if (roll < FRESH_SHARE) {
      streamId = `soakfresh-${index}-${fresh++}`;
      expected = "no_stream";
    } else {
      streamId = pick(run.pool);
      expected = roll < FRESH_SHARE + ANY_SHARE
        ? "any"
        : run.believed.get(streamId) ?? 0;
    }
    await append(run, streamId, batchOf(index), expected);
    if (iteration % YIELD_EVERY === 0) await sleep(0);
  }
}

/**
 * One append, sent again unchanged while it fails as unavailable: the
 * same ids and expected version, so that an idempotent store answers a
 * repeat of an append that did commit with its first result.
 */
async function append(
  run: Run,
  streamId: string,
  events: NewEvent<SoakData>[],
  expected: ExpectedVersion,
): Promise<void> {
  const record = run.record(streamId);
  let outcomeUnknown = false;
  for (let attempt = 0;; attempt++) {
    const started = performance.now();
    try {
      const result = await run.store.appendEvents(streamId, events, {
        expectedVersion: expected,
      });
      const returned = performance.now();
      run.appendLatencies.push(returned - started);
      run.lag.returned(result.globalPosition, returned);
      acknowledge(run, record, events, expected, result);
      if (outcomeUnknown) run.counters.retriedAppendsAcknowledged++;
      return;
    } catch (error) {
      const code = codeOf(error);
      run.countError(code);
      if (code === "unavailable") {
        outcomeUnknown = true;
        if (attempt < MAX_APPEND_RETRIES) {
          run.counters.retries++;
          await sleep(Math.min(500, 20 * 2 ** attempt));
          continue;
        }
      }
      // An append that failed as unavailable may have committed all the
      // same: its events may be stored, but need not be.
      if (outcomeUnknown) {
        run.counters.unknownOutcomes++;
        for (const event of events) record.unknownIds.push(event.id!);
      }
      if (code === "concurrency_conflict" && expected !== "any") {
        run.counters.conflicts++;
        await reloadVersion(run, streamId);
      } else if (code !== "unavailable") {
        run.fail(`append to ${streamId}`, error);
      }
      return;
    }
  }
}

function acknowledge(
  run: Run,
  record: StreamRecord,
  events: NewEvent<SoakData>[],
  expected: ExpectedVersion,
  result: AppendResult,
): void {
  const first = result.version - events.length + 1;
  const wanted = expected === "no_stream"
    ? events.length
    : typeof expected === "number"
    ? expected + events.length
    : undefined;
  if (
    (wanted !== undefined && result.version !== wanted) || first < 1 ||
    typeof result.globalPosition !== "bigint" || result.globalPosition < 1n
  ) {
    run.appendResults.add(
      `append of ${events.length} to ${record.streamId} expecting ${
        JSON.stringify(expected)
      } returned version ${result.version}, position ${result.globalPosition}`,
    );
  }
  for (let index = 0; index < events.length; index++) {
    record.ackIds.push(events[index].id!);
    record.ackVersions.push(first + index);
  }
  record.results.push(result);
  run.believe(record.streamId, result.version);
  run.counters.appends++;
  run.counters.events += events.length;
  if (expected === "any") run.counters.anyAppends++;
  if (record.streamId.startsWith("soakfresh-")) run.counters.freshStreams++;
}

async function reloadVersion(run: Run, streamId: string): Promise<void> {
  try {
    run.believe(streamId, await run.store.streamVersion(streamId));
    run.counters.versionReloads++;
  } catch (error) {
    await tolerate(run, `streamVersion of ${streamId}`, error);
  }
}

/** Checks that `events` are consecutive versions from `from` of `streamId`. */
function gapIn(
  events: RecordedEvent[],
  streamId: string,
  from: number,
): string | undefined {
  for (let index = 0; index < events.length; index++) {
    const event = events[index];
    if (event.streamId !== streamId || event.version !== from + index) {
      return `${streamId}: event ${index} of a load from version ${from} is ${event.streamId}@${event.version}`;
    }
  }
  return undefined;
}

async function reader(run: Run): Promise<void> {
  for (let iteration = 1; !run.stopping; iteration++) {
    const streamId = pick(run.knownStreams);
    // Acknowledged before the load started: the load must include it.
    const floor = run.believed.get(streamId) ?? 0;
    const full = floor <= 100 || Math.random() < 0.25;
    const from = full ? 1 : floor - 99;
    try {
      const events = await run.store.loadEvents<SoakData>(
        streamId,
        full ? undefined : { fromVersion: from, maxCount: 200 },
      );
      run.counters.loads++;
      run.counters.loadedEvents += events.length;
      const gap = gapIn(events, streamId, from);
      if (gap !== undefined) run.runtimeLoads.add(gap);
      if (from + events.length - 1 < floor) {
        run.runtimeLoads.add(
          `${streamId}: a load from version ${from} ended at ${
            from + events.length - 1
          }, below the acknowledged version ${floor}`,
        );
      }
      if (!full && events.length > 200) {
        run.runtimeLoads.add(`${streamId}: maxCount 200 gave ${events.length}`);
      }
    } catch (error) {
      await tolerate(run, `loadEvents of ${streamId}`, error);
    }
    if (iteration % YIELD_EVERY === 0) await sleep(0);
  }
}

/** Loads a snapshot and the events after it, and saves a newer snapshot. */
async function aggregate(run: Run): Promise<void> {
  for (let iteration = 1; !run.stopping; iteration++) {
    const streamId = pick(run.knownStreams);
    try {
      const snapshot = await run.store.loadSnapshot<Tally>(streamId);
      run.counters.snapshotLoads++;
      const base = snapshot?.version ?? 0;
      if (snapshot !== undefined && snapshot.state.events !== base) {
        run.runtimeSnapshots.add(
          `${streamId}: snapshot at version ${base} folds ${snapshot.state.events} events`,
        );
      }
      const events = await run.store.loadEvents<SoakData>(streamId, {
        fromVersion: base + 1,
        maxCount: 500,
      });
      const gap = gapIn(events, streamId, base + 1);
      if (gap !== undefined) run.runtimeSnapshots.add(gap);
      // Streams only grow: a version read after the snapshot bounds it.
      const version = await run.store.streamVersion(streamId);
      if (base > version) {
        run.runtimeSnapshots.add(
          `${streamId}: snapshot at version ${base}, stream at ${version}`,
        );
      }
      if (events.length > 0 && gap === undefined) {
        const state: Tally = {
          events: base + events.length,
          noteChars: (snapshot?.state.noteChars ?? 0) +
            events.reduce((sum, event) => sum + event.data.note.length, 0),
        };
        await run.store.saveSnapshot(streamId, state.events, state);
        run.counters.snapshotSaves++;
      }
    } catch (error) {
      await tolerate(run, `snapshot of ${streamId}`, error);
    }
    if (iteration % YIELD_EVERY === 0) await sleep(0);
  }
}

async function subscriber(run: Run, index: number): Promise<void> {
  const log = run.subscriberLogs[index];
  const signal = run.followers.signal;
  for (let restarts = 0; !signal.aborted; restarts++) {
    try {
      for await (
        const event of run.store.subscribe<SoakData>({
          fromPosition: log.last,
          signal,
        })
      ) {
        log.push(event.globalPosition, event.id);
        if (event.data.index === event.data.of - 1) {
          run.lag.received(event.globalPosition, performance.now());
        }
      }
      return;
    } catch (error) {
      if (signal.aborted) return;
      await tolerate(run, `subscriber ${index}`, error);
      if (codeOf(error) !== "unavailable" || restarts >= MAX_RESTARTS) return;
      run.counters.subscriberRestarts++;
    }
  }
}

async function projection(run: Run): Promise<void> {
  const signal = run.followers.signal;
  const state = run.projection;
  for (let restarts = 0; !signal.aborted; restarts++) {
    try {
      await run.store.runProjection<SoakData>(PROJECTION, (events) => {
        for (const event of events) {
          // A batch whose checkpoint was not saved comes again: at least once.
          if (event.globalPosition <= state.log.last) state.redelivered++;
          else state.log.push(event.globalPosition, event.id);
        }
      }, { signal, batchSize: 500 });
      return;
    } catch (error) {
      if (signal.aborted) return;
      await tolerate(run, "projection", error);
      if (codeOf(error) !== "unavailable" || restarts >= MAX_RESTARTS) return;
      run.counters.projectionRestarts++;
    }
  }
}

/** `--chaos`: ends one of the store's server sessions every second. */
async function chaos(run: Run, url: string): Promise<void> {
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  try {
    while (!run.stopping) {
      await sleep(1000);
      if (run.stopping) break;
      const rows = await sql`
        SELECT pg_terminate_backend(pid) AS ended FROM pg_stat_activity
        WHERE datname = current_database()
          AND application_name = ${APPLICATION_NAME}
          AND pid <> pg_backend_pid()
        ORDER BY random() LIMIT 1`;
      if (rows[0]?.ended) run.counters.sessionsTerminated++;
    }
  } catch (error) {
    run.fail("chaos", error);
  } finally {
    await sql.end();
  }
}

function progress(run: Run): void {
  const seconds = (performance.now() - run.startedAt) / 1000;
  const { appends, events, loads, conflicts, retries } = run.counters;
  const errors = Object.values(run.errorsByCode).reduce((a, b) => a + b, 0);
  console.error(
    `soak ${
      seconds.toFixed(0).padStart(4)
    } s: ${appends} appends, ${events} events, ${loads} loads, ${conflicts} conflicts, ${retries} retries, ${errors} errors, subscribers at ${
      run.subscriberLogs.map((log) => log.length).join("/") || "-"
    }, rss ${mib(Deno.memoryUsage().rss)}`,
  );
}

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(0)} MiB`;
}

// ---------------------------------------------------------------------------
// The end: catch up, then check

/** The last stored position: past every acknowledged one, and whatever follows. */
async function lastStoredPosition(run: Run): Promise<bigint> {
  let position = 0n;
  for (const record of run.records.values()) {
    for (const result of record.results) {
      if (result.globalPosition > position) position = result.globalPosition;
    }
  }
  // Appends whose outcome was unknown may have landed after it.
  for (let page = 0; page < 1000; page++) {
    const events = await run.store.readAll({
      fromPosition: position,
      maxCount: PAGE,
    });
    if (events.length === 0) break;
    position = events[events.length - 1].globalPosition;
  }
  return position;
}

/** Waits, at most `CATCH_UP_MS`, for the followers to reach `position`. */
async function catchUp(run: Run, position: bigint): Promise<number> {
  const started = performance.now();
  while (performance.now() - started < CATCH_UP_MS) {
    const behind = [...run.subscriberLogs, run.projection.log].some((log) =>
      log.last < position
    );
    if (!behind) break;
    await sleep(20);
  }
  return performance.now() - started;
}

interface Check {
  invariant: string;
  through: "store" | "SQL" | "run";
  passed: boolean;
  detail: string;
}

function check(
  invariant: string,
  through: Check["through"],
  violations: Violations,
  passedDetail: string,
): Check {
  return {
    invariant,
    through,
    passed: violations.count === 0,
    detail: violations.count === 0
      ? passedDetail
      : `${violations.count} failures, e.g. ${violations.examples.join("; ")}`,
  };
}

const INVARIANT = {
  gapFree: "streams: versions 1..n, no gaps",
  order: "global positions unique, strictly increasing",
  exactlyOnce: "acknowledged events stored exactly once",
  subscribers: "subscribers saw every event once, in order",
  projection: "projection counted every event once, in order",
  snapshots: "snapshots never ahead of their stream",
  results: "append results match expected versions and storage",
  loads: "loads gap-free, never behind an acknowledged append",
  errors: "no unexpected errors",
};

/** What the store holds, read back through it. */
interface StoreContents {
  order: OrderLog;
  /** Events per stream, by the store's loads. */
  streamLengths: Map<string, number>;
  /** Stored events of appends whose outcome the writer never learned. */
  unknownLanded: number;
}

async function checkThroughStore(
  run: Run,
): Promise<{ checks: Check[]; contents: StoreContents }> {
  const store = run.store;
  // readAll, page by page: the global order every follower must match.
  const order = new OrderLog();
  const perStream = new Map<string, number>();
  for (let page = 0; page < 100_000; page++) {
    const events = await store.readAll({
      fromPosition: order.last,
      maxCount: PAGE,
    });
    if (events.length === 0) break;
    for (const event of events) {
      order.push(event.globalPosition, event.id);
      perStream.set(event.streamId, (perStream.get(event.streamId) ?? 0) + 1);
    }
  }
  const orderViolations = new Violations();
  if (order.regressions > 0) {
    orderViolations.add(
      `${order.regressions} events of readAll came after a higher position`,
    );
  }

  const gaps = new Violations();
  const once = new Violations();
  const results = new Violations();
  const snapshots = new Violations();
  const streamLengths = new Map<string, number>();
  let unknownLanded = 0;
  const streams = new Set([...run.records.keys(), ...perStream.keys()]);
  for (const streamId of streams) {
    const events = await store.loadEvents<SoakData>(streamId);
    const version = await store.streamVersion(streamId);
    const snapshot = await store.loadSnapshot<Tally>(streamId);
    streamLengths.set(streamId, events.length);
    const gap = gapIn(events, streamId, 1);
    if (gap !== undefined) gaps.add(gap);
    if (
      version !== events.length || (perStream.get(streamId) ?? 0) !== version
    ) {
      gaps.add(
        `${streamId}: streamVersion ${version}, loadEvents ${events.length}, readAll ${
          perStream.get(streamId) ?? 0
        }`,
      );
    }
    if (
      snapshot !== undefined &&
      (snapshot.version > events.length ||
        snapshot.state.events !== snapshot.version)
    ) {
      snapshots.add(
        `${streamId}: snapshot at version ${snapshot.version} (folding ${snapshot.state.events}), stream at ${events.length}`,
      );
    }
    const record = run.records.get(streamId);
    const stored = new Map<string, number>();
    for (const event of events) {
      if (stored.has(event.id)) {
        once.add(`${streamId}: event ${event.id} stored twice`);
      }
      stored.set(event.id, event.version);
    }
    const acknowledged = new Set(record?.ackIds);
    const unknown = new Set(record?.unknownIds);
    for (const event of events) {
      if (unknown.has(event.id)) unknownLanded++;
      else if (!acknowledged.has(event.id)) {
        once.add(
          `${streamId}@${event.version}: ${event.id} was never appended`,
        );
      }
    }
    if (record === undefined) continue;
    for (let index = 0; index < record.ackIds.length; index++) {
      const at = stored.get(record.ackIds[index]);
      if (at !== record.ackVersions[index]) {
        once.add(
          `${streamId}: acknowledged ${record.ackIds[index]} at version ${
            record.ackVersions[index]
          } is ${at === undefined ? "missing" : `at version ${at}`}`,
        );
      }
    }
    for (const result of record.results) {
      const event = events[result.version - 1];
      if (event?.globalPosition !== result.globalPosition) {
        results.add(
          `${streamId}: result (version ${result.version}, position ${result.globalPosition}) but stored position ${event?.globalPosition}`,
        );
      }
    }
  }

  const checks: Check[] = [
    check(
      INVARIANT.gapFree,
      "store",
      gaps,
      `${streams.size} streams loaded whole (${perStream.size} with events); loadEvents, streamVersion and readAll agree`,
    ),
    check(
      INVARIANT.order,
      "store",
      orderViolations,
      `${order.length} events read in readAll pages of ${PAGE}`,
    ),
    check(
      INVARIANT.exactlyOnce,
      "store",
      once,
      `${run.counters.events} acknowledged at their versions; ${unknownLanded} stored events from appends of unknown outcome`,
    ),
  ];
  run.subscriberLogs.forEach((log, index) => {
    checks.push(followerCheck(
      `${INVARIANT.subscribers} (subscriber ${index + 1})`,
      order,
      log,
    ));
  });
  const projected = followerCheck(
    INVARIANT.projection,
    order,
    run.projection.log,
  );
  const checkpoint = await store.projectionPosition(PROJECTION);
  if (checkpoint !== order.last) {
    projected.passed = false;
    projected.detail +=
      `; checkpoint ${checkpoint}, last position ${order.last}`;
  }
  if (run.projection.redelivered > 0) {
    projected.detail +=
      `; ${run.projection.redelivered} redelivered after restarts`;
  }
  checks.push(projected);
  checks.push(
    check(INVARIANT.snapshots, "store", snapshots, "every stream's snapshot"),
    check(
      INVARIANT.snapshots,
      "run",
      run.runtimeSnapshots,
      `${run.counters.snapshotLoads} snapshot loads during the run`,
    ),
    check(
      INVARIANT.loads,
      "run",
      run.runtimeLoads,
      `${run.counters.loads} loads during the run`,
    ),
    mergeViolations(
      check(
        INVARIANT.results,
        "run",
        run.appendResults,
        `${run.counters.appends} results`,
      ),
      results,
    ),
  );
  return { checks, contents: { order, streamLengths, unknownLanded } };
}

function followerCheck(
  invariant: string,
  order: OrderLog,
  log: OrderLog,
): Check {
  const comparison = compareOrders(order, log);
  return {
    invariant,
    through: "store",
    passed: comparison.equal,
    detail: comparison.equal
      ? `${log.length} events, the same as readAll`
      : `${log.length} received of ${order.length}: ${comparison.missing} missing, ${comparison.extra} extra, ${comparison.differentEvent} different; first: ${comparison.firstDifference}`,
  };
}

function mergeViolations(base: Check, more: Violations): Check {
  if (more.count === 0) {
    return {
      ...base,
      detail: `${base.detail}, each matching the stored event`,
    };
  }
  return {
    ...base,
    passed: false,
    detail: `${base.detail}; ${more.count} not matching storage, e.g. ${
      more.examples.join("; ")
    }`,
  };
}

/** The same invariants, asked of PostgreSQL directly. */
async function checkThroughSql(
  run: Run,
  url: string,
  contents: StoreContents,
): Promise<Check[]> {
  const sql = postgres(url, {
    max: 1,
    onnotice: () => {},
    types: { bigint: postgres.BigInt },
  });
  try {
    const gaps = new Violations();
    const streams = await sql<
      { stream_id: string; n: number; low: number; high: number }[]
    >`
      SELECT stream_id, count(*)::int AS n, min(version)::int AS low,
             max(version)::int AS high
      FROM events GROUP BY stream_id`;
    for (const row of streams) {
      if (row.low !== 1 || row.high !== row.n) {
        gaps.add(
          `${row.stream_id}: ${row.n} rows, versions ${row.low}..${row.high}`,
        );
      }
      const loaded = contents.streamLengths.get(row.stream_id);
      if (loaded !== row.n) {
        gaps.add(`${row.stream_id}: ${row.n} rows, the store loaded ${loaded}`);
      }
    }
    const withRows = new Set(streams.map((row) => row.stream_id));
    for (const [streamId, length] of contents.streamLengths) {
      if (length > 0 && !withRows.has(streamId)) {
        gaps.add(`${streamId}: no rows, the store loaded ${length}`);
      }
    }

    const sqlOrder = new OrderLog();
    const cursor = sql<{ global_position: bigint; event_id: string }[]>`
      SELECT global_position, event_id FROM events ORDER BY global_position`
      .cursor(PAGE);
    for await (const rows of cursor) {
      for (const row of rows) sqlOrder.push(row.global_position, row.event_id);
    }
    const comparison = compareOrders(contents.order, sqlOrder);
    const orderCheck: Check = {
      invariant: INVARIANT.order,
      through: "SQL",
      passed: comparison.equal,
      detail: comparison.equal
        ? `ORDER BY global_position: ${sqlOrder.length} rows, as readAll`
        : `${comparison.missing} rows not in readAll, ${comparison.extra} in readAll only, ${comparison.differentEvent} different; first: ${comparison.firstDifference}`,
    };

    const once = new Violations();
    const [ids] = await sql<{ rows: bigint; ids: bigint }[]>`
      SELECT count(*) AS rows, count(DISTINCT event_id) AS ids FROM events`;
    if (ids.rows !== ids.ids) {
      once.add(`${ids.rows - ids.ids} event ids stored more than once`);
    }
    await uploadAppends(sql, run);
    const [missing] = await sql<{ n: number }[]>`
      SELECT count(*)::int AS n FROM soak_acknowledged a
      LEFT JOIN events e ON e.stream_id = a.stream_id AND e.version = a.version
      WHERE e.event_id IS DISTINCT FROM a.event_id`;
    if (missing.n > 0) {
      once.add(`${missing.n} acknowledged events not at their stream version`);
    }
    const [stray] = await sql<{ n: number; unknown: number }[]>`
      SELECT count(*) FILTER (WHERE u.event_id IS NULL)::int AS n,
             count(u.event_id)::int AS unknown
      FROM events e
      LEFT JOIN soak_acknowledged a ON a.event_id = e.event_id
        AND a.stream_id = e.stream_id
      LEFT JOIN soak_unknown u ON u.event_id = e.event_id
        AND u.stream_id = e.stream_id
      WHERE a.event_id IS NULL`;
    if (stray.n > 0) once.add(`${stray.n} stored events were never appended`);

    const snapshots = new Violations();
    const [ahead] = await sql<{ n: number }[]>`
      SELECT count(*)::int AS n FROM snapshots s
      LEFT JOIN (SELECT stream_id, max(version) AS version FROM events
                 GROUP BY stream_id) e ON e.stream_id = s.stream_id
      WHERE e.version IS NULL OR s.version > e.version`;
    if (ahead.n > 0) {
      snapshots.add(`${ahead.n} snapshots ahead of their stream`);
    }
    const [{ count: snapshotRows }] = await sql<{ count: number }[]>`
      SELECT count(*)::int AS count FROM snapshots`;

    return [
      check(
        INVARIANT.gapFree,
        "SQL",
        gaps,
        `${streams.length} streams: min 1, max = count, as the store loaded`,
      ),
      orderCheck,
      check(
        INVARIANT.exactlyOnce,
        "SQL",
        once,
        `${ids.rows} rows, ids distinct; acknowledged at (stream, version); ${stray.unknown} from appends of unknown outcome`,
      ),
      check(
        INVARIANT.snapshots,
        "SQL",
        snapshots,
        `${snapshotRows} snapshot rows`,
      ),
    ];
  } finally {
    await sql.end();
  }
}

/** What the writers sent, as tables next to the store's, for joins. */
async function uploadAppends(sql: postgres.Sql, run: Run): Promise<void> {
  await sql`CREATE UNLOGGED TABLE soak_acknowledged (
    stream_id text NOT NULL, version bigint NOT NULL, event_id uuid NOT NULL)`;
  await sql`CREATE UNLOGGED TABLE soak_unknown (
    stream_id text NOT NULL, event_id uuid NOT NULL)`;
  const acknowledged = {
    streams: [] as string[],
    versions: [] as string[],
    ids: [] as string[],
  };
  const unknown = { streams: [] as string[], ids: [] as string[] };
  const flush = async (force: boolean) => {
    if (
      acknowledged.ids.length >= 20_000 ||
      (force && acknowledged.ids.length > 0)
    ) {
      await sql`INSERT INTO soak_acknowledged
        SELECT * FROM unnest(${sql.array(acknowledged.streams, 1009)}::text[],
          ${sql.array(acknowledged.versions, 1009)}::bigint[],
          ${sql.array(acknowledged.ids, 1009)}::uuid[])`;
      acknowledged.streams = [];
      acknowledged.versions = [];
      acknowledged.ids = [];
    }
    if (unknown.ids.length >= 20_000 || (force && unknown.ids.length > 0)) {
      await sql`INSERT INTO soak_unknown
        SELECT * FROM unnest(${sql.array(unknown.streams, 1009)}::text[],
          ${sql.array(unknown.ids, 1009)}::uuid[])`;
      unknown.streams = [];
      unknown.ids = [];
    }
  };
  for (const record of run.records.values()) {
    for (let index = 0; index < record.ackIds.length; index++) {
      acknowledged.streams.push(record.streamId);
      acknowledged.versions.push(String(record.ackVersions[index]));
      acknowledged.ids.push(record.ackIds[index]);
    }
    for (const id of record.unknownIds) {
      unknown.streams.push(record.streamId);
      unknown.ids.push(id);
    }
    await flush(false);
  }
  await flush(true);
  await sql`CREATE INDEX ON soak_acknowledged (event_id)`;
  await sql`ANALYZE soak_acknowledged`;
}

// ---------------------------------------------------------------------------
// Figures

function percentile(values: number[], fraction: number): number | undefined {
  if (values.length === 0) return undefined;
  const sorted = Float64Array.from(values).sort();
  return sorted[
    Math.min(sorted.length - 1, Math.ceil(fraction * sorted.length) - 1)
  ];
}

interface Figures {
  durationSeconds: number;
  endedBy: string;
  appends: number;
  appendsPerSecond: number;
  events: number;
  eventsPerSecond: number;
  loadsPerSecond: number;
  loadedEventsPerSecond: number;
  snapshotSavesPerSecond: number;
  snapshotLoadsPerSecond: number;
  deliveryLagMs: {
    p50?: number;
    p99?: number;
    samples: number;
    beforeReturn: number;
  };
  appendLatencyMs: { p50?: number; p99?: number; max?: number };
  catchUpMs: number;
  errorsByCode: Record<string, number>;
  counters: Counters;
  peakRssBytes: number;
  startRssBytes: number;
}

function figuresOf(run: Run, catchUpMs: number, startRss: number): Figures {
  const seconds = (run.endedAt - run.startedAt) / 1000;
  const rate = (count: number) => count / seconds;
  const latencies = run.appendLatencies;
  return {
    durationSeconds: seconds,
    endedBy: run.endedBy,
    appends: run.counters.appends,
    appendsPerSecond: rate(run.counters.appends),
    events: run.counters.events,
    eventsPerSecond: rate(run.counters.events),
    loadsPerSecond: rate(run.counters.loads),
    loadedEventsPerSecond: rate(run.counters.loadedEvents),
    snapshotSavesPerSecond: rate(run.counters.snapshotSaves),
    snapshotLoadsPerSecond: rate(run.counters.snapshotLoads),
    deliveryLagMs: {
      p50: percentile(run.lag.samples, 0.5),
      p99: percentile(run.lag.samples, 0.99),
      samples: run.lag.samples.length,
      beforeReturn: run.lag.beforeReturn,
    },
    appendLatencyMs: {
      p50: percentile(latencies, 0.5),
      p99: percentile(latencies, 0.99),
      // A loop, not Math.max(...latencies): a spread of a long run's
      // hundreds of thousands of latencies overflows the call stack.
      max: latencies.length === 0
        ? undefined
        : latencies.reduce((max, ms) => ms > max ? ms : max, -Infinity),
    },
    catchUpMs,
    errorsByCode: run.errorsByCode,
    counters: run.counters,
    peakRssBytes: run.peakRss,
    startRssBytes: startRss,
  };
}

function formatFigures(figures: Figures, options: Options): string {
  const number = (value: number) => Math.round(value).toLocaleString("en");
  const ms = (value: number | undefined) =>
    value === undefined ? "n/a" : `${value.toFixed(1)} ms`;
  const { counters } = figures;
  const errors = Object.entries(figures.errorsByCode)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([code, count]) => `${code} ${number(count)}`)
    .join(", ") || "none";
  const rows: [string, string][] = [
    [
      "duration",
      `${figures.durationSeconds.toFixed(1)} s (ended by ${figures.endedBy})`,
    ],
    [
      "appends/s",
      `${number(figures.appendsPerSecond)} (${
        number(figures.appends)
      } appends, ${number(counters.anyAppends)} with "any", ${
        number(counters.freshStreams)
      } new streams)`,
    ],
    [
      "events/s",
      `${number(figures.eventsPerSecond)} (${number(figures.events)} events)`,
    ],
    [
      "loads/s",
      `${number(figures.loadsPerSecond)} (${
        number(figures.loadedEventsPerSecond)
      } events/s loaded)`,
    ],
    [
      "snapshots/s",
      `${number(figures.snapshotSavesPerSecond)} saved, ${
        number(figures.snapshotLoadsPerSecond)
      } loaded`,
    ],
    [
      "delivery lag p50 / p99",
      options.subscribers === 0
        ? "n/a (no subscribers)"
        : `${ms(figures.deliveryLagMs.p50)} / ${
          ms(figures.deliveryLagMs.p99)
        } (${number(figures.deliveryLagMs.samples)} samples; ${
          number(figures.deliveryLagMs.beforeReturn)
        } received before the append returned)`,
    ],
    [
      "append latency p50 / p99 / max",
      `${ms(figures.appendLatencyMs.p50)} / ${
        ms(figures.appendLatencyMs.p99)
      } / ${ms(figures.appendLatencyMs.max)}`,
    ],
    ["catch-up after the workload", ms(figures.catchUpMs)],
    ["errors by code", errors],
    [
      "conflicts (reloaded)",
      `${number(counters.conflicts)} (${
        number(counters.versionReloads)
      } reloads)`,
    ],
    [
      "retries",
      `${number(counters.retries)} (${
        number(counters.retriedAppendsAcknowledged)
      } retried appends acknowledged, ${
        number(counters.unknownOutcomes)
      } outcomes unknown)`,
    ],
    [
      "restarts",
      `${number(counters.subscriberRestarts)} subscriber, ${
        number(counters.projectionRestarts)
      } projection${
        options.chaos
          ? `; ${number(counters.sessionsTerminated)} sessions terminated`
          : ""
      }`,
    ],
    [
      "peak RSS during the workload",
      `${mib(figures.peakRssBytes)} (${mib(figures.startRssBytes)} at start)`,
    ],
  ];
  return [
    "| figure | value |",
    "| --- | --- |",
    ...rows.map(([name, value]) => `| ${name} | ${value} |`),
  ].join("\n");
}

function formatChecks(checks: Check[]): string {
  return [
    "| invariant | through | result | detail |",
    "| --- | --- | :---: | --- |",
    ...checks.map((each) =>
      `| ${each.invariant} | ${each.through} | ${
        each.passed ? "pass" : "FAIL"
      } | ${each.detail.replaceAll("|", "\\|")} |`
    ),
  ].join("\n");
}

async function serverInfo(url: string): Promise<Record<string, string>> {
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  try {
    const [row] = await sql`
      SELECT current_setting('server_version') AS version,
             current_setting('fsync') AS fsync,
             current_setting('synchronous_commit') AS synchronous_commit`;
    return { ...row };
  } finally {
    await sql.end();
  }
}

// ---------------------------------------------------------------------------

async function openStore(
  options: Options,
): Promise<{ store: EventStore; database?: TestDatabase }> {
  if (options.store === "memory") return { store: new InMemoryEventStore() };
  const database = await createTestDatabase({ durable: true });
  try {
    const store = await PostgresEventStore.connect(database.url, {
      max: options.writers + READERS + options.subscribers + 6,
      statementTimeout: STATEMENT_TIMEOUT_MS,
      connectTimeout: 10,
      applicationName: APPLICATION_NAME,
    });
    await store.migrate();
    return { store, database };
  } catch (error) {
    await database.drop();
    throw error;
  }
}

async function soak(options: Options, run: Run, url?: string): Promise<{
  figures: Figures;
  checks: Check[];
}> {
  const startRss = Deno.memoryUsage().rss;
  run.peakRss = startRss;
  const sampler = setInterval(() => run.sampleRss(), 200);
  const reporter = setInterval(() => progress(run), 5_000);
  const followers = [
    ...run.subscriberLogs.map((_, index) => subscriber(run, index)),
    projection(run),
  ];
  run.startedAt = performance.now();
  const deadline = setTimeout(
    () => run.stop("duration"),
    options.duration * 1000,
  );
  try {
    await Promise.all([
      ...Array.from(
        { length: options.writers },
        (_, index) => writer(run, index),
      ),
      ...Array.from({ length: READERS }, () => reader(run)),
      aggregate(run),
      options.chaos && url !== undefined ? chaos(run, url) : Promise.resolve(),
    ]);
    run.stop("duration");
    clearTimeout(deadline);
    clearInterval(reporter);
    progress(run);
    const last = await lastStoredPosition(run);
    const catchUpMs = await catchUp(run, last);
    run.followers.abort();
    await Promise.race([Promise.all(followers), sleep(10_000)]);
    run.sampleRss();
    console.error(
      `soak: workload over after ${
        ((run.endedAt - run.startedAt) / 1000).toFixed(1)
      } s; checking`,
    );
    const figures = figuresOf(run, catchUpMs, startRss);
    const { checks, contents } = await checkThroughStore(run);
    if (url !== undefined) {
      checks.push(...await checkThroughSql(run, url, contents));
    }
    checks.push(check(
      INVARIANT.errors,
      "run",
      run.unexpected,
      `errors seen: ${Object.keys(run.errorsByCode).join(", ") || "none"}`,
    ));
    return { figures, checks };
  } finally {
    clearTimeout(deadline);
    clearInterval(sampler);
    clearInterval(reporter);
    run.followers.abort();
  }
}

async function main(): Promise<number> {
  let options: Options | undefined;
  try {
    options = parseOptions(Deno.args);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`${error.message}\n\n${HELP}`);
    return 2;
  }
  if (options === undefined) {
    console.log(HELP);
    return 0;
  }
  // Bounded even if something hangs: long after the workload and checks.
  const watchdog = setTimeout(() => {
    console.error("soak: still running long after its duration; giving up");
    Deno.exit(3);
  }, (options.duration + 900) * 1000);
  Deno.unrefTimer(watchdog);

  const { store, database } = await openStore(options);
  const run = new Run(store, options);
  let interrupts = 0;
  const interrupt = () => {
    if (++interrupts > 1) Deno.exit(130);
    console.error(
      "soak: interrupted; ending the workload (Ctrl-C again to quit now)",
    );
    run.stop("Ctrl-C");
  };
  Deno.addSignalListener("SIGINT", interrupt);
  try {
    console.error(
      `soak: ${
        options.store === "memory"
          ? "in-memory store"
          : `PostgreSQL (${database!.source}, database ${database!.name})`
      }, ${options.duration} s, ${options.writers} writers, ${READERS} readers, 1 aggregate loop, ${options.subscribers} subscribers, 1 projection, ${options.streams} streams${
        options.chaos ? ", chaos" : ""
      }`,
    );
    const server = database && await serverInfo(database.url);
    const { figures, checks } = await soak(options, run, database?.url);
    const passed = checks.every((each) => each.passed);
    console.log(
      `\nSoak of the ${
        options.store === "memory" ? "in-memory" : "PostgreSQL"
      } store${
        server
          ? ` (PostgreSQL ${server.version}, ${
            database!.source
          }, fsync ${server.fsync}, synchronous_commit ${server.synchronous_commit})`
          : ""
      }: ${passed ? "every invariant holds" : "INVARIANTS FAILED"}.\n\n${
        formatFigures(figures, options)
      }\n\n${formatChecks(checks)}`,
    );
    if (run.unexpected.count > 0) {
      console.log(
        `\nUnexpected errors:\n${
          run.unexpected.examples.map((each) => `- ${each}`).join("\n")
        }`,
      );
    }
    if (options.json !== undefined) {
      const report = {
        date: new Date().toISOString(),
        options,
        store: options.store,
        source: database?.source,
        server,
        machine: {
          deno: Deno.version.deno,
          os: `${Deno.build.os} ${Deno.build.arch}`,
          cores: navigator.hardwareConcurrency,
        },
        passed,
        figures,
        invariants: checks,
        unexpectedErrors: run.unexpected.examples,
      };
      await Deno.writeTextFile(
        options.json,
        JSON.stringify(
          report,
          (_, value) => typeof value === "bigint" ? String(value) : value,
          2,
        ),
      );
      console.log(`\nFigures written to ${options.json}`);
    }
    return !passed ? 1 : interrupts > 0 ? 130 : 0;
  } finally {
    Deno.removeSignalListener("SIGINT", interrupt);
    await store.close();
    await database?.drop();
  }
}

if (import.meta.main) Deno.exit(await main());
