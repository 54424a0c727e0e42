/**
 * The PostgreSQL store: the contract on tables that production can trust,
 * through postgres.js (pipelined, pooled, prepared statements).
 *
 * @module
 */

import postgres from "postgres";
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
  ExpectedVersion,
  LoadOptions,
  NewEvent,
  ProjectionHandler,
  ProjectionOptions,
  ReadAllOptions,
  RecordedEvent,
  Snapshot,
  SubscribeOptions,
} from "./event_store.ts";
import { cborCodec, type Codec } from "./codec.ts";
import {
  ConcurrencyConflictError,
  EventStoreError,
  InvalidArgumentError,
  StoreClosedError,
  StoreUnavailableError,
} from "./errors.ts";
import { Slots } from "./_slots.ts";
import {
  type Logger,
  type LogLevel,
  logSafely,
  silentLogger,
} from "./logger.ts";
import {
  type MigrateOptions,
  type MigrationResult,
  runMigrations,
  type Sql,
} from "./migrations.ts";
import {
  checkExpectedVersion,
  checkLoadOptions,
  checkName,
  checkReadAllOptions,
  checkSnapshotVersion,
  checkStreamId,
  checkVersion,
  decodeValue,
  encodeValue,
  prepareEvents,
} from "./_input.ts";
import {
  asPostgres,
  constraintOf,
  type ErrorContext,
  isLostConnection,
  isServerError,
  isSql,
  passwordOf,
  type PostgresSql,
  quoteSchema,
  redactUrl,
  translateError,
} from "./_postgres.ts";
import { runProjectionLoop, subscription, Wakeups } from "./_subscription.ts";
import {
  arrayLiteral,
  byteaArrayLiteral,
  channelFor,
  type Statements,
  statementsFor,
} from "./_sql.ts";
import { repeatedAppend } from "./expected_version.ts";

/** Options of {@linkcode PostgresEventStore}, named as postgres.js users expect. */
export interface PostgresEventStoreOptions {
  /** Pool size: at most this many connections. 10 by default. */
  max?: number;
  /** Seconds an idle connection stays open; kept forever by default. */
  idleTimeout?: number;
  /** Seconds a new connection may take to be ready before its calls fail. 10 by default. */
  connectTimeout?: number;
  /** Milliseconds a statement may run before PostgreSQL cancels it; no limit by default. */
  statementTimeout?: number;
  /**
   * Milliseconds an operation may wait for a free connection of the pool
   * (every one busy with other operations) before it fails with
   * {@linkcode StoreUnavailableError}, having written nothing; no limit by
   * default. Operations wait in line, first come first served.
   */
  acquireTimeout?: number;
  /**
   * Milliseconds the store waits for the answer to one of its statements
   * before the call fails with {@linkcode StoreUnavailableError}; no limit by
   * default. Unlike `statementTimeout` it needs no server: it ends the wait
   * of a call whose connection went silent (seen under Deno after a server
   * restart). The statement is not cancelled, so an append that timed out
   * may still commit: retry it with the same event ids. Keep it above
   * `statementTimeout`.
   */
  responseTimeout?: number;
  /** Shown in `pg_stat_activity`; `deno-eventstore` by default. */
  applicationName?: string;
  /** The schema that holds the tables; `public` by default. */
  schema?: string;
  /** Encodes `data` and snapshot `state`; {@linkcode cborCodec} by default. */
  codec?: Codec;
  /** Receives structured log records; silent by default. */
  logger?: Logger;
  /** Generates ids for events given without one; `crypto.randomUUID` by default. */
  generateId?: () => string;
}

/** Options that configure the pool, so they only apply when connecting by URL. */
const POOL_OPTIONS = [
  "max",
  "idleTimeout",
  "connectTimeout",
  "statementTimeout",
  "acquireTimeout",
  "applicationName",
] as const;

/** Connections of a pool opened by URL, unless `max` says otherwise. */
const DEFAULT_POOL_SIZE = 10;

