/**
 * The PostgreSQL store: the contract on tables that production can trust,
 * through postgres.js (pipelined, pooled, prepared statements). The class
 * checks its input and runs each operation in a span; the modules beside it
 * do the work. Private to the package: `src/postgres_store.ts` exports it.
 *
 * @module
 */

import {
  type Attributes,
  type Span,
  SpanKind,
  SpanStatusCode,
  trace,
  type Tracer,
} from "@opentelemetry/api";
import type {
  AppendOptions,
  AppendResult,
  EventStore,
  LoadOptions,
  NewEvent,
  ProjectionHandler,
  ProjectionOptions,
  ReadAllOptions,
  RecordedEvent,
  Snapshot,
  SubscribeOptions,
} from "../event_store.ts";
import { cborCodec, type Codec } from "../codec.ts";
import {
  EventStoreError,
  InvalidArgumentError,
  StoreClosedError,
  StoreUnavailableError,
} from "../errors.ts";
import { Slots } from "../_slots.ts";
import {
  type Logger,
  type LogLevel,
  logSafely,
  silentLogger,
} from "../logger.ts";
import {
  type MigrateOptions,
  type MigrationResult,
  runMigrations,
  type Sql,
} from "../migrations.ts";
import {
  checkExpectedVersion,
  checkLoadOptions,
  checkName,
  checkReadAllOptions,
  checkSnapshotVersion,
  checkStreamId,
  checkVersion,
  encodeValue,
  prepareEvents,
} from "../_input.ts";
import {
  asPostgres,
  type ErrorContext,
  passwordOf,
  type PostgresSql,
  quoteSchema,
  translateError,
} from "./driver.ts";
import { runProjectionLoop, subscription, Wakeups } from "../_subscription.ts";
import { channelFor, type Statements, statementsFor } from "./statements.ts";
import {
  checkInstance,
  checkOptions,
  DEFAULT_POOL_SIZE,
  describeServer,
  endPool,
  openPool,
  ownedPools,
  type PostgresEventStoreOptions,
} from "./connection.ts";
import { loadAll, loadStream, readStreamVersion } from "./read.ts";
import { loadSnapshot, saveSnapshot } from "./snapshots.ts";
import { append, type AppendContext } from "./append.ts";
import { Notifier, POSTGRES_POLL_MS } from "./notify.ts";
import {
  type BatchContext,
  handleBatch,
  readPosition,
  resetPosition,
} from "./projections.ts";

export type { PostgresEventStoreOptions } from "./connection.ts";

const TRACER_NAME = "@deno-eventstore/core";

/**
 * An {@linkcode EventStore} on PostgreSQL.
 *
 * Every append is one statement, one round trip: it reads the stream's
 * version, checks `expectedVersion` and inserts the whole batch from arrays.
 * The primary key `(stream_id, version)` settles races: of two writers that
 * read the same version, one inserts and the other gets a
 * {@linkcode ConcurrencyConflictError}, or, for `"any"`, retries at once.
 * Driver errors become typed errors ({@linkcode StoreUnavailableError},
 * {@linkcode MigrationError}, {@linkcode DatabaseError}) whose messages
 * never hold the password. Each operation is an OpenTelemetry span (a no-op
 * unless the application registers a tracer provider).
 *
 * @example Connect, migrate, append, load and snapshot
 * ```ts ignore
 * import { PostgresEventStore } from "@deno-eventstore/core";
 * import assert from "node:assert/strict";
 *
 * await using store = await PostgresEventStore.connect(Deno.env.get("DATABASE_URL")!, {
 *   max: 10,
 *   statementTimeout: 5_000,
 * });
 * await store.migrate(); // creates the tables once; a no-op afterwards
 *
 * const { version } = await store.appendEvents("order-42", [
 *   { type: "OrderPlaced.v1", data: { totalCents: 1999 } },
 * ], { expectedVersion: "no_stream" });
 * assert.equal(version, 1);
 *
 * const [placed] = await store.loadEvents<{ totalCents: number }>("order-42");
 * assert.equal(placed.data.totalCents, 1999);
 *
 * await store.saveSnapshot("order-42", 1, { status: "placed" });
 * assert.equal((await store.loadSnapshot("order-42"))?.version, 1);
 * ```
 *
 * @example Use the application's own postgres.js instance
 * ```ts ignore
 * import postgres from "postgres";
 * import { PostgresEventStore } from "@deno-eventstore/core";
 *
 * const sql = postgres(Deno.env.get("DATABASE_URL")!, { max: 20 });
 * const store = new PostgresEventStore(sql, { schema: "orders" });
 * // ... close() leaves `sql` open: the application ends it.
 * await store.close();
 * await sql.end();
 * ```
 */
