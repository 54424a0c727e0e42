/**
 * The PostgreSQL store: the contract on tables that production can trust,
 * through postgres.js (pipelined, pooled, prepared statements). The class
 * checks its input and runs each operation in a span; the modules beside it
 * do the work. Private to the package: `src/postgres_store.ts` exports it.
 *
 * @module
 */

import type { Attributes, Span } from "@opentelemetry/api";
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
} from "../event_store.ts";
import { cborCodec, type Codec } from "../codec.ts";
import { InvalidArgumentError, StoreClosedError } from "../errors.ts";
import { Slots } from "../_slots.ts";
import { type Logger, type LogLevel, silentLogger } from "../logger.ts";
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
  defaultGenerateId,
  encodeValue,
  prepareEvents,
} from "../_input.ts";
import {
  asPostgres,
  passwordOf,
  type PostgresSql,
  quoteSchema,
} from "./driver.ts";
import {
  resetFromHandler,
  runProjectionLoop,
  subscription,
  Wakeups,
} from "../_subscription.ts";
import { type Statements, statementsFor } from "./statements.ts";
import {
  checkInstance,
  checkOptions,
  DEFAULT_APPLICATION_NAME,
  DEFAULT_CONNECT_TIMEOUT_S,
  DEFAULT_POOL_SIZE,
  describeServer,
  endPool,
  openPool,
  ownedPools,
  poolEventsOf,
  type PostgresEventStoreOptions,
} from "./connection.ts";
import { loadAll, loadStream, readStreamVersion } from "./read.ts";
import { loadSnapshot, saveSnapshot } from "./snapshots.ts";
import type { AppendContext } from "./append.ts";
import {
  probeRoute,
  refuseRoute,
  type Route,
  routeOfInstance,
  type RouteProbe,
} from "./route.ts";
import { Notifier, POSTGRES_POLL_MS } from "./notify.ts";
import { Operations } from "./operations.ts";
import { AppendCoalescer } from "./coalesce.ts";
import {
  DEFAULT_HELD_BACK_THRESHOLD_MS,
  heldBackStatements,
  HeldBackWatch,
} from "./held_back.ts";
import {
  type BatchContext,
  checkWritable,
  handleBatch,
  handleInTurn,
  readPosition,
  resetPosition,
} from "./projections.ts";