/**
 * Seconds a new connection may take to be ready. Shorter than postgres.js's
 * 30: under Deno, a connection opened while PostgreSQL restarts sometimes
 * never gets the server's first reply (it sits unread in the socket), and
 * only this timeout ends the wait of the calls queued on it (measured: 10 of
 * 16 writers stuck for 30 s at the default, none past 6 s at 3).
 */
const DEFAULT_CONNECT_TIMEOUT_S = 10;

/** How often an append is sent again after its connection was lost. */
const LOST_CONNECTION_RESENDS = 2;

/** Appends that lose a race for `"any"` retry at most this often. */
const MAX_APPEND_ATTEMPTS = 100;

/**
 * How long a quiet subscription sleeps between reads: the safety net behind
 * NOTIFY (a reader held back by an older running transaction is not
 * notified again when that one ends).
 */
const POSTGRES_POLL_MS = 1_000;

/**
 * How long an append's NOTIFY waits for others to share it: a few
 * milliseconds of delivery delay against one notification per append.
 */
const NOTIFY_DELAY_MS = 5;

/** How long `close()` lets the store's own calls finish before ending the pool. */
const CLOSE_GRACE_MS = 5_000;

/** How long `close()` waits for idle sockets to close before destroying them. */
const SOCKET_CLOSE_TIMEOUT_S = 0.5;