export class PostgresEventStore implements EventStore {
  readonly #sql: PostgresSql;
  readonly #schema: string;
  readonly #statements: Statements;
  readonly #codec: Codec;
  readonly #logger: Logger;
  readonly #generateId: () => string;
  readonly #tracer: Tracer;
  readonly #server: string;
  #password: string | undefined;
  readonly #inFlight = new Set<Promise<unknown>>();
  readonly #wakeups = new Wakeups();
  readonly #notifier: Notifier;
  /** What the modules beside this class need of it. */
  readonly #context: AppendContext & BatchContext;
  /** One per connection of a pool this store opened; none for the application's. */
  readonly #slots: Slots | undefined;
  readonly #acquireTimeout: number | undefined;
  #closed = false;

  /**
   * Wraps a postgres.js instance the application already has. Does no I/O;
   * {@linkcode PostgresEventStore.close} leaves the instance open. The
   * instance must keep postgres.js's default type fetching (`fetch_types`).
   *
   * @param sql The postgres.js instance.
   * @param options The schema, codec, logger and id generator (pool options
   *   belong to the instance).
   * @throws {InvalidArgumentError} An option is malformed, or a pool option
   *   was given.
   */
  constructor(sql: Sql, options: PostgresEventStoreOptions = {}) {
    checkInstance(sql, options);
    const schema = options.schema ?? "public";
    // The application's own instance serves the application too: this
    // store cannot count its connections' users, so it does not try.
    this.#slots = ownedPools.has(sql)
      ? new Slots(options.max ?? DEFAULT_POOL_SIZE)
      : undefined;
    this.#acquireTimeout = options.acquireTimeout;
    this.#sql = asPostgres(sql);
    this.#schema = schema;
    this.#statements = statementsFor(quoteSchema(schema));
    this.#codec = options.codec ?? cborCodec;
    this.#logger = options.logger ?? silentLogger;
    this.#generateId = options.generateId ?? (() => crypto.randomUUID());
    this.#tracer = trace.getTracer(TRACER_NAME);
    this.#server = describeServer(this.#sql);
    this.#password = typeof this.#sql.options?.pass === "string"
      ? this.#sql.options.pass
      : undefined;
    this.#context = {
      sql: this.#sql,
      statements: this.#statements,
      codec: this.#codec,
      responseTimeout: options.responseTimeout,
      log: (level, message, fields) => this.#log(level, message, fields),
      notifyAppended: () => this.#notifier.notifyAppended(),
      run: (operation, attributes, body) =>
        this.#run(operation, attributes, body),
    };
    this.#notifier = new Notifier({
      sql: this.#sql,
      notify: this.#statements.notify,
      channel: channelFor(quoteSchema(schema)),
      wakeups: this.#wakeups,
      inFlight: this.#inFlight,
      closed: () => this.#closed,
      log: this.#context.log,
    });
  }

  /**
   * Opens a pool to PostgreSQL and checks that the server answers, or wraps
   * an existing postgres.js instance. TLS follows the URL's `sslmode`.
   *
   * @param url A connection string (`postgres://user:password@host:5432/db`)
   *   or a postgres.js instance.
   * @param options Pool size and timeouts, schema, codec, logger.
   * @returns A store; call {@linkcode PostgresEventStore.migrate} once
   *   before the first use of a new database.
   * @throws {StoreUnavailableError} The server cannot be reached, refuses the
   *   login, or the database does not exist. The message shows the URL with
   *   its password redacted.
   * @throws {InvalidArgumentError} The URL or an option is malformed.
   *
   * @example Connect with a statement timeout
   * ```ts ignore
   * import { PostgresEventStore } from "@deno-eventstore/core";
   *
   * await using store = await PostgresEventStore.connect(
   *   "postgres://app:secret@localhost:5432/app",
   *   { max: 10, statementTimeout: 5_000, applicationName: "orders-api" },
   * );
   * ```
   */
  static async connect(
    url: string | Sql,
    options: PostgresEventStoreOptions = {},
  ): Promise<PostgresEventStore> {
    if (typeof url !== "string") return new PostgresEventStore(url, options);
    if (url.trim() === "") {
      throw new InvalidArgumentError("url", "must be a non-empty string");
    }
    checkOptions(options);
    const password = passwordOf(url);
    const sql = openPool(url, options);
    const store = new PostgresEventStore(sql, options);
    // As typed in the URL: what a driver message would echo, if any did.
    store.#password = password ?? store.#password;
    try {
      await store.#run("connect", {}, () => sql`SELECT 1`);
    } catch (error) {
      await sql.end({ timeout: 0 }).catch(() => {});
      throw error;
    }
    store.#log("info", "Connected", { server: store.#server });
    return store;
  }

  /**
   * Applies this module's pending migrations to the store's schema (see
   * {@linkcode runMigrations}). Safe to call at every start-up and from
   * several processes at once.
   *
   * @param options Migrations of the application's own to apply instead.
   * @returns Which migrations were applied now and which already were.
   * @throws {MigrationError} An applied migration changed, or one failed.
   * @throws {StoreUnavailableError} The database cannot be reached.
   */
  migrate(
    options: Pick<MigrateOptions, "migrations"> = {},
  ): Promise<MigrationResult> {
    return this.#run("migrate", {}, () =>
      runMigrations(this.#sql, {
        schema: this.#schema,
        logger: this.#logger,
        migrations: options.migrations,
      }));
  }

  /** {@inheritDoc EventStore.appendEvents} */
  appendEvents<D>(
    streamId: string,
    events: readonly NewEvent<D>[],
    options?: AppendOptions,
  ): Promise<AppendResult> {
    return this.#run(
      "append events",
      { "eventstore.stream_id": streamId },
      async (span) => {
        checkStreamId(streamId);
        const expected = checkExpectedVersion(options);
        const { events: prepared, hasCallerIds } = prepareEvents(
          events,
          this.#codec,
          this.#generateId,
        );
        span.setAttribute("eventstore.event_count", prepared.length);
        span.setAttribute("eventstore.expected_version", String(expected));
        return await append(
          this.#context,
          span,
          streamId,
          expected,
          prepared,
          hasCallerIds,
        );
      },
    );
  }

  /** {@inheritDoc EventStore.loadEvents} */
  loadEvents<D>(
    streamId: string,
    options?: LoadOptions,
  ): Promise<RecordedEvent<D>[]> {
    return this.#run(
      "load events",
      { "eventstore.stream_id": streamId },
      async (span) => {
        checkStreamId(streamId);
        const { fromVersion, maxCount } = checkLoadOptions(options);
        const events = await loadStream<D>(
          this.#context,
          streamId,
          fromVersion,
          maxCount,
        );
        span.setAttribute("eventstore.event_count", events.length);
        return events;
      },
    );
  }

  /** {@inheritDoc EventStore.readAll} */
  readAll<D>(options?: ReadAllOptions): Promise<RecordedEvent<D>[]> {
    return this.#run("read all events", {}, async (span) => {
      const range = checkReadAllOptions(options);
      const events = await loadAll<D>(this.#context, range);
      span.setAttribute("eventstore.event_count", events.length);
      return events;
    });
  }

  /** {@inheritDoc EventStore.subscribe} */
  subscribe<D>(options?: SubscribeOptions): AsyncIterable<RecordedEvent<D>> {
    return subscription<D>(
      (read) => this.readAll<D>(read),
      this.#wakeups,
      POSTGRES_POLL_MS,
      options,
      () => this.#notifier.listen(),
    );
  }

  /** {@inheritDoc EventStore.runProjection} */
  async runProjection<D>(
    name: string,
    handler: ProjectionHandler<D>,
    options?: ProjectionOptions,
  ): Promise<void> {
    if (this.#closed) throw new StoreClosedError("run a projection");
    const checked = checkName(name, "name");
    await runProjectionLoop<D>(
      {
        read: (read) => this.readAll<D>(read),
        position: () => this.projectionPosition(checked),
        handle: (events, handle, from, to) =>
          handleBatch(this.#context, checked, events, handle, from, to),
      },
      handler,
      this.#wakeups,
      POSTGRES_POLL_MS,
      options,
      () => this.#notifier.listen(),
    );
  }

  /** {@inheritDoc EventStore.projectionPosition} */
  projectionPosition(name: string): Promise<bigint> {
    return this.#run("read a projection's position", {}, async () => {
      const checked = checkName(name, "name");
      return await readPosition(this.#context, checked);
    });
  }

  /** {@inheritDoc EventStore.resetProjection} */
  resetProjection(name: string): Promise<void> {
    return this.#run("reset a projection", {}, async () => {
      const checked = checkName(name, "name");
      await resetPosition(this.#context, checked);
    });
  }

  /** {@inheritDoc EventStore.streamVersion} */
  streamVersion(streamId: string): Promise<number> {
    return this.#run(
      "read the stream version",
      { "eventstore.stream_id": streamId },
      async (span) => {
        checkStreamId(streamId);
        const version = await readStreamVersion(this.#context, streamId);
        span.setAttribute("eventstore.version", version);
        return version;
      },
    );
  }

  /** {@inheritDoc EventStore.saveSnapshot} */
  saveSnapshot<S>(streamId: string, version: number, state: S): Promise<void> {
    return this.#run(
      "save a snapshot",
      { "eventstore.stream_id": streamId },
      async (span) => {
        checkStreamId(streamId);
        checkVersion(version, "version", 1);
        span.setAttribute("eventstore.version", version);
        const encoded = encodeValue(this.#codec, state, "state");
        const streamVersion = await saveSnapshot(
          this.#context,
          streamId,
          version,
          encoded,
        );
        checkSnapshotVersion(streamId, version, streamVersion);
      },
    );
  }

  /** {@inheritDoc EventStore.loadSnapshot} */
  loadSnapshot<S>(streamId: string): Promise<Snapshot<S> | undefined> {
    return this.#run(
      "load a snapshot",
      { "eventstore.stream_id": streamId },
      async (span) => {
        checkStreamId(streamId);
        return await loadSnapshot<S>(this.#context, span, streamId);
      },
    );
  }

  /**
   * Closes the store. A pool that {@linkcode PostgresEventStore.connect}
   * opened is ended (queries in flight get 5 seconds to finish); an instance
   * the application passed in stays open. Idempotent; afterwards every other
   * method throws {@linkcode StoreClosedError}. Never throws: a pool that
   * fails to end is logged.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#slots?.close(); // operations waiting for a connection: closed
    this.#wakeups.wake(); // subscribers read again, and learn it is closed
    await this.#notifier.close();
    if (ownedPools.has(this.#sql)) {
      try {
        await endPool(this.#sql, this.#inFlight);
      } catch (error) {
        this.#log("warn", "The pool did not end cleanly", {
          error: error instanceof Error ? error.message : String(error),
        });
      }
    }
    this.#log("debug", "Closed", { server: this.#server });
  }

  /** Closes the store, for `await using`. Never throws. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /** The server (password redacted) and schema, never the password. Never throws. */
  toString(): string {
    return `PostgresEventStore(${this.#server}, schema "${this.#schema}"${
      this.#closed ? ", closed" : ""
    })`;
  }

  /** What `console.log(store)` shows in Deno: {@linkcode toString}. Never throws. */
  [Symbol.for("Deno.customInspect")](): string {
    return this.toString();
  }

  /** What `util.inspect(store)` shows in Node: {@linkcode toString}. Never throws. */
  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return this.toString();
  }

  /**
   * Runs one operation in a span: refuses it on a closed store, and turns
   * whatever it throws into a typed error without the password.
   */
  #run<T>(
    operation: string,
    attributes: Attributes,
    body: (span: Span) => Promise<T>,
  ): Promise<T> {
    if (this.#closed) {
      return Promise.reject(new StoreClosedError(operation));
    }
    const running = this.#traced(operation, attributes, body);
    this.#inFlight.add(running);
    const done = () => this.#inFlight.delete(running);
    running.then(done, done);
    return running;
  }

  async #traced<T>(
    operation: string,
    attributes: Attributes,
    body: (span: Span) => Promise<T>,
  ): Promise<T> {
    const span = this.#tracer.startSpan(`eventstore ${operation}`, {
      kind: SpanKind.CLIENT,
      attributes: {
        "db.system": "postgresql",
        "db.namespace": this.#schema,
        ...attributes,
      },
    });
    const streamId = attributes["eventstore.stream_id"];
    const described = typeof streamId === "string"
      ? `${operation} for stream ${JSON.stringify(streamId.slice(0, 200))}`
      : operation;
    let release: (() => void) | undefined;
    try {
      release = await this.#slots?.acquire(this.#acquireTimeout, {
        timedOut: () => this.#noConnection(described),
        closed: () => new StoreClosedError(operation),
      });
      return await body(span);
    } catch (error) {
      const typed = translateError(error, this.#errorContext(described));
      span.recordException(typed);
      span.setStatus({ code: SpanStatusCode.ERROR, message: typed.message });
      span.setAttribute("eventstore.error_code", typed.code);
      if (!(error instanceof EventStoreError)) {
        this.#log(
          typed.code === "unavailable" ? "warn" : "error",
          "Operation failed",
          { operation, code: typed.code, error: typed.message },
        );
      }
      throw typed;
    } finally {
      release?.();
      span.end();
    }
  }

  /** The error of an operation that found no connection free in time. */
  #noConnection(operation: string): StoreUnavailableError {
    const message =
      `Cannot ${operation} (${this.#server}): no connection of the pool (max ${this.#slots?.size}) came free within ${this.#acquireTimeout} ms (options.acquireTimeout); every one is busy with other operations`;
    this.#log("warn", "No connection came free in time", {
      operation,
      acquireTimeout: this.#acquireTimeout,
      max: this.#slots?.size,
    });
    return new StoreUnavailableError(message);
  }

  #errorContext(operation: string): ErrorContext {
    return {
      operation,
      server: this.#server,
      schema: this.#schema,
      password: this.#password,
    };
  }

  #log(level: LogLevel, message: string, fields: Record<string, unknown>) {
    logSafely(this.#logger, level, message, {
      schema: this.#schema,
      ...fields,
    });
  }
}
