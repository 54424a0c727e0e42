/**
 * The contract every store implements. Nothing here depends on a store, so
 * application code can be written against {@linkcode EventStore} alone and
 * tested with the in-memory store.
 *
 * @module
 */

/**
 * An event to append. `data` goes through the store's codec (CBOR by
 * default); `metadata` is a plain JSON object kept for humans and tooling.
 *
 * @typeParam D The shape of `data`.
 */
export interface NewEvent<D = unknown> {
  /** What happened, e.g. `"OrderPlaced.v1"`. Non-empty. */
  type: string;
  /** The event's payload, encoded by the store's codec. */
  data: D;
  /** Correlation ids, user ids and the like; a plain JSON object. */
  metadata?: Record<string, unknown>;
  /**
   * The event's UUID; generated when absent. Give one to make the append
   * safe to retry: an append whose events a stream already holds by id is
   * not stored twice (see {@linkcode EventStore.appendEvents}).
   */
  id?: string;
}

/**
 * An event as stored: the {@linkcode NewEvent} plus where and when it landed.
 *
 * @typeParam D The shape of `data`, as the caller asserts it.
 */
export interface RecordedEvent<D = unknown> {
  /** The event's UUID, in lower case. */
  id: string;
  /** The stream the event belongs to. */
  streamId: string;
  /** Its position in the stream: the first event is 1, then 2, 3, … */
  version: number;
  /** Its position in the whole store: strictly increasing, possibly sparse. */
  globalPosition: bigint;
  /** What happened. */
  type: string;
  /** The decoded payload. */
  data: D;
  /** The metadata, `{}` when none was given. */
  metadata: Record<string, unknown>;
  /** When the append that stored it happened; one value for a whole append. */
  createdAt: Date;
}

/**
 * What the caller believes about a stream before appending to it:
 * - `"any"`: no check;
 * - `"no_stream"`: the stream must have no events;
 * - `"stream_exists"`: it must have at least one;
 * - a number n: its version must be exactly n (0 means no events).
 */
export type ExpectedVersion = "any" | "no_stream" | "stream_exists" | number;

/** Options of {@linkcode EventStore.appendEvents}. */
export interface AppendOptions {
  /** The optimistic concurrency check; `"any"` when absent. */
  expectedVersion?: ExpectedVersion;
}

/** What {@linkcode EventStore.appendEvents} returns. */
export interface AppendResult {
  /** The stream's version after the append: the version of its last event. */
  version: number;
  /** The global position of the append's last event. */
  globalPosition: bigint;
}

/** Options of {@linkcode EventStore.loadEvents}. */
export interface LoadOptions {
  /** The first version to return, inclusive; 1 when absent. */
  fromVersion?: number;
  /** At most this many events; all when absent. At least 1. */
  maxCount?: number;
}

/** Options of {@linkcode EventStore.readAll}. */
export interface ReadAllOptions {
  /** Return events after this global position (exclusive); `0n` when absent. */
  fromPosition?: bigint;
  /** At most this many events; all when absent. At least 1. */
  maxCount?: number;
  /** Only events of these types; all types when absent. */
  types?: readonly string[];
  /**
   * Only events of streams in this category: the stream id's prefix before
   * its first `-` (`order-42` is in `order`; `order` alone is too).
   */
  category?: string;
}

/** Options of {@linkcode EventStore.subscribe}. */
export interface SubscribeOptions {
  /** Deliver events after this global position (exclusive); `0n` when absent. */
  fromPosition?: bigint;
  /** Only events of these types. */
  types?: readonly string[];
  /** Only events of streams in this category (see {@linkcode ReadAllOptions.category}). */
  category?: string;
  /** Ends the subscription: the iteration finishes without an error. */
  signal?: AbortSignal;
}