export type { PostgresEventStoreOptions } from "./connection.ts";

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
 * On a read-only server (a hot standby, or `default_transaction_read_only`
 * on) reads and subscriptions work; appends, snapshots, resets and
 * projections reject with {@linkcode StoreUnavailableError} (`sqlState`
 * `25006`), a projection before its handler runs.
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
  readonly #server: string;
  #password: string | undefined;
  /** Spans, slots and typed errors of every operation. */
  readonly #operations: Operations;
  /** Appends, coalesced while they wait for a connection. */
  readonly #appends: AppendCoalescer;
  /** For the application's instance: one per connection, for appends only. */
  readonly #appendSlots: Slots | undefined;
  readonly #wakeups = new Wakeups();
  readonly #notifier: Notifier;
  /** Warns when readers stay held back by an open transaction. */
  readonly #heldBack: HeldBackWatch;
  /** What the modules beside this class need of it. */
  readonly #context: AppendContext & BatchContext;
  /** One per connection of a pool this store opened; none for the application's. */
  readonly #slots: Slots | undefined;
  /**
   * Projection batches that may run at once: one fewer than the pool's
   * connections (at least one). A batch holds a connection for its
   * transaction while its handler runs, and a handler may call the store
   * (a saga appends): with every connection held by a batch, those calls
   * found none and the store froze. So one is always left for the rest.
   */
  readonly #batches: Slots;
  readonly #options: PostgresEventStoreOptions;
  /** How the connections reach PostgreSQL; learnt before the first statement. */
  #route: Route | undefined;
  #learningRoute: Promise<void> | undefined;
  /** Whether the store's statements are named prepared statements. */
  #prepare: boolean;
  #closed = false;

  /**
   * Wraps a postgres.js instance the application already has. Does no I/O;
   * {@linkcode PostgresEventStore.close} leaves the instance open.
   *
   * @param sql The postgres.js instance.
   * @param options The schema, codec, logger and id generator (pool options
   *   belong to the instance).
   * @throws {InvalidArgumentError} An option is malformed, or a pool option
   *   was given. (Its first operation asks the instance once whether a
   *   connection pooler is in front of PostgreSQL, and fails with
   *   {@linkcode UnsupportedServerError} if so: see
   *   {@linkcode PostgresEventStore.connect}.)
   */
  constructor(sql: Sql, options: PostgresEventStoreOptions = {}) {
    checkInstance(sql, options);
    // For the getters of the context, which modules read per statement.
    // deno-lint-ignore no-this-alias
    const store = this;
    const schema = options.schema ?? "public";
    // The application's own instance serves the application too: this
    // store cannot count its connections' users, so it does not try.
    this.#slots = ownedPools.has(sql)
      ? new Slots(options.max ?? DEFAULT_POOL_SIZE)
      : undefined;
    const poolSize = this.#slots?.size ?? asPostgres(sql).options?.max ??
      DEFAULT_POOL_SIZE;
    this.#batches = new Slots(Math.max(1, poolSize - 1));
    this.#options = options;
    this.#sql = asPostgres(sql);
    this.#prepare = options.prepare ?? this.#sql.options?.prepare !== false;
    this.#schema = schema;
    this.#statements = statementsFor(quoteSchema(schema));
    this.#codec = options.codec ?? cborCodec;
    this.#logger = options.logger ?? silentLogger;
    this.#generateId = options.generateId ?? defaultGenerateId;
    this.#server = describeServer(this.#sql);
    this.#password = typeof this.#sql.options?.pass === "string"
      ? this.#sql.options.pass
      : undefined;
    this.#operations = new Operations({
      schema,
      server: this.#server,
      logger: this.#logger,
      slots: this.#slots,
      acquireTimeout: options.acquireTimeout,
      poolEvents: poolEventsOf(this.#sql),
      password: () => this.#password,
      closed: () => this.#closed,
      // An application's instance: its route, asked once before the
      // store's first statement.
      before: (operation) =>
        this.#route === undefined && operation !== "connect"
          ? this.#learnRoute()
          : undefined,
    });
    this.#context = {
      sql: this.#sql,
      statements: this.#statements,
      codec: this.#codec,
      responseTimeout: options.responseTimeout,
      poolEvents: poolEventsOf(this.#sql),
      get prepare() {
        return store.#prepare;
      },
      get cancelAfter() {
        // 0 is PostgreSQL's "no limit".
        return store.#route === "direct" || !options.statementTimeout
          ? undefined
          : options.statementTimeout;
      },
      log: (level, message, fields) => this.#log(level, message, fields),
      notifyAppended: (position) => this.#notifier.notifyAppended(position),
      run: (operation, attributes, body) =>
        this.#run(operation, attributes, body),
    };
    // The application's instance: its pool is not counted, but its appends
    // are, one per connection, so that those that wait can go together.
    const appendSlots = this.#appendSlots = this.#slots === undefined
      ? new Slots(poolSize)
      : undefined;
    this.#appends = new AppendCoalescer(
      this.#context,
      (operation) =>
        appendSlots === undefined
          ? this.#operations.acquire(operation)
          : appendSlots.acquire(undefined, {
            timedOut: () => new StoreClosedError(operation),
            closed: () => new StoreClosedError(operation),
          }),
    );
    this.#notifier = new Notifier({
      sql: this.#sql,
      withConnection: (send) =>
        this.#withConnection(send, "look for appends of other processes"),
      head: this.#statements.head,
      prepare: () => store.#prepare,
      wakeups: this.#wakeups,
      inFlight: this.#operations.inFlight,
      closed: () => this.#closed,
      log: this.#context.log,
    });
    this.#heldBack = new HeldBackWatch({
      query: this.#context,
      statements: heldBackStatements(quoteSchema(schema)),
      thresholdMs: options.heldBackThreshold ?? DEFAULT_HELD_BACK_THRESHOLD_MS,
      withConnection: (send) =>
        this.#withConnection(send, "check whether readers are held back"),
      inFlight: this.#operations.inFlight,
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
   * @throws {UnsupportedServerError} A connection pooler the store cannot
   *   work behind is in front of PostgreSQL: one in statement mode, one in
   *   transaction mode with `prepare: true`, or any in front of an
   *   application's own instance (connect by URL instead). Found by asking
   *   the server, with one or two short-lived connections of the store's
   *   own (by URL) or one query (an instance).
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
    if (typeof url !== "string") {
      const wrapping = new PostgresEventStore(url, options);
      await wrapping.#run("connect", {}, () => wrapping.#learnRoute());
      return wrapping;
    }
    if (url.trim() === "") {
      throw new InvalidArgumentError("url", "must be a non-empty string");
    }
    checkOptions(options);
    const password = passwordOf(url);
    const opened = (route: Route) => {
      const store = new PostgresEventStore(
        openPool(url, options, route),
        options,
      );
      // As typed in the URL: what a driver message would echo, if any did.
      store.#password = password ?? store.#password;
      return store;
    };
    // Parses the URL (refusing a malformed one) and opens nothing yet.
    let store = opened("direct");
    try {
      const probe = await store.#run("connect", {}, () =>
        probeRoute(url, {
          connectTimeout: options.connectTimeout ?? DEFAULT_CONNECT_TIMEOUT_S,
          applicationName: options.applicationName ?? DEFAULT_APPLICATION_NAME,
        }));
      if (probe.route !== "direct") {
        // A pooler refuses PostgreSQL's own startup parameters.
        await store.#sql.end({ timeout: 0 });
        store = opened(probe.route);
      }
      store.#adopt(probe);
      await store.#run("connect", {}, () => store.#sql`SELECT 1`);
    } catch (error) {
      await store.#sql.end({ timeout: 0 }).catch(() => {});
      throw error;
    }
    store.#log("info", "Connected", {
      server: store.#server,
      route: store.#route,
    });
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
        // The coalescer takes the connection: appends that wait for one go
        // together when it comes free.
        return await this.#appends.append(
          span,
          streamId,
          expected,
          prepared,
          hasCallerIds,
          `append events for stream ${JSON.stringify(streamId.slice(0, 200))}`,
        );
      },
      { slot: false },
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
    this.#heldBack.readerActive();
    this.#notifier.readerActive();
    return this.#run("read all events", {}, async (span) => {
      const range = checkReadAllOptions(options);
      const events = await loadAll<D>(this.#context, range);
      span.setAttribute("eventstore.event_count", events.length);
      return events;
    });
  }

  /**
   * {@inheritDoc EventStore.readAllLag}
   *
   * The store also logs a `warn` record naming the holders when events stay
   * hidden past `options.heldBackThreshold` while readers are active.
   */
  readAllLag(): Promise<ReadAllLag> {
    return this.#run(
      "read how far readAll lags",
      {},
      () => this.#heldBack.lag(),
    );
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
    const signal = options?.signal instanceof AbortSignal
      ? options.signal
      : undefined;
    await runProjectionLoop<D>(
      {
        read: (read) => this.readAll<D>(read),
        position: () => this.projectionPosition(checked),
        handle: (events, handle, from, to) =>
          handleInTurn(
            this.#batches,
            signal,
            () => handleBatch(this.#context, checked, events, handle, from, to),
          ),
      },
      handler,
      this.#wakeups,
      POSTGRES_POLL_MS,
      options,
      // A read-only server fails here, before the first batch's handler.
      () =>
        this.#run(
          "run a projection",
          { "eventstore.projection": checked },
          () => checkWritable(this.#context),
        ).then(() => this.#notifier.listen()),
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
      // From its own handler: done by the batch (it holds the lock).
      if (resetFromHandler(checked)) return;
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
    this.#batches.close(); // projections waiting for a batch's turn too
    this.#appendSlots?.close();
    this.#wakeups.wake(); // subscribers read again, and learn it is closed
    await this.#heldBack.close();
    await this.#notifier.close();
    if (ownedPools.has(this.#sql)) {
      try {
        await endPool(this.#sql, this.#operations.inFlight);
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
   * Takes what {@linkcode probeRoute} found: how to prepare statements, or
   * a refusal.
   *
   * @throws {UnsupportedServerError} A pooler the store cannot work behind.
   */
  #adopt(probe: RouteProbe): void {
    refuseRoute(probe, {
      server: this.#server,
      prepare: this.#options.prepare,
    });
    this.#route = probe.route;
    if (probe.route !== "direct") {
      // Behind a pooler, statements are unnamed unless the application
      // insists (a pooler in session mode, which the probe cannot prove).
      this.#prepare = this.#options.prepare === true;
      this.#log("info", "A connection pooler is in front of PostgreSQL", {
        route: probe.route,
        evidence: probe.evidence,
        prepare: this.#prepare,
      });
    }
  }

  /**
   * For the application's own instance: whether it reaches PostgreSQL
   * directly or through a pooler, asked once, before the store's first
   * statement.
   */
  #learnRoute(): Promise<void> {
    if (this.#route !== undefined) return Promise.resolve();
    this.#learningRoute ??= routeOfInstance(this.#sql).then(
      (probe) => this.#adopt(probe),
    ).finally(() => {
      this.#learningRoute = undefined;
    });
    return this.#learningRoute;
  }

  /** See {@linkcode Operations.withConnection}. */
  #withConnection<T>(
    send: () => Promise<T>,
    operation?: string,
  ): Promise<T> {
    return this.#operations.withConnection(send, operation);
  }

  /** See {@linkcode Operations.run}. */
  #run<T>(
    operation: string,
    attributes: Attributes,
    body: (span: Span) => Promise<T>,
    options?: { slot?: boolean },
  ): Promise<T> {
    return this.#operations.run(operation, attributes, body, options);
  }

  #log(level: LogLevel, message: string, fields: Record<string, unknown>) {
    this.#operations.log(level, message, fields);
  }
}
