/**
 * The errors every store throws. Each has a stable {@linkcode EventStoreError.code}
 * so callers can branch on it without `instanceof` across package copies.
 *
 * @module
 */

import type { ExpectedVersion } from "./event_store.ts";

/**
 * The stable codes of {@linkcode EventStoreError}. Renaming one is a breaking
 * change; later releases only add to the union.
 */
export type EventStoreErrorCode =
  | "concurrency_conflict"
  | "duplicate_event"
  | "invalid_argument"
  | "encoding"
  | "store_closed"
  | "unavailable"
  | "migration"
  | "database"
  | "unsupported_server"
  | "positions_exhausted";

/**
 * The base class of every error this module throws on purpose.
 *
 * @example Branch on the code
 * ```ts
 * import { EventStoreError, InMemoryEventStore } from "@deno-eventstore/core";
 * import assert from "node:assert/strict";
 *
 * const store = new InMemoryEventStore();
 * try {
 *   await store.appendEvents("", [{ type: "Opened", data: {} }]);
 *   assert.fail("expected a rejection");
 * } catch (error) {
 *   assert.ok(error instanceof EventStoreError);
 *   assert.equal(error.code, "invalid_argument");
 * }
 * ```
 */
export class EventStoreError extends Error {
  /** What went wrong, as a stable machine-readable code. */
  readonly code: EventStoreErrorCode;

  /**
   * Creates an error with a code and a message.
   *
   * @param code The stable code of this error.
   * @param message A sentence for humans: "Cannot X: reason".
   * @param options `cause` keeps the underlying error, if any.
   */
  constructor(
    code: EventStoreErrorCode,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.code = code;
    this.name = "EventStoreError";
  }
}

/**
 * Thrown when an append's `expectedVersion` does not match the stream's
 * actual version. Nothing of the append was written; reload and decide again.
 *
 * @example Catch a conflict and read its context
 * ```ts
 * import { ConcurrencyConflictError, InMemoryEventStore } from "@deno-eventstore/core";
 * import assert from "node:assert/strict";
 *
 * const store = new InMemoryEventStore();
 * await store.appendEvents("order-1", [{ type: "Placed", data: {} }]);
 * await assert.rejects(
 *   store.appendEvents("order-1", [{ type: "Placed", data: {} }], { expectedVersion: "no_stream" }),
 *   (error) => {
 *     assert.ok(error instanceof ConcurrencyConflictError);
 *     assert.equal(error.streamId, "order-1");
 *     assert.equal(error.expectedVersion, "no_stream");
 *     assert.equal(error.actualVersion, 1);
 *     return true;
 *   },
 * );
 * ```
 */
export class ConcurrencyConflictError extends EventStoreError {
  /** Always `"concurrency_conflict"`. */
  declare readonly code: "concurrency_conflict";
  /** The stream the append targeted. */
  readonly streamId: string;
  /** What the caller expected the stream's version to be. */
  readonly expectedVersion: ExpectedVersion;
  /** The stream's version when the append was checked (0: no events). */
  readonly actualVersion: number;

  /**
   * Creates a conflict error for a stream.
   *
   * @param streamId The stream the append targeted.
   * @param versions The caller's expected version and the stream's actual one.
   * @param options `cause` keeps the underlying error, if any.
   */
  constructor(
    streamId: string,
    versions: { expectedVersion: ExpectedVersion; actualVersion: number },
    options?: ErrorOptions,
  ) {
    super(
      "concurrency_conflict",
      `Cannot append to stream ${quote(streamId)}: expected ${
        describeExpected(versions.expectedVersion)
      }, actual version ${versions.actualVersion}`,
      options,
    );
    this.name = "ConcurrencyConflictError";
    this.streamId = streamId;
    this.expectedVersion = versions.expectedVersion;
    this.actualVersion = versions.actualVersion;
  }
}

/**
 * Thrown when an append carries an event id that its stream already holds,
 * and the append is not an exact repeat of the one that stored it. An exact
 * repeat (every id of the batch stored, in the batch's order, at the
 * versions the expectation allows) is not an error: it returns the first
 * append's result, so a client may retry an append whose outcome it never
 * learned. Nothing of the append was written.
 *
 * @example A retry that adds an event to a stored batch
 * ```ts
 * import { DuplicateEventError, InMemoryEventStore } from "@deno-eventstore/core";
 * import assert from "node:assert/strict";
 *
 * const store = new InMemoryEventStore();
 * const placed = { id: crypto.randomUUID(), type: "Placed", data: {} };
 * await store.appendEvents("order-1", [placed], { expectedVersion: "no_stream" });
 * // The same append again: the first one's result, nothing written.
 * const again = await store.appendEvents("order-1", [placed], { expectedVersion: "no_stream" });
 * assert.equal(again.version, 1);
 *
 * const shipped = { id: crypto.randomUUID(), type: "Shipped", data: {} };
 * await assert.rejects(
 *   store.appendEvents("order-1", [placed, shipped], { expectedVersion: "no_stream" }),
 *   (error) => {
 *     assert.ok(error instanceof DuplicateEventError);
 *     assert.equal(error.eventId, placed.id);
 *     assert.equal(error.storedVersion, 1);
 *     return true;
 *   },
 * );
 * ```
 */