/** The pools this module opened, and so must end on close. */
const ownedPools = new WeakSet<object>();

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
  #listening: Promise<void> | undefined;
  #unlisten: (() => Promise<void>) | undefined;
  #notifyTimer: ReturnType<typeof setTimeout> | undefined;
  readonly #channel: string;
  /** One per connection of a pool this store opened; none for the application's. */
  readonly #slots: Slots | undefined;
  readonly #acquireTimeout: number | undefined;
  readonly #responseTimeout: number | undefined;
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
    if (!isSql(sql)) {
      throw new InvalidArgumentError(
        "sql",
        "must be a postgres.js sql instance",
      );
    }
    checkOptions(options);
    if (!ownedPools.has(sql)) {
      for (const name of POOL_OPTIONS) {
        if (options[name] !== undefined) {
          throw new InvalidArgumentError(
            `options.${name}`,
            "applies only when connecting by URL; configure the postgres.js instance instead",
          );
        }
      }
    }
    if (asPostgres(sql).options?.fetch_types === false) {
      throw new InvalidArgumentError(
        "sql",
        "must fetch array types (postgres.js option fetch_types: true, the default)",
      );
    }
    const schema = options.schema ?? "public";
    // The application's own instance serves the application too: this
    // store cannot count its connections' users, so it does not try.
    this.#slots = ownedPools.has(sql)
      ? new Slots(options.max ?? DEFAULT_POOL_SIZE)
      : undefined;
    this.#acquireTimeout = options.acquireTimeout;
    this.#responseTimeout = options.responseTimeout;
    this.#sql = asPostgres(sql);
    this.#schema = schema;
    this.#statements = statementsFor(quoteSchema(schema));
    this.#channel = channelFor(quoteSchema(schema));
    this.#codec = options.codec ?? cborCodec;
    this.#logger = options.logger ?? silentLogger;
    this.#generateId = options.generateId ?? (() => crypto.randomUUID());
    this.#tracer = trace.getTracer(TRACER_NAME);
    this.#server = describeServer(this.#sql);
    this.#password = typeof this.#sql.options?.pass === "string"
      ? this.#sql.options.pass
      : undefined;
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
    let sql: PostgresSql;
    try {
      sql = postgres(url, {
        max: options.max ?? DEFAULT_POOL_SIZE,
        idle_timeout: options.idleTimeout,
        connect_timeout: options.connectTimeout ?? DEFAULT_CONNECT_TIMEOUT_S,
        connection: {
          application_name: options.applicationName ?? "deno-eventstore",
          // The append statement is written for READ COMMITTED: a race shows
          // as a key violation. A database default of SERIALIZABLE would turn
          // races into serialization failures instead (handled too, by retry,
          // but at the cost of aborted work).
          default_transaction_isolation: "read committed",
          ...(options.statementTimeout === undefined
            ? {}
            : { statement_timeout: options.statementTimeout }),
        },
        types: { bigint: postgres.BigInt },
        // postgres.js waits before reconnecting for up to 20 s, growing with
        // a count of failures shared by the whole pool: after a restart of a
        // second, calls waited 17-20 s with the server long back (measured).
        // Capped at a second, the pool is back within a second of it.
        backoff: (attempt: number) =>
          Math.min(0.05 * 2 ** attempt, 1) * (0.5 + Math.random() / 2),
        onnotice: () => {},
      });
    } catch {
      // postgres.js parses the URL eagerly, and its message echoes the URL,
      // password and all when the password has a character URLs reserve:
      // so nothing of it is repeated here.
      throw new InvalidArgumentError(
        "url",
        "is not a usable connection string (postgres://user:password@host:5432/database, with reserved characters in the password percent-encoded)",
        {
          cause: new Error(
            "the parser's message is withheld: it may hold the password",
          ),
        },
      );
    }
    ownedPools.add(sql);
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
        const ids = new Array<string>(prepared.length);
        const types = new Array<string>(prepared.length);
        const data = new Array<Uint8Array>(prepared.length);
        const metadata = new Array<string>(prepared.length);
        prepared.forEach((event, index) => {
          ids[index] = event.id;
          types[index] = event.type;
          data[index] = event.data;
          metadata[index] = event.metadataJson;
        });
        const exactVersion = typeof expected === "number"
          ? expected
          : expected === "no_stream"
          ? 0
          : null;
        const mustExist = expected === "stream_exists";

        const single = prepared.length === 1;
        // Whether the statement looks for the batch's ids in the stream: for
        // the caller's ids, and after this call lost its connection, when
        // its first attempt may have committed (its ids, generated or not,
        // tell).
        let lookForIds = hasCallerIds;
        let lostConnections = 0;
        for (let attempt = 1;; attempt++) {
          try {
            const [row] = single
              ? await this.#answer(
                this.#sql.unsafe(this.#statements.appendOne, [
                  streamId,
                  ids[0],
                  types[0],
                  data[0],
                  metadata[0],
                  exactVersion,
                  mustExist,
                  lookForIds,
                ], { prepare: true }),
              )
              : await this.#answer(this.#sql.unsafe(this.#statements.append, [
                streamId,
                arrayLiteral(ids),
                arrayLiteral(types),
                byteaArrayLiteral(data),
                arrayLiteral(metadata),
                exactVersion,
                mustExist,
                lookForIds,
              ], { prepare: true }));
            if (row.storedids !== null) {
              const repeated = repeatedAppend(
                streamId,
                expected,
                ids,
                (row.storedids as string[]).map((id, index) => ({
                  id,
                  version: Number(row.storedversions[index]),
                })),
              );
              if (repeated !== undefined) {
                this.#log("debug", "Append repeated: returning its result", {
                  streamId,
                  version: repeated,
                });
                span.setAttribute("eventstore.version", repeated);
                span.setAttribute("eventstore.repeated", true);
                return {
                  version: repeated,
                  globalPosition: BigInt(row.storedposition),
                };
              }
            }
            const previous = Number(row.previous);
            if (row.position === null) {
              throw this.#conflict(streamId, expected, previous);
            }
            const version = previous + prepared.length;
            span.setAttribute("eventstore.version", version);
            this.#notifyAppended();
            return { version, globalPosition: BigInt(row.position) };
          } catch (error) {
            // Sent again after a lost connection: looking for its ids, the
            // next attempt returns the first one's result if that did
            // commit, so nothing is stored twice. Twice, since the first
            // resend may still get the dead connection's farewell (57P01),
            // which postgres.js hands to the next query.
            if (
              (isLostConnection(error) || isConnectTimeout(error)) &&
              lostConnections < LOST_CONNECTION_RESENDS
            ) {
              lostConnections++;
              lookForIds = true;
              this.#log(
                "debug",
                "Sending an append again after a lost connection",
                {
                  streamId,
                  error: error instanceof Error ? error.message : String(error),
                },
              );
              continue;
            }
            const retry = retryAfter(error, expected, lookForIds);
            if (retry === "never") throw error;
            if (retry === "retry" && attempt < MAX_APPEND_ATTEMPTS) {
              this.#log("debug", "Retrying an append that lost a race", {
                streamId,
                attempt,
                reason: isServerError(error) ? error.code : "unknown",
              });
              await backOff(attempt);
              continue;
            }
            throw this.#conflict(
              streamId,
              expected,
              await this.#readStreamVersion(streamId),
              error,
            );
          }
        }
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
        const rows = await this.#read(() =>
          this.#sql.unsafe(this.#statements.load, [
            streamId,
            fromVersion,
            Number.isFinite(maxCount) ? maxCount : null,
          ], { prepare: true })
        );
        const events = new Array<RecordedEvent<D>>(rows.length);
        for (let index = 0; index < rows.length; index++) {
          events[index] = this.#recorded<D>(streamId, rows[index]);
        }
        span.setAttribute("eventstore.event_count", events.length);
        return events;
      },
    );
  }

  /** {@inheritDoc EventStore.readAll} */
  readAll<D>(options?: ReadAllOptions): Promise<RecordedEvent<D>[]> {
    return this.#run("read all events", {}, async (span) => {
      const { fromPosition, maxCount, types, category } = checkReadAllOptions(
        options,
      );
      const rows = await this.#read(() =>
        this.#sql.unsafe(this.#statements.readAll, [
          fromPosition,
          Number.isFinite(maxCount) ? maxCount : null,
          types === undefined ? null : arrayLiteral(types),
          category ?? null,
        ] as never[], { prepare: true })
      );
      const events = new Array<RecordedEvent<D>>(rows.length);
      for (let index = 0; index < rows.length; index++) {
        events[index] = this.#recorded<D>(rows[index].stream, rows[index]);
      }
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
      () => this.#listen(),
    );
  }

  /**
   * Tells subscribers (in any process) that appends committed: a NOTIFY
   * after the appends, not inside them. Inside, every committing append
   * takes PostgreSQL's notification queue lock, which serialized commits and
   * cut 16-writer throughput (W3) from 0.8 to 0.37 of its baseline
   * (measured). After, appends that commit within `NOTIFY_DELAY_MS` of each
   * other share one NOTIFY, sent without waiting for the disk.
   */
  #notifyAppended(): void {
    if (this.#notifyTimer !== undefined) return;
    this.#notifyTimer = setTimeout(() => {
      this.#notifyTimer = undefined;
      this.#sendNotify();
    }, NOTIFY_DELAY_MS);
  }

  #sendNotify(): void {
    // No parameters: the simple protocol runs both statements of `notify`
    // as one implicit transaction.
    const sending = this.#sql.unsafe(this.#statements.notify).then(
      () => {},
      (error) => {
        // Subscribers fall back on their poll; the appends stand.
        this.#log("warn", "Cannot notify subscribers", {
          error: error instanceof Error ? error.message : String(error),
        });
      },
    );
    this.#inFlight.add(sending);
    sending.then(() => this.#inFlight.delete(sending));
  }

  /**
   * Listens (once per store) for the NOTIFY that appends send.
   * A store that cannot listen still delivers, by polling: it logs why.
   */
  #listen(): Promise<void> {
    // A subscription that outlived close() must not listen again.
    if (this.#closed) return Promise.resolve();
    this.#listening ??= this.#sql.listen(
      this.#channel,
      () => this.#wakeups.wake(),
    ).then(
      ({ unlisten }) => {
        this.#unlisten = unlisten;
      },
      (error) => {
        this.#log("warn", "Cannot listen for appends; subscriptions poll", {
          error: error instanceof Error ? error.message : String(error),
        });
      },
    );
    return this.#listening;
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
          this.#handleBatch(checked, events, handle, from, to),
      },
      handler,
      this.#wakeups,
      POSTGRES_POLL_MS,
      options,
      () => this.#listen(),
    );
  }

  /**
   * Runs a projection's handler and saves its checkpoint in one transaction,
   * so that the handler's writes through it and the checkpoint commit
   * together. The handler's own error comes out unchanged; the database's
   * are typed like every other.
   */
  #handleBatch<D>(
    name: string,
    events: RecordedEvent<D>[],
    handler: ProjectionHandler<D>,
    from: bigint,
    to: bigint,
  ): Promise<boolean> {
    let handlerError: { error: unknown } | undefined;
    return this.#run(
      "run a projection",
      { "eventstore.projection": name },
      () =>
        this.#sql.begin(async (transaction) => {
          // One batch of a name at a time, in any process; then check that
          // nobody moved the checkpoint meanwhile (a reset, another runner).
          await transaction.unsafe(this.#statements.lockProjection, [name], {
            prepare: true,
          });
          const [saved] = await transaction.unsafe(
            this.#statements.projectionPosition,
            [name],
            { prepare: true },
          );
          if ((saved === undefined ? 0n : BigInt(saved.position)) !== from) {
            return false;
          }
          try {
            await handler(events, { transaction });
          } catch (error) {
            handlerError = { error };
            throw error;
          }
          await transaction.unsafe(
            this.#statements.saveProjectionPosition,
            [name, to] as never[],
            { prepare: true },
          );
          return true;
        }).then((handled) => handled === true),
    ).catch((error) => {
      throw handlerError === undefined ? error : handlerError.error;
    });
  }

  /** {@inheritDoc EventStore.projectionPosition} */
  projectionPosition(name: string): Promise<bigint> {
    return this.#run("read a projection's position", {}, async () => {
      const checked = checkName(name, "name");
      const [row] = await this.#read(() =>
        this.#sql.unsafe(this.#statements.projectionPosition, [checked], {
          prepare: true,
        })
      );
      return row === undefined ? 0n : BigInt(row.position);
    });
  }

  /** {@inheritDoc EventStore.resetProjection} */
  resetProjection(name: string): Promise<void> {
    return this.#run("reset a projection", {}, async () => {
      const checked = checkName(name, "name");
      await this.#answer(
        this.#sql.unsafe(this.#statements.resetProjection, [checked], {
          prepare: true,
        }),
      );
    });
  }

  /** {@inheritDoc EventStore.streamVersion} */
  streamVersion(streamId: string): Promise<number> {
    return this.#run(
      "read the stream version",
      { "eventstore.stream_id": streamId },
      async (span) => {
        checkStreamId(streamId);
        const version = await this.#readStreamVersion(streamId);
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
        const [row] = await this.#answer(
          this.#sql.unsafe(this.#statements.saveSnapshot, [
            streamId,
            version,
            encoded,
          ], { prepare: true }),
        );
        const streamVersion = Number(row.version);
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
        const [row] = await this.#read(() =>
          this.#sql.unsafe(this.#statements.loadSnapshot, [streamId], {
            prepare: true,
          })
        );
        if (row === undefined) return undefined;
        const version = Number(row.version);
        span.setAttribute("eventstore.version", version);
        return {
          streamId,
          version,
          state: decodeValue(
            this.#codec,
            asBytes(row.state),
            `snapshot of stream ${JSON.stringify(streamId)}`,
          ) as S,
          createdAt: row.created,
        };
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
    if (this.#notifyTimer !== undefined) {
      // Appends that were still to be announced: announce them now.
      clearTimeout(this.#notifyTimer);
      this.#notifyTimer = undefined;
      this.#sendNotify();
    }
    await this.#listening;
    await this.#unlisten?.().catch(() => {});
    if (ownedPools.has(this.#sql)) {
      // Let this store's own calls finish first; then postgres.js only has
      // to close idle sockets, which takes milliseconds. Its end() can wait
      // for a socket the server already reset (Deno's socket shim never
      // reports it closed) until the timeout, so that is kept short.
      await settle(this.#inFlight, CLOSE_GRACE_MS);
      try {
        await this.#sql.end({ timeout: SOCKET_CLOSE_TIMEOUT_S });
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

  /** An event row as the contract's {@linkcode RecordedEvent}. */
  #recorded<D>(streamId: string, row: postgres.Row): RecordedEvent<D> {
    const version = Number(row.version);
    return {
      id: row.id,
      streamId,
      version,
      globalPosition: BigInt(row.position),
      type: row.type,
      data: decodeValue(
        this.#codec,
        asBytes(row.data),
        `stream ${JSON.stringify(streamId)} version ${version} data`,
      ) as D,
      metadata: asJsonObject(row.metadata),
      createdAt: row.created,
    };
  }

  async #readStreamVersion(streamId: string): Promise<number> {
    const [row] = await this.#read(() =>
      this.#sql.unsafe(this.#statements.streamVersion, [streamId], {
        prepare: true,
      })
    );
    return Number(row.version);
  }

  /**
   * Runs a read, and once more if the connection failed: a read changes
   * nothing, so repeating it is safe, and it spares the caller the error
   * that the first call after a lost connection can get (postgres.js hands
   * the dead connection's farewell to the next query) once it reconnected.
   * Appends are never repeated this way: their outcome is unknown.
   */
  async #read<T>(query: () => Promise<T>): Promise<T> {
    try {
      return await this.#answer(query());
    } catch (error) {
      if (!isLostConnection(error)) throw error;
      this.#log("debug", "Repeating a read after a lost connection", {
        error: error instanceof Error ? error.message : String(error),
      });
      return await this.#answer(query());
    }
  }

  /**
   * A statement's answer, or after `responseTimeout` a `RESPONSE_TIMEOUT`
   * error (typed as {@linkcode StoreUnavailableError}). The statement is
   * not cancelled: the server may still run it, so an append that timed out
   * may have committed (retry it with its ids). What it is for: a call on a
   * connection whose answer never arrives, as under Deno after a restart.
   */
  #answer<T>(query: Promise<T>): Promise<T> {
    const ms = this.#responseTimeout;
    if (ms === undefined) return query;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timedOut = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        // Its late outcome goes nowhere, but must not go unhandled.
        query.catch(() => {});
        reject(Object.assign(
          new Error(
            `no answer within ${ms} ms (options.responseTimeout); the statement may still complete`,
          ),
          { code: "RESPONSE_TIMEOUT" },
        ));
      }, ms);
    });
    return Promise.race([query, timedOut]).finally(() => clearTimeout(timer));
  }

  #conflict(
    streamId: string,
    expectedVersion: ExpectedVersion,
    actualVersion: number,
    cause?: unknown,
  ): ConcurrencyConflictError {
    this.#log("debug", "Append refused: concurrency conflict", {
      streamId,
      expectedVersion,
      actualVersion,
    });
    return new ConcurrencyConflictError(
      streamId,
      { expectedVersion, actualVersion },
      cause === undefined ? undefined : { cause },
    );
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

