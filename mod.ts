/**
 * An event store for Deno: append-only streams of events with optimistic
 * concurrency, snapshots, and one contract ({@linkcode EventStore}) served by
 * an in-memory store for tests and a PostgreSQL store for production.
 *
 * Event `data` and snapshot `state` are encoded with CBOR
 * ({@linkcode cborCodec}); `metadata` is plain JSON.
 *
 * @example Append events, load them, and catch a conflict
 * ```ts
 * import { ConcurrencyConflictError, InMemoryEventStore } from "@deno-eventstore/core";
 * import assert from "node:assert/strict";
 *
 * await using store = new InMemoryEventStore();
 * await store.appendEvents("order-42", [
 *   { type: "OrderPlaced.v1", data: { totalCents: 1999 }, metadata: { userId: "u-7" } },
 * ], { expectedVersion: "no_stream" });
 *
 * const [placed] = await store.loadEvents<{ totalCents: number }>("order-42");
 * assert.equal(placed.version, 1);
 * assert.equal(placed.data.totalCents, 1999);
 *
 * // A second writer that read the stream before the first append loses.
 * await assert.rejects(
 *   store.appendEvents("order-42", [{ type: "OrderPlaced.v1", data: {} }], { expectedVersion: 0 }),
 *   ConcurrencyConflictError,
 * );
 * ```
 *
 * @example The same on PostgreSQL: connect, migrate, append, load, snapshot
 * ```ts ignore
 * import { PostgresEventStore } from "@deno-eventstore/core";
 *
 * await using store = await PostgresEventStore.connect(Deno.env.get("DATABASE_URL")!);
 * await store.migrate(); // creates the tables once; a no-op afterwards
 * await store.appendEvents("order-42", [
 *   { type: "OrderPlaced.v1", data: { totalCents: 1999 } },
 * ], { expectedVersion: "no_stream" });
 * const events = await store.loadEvents("order-42");
 * await store.saveSnapshot("order-42", events.length, { status: "placed" });
 * const snapshot = await store.loadSnapshot<{ status: string }>("order-42");
 * ```
 *
 * @module
 */

export type {
  AppendOptions,
  AppendResult,
  EventStore,
  ExpectedVersion,
  LoadOptions,
  NewEvent,
  ProjectionContext,
  ProjectionHandler,
  ProjectionOptions,
  ReadAllLag,
  ReadAllOptions,
  ReaderHold,
  RecordedEvent,
  Snapshot,
  SubscribeOptions,
} from "./src/event_store.ts";
export {
  ConcurrencyConflictError,
  DatabaseError,
  DuplicateEventError,
  EncodingError,
  type EncodingErrorOptions,
  EventStoreError,
  type EventStoreErrorCode,
  InvalidArgumentError,
  MigrationError,
  PositionsExhaustedError,
  StoreClosedError,
  StoreUnavailableError,
  UnsupportedServerError,
} from "./src/errors.ts";
export { cborCodec, type Codec } from "./src/codec.ts";
export {
  InMemoryEventStore,
  type InMemoryEventStoreOptions,
} from "./src/memory_store.ts";
export {
  PostgresEventStore,
  type PostgresEventStoreOptions,
} from "./src/postgres_store.ts";
export {
  bundledMigrations,
  type MigrateOptions,
  type Migration,
  type MigrationResult,
  runMigrations,
  type Sql,
} from "./src/migrations.ts";
export type { Logger, LogLevel, LogRecord } from "./src/logger.ts";
export {
  type Aggregate,
  AggregateRepository,
  type AggregateRepositoryOptions,
  type HandleOptions,
  type HandleResult,
  type LoadAggregateOptions,
  type LoadedAggregate,
} from "./src/aggregate.ts";