/** Options of {@linkcode EventStore.runProjection}. */
export interface ProjectionOptions {
  /** Only events of these types. */
  types?: readonly string[];
  /** Only events of streams in this category. */
  category?: string;
  /** Stops the projection: `runProjection` resolves after the current batch. */
  signal?: AbortSignal;
  /** At most this many events per handler call: 100 by default. */
  batchSize?: number;
}

/** What a projection handler gets besides its events. */
export interface ProjectionContext {
  /**
   * On PostgreSQL, the postgres.js transaction in which the checkpoint will
   * be saved: write the read model through it, and the writes and the
   * checkpoint commit together, or neither does. Absent in memory.
   */
  transaction?: unknown;
}

/**
 * Handles a batch of events, in global order. Throwing stops the projection
 * and leaves its checkpoint before the batch.
 */
export type ProjectionHandler<D = unknown> = (
  events: RecordedEvent<D>[],
  context: ProjectionContext,
) => void | Promise<void>;

/**
 * How far {@linkcode EventStore.readAll} is behind the events already
 * committed, and why: what {@linkcode EventStore.readAllLag} returns.
 * Positions are `0n` when the store holds no event.
 */
export interface ReadAllLag {
  /** The highest committed global position; `0n` if there is none. */
  headPosition: bigint;
  /** The highest global position `readAll` returns now; `0n` if none. */
  readablePosition: bigint;
  /** How many committed events `readAll` cannot return yet. */
  hiddenEvents: number;
  /**
   * What holds readers back, oldest first; empty when `hiddenEvents` is 0.
   * On PostgreSQL, an open transaction that took a transaction id (it wrote
   * something) before the hidden events' transactions, in any database of
   * the cluster, or a prepared transaction.
   */
  heldBy: ReaderHold[];
}

/**
 * A transaction that holds readers back (see {@linkcode ReadAllLag}). Never
 * the query text, which may hold secrets. PostgreSQL shows other roles'
 * sessions without their times unless the store's role has
 * `pg_read_all_stats`: those fields are then absent, and `ageMs` is 0.
 */
export interface ReaderHold {
  /** An open session's transaction, or a prepared one (no session). */
  kind: "transaction" | "prepared transaction";
  /** The session's backend process id (`pg_stat_activity.pid`). */
  pid?: number;
  /** A prepared transaction's global id (`pg_prepared_xacts.gid`). */
  gid?: string;
  /** The database the transaction runs in. */
  database?: string;
  /** The role it runs as. */
  user?: string;
  /** The session's `application_name`. */
  applicationName?: string;
  /** When the transaction started (`xact_start`), or was prepared. */
  transactionStart?: Date;
  /** When the session's current or last statement started (`query_start`). */
  queryStart?: Date;
  /** Milliseconds since `transactionStart`; 0 when that is unknown. */
  ageMs: number;
}

/**
 * The latest saved state of a stream, so that an aggregate loads as the
 * snapshot plus the events after `version`.
 *
 * @typeParam S The shape of `state`, as the caller asserts it.
 */
export interface Snapshot<S = unknown> {
  /** The stream the snapshot belongs to. */
  streamId: string;
  /** The stream version the state includes. */
  version: number;
  /** The decoded state. */
  state: S;
  /** When the snapshot was saved. */
  createdAt: Date;
}

/**
 * An append-only store of event streams with optimistic concurrency.
 *
 * Every store behaves identically; `tests/conformance.ts` holds the cases.
 * Appends are atomic: all events of one call are stored with consecutive
 * versions, or none are. Bad arguments throw
 * {@linkcode InvalidArgumentError} and data the codec cannot encode throws
 * {@linkcode EncodingError}, both before anything is written.
 *
 * @example Write code against the contract
 * ```ts
 * import { type EventStore, InMemoryEventStore } from "@deno-eventstore/core";
 * import assert from "node:assert/strict";
 *
 * async function openAccount(store: EventStore, accountId: string): Promise<number> {
 *   const { version } = await store.appendEvents(
 *     `account-${accountId}`,
 *     [{ type: "AccountOpened.v1", data: { balanceCents: 0 } }],
 *     { expectedVersion: "no_stream" },
 *   );
 *   return version;
 * }
 *
 * await using store = new InMemoryEventStore();
 * assert.equal(await openAccount(store, "42"), 1);
 * ```
 */