export class DuplicateEventError extends EventStoreError {
  /** Always `"duplicate_event"`. */
  declare readonly code: "duplicate_event";
  /** The stream the append targeted. */
  readonly streamId: string;
  /** The first event id of the batch that the stream already holds. */
  readonly eventId: string;
  /** The version at which the stream holds it. */
  readonly storedVersion: number;

  /**
   * Creates the error for one event id already in a stream.
   *
   * @param streamId The stream the append targeted.
   * @param stored The event id and the version the stream holds it at.
   * @param reason Why the append is not a repeat of the stored one.
   */
  constructor(
    streamId: string,
    stored: { eventId: string; storedVersion: number },
    reason: string,
  ) {
    super(
      "duplicate_event",
      `Cannot append to stream ${
        quote(streamId)
      }: event ${stored.eventId} is already stored at version ${stored.storedVersion}, and ${reason}; a retry must repeat the original append exactly (same events, same ids, same expected version)`,
    );
    this.name = "DuplicateEventError";
    this.streamId = streamId;
    this.eventId = stored.eventId;
    this.storedVersion = stored.storedVersion;
  }
}

/**
 * Thrown when an argument is malformed: an empty stream id, an empty event
 * list, a negative version, metadata that is not plain JSON, and so on. It is
 * thrown before anything is written.
 *
 * @example Read which field was wrong
 * ```ts
 * import { InMemoryEventStore, InvalidArgumentError } from "@deno-eventstore/core";
 * import assert from "node:assert/strict";
 *
 * const store = new InMemoryEventStore();
 * await assert.rejects(store.appendEvents("order-1", []), (error) => {
 *   assert.ok(error instanceof InvalidArgumentError);
 *   assert.equal(error.field, "events");
 *   return true;
 * });
 * ```
 */
export class InvalidArgumentError extends EventStoreError {
  /** Always `"invalid_argument"`. */
  declare readonly code: "invalid_argument";
  /** The path of the offending argument, e.g. `events[2].metadata.tags`. */
  readonly field: string;

  /**
   * Creates an error naming the offending argument.
   *
   * @param field The path of the offending argument.
   * @param problem What is wrong with it, e.g. "must be a non-empty string".
   * @param options `cause` keeps the underlying error, if any.
   */
  constructor(field: string, problem: string, options?: ErrorOptions) {
    super("invalid_argument", `Invalid argument ${field}: ${problem}`, options);
    this.name = "InvalidArgumentError";
    this.field = field;
  }
}

/** Options of {@linkcode EncodingError}: `cause` and which way it failed. */
export interface EncodingErrorOptions extends ErrorOptions {
  /** `"encode"` (the default) before a write, `"decode"` on a read. */
  operation?: "encode" | "decode";
}

/**
 * Thrown when the codec cannot encode a value (a function, a `Map`, a class
 * instance, a cycle) or cannot decode stored bytes. On encoding it is thrown
 * before anything is written; the codec's own error is kept as `cause`.
 *
 * @example Data the codec cannot encode
 * ```ts
 * import { EncodingError, InMemoryEventStore } from "@deno-eventstore/core";
 * import assert from "node:assert/strict";
 *
 * const store = new InMemoryEventStore();
 * await assert.rejects(
 *   store.appendEvents("order-1", [{ type: "Placed", data: { at: () => 1 } }]),
 *   (error) => error instanceof EncodingError && error.field === "events[0].data",
 * );
 * ```
 */
export class EncodingError extends EventStoreError {
  /** Always `"encoding"`. */
  declare readonly code: "encoding";
  /** The value that failed, e.g. `events[0].data` or `state`. */
  readonly field: string;
  /** Whether encoding (before a write) or decoding (on a read) failed. */
  readonly operation: "encode" | "decode";

