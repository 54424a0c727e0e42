/**
 * The in-memory store: the reference implementation of the contract, for
 * tests, examples and prototypes.
 *
 * @module
 */

import type {
  AppendOptions,
  AppendResult,
  EventStore,
  LoadOptions,
  NewEvent,
  ProjectionHandler,
  ProjectionOptions,
  ReadAllLag,
  ReadAllOptions,
  RecordedEvent,
  Snapshot,
  SubscribeOptions,
} from "./event_store.ts";
import { cborCodec, type Codec } from "./codec.ts";
import { StoreClosedError } from "./errors.ts";
import { copyJson } from "./_json.ts";
import {
  resetFromHandler,
  runHandler,
  runProjectionLoop,
  subscription,
  Wakeups,
} from "./_subscription.ts";

/** How long a quiet in-memory subscription sleeps between reads. */
const MEMORY_POLL_MS = 1_000;
import {
  assertExpectedVersion,
  repeatedAppend,
  type StoredId,
} from "./expected_version.ts";
import {
  categoryOf,
  checkExpectedVersion,
  checkLoadOptions,
  checkName,
  checkReadAllOptions,
  checkSnapshotVersion,
  checkStreamId,
  checkVersion,
  decodeValue,
  defaultGenerateId,
  encodeValue,
  type PreparedEvent,
  prepareEvents,
} from "./_input.ts";

/** Options of {@linkcode InMemoryEventStore}. */
export interface InMemoryEventStoreOptions {
  /** Encodes `data` and snapshot `state`; {@linkcode cborCodec} by default. */
  codec?: Codec;
  /** The time stamped on appends and snapshots; `() => new Date()` by default. */
  clock?: () => Date;
  /** Generates ids for events given without one; `crypto.randomUUID` by default. */
  generateId?: () => string;
}

/**
 * An event as kept in memory. Data is kept encoded and metadata as JSON text,
 * as PostgreSQL keeps them, so a caller who mutates an object after appending
 * or loading it changes nothing stored, and values the other stores cannot
 * give back unchanged fail here too.
 */
interface StoredEvent {
  readonly id: string;
  readonly globalPosition: bigint;
  readonly type: string;
  readonly data: Uint8Array;
  readonly metadataJson: string;
  /**
   * `metadataJson` parsed, once, at the event's first load: never handed
   * out, only copied ({@linkcode copyJson}), which is several times faster
   * than parsing the text again at every load.
   */
  metadata?: Record<string, unknown>;
  readonly createdAtMs: number;
}

interface StoredSnapshot {
  readonly version: number;
  readonly state: Uint8Array;
  readonly createdAtMs: number;
}

/**
 * An {@linkcode EventStore} that keeps everything in memory.
 *
 * It is the reference implementation: every other store passes the same
 * conformance suite. Each operation runs to completion without yielding, so
 * an append is atomic and its version check cannot race another append.
 * Data is lost when the process exits or the store is closed.
 *
 * @example Append, load and snapshot
 * ```ts
 * import { ConcurrencyConflictError, InMemoryEventStore } from "@deno-eventstore/core";
 * import assert from "node:assert/strict";
 *
 * await using store = new InMemoryEventStore();
 * const result = await store.appendEvents("order-1", [
 *   { type: "OrderPlaced.v1", data: { totalCents: 2500 } },
 *   { type: "OrderShipped.v1", data: { trackingNumber: "TN-1" } },
 * ], { expectedVersion: "no_stream" });
 * assert.equal(result.version, 2);
 *
 * const events = await store.loadEvents("order-1");
 * assert.deepEqual(events.map((event) => event.type), ["OrderPlaced.v1", "OrderShipped.v1"]);
 *
 * await assert.rejects(
 *   store.appendEvents("order-1", [{ type: "OrderCancelled.v1", data: {} }], { expectedVersion: 1 }),
 *   ConcurrencyConflictError,
 * );
 *
 * await store.saveSnapshot("order-1", 2, { status: "shipped" });
 * assert.deepEqual((await store.loadSnapshot("order-1"))?.state, { status: "shipped" });
 * ```
 */
