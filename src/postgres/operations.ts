/**
 * How the PostgreSQL store runs each of its operations: a span, a slot of the
 * pool, and whatever goes wrong as a typed error without the password.
 * Private to the package.
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
import {
  EventStoreError,
  StoreClosedError,
  StoreUnavailableError,
} from "../errors.ts";
import type { Slots } from "../_slots.ts";
import { type Logger, type LogLevel, logSafely } from "../logger.ts";
import { type ErrorContext, translateError } from "./driver.ts";
import type { PoolEvents } from "./connection.ts";

const TRACER_NAME = "@deno-eventstore/core";

/** What {@linkcode Operations} needs of its store. */
export interface OperationsOptions {
  /** The store's schema: on every span and log record. */
  readonly schema: string;
  /** The server, password redacted: in every error message. */
  readonly server: string;
  /** Receives the store's log records. */
  readonly logger: Logger;
  /** One per connection of a pool the store opened; none for the application's. */
  readonly slots: Slots | undefined;
  /** `options.acquireTimeout`. */
  readonly acquireTimeout: number | undefined;
  /** The pool's events (a pool the store opened): a server's last words. */
  readonly poolEvents: PoolEvents | undefined;
  /** The password, to scrub from every message (it may be learnt late). */
  password(): string | undefined;
  /** Whether the store is closed: operations are refused then. */
  closed(): boolean;
  /**
   * Runs after an operation got its slot and before its body (the store
   * learns its route there); nothing when it returns `undefined`.
   */
  before(operation: string): Promise<void> | undefined;
}

/** The operations of one store: spans, slots, typed errors, the log. */
export class Operations {
  /** The store's calls in flight, which `close()` lets finish. */
  readonly inFlight: Set<Promise<unknown>> = new Set();
  readonly #options: OperationsOptions;
  readonly #tracer: Tracer = trace.getTracer(TRACER_NAME);

  /** @param options The store's schema, server, log, slots and hooks. */
  constructor(options: OperationsOptions) {
    this.#options = options;
  }

  /**
   * Runs one operation in a span: refuses it on a closed store, and turns
   * whatever it throws into a typed error without the password.
   */
  run<T>(
    operation: string,
    attributes: Attributes,
    body: (span: Span) => Promise<T>,
    options: { slot?: boolean } = {},
  ): Promise<T> {
    if (this.#options.closed()) {
      return Promise.reject(new StoreClosedError(operation));
    }
    const running = this.#traced(
      operation,
      attributes,
      body,
      options.slot ?? true,
    );
    this.inFlight.add(running);
    const done = () => this.inFlight.delete(running);
    running.then(done, done);
    return running;
  }

  /**
   * Runs `send` once a connection of the pool is free for it, like an
   * operation: for the store's own statements outside operations (the
   * watch of the head for other processes' appends, the check for readers
   * held back). With no more statements in flight than connections,
   * postgres.js never pipelines one behind another on a connection, which a
   * pooler in transaction mode cannot follow: it gives the server connection back at the first
   * ReadyForQuery, and the answers to what was pipelined behind reach no
   * client (PgBouncer 1.18: "got packet from server when not linked"; that
   * call then never answers).
   */
  async withConnection<T>(
    send: () => Promise<T>,
    operation = "notify subscribers",
  ): Promise<T> {
    const release = await this.#options.slots?.acquire(undefined, {
      timedOut: () => this.#noConnection(operation),
      closed: () => new StoreClosedError(operation),
    });
    try {
      return await send();
    } finally {
      release?.();
    }
  }

  /** Logs a record, with the schema added. Never throws. */
  log(level: LogLevel, message: string, fields: Record<string, unknown>) {
    logSafely(this.#options.logger, level, message, {
      schema: this.#options.schema,
      ...fields,
    });
  }

  /**
   * Waits for a slot of the pool, as an operation does before its body,
   * for a body that takes its slots itself (`run(…, { slot: false })`).
   *
   * @param operation Named in the error if none comes free in time.
   * @returns Gives the slot back; `undefined` for the application's
   *   instance, whose pool the store does not count.
   * @throws {StoreUnavailableError} None came free within `acquireTimeout`.
   * @throws {StoreClosedError} The store closed meanwhile.
   */
  acquire(operation: string): Promise<(() => void) | undefined> {
    const slots = this.#options.slots;
    if (slots === undefined) return Promise.resolve(undefined);
    return slots.acquire(this.#options.acquireTimeout, {
      timedOut: () => this.#noConnection(operation),
      closed: () => new StoreClosedError(operation),
    });
  }

  async #traced<T>(
    operation: string,
    attributes: Attributes,
    body: (span: Span) => Promise<T>,
    slot: boolean,
  ): Promise<T> {
    const span = this.#tracer.startSpan(`eventstore ${operation}`, {
      kind: SpanKind.CLIENT,
      attributes: {
        "db.system": "postgresql",
        "db.namespace": this.#options.schema,
        ...attributes,
      },
    });
    const streamId = attributes["eventstore.stream_id"];
    const described = typeof streamId === "string"
      ? `${operation} for stream ${JSON.stringify(streamId.slice(0, 200))}`
      : operation;
    let release: (() => void) | undefined;
    const started = performance.now();
    try {
      if (slot) release = await this.acquire(described);
      await this.#options.before(operation);
      return await body(span);
    } catch (error) {
      const typed = translateError(error, {
        ...this.#errorContext(described),
        farewell: this.#farewellSince(started),
      });
      span.recordException(typed);
      span.setStatus({ code: SpanStatusCode.ERROR, message: typed.message });
      span.setAttribute("eventstore.error_code", typed.code);
      if (!(error instanceof EventStoreError)) {
        this.log(
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
    const { server, slots, acquireTimeout } = this.#options;
    const message =
      `Cannot ${operation} (${server}): no connection of the pool (max ${slots?.size}) came free within ${acquireTimeout} ms (options.acquireTimeout); every one is busy with other operations`;
    this.log("warn", "No connection came free in time", {
      operation,
      acquireTimeout,
      max: slots?.size,
    });
    return new StoreUnavailableError(message);
  }

  /**
   * What a server said before closing one of the pool's connections since
   * `since` (`performance.now()`), if the store's socket heard it.
   */
  #farewellSince(since: number): ErrorContext["farewell"] {
    const farewell = this.#options.poolEvents?.farewell;
    return farewell !== undefined && farewell.at >= since
      ? farewell.error
      : undefined;
  }

  #errorContext(operation: string): ErrorContext {
    return {
      operation,
      server: this.#options.server,
      schema: this.#options.schema,
      password: this.#options.password(),
    };
  }
}