export interface EventStore extends AsyncDisposable {
  /**
   * Appends events to a stream, atomically, after checking
   * `options.expectedVersion`.
   *
   * Idempotent for events with the caller's ids: when the stream already
   * holds every id of the batch, in the batch's order, right after a
   * version that `expectedVersion` allows, this append already happened
   * (a retry after a timeout, say), and it returns that append's result
   * without writing anything.
   *
   * @param streamId The stream, a non-empty string.
   * @param events At least one event, at most 1,048,575 and 128 MiB of
   *   encoded data and metadata.
   * @param options The expected version; `"any"` when absent.
   * @returns The stream's new version and the last event's global position.
   * @throws {ConcurrencyConflictError} The stream's version does not match.
   * @throws {DuplicateEventError} The stream holds some of the batch's ids,
   *   but the append is not an exact repeat of the one that stored them.
   * @throws {InvalidArgumentError} An argument is malformed.
   * @throws {EncodingError} The codec cannot encode an event's data.
   * @throws {StoreClosedError} The store is closed.
   */
  appendEvents<D>(
    streamId: string,
    events: readonly NewEvent<D>[],
    options?: AppendOptions,
  ): Promise<AppendResult>;

  /**
   * Loads a stream's events in version order; `[]` for a missing stream.
   *
   * @param streamId The stream, a non-empty string.
   * @param options Where to start (inclusive) and how many to return.
   * @returns The events, possibly none.
   * @throws {InvalidArgumentError} An argument is malformed.
   * @throws {EncodingError} Stored data cannot be decoded.
   * @throws {StoreClosedError} The store is closed.
   */
  loadEvents<D>(
    streamId: string,
    options?: LoadOptions,
  ): Promise<RecordedEvent<D>[]>;

  /**
   * Reads events of every stream in global order: those with a
   * `globalPosition` above `options.fromPosition`, strictly increasing. A
   * reader that continues from the last position it received never later
   * finds an event at a lower position: events are returned only once no
   * transaction still running can commit one below them.
   *
   * @param options Where to start (exclusive), how many, which types and
   *   category.
   * @returns The events, possibly none.
   * @throws {InvalidArgumentError} An option is malformed.
   * @throws {EncodingError} Stored data cannot be decoded.
   * @throws {StoreClosedError} The store is closed.
   */
  readAll<D>(options?: ReadAllOptions): Promise<RecordedEvent<D>[]>;

  /**
   * How far {@linkcode EventStore.readAll} is behind the committed events,
   * and what holds it back. On PostgreSQL, `readAll` returns an event only
   * once every transaction that took a transaction id before it has ended,
   * in any database of the cluster (prepared transactions too): one left
   * open delays every subscriber and projection. In memory nothing is ever
   * hidden.
   *
   * @returns The head and readable positions, the number of hidden events,
   *   and the transactions that hide them, oldest first.
   * @throws {StoreClosedError} The store is closed.
   *
   * @example See whether readers are held back
   * ```ts
   * import { InMemoryEventStore } from "@deno-eventstore/core";
   * import assert from "node:assert/strict";
   *
   * await using store = new InMemoryEventStore();
   * const { globalPosition } = await store.appendEvents("order-1", [
   *   { type: "OrderPlaced.v1", data: {} },
   * ]);
   * const lag = await store.readAllLag();
   * assert.equal(lag.headPosition, globalPosition);
   * assert.equal(lag.readablePosition, globalPosition);
   * assert.equal(lag.hiddenEvents, 0); // PostgreSQL: > 0 while a transaction holds them
   * assert.deepEqual(lag.heldBy, []);
   * ```
   */
  readAllLag(): Promise<ReadAllLag>;