/** Waits until every promise settles, or `ms` passed. */
async function settle(
  promises: Iterable<Promise<unknown>>,
  ms: number,
): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([
    Promise.allSettled(promises),
    new Promise((resolve) => timer = setTimeout(resolve, ms)),
  ]);
  clearTimeout(timer);
}

/**
 * What to do after an append failed:
 * - `"retry"`: the statement may simply be run again. A serialization
 *   failure or deadlock (under an isolation level above READ COMMITTED)
 *   says nothing about versions; a key violation after a race leaves an
 *   `"any"` or `"stream_exists"` expectation true, and may have been this
 *   same append's first attempt (when it carries the caller's ids).
 * - `"conflict"`: another append took the version expected.
 * - `"never"`: not a race at all.
 */
function retryAfter(
  error: unknown,
  expected: ExpectedVersion,
  hasCallerIds: boolean,
): "retry" | "conflict" | "never" {
  if (!isServerError(error)) return "never";
  if (error.code === "40001" || error.code === "40P01") return "retry";
  if (error.code !== "23505" || constraintOf(error) !== "events_pkey") {
    return "never";
  }
  // With the caller's ids, the winner may be this very append, sent before
  // and committed meanwhile: the statement run again tells.
  return expected === "any" || expected === "stream_exists" || hasCallerIds
    ? "retry"
    : "conflict";
}