  /**
   * Creates an error naming the value that failed.
   *
   * @param field The value that failed, e.g. `events[0].data`.
   * @param problem What the codec reported.
   * @param options `cause` keeps the codec's own error; `operation` says
   *   which way it failed.
   */
  constructor(field: string, problem: string, options?: EncodingErrorOptions) {
    const operation = options?.operation ?? "encode";
    super("encoding", `Cannot ${operation} ${field}: ${problem}`, options);
    this.name = "EncodingError";
    this.field = field;
    this.operation = operation;
  }
}

/**
 * Thrown by every operation on a store after its `close()` was called.
 *
 * @example Using a closed store
 * ```ts
 * import { InMemoryEventStore, StoreClosedError } from "@deno-eventstore/core";
 * import assert from "node:assert/strict";
 *
 * const store = new InMemoryEventStore();
 * await store.close();
 * await assert.rejects(store.streamVersion("order-1"), StoreClosedError);
 * ```
 */
export class StoreClosedError extends EventStoreError {
  /** Always `"store_closed"`. */
  declare readonly code: "store_closed";

  /**
   * Creates an error naming what was attempted.
   *
   * @param operation What was attempted, e.g. `append events`.
   */
  constructor(operation: string) {
    super("store_closed", `Cannot ${operation}: the store is closed`);
    this.name = "StoreClosedError";
  }
}

/**
 * Thrown when the database cannot be reached or stops answering: the
 * connection was refused, timed out, or was closed, the server is shutting
 * down or has no free connection slots, a statement ran past its timeout, or
 * a lock stayed held elsewhere past `lock_timeout` (`sqlState` `55P03`).
 * The driver's error is kept as `cause`; the message never holds a password.
 * Whether an interrupted append was stored is unknown: read the stream (or
 * retry with the same event ids) before deciding again.
 *
 * @example Connecting to a port where nothing listens
 * ```ts ignore
 * import { PostgresEventStore, StoreUnavailableError } from "@deno-eventstore/core";
 * import assert from "node:assert/strict";
 *
 * await assert.rejects(
 *   PostgresEventStore.connect("postgres://app:secret@127.0.0.1:1/app", { connectTimeout: 2 }),
 *   (error) => error instanceof StoreUnavailableError && !error.message.includes("secret"),
 * );
 * ```
 */
export class StoreUnavailableError extends EventStoreError {
  /** Always `"unavailable"`. */
  declare readonly code: "unavailable";
  /** PostgreSQL's SQLSTATE when the server said why (e.g. `57P01`). */
  readonly sqlState: string | undefined;

  /**
   * Creates an error saying what could not be done and why.
   *
   * @param message A sentence for humans: "Cannot X: reason".
   * @param options `cause` keeps the driver's error; `sqlState` the server's code.
   */
  constructor(
    message: string,
    options?: ErrorOptions & { sqlState?: string },
  ) {
    super("unavailable", message, options);
    this.name = "StoreUnavailableError";
    this.sqlState = options?.sqlState;
  }
}

/**
 * Thrown when the server, or a connection pooler in front of it, cannot give
 * the store what it needs, whatever the store does: a pooler in statement
 * mode (no transactions), or one in transaction mode while the store was
 * told to use named prepared statements (`prepare: true`). Thrown by
 * `connect()` before anything is written; the message names the fix.
 *
 * @example Branch on the code
 * ```ts
 * import { UnsupportedServerError } from "@deno-eventstore/core";
 * import assert from "node:assert/strict";
 *
 * const error = new UnsupportedServerError(
 *   "Cannot connect: a pooler in statement mode is in front of the server",
 * );
 * assert.equal(error.code, "unsupported_server");
 * ```
 */
export class UnsupportedServerError extends EventStoreError {
  /** Always `"unsupported_server"`. */
  declare readonly code: "unsupported_server";

  /**
   * Creates an error saying what the server lacks and how to fix it.
   *
   * @param message A sentence for humans: "Cannot X: reason; fix".
   * @param options `cause` keeps the underlying error, if any.
   */
  constructor(message: string, options?: ErrorOptions) {
    super("unsupported_server", message, options);
    this.name = "UnsupportedServerError";
  }
}