  /**
   * Follows every stream in global order: catches up from storage, then
   * delivers new events as they commit, each once, in position order, with
   * the same guarantee as {@linkcode EventStore.readAll}: none is ever
   * skipped. End it with `options.signal` or by leaving the loop (`break`).
   *
   * @param options Where to start (exclusive), which types and category, and
   *   the signal that ends it.
   * @returns An async iterable of the events.
   * @throws {InvalidArgumentError} An option is malformed (when iteration
   *   starts).
   * @throws {EncodingError} Stored data cannot be decoded.
   * @throws {StoreClosedError} The store is closed.
   */
  subscribe<D>(options?: SubscribeOptions): AsyncIterable<RecordedEvent<D>>;

  /**
   * Runs a projection: from the position saved for `name`, hands batches of
   * events in global order to `handler`, saving the position after each, and
   * keeps following new events until `options.signal` aborts. Delivery is
   * at least once (a batch whose handler threw, or that was interrupted, is
   * handed again on the next run); on PostgreSQL, a handler that writes
   * through `context.transaction` gets exactly once, since its writes and
   * the checkpoint commit together.
   *
   * @param name The projection's name: its checkpoint's key.
   * @param handler Handles each batch.
   * @param options Filters, the stopping signal, the batch size.
   * @returns When the signal aborts.
   * @throws {InvalidArgumentError} An argument is malformed.
   * @throws {Error} Whatever the handler throws, after the batch was undone.
   * @throws {StoreClosedError} The store is closed.
   */
  runProjection<D>(
    name: string,
    handler: ProjectionHandler<D>,
    options?: ProjectionOptions,
  ): Promise<void>;

  /**
   * The global position a projection has handled up to: `0n` before its
   * first batch.
   *
   * @param name The projection's name.
   * @returns The position.
   * @throws {InvalidArgumentError} The name is malformed.
   * @throws {StoreClosedError} The store is closed.
   */
  projectionPosition(name: string): Promise<bigint>;

  /**
   * Forgets a projection's position, so that its next run replays every
   * event from the start (clear its read model first).
   *
   * @param name The projection's name.
   * @throws {InvalidArgumentError} The name is malformed.
   * @throws {StoreClosedError} The store is closed.
   */
  resetProjection(name: string): Promise<void>;

  /**
   * The stream's version: its number of events, 0 when it has none.
   *
   * @param streamId The stream, a non-empty string.
   * @returns The version.
   * @throws {InvalidArgumentError} The stream id is malformed.
   * @throws {StoreClosedError} The store is closed.
   */
  streamVersion(streamId: string): Promise<number>;

  /**
   * Saves the stream's snapshot, replacing the stored one unless that one has
   * a higher version (then this is a no-op).
   *
   * @param streamId The stream, a non-empty string.
   * @param version The stream version the state includes: from 1 to the
   *   stream's current version.
   * @param state The state, encoded by the codec.
   * @throws {InvalidArgumentError} An argument is malformed, or `version` is
   *   ahead of the stream.
   * @throws {EncodingError} The codec cannot encode the state.
   * @throws {StoreClosedError} The store is closed.
   */
  saveSnapshot<S>(streamId: string, version: number, state: S): Promise<void>;

  /**
   * Loads the stream's snapshot.
   *
   * @param streamId The stream, a non-empty string.
   * @returns The snapshot, or `undefined` when the stream has none.
   * @throws {InvalidArgumentError} The stream id is malformed.
   * @throws {EncodingError} The stored state cannot be decoded.
   * @throws {StoreClosedError} The store is closed.
   */
  loadSnapshot<S>(streamId: string): Promise<Snapshot<S> | undefined>;

  /**
   * Releases what the store holds. Idempotent; afterwards every other method
   * throws {@linkcode StoreClosedError}. Never throws: there is nothing a
   * caller could do about a failure to let go.
   */
  close(): Promise<void>;
}