/**
 * Waits before a retry: not at all for the first ones (a lost race is
 * usually over by then), then a random few milliseconds, growing, so that
 * many writers on one stream stop colliding in lockstep.
 */
async function backOff(attempt: number): Promise<void> {
  if (attempt < 3) return;
  const ms = Math.random() * Math.min(50, 2 ** (attempt - 2));
  await new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * `postgres://user@host:port/database` from a postgres.js instance's
 * options: what messages and logs show, never the password.
 */
function describeServer(sql: PostgresSql): string {
  const options = sql.options;
  if (options === undefined) return "postgres://(unknown)";
  const hosts = (options.host ?? []).map((host: string, index: number) =>
    host.startsWith("/")
      ? host
      : `${host.includes(":") ? `[${host}]` : host}:${
        options.port?.[index] ?? 5432
      }`
  ).join(",");
  // A password is shown as *** so that readers know one is in use.
  const password = options.pass ? ":***" : "";
  const user = options.user
    ? `${encodeURIComponent(options.user)}${password}@`
    : "";
  return redactUrl(`postgres://${user}${hosts}/${options.database ?? ""}`);
}

/** A plain `Uint8Array` view of bytea (postgres.js gives a `Buffer`). */
function asBytes(value: Uint8Array): Uint8Array {
  return value.constructor === Uint8Array
    ? value
    : new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
}

/** jsonb arrives parsed, or as text from an instance told not to parse it. */
function asJsonObject(value: unknown): Record<string, unknown> {
  return typeof value === "string" ? JSON.parse(value) : value as Record<
    string,
    unknown
  >;
}

function checkOptions(options: PostgresEventStoreOptions): void {
  if (typeof options !== "object" || options === null) {
    throw new InvalidArgumentError("options", "must be an object");
  }
  if (options.max !== undefined) checkVersion(options.max, "options.max", 1);
  for (
    const name of [
      "idleTimeout",
      "connectTimeout",
      "statementTimeout",
      "acquireTimeout",
      "responseTimeout",
    ] as const
  ) {
    const value = options[name];
    if (
      value !== undefined &&
      (typeof value !== "number" || !Number.isFinite(value) || value < 0)
    ) {
      throw new InvalidArgumentError(
        `options.${name}`,
        "must be a finite number of at least 0",
      );
    }
  }
  if (
    options.applicationName !== undefined &&
    (typeof options.applicationName !== "string" ||
      options.applicationName.includes("\0"))
  ) {
    throw new InvalidArgumentError(
      "options.applicationName",
      "must be a string without NUL characters",
    );
  }
  if (options.schema !== undefined) quoteSchema(options.schema);
  if (
    options.codec !== undefined &&
    (typeof options.codec?.encode !== "function" ||
      typeof options.codec?.decode !== "function")
  ) {
    throw new InvalidArgumentError(
      "options.codec",
      "must have encode and decode methods",
    );
  }
  for (const name of ["logger", "generateId"] as const) {
    if (options[name] !== undefined && typeof options[name] !== "function") {
      throw new InvalidArgumentError(`options.${name}`, "must be a function");
    }
  }
}

/**
 * Whether a connection timed out before it was ready: nothing was sent on
 * it, so an append may be sent again.
 */
function isConnectTimeout(error: unknown): boolean {
  return (error as { code?: unknown })?.code === "CONNECT_TIMEOUT";
}