export class InMemoryEventStore implements EventStore {
  readonly #codec: Codec;
  readonly #clock: () => Date;
  readonly #generateId: () => string;
  #streams = new Map<string, StoredEvent[]>();
  /** Every event in global order; an event's position is its index + 1. */
  #all: { streamId: string; version: number; event: StoredEvent }[] = [];
  #snapshots = new Map<string, StoredSnapshot>();
  #lastGlobalPosition = 0n;
  #closed = false;
  readonly #wakeups = new Wakeups();
  #checkpoints = new Map<string, bigint>();
  readonly #projectionLocks = new Map<string, Promise<void>>();

  /**
   * Creates an empty store. Does no I/O. Never throws: the options are used
   * as given.
   *
   * @param options The codec, clock and id generator.
   */
  constructor(options: InMemoryEventStoreOptions = {}) {
    this.#codec = options.codec ?? cborCodec;
    this.#clock = options.clock ?? (() => new Date());
    this.#generateId = options.generateId ?? defaultGenerateId;
  }

  /** {@inheritDoc EventStore.appendEvents} */
  appendEvents<D>(
    streamId: string,
    events: readonly NewEvent<D>[],
    options?: AppendOptions,
  ): Promise<AppendResult> {
    return this.#run("append events", () => {
      checkStreamId(streamId);
      const expected = checkExpectedVersion(options);
      const { events: prepared, hasCallerIds } = prepareEvents(
        events,
        this.#codec,
        this.#generateId,
      );
      const stream = this.#streams.get(streamId) ?? [];
      if (hasCallerIds) {
        const repeated = repeatedAppend(
          streamId,
          expected,
          prepared.map((event) => event.id),
          storedIds(stream, prepared),
        );
        if (repeated !== undefined) {
          return {
            version: repeated,
            globalPosition: stream[repeated - 1].globalPosition,
          };
        }
      }
      assertExpectedVersion(streamId, expected, stream.length);

      const createdAtMs = this.#clock().getTime();
      // Nothing below can throw: the stream changes whole or not at all.
      for (let index = 0; index < prepared.length; index++) {
        const event = prepared[index];
        const stored: StoredEvent = {
          id: event.id,
          globalPosition: ++this.#lastGlobalPosition,
          type: event.type,
          data: event.data,
          metadataJson: event.metadataJson,
          createdAtMs,
        };
        stream.push(stored);
        this.#all.push({ streamId, version: stream.length, event: stored });
      }
      this.#streams.set(streamId, stream);
      this.#wakeups.wake();
      return {
        version: stream.length,
        globalPosition: this.#lastGlobalPosition,
      };
    });
  }

  /** {@inheritDoc EventStore.loadEvents} */
  loadEvents<D>(
    streamId: string,
    options?: LoadOptions,
  ): Promise<RecordedEvent<D>[]> {
    return this.#run("load events", () => {
      checkStreamId(streamId);
      const { fromVersion, maxCount } = checkLoadOptions(options);
      const stream = this.#streams.get(streamId) ?? [];
      const start = fromVersion - 1;
      const end = Math.min(stream.length, start + maxCount);
      const loaded: RecordedEvent<D>[] = [];
      for (let index = start; index < end; index++) {
        loaded.push(this.#recorded<D>(streamId, index + 1, stream[index]));
      }
      return loaded;
    });
  }

  /** {@inheritDoc EventStore.readAll} */
  readAll<D>(options?: ReadAllOptions): Promise<RecordedEvent<D>[]> {
    return this.#run("read all events", () => {
      const { fromPosition, maxCount, types, category } = checkReadAllOptions(
        options,
      );
      const wanted = types === undefined ? undefined : new Set(types);
      const read: RecordedEvent<D>[] = [];
      // Positions are dense from 1: position p is at index p - 1.
      const start = fromPosition >= BigInt(this.#all.length)
        ? this.#all.length
        : Number(fromPosition);
      for (
        let index = start;
        index < this.#all.length && read.length < maxCount;
        index++
      ) {
        const { streamId, version, event } = this.#all[index];
        if (wanted !== undefined && !wanted.has(event.type)) continue;
        if (category !== undefined && categoryOf(streamId) !== category) {
          continue;
        }
        read.push(this.#recorded<D>(streamId, version, event));
      }
      return read;
    });
  }

  /** {@inheritDoc EventStore.readAllLag} */
  readAllLag(): Promise<ReadAllLag> {
    // An append is visible whole the moment it returns: nothing is hidden.
    return this.#run("read how far readAll lags", () => ({
      headPosition: this.#lastGlobalPosition,
      readablePosition: this.#lastGlobalPosition,
      hiddenEvents: 0,
      heldBy: [],
    }));
  }

  #recorded<D>(
    streamId: string,
    version: number,
    event: StoredEvent,
  ): RecordedEvent<D> {
    let data: D;
    try {
      data = this.#codec.decode(event.data) as D;
    } catch {
      // Decoded again for the typed error and its label, which are made
      // only when needed: no closure per event loaded.
      data = decodeValue(
        this.#codec,
        event.data,
        `stream ${JSON.stringify(streamId)} version ${version} data`,
      ) as D;
    }
    return {
      id: event.id,
      streamId,
      version,
      globalPosition: event.globalPosition,
      type: event.type,
      data,
      metadata: copyJson(
        event.metadata ??= JSON.parse(event.metadataJson),
      ) as Record<string, unknown>,
      createdAt: new Date(event.createdAtMs),
    };
  }

  /** {@inheritDoc EventStore.subscribe} */
  subscribe<D>(options?: SubscribeOptions): AsyncIterable<RecordedEvent<D>> {
    // Woken by every append; the poll only bounds a wait nobody ends.
    return subscription<D>(
      (read) => this.readAll<D>(read),
      this.#wakeups,
      MEMORY_POLL_MS,
      options,
    );
  }

  /** {@inheritDoc EventStore.runProjection} */
  runProjection<D>(
    name: string,
    handler: ProjectionHandler<D>,
    options?: ProjectionOptions,
  ): Promise<void> {
    return this.#run("run a projection", () => checkName(name, "name"))
      .then((checked) =>
        runProjectionLoop<D>(
          {
            read: (read) => this.readAll<D>(read),
            position: () => this.projectionPosition(checked),
            handle: (events, handle, from, to) =>
              // One batch of a name at a time: the check, the handler and
              // the save cannot interleave with another runner's.
              this.#exclusive(checked, async () => {
                if ((this.#checkpoints.get(checked) ?? 0n) !== from) {
                  return false;
                }
                const { resetRequested } = await runHandler(
                  checked,
                  () => handle(events, {}),
                );
                if (this.#closed) {
                  throw new StoreClosedError("run a projection");
                }
                if (resetRequested) {
                  // Its own handler reset it: start over, not from `to`.
                  this.#checkpoints.delete(checked);
                  return false;
                }
                this.#checkpoints.set(checked, to);
                return true;
              }),
          },
          handler,
          this.#wakeups,
          MEMORY_POLL_MS,
          options,
        )
      );
  }

  /** Runs `task` after every earlier task of the same projection name. */
  #exclusive<T>(name: string, task: () => Promise<T>): Promise<T> {
    const previous = this.#projectionLocks.get(name) ?? Promise.resolve();
    const result = previous.then(task);
    const settled = result.then(() => {}, () => {});
    this.#projectionLocks.set(name, settled);
    settled.then(() => {
      if (this.#projectionLocks.get(name) === settled) {
        this.#projectionLocks.delete(name);
      }
    });
    return result;
  }

  /** {@inheritDoc EventStore.projectionPosition} */
  projectionPosition(name: string): Promise<bigint> {
    return this.#run(
      "read a projection's position",
      () => this.#checkpoints.get(checkName(name, "name")) ?? 0n,
    );
  }

  /** {@inheritDoc EventStore.resetProjection} */
  resetProjection(name: string): Promise<void> {
    // After any batch in flight, whose save would otherwise undo the reset.
    return this.#run("reset a projection", () => checkName(name, "name"))
      .then((checked) =>
        resetFromHandler(checked) ? undefined : this.#exclusive(checked, () => {
          this.#checkpoints.delete(checked);
          return Promise.resolve();
        })
      );
  }

  /** {@inheritDoc EventStore.streamVersion} */
  streamVersion(streamId: string): Promise<number> {
    return this.#run("read the stream version", () => {
      checkStreamId(streamId);
      return this.#streams.get(streamId)?.length ?? 0;
    });
  }

  /** {@inheritDoc EventStore.saveSnapshot} */
  saveSnapshot<S>(streamId: string, version: number, state: S): Promise<void> {
    return this.#run("save a snapshot", () => {
      checkStreamId(streamId);
      checkVersion(version, "version", 1);
      // Encoded before the stream is consulted, as a database store must.
      const encoded = encodeValue(this.#codec, state, "state");
      const streamVersion = this.#streams.get(streamId)?.length ?? 0;
      checkSnapshotVersion(streamId, version, streamVersion);
      const stored = this.#snapshots.get(streamId);
      if (stored !== undefined && stored.version > version) return;
      this.#snapshots.set(streamId, {
        version,
        state: encoded,
        createdAtMs: this.#clock().getTime(),
      });
    });
  }

  /** {@inheritDoc EventStore.loadSnapshot} */
  loadSnapshot<S>(streamId: string): Promise<Snapshot<S> | undefined> {
    return this.#run("load a snapshot", () => {
      checkStreamId(streamId);
      const stored = this.#snapshots.get(streamId);
      if (stored === undefined) return undefined;
      return {
        streamId,
        version: stored.version,
        state: decodeValue(
          this.#codec,
          stored.state,
          `snapshot of stream ${JSON.stringify(streamId)}`,
        ) as S,
        createdAt: new Date(stored.createdAtMs),
      };
    });
  }

  /**
   * Drops every stream and snapshot; later calls throw
   * {@linkcode StoreClosedError}. Idempotent. Never throws.
   */
  close(): Promise<void> {
    this.#closed = true;
    this.#wakeups.wake(); // subscribers read again, and learn it is closed
    this.#streams = new Map();
    this.#all = [];
    this.#snapshots = new Map();
    this.#checkpoints = new Map();
    return Promise.resolve();
  }

  /** Closes the store, for `await using`. Never throws. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /**
   * Runs one operation to completion, turning its throw into a rejection.
   * There is no `await` inside, so no other operation interleaves with it.
   */
  #run<T>(operation: string, body: () => T): Promise<T> {
    if (this.#closed) return Promise.reject(new StoreClosedError(operation));
    try {
      return Promise.resolve(body());
    } catch (error) {
      return Promise.reject(error);
    }
  }
}

/**
 * Where `stream` holds ids of `batch`: a scan of the stream, as PostgreSQL
 * makes one, and only for batches with the caller's ids.
 */
function storedIds(
  stream: readonly StoredEvent[],
  batch: readonly PreparedEvent[],
): StoredId[] {
  const wanted = new Set(batch.map((event) => event.id));
  const stored: StoredId[] = [];
  for (let index = 0; index < stream.length; index++) {
    if (wanted.has(stream[index].id)) {
      stored.push({ id: stream[index].id, version: index + 1 });
    }
  }
  return stored;
}