/**
 * Thrown when an append is refused because the store has no global position
 * left to give it. A PostgreSQL position is `(transaction id + offset) << 20`
 * plus the event's index in a signed 64-bit integer: once a transaction id
 * plus the offset of `realign_positions()` reaches 2^43 (8,796,093,022,208),
 * its positions would pass 2^63 − 1 and wrap to negative numbers, so the
 * append writes nothing and throws this instead. Every stored event stays
 * readable. The way on is a fresh store: copy the events into it in
 * `readAll` order (they get new positions) and restart consumers from its
 * start (docs/database-setup.md, section 8).
 *
 * @example Branch on the code
 * ```ts
 * import { PositionsExhaustedError } from "@deno-eventstore/core";
 * import assert from "node:assert/strict";
 *
 * const error = new PositionsExhaustedError("order-1");
 * assert.equal(error.code, "positions_exhausted");
 * assert.equal(error.streamId, "order-1");
 * assert.match(error.message, /nothing was written/);
 * ```
 */
export class PositionsExhaustedError extends EventStoreError {
  /** Always `"positions_exhausted"`. */
  declare readonly code: "positions_exhausted";
  /** The stream the refused append targeted. */
  readonly streamId: string;

  /**
   * Creates the error of an append refused for want of positions.
   *
   * @param streamId The stream the append targeted.
   * @param options `cause` keeps the underlying error, if any.
   */
  constructor(streamId: string, options?: ErrorOptions) {
    super(
      "positions_exhausted",
      `Cannot append to stream ${
        quote(streamId)
      }: the store's global positions are exhausted (transaction id + position offset reached 2^43, past which a position would exceed 2^63 - 1); nothing was written, and every stored event stays readable. Copy the events into a fresh store (see docs/database-setup.md, "The end of global positions")`,
      options,
    );
    this.name = "PositionsExhaustedError";
    this.streamId = streamId;
  }
}

/**
 * Thrown when the database schema is not as this module needs it: an
 * applied migration file was changed afterwards (its checksum differs), a
 * migration failed (it was rolled back), or the tables are missing because
 * migrations were never run.
 *
 * @example A store whose tables were never created
 * ```ts ignore
 * import { MigrationError, PostgresEventStore } from "@deno-eventstore/core";
 * import assert from "node:assert/strict";
 *
 * await using store = await PostgresEventStore.connect(Deno.env.get("DATABASE_URL")!, {
 *   schema: "never_migrated",
 * });
 * await assert.rejects(store.streamVersion("order-1"), MigrationError);
 * ```
 */
export class MigrationError extends EventStoreError {
  /** Always `"migration"`. */
  declare readonly code: "migration";
  /** The migration file concerned, when there is one. */
  readonly migration: string | undefined;

  /**
   * Creates an error about the schema or one migration.
   *
   * @param message A sentence for humans: "Cannot X: reason".
   * @param options `cause` keeps the underlying error; `migration` names the file.
   */
  constructor(
    message: string,
    options?: ErrorOptions & { migration?: string },
  ) {
    super("migration", message, options);
    this.name = "MigrationError";
    this.migration = options?.migration;
  }
}

/**
 * Thrown when PostgreSQL refuses an operation for a reason none of the other
 * errors describe: a permission is missing, the disk is full, a constraint
 * of the application's own was violated. `sqlState` is PostgreSQL's code and
 * the driver's error is kept as `cause`.
 *
 * @example Branch on PostgreSQL's code
 * ```ts
 * import { DatabaseError } from "@deno-eventstore/core";
 * import assert from "node:assert/strict";
 *
 * const error = new DatabaseError("Cannot append events: permission denied", { sqlState: "42501" });
 * assert.equal(error.code, "database");
 * assert.equal(error.sqlState, "42501");
 * ```
 */
export class DatabaseError extends EventStoreError {
  /** Always `"database"`. */
  declare readonly code: "database";
  /** PostgreSQL's SQLSTATE, e.g. `42501` (insufficient privilege). */
  readonly sqlState: string | undefined;

  /**
   * Creates an error carrying PostgreSQL's code.
   *
   * @param message A sentence for humans: "Cannot X: reason".
   * @param options `cause` keeps the driver's error; `sqlState` the server's code.
   */
  constructor(
    message: string,
    options?: ErrorOptions & { sqlState?: string },
  ) {
    super("database", message, options);
    this.name = "DatabaseError";
    this.sqlState = options?.sqlState;
  }
}

/** Long ids are cut so that a message stays one readable line. */
const MAX_QUOTED_LENGTH = 200;

function quote(value: string): string {
  const shown = value.length > MAX_QUOTED_LENGTH
    ? `${value.slice(0, MAX_QUOTED_LENGTH)}…`
    : value;
  return JSON.stringify(shown);
}

function describeExpected(expected: ExpectedVersion): string {
  switch (expected) {
    case "any":
      return "any version";
    case "no_stream":
      return "no stream";
    case "stream_exists":
      return "an existing stream";
    default:
      return `version ${expected}`;
  }
}
