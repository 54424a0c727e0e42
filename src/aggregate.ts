/**
 * Aggregates on top of any {@linkcode EventStore}: load the state of a
 * stream (from its snapshot plus the events after it), decide on a command,
 * append what was decided with the loaded version as the expected one, and
 * retry when another writer got there first.
 *
 * @module
 */

import type { EventStore, NewEvent, RecordedEvent } from "./event_store.ts";
import {
  ConcurrencyConflictError,
  EncodingError,
  InvalidArgumentError,
} from "./errors.ts";
import { type Logger, logSafely, silentLogger } from "./logger.ts";
import { checkStreamId, checkVersion } from "./_input.ts";

/**
 * An aggregate, described by plain functions: where its state starts, how an
 * event changes it, and which events a command leads to.
 *
 * @typeParam S The state.
 * @typeParam C The commands.
 * @typeParam E The events: `{ type, data }` objects, usually a union.
 *
 * @example A counter
 * ```ts
 * import type { Aggregate } from "@deno-eventstore/core";
 *
 * type CounterEvent = { type: "Incremented.v1"; data: { by: number } };
 * const counter: Aggregate<number, { increment: number }, CounterEvent> = {
 *   initialState: () => 0,
 *   evolve: (count, event) => count + event.data.by,
 *   decide: (command) => {
 *     if (command.increment <= 0) throw new RangeError("increment must be positive");
 *     return [{ type: "Incremented.v1", data: { by: command.increment } }];
 *   },
 * };
 * ```
 */
export interface Aggregate<S, C, E extends NewEvent = NewEvent> {
  /** The state of a stream with no events. */
  initialState(): S;
  /**
   * The state after one more event. Pure: no I/O, no clock, the same answer
   * for the same input, so that a state rebuilt from the stream equals the
   * live one. It gets stored events (with `metadata`, `id`, `version`, …)
   * when loading and the decided events when handling, so it should read
   * only `type` and `data`.
   */
  evolve(state: S, event: E): S;
  /**
   * The events a command leads to in a state: possibly none. Throws a
   * domain error of the application's own to refuse the command; nothing is
   * appended then.
   */
  decide(command: C, state: S): readonly E[];
  /**
   * The version of the state's shape, stored with each snapshot. A stream
   * belongs to one aggregate, and so does its one snapshot: two aggregates
   * folding the same stream into different states must not both snapshot it. Raise it
   * whenever `S` or `evolve` changes meaning: snapshots of another version
   * are ignored and the state is rebuilt from the events. 1 by default.
   */
  snapshotVersion?: number;
}

/** Options of {@linkcode AggregateRepository}. */
export interface AggregateRepositoryOptions {
  /**
   * Save a snapshot whenever an append takes the stream across a multiple of
   * this many events: 100 by default; 0 never saves one.
   */
  snapshotEvery?: number;
  /** How often {@linkcode AggregateRepository.handle} retries after a conflict: 3 by default. */
  maxRetries?: number;
  /** Told about retries and failed snapshot saves; silent by default. */
  logger?: Logger;
}

/** Options of {@linkcode AggregateRepository.load}. */
export interface LoadAggregateOptions {
  /** Start from the stream's snapshot when it has a usable one; `true` by default. */
  useSnapshot?: boolean;
}

/** Options of {@linkcode AggregateRepository.handle}. */
export interface HandleOptions {
  /** Overrides the repository's `maxRetries` for this command. */
  maxRetries?: number;
  /**
   * Metadata added to every event the command leads to (correlation ids,
   * the user); where an event sets the same key itself, the event's value
   * is kept.
   */
  metadata?: Record<string, unknown>;
}

/** An aggregate's state as loaded, and how it was loaded. */
export interface LoadedAggregate<S> {
  /** The state after every event of the stream. */
  state: S;
  /** The stream version the state includes (0: no events). */
  version: number;
  /** The stream version of the snapshot the load started from; `undefined` when it started from the first event. */
  snapshotAt: number | undefined;
  /** How many events were applied on top of the snapshot (or of the initial state). */
  eventsApplied: number;
}

/** What {@linkcode AggregateRepository.handle} did. */
export interface HandleResult<S, E> {
  /** The state after the command's events. */
  state: S;
  /** The stream's version after the append (unchanged when no events were decided). */
  version: number;
  /** The events the command led to, as appended (with the handle's metadata). */
  events: readonly E[];
  /** How many times the command was decided again after a conflict. */
  retries: number;
  /** The stream version a snapshot was saved at by this command, if one was. */
  snapshotSavedAt: number | undefined;
}

/** What a snapshot holds: the state and the version of its shape. */
interface StoredState<S> {
  snapshotVersion: number;
  state: S;
}

/**
 * Loads aggregates from an {@linkcode EventStore} and handles commands on
 * them with optimistic concurrency.
 *
 * @typeParam S The state.
 * @typeParam C The commands.
 * @typeParam E The events.
 *
 * @example Handle commands, retrying on conflicts
 * ```ts
 * import { type Aggregate, AggregateRepository, InMemoryEventStore } from "@deno-eventstore/core";
 * import assert from "node:assert/strict";
 *
 * type CounterEvent = { type: "Incremented.v1"; data: { by: number } };
 * const counter: Aggregate<number, { increment: number }, CounterEvent> = {
 *   initialState: () => 0,
 *   evolve: (count, event) => count + event.data.by,
 *   decide: (command) => [{ type: "Incremented.v1", data: { by: command.increment } }],
 * };
 *
 * await using store = new InMemoryEventStore();
 * const counters = new AggregateRepository(store, counter, { snapshotEvery: 2 });
 * await counters.handle("counter-1", { increment: 2 });
 * const second = await counters.handle("counter-1", { increment: 3 });
 * assert.deepEqual([second.state, second.version, second.snapshotSavedAt], [5, 2, 2]);
 *
 * // Two handlers that read the same version: one retries and both count.
 * await Promise.all([
 *   counters.handle("counter-1", { increment: 1 }),
 *   counters.handle("counter-1", { increment: 1 }),
 * ]);
 * const loaded = await counters.load("counter-1");
 * assert.deepEqual([loaded.state, loaded.version, loaded.snapshotAt], [7, 4, 4]);
 * ```
 */
export class AggregateRepository<S, C, E extends NewEvent = NewEvent> {
  readonly #store: EventStore;
  readonly #aggregate: Aggregate<S, C, E>;
  readonly #snapshotEvery: number;
  readonly #maxRetries: number;
  readonly #snapshotVersion: number;
  readonly #logger: Logger;

  /**
   * Creates a repository. Does no I/O.
   *
   * @param store Where the streams are.
   * @param aggregate The aggregate's functions.
   * @param options Snapshot policy, retries, logger.
   * @throws {InvalidArgumentError} An option or the aggregate is malformed.
   */
  constructor(
    store: EventStore,
    aggregate: Aggregate<S, C, E>,
    options: AggregateRepositoryOptions = {},
  ) {
    for (
      const name of ["loadEvents", "loadSnapshot", "appendEvents"] as const
    ) {
      if (typeof store?.[name] !== "function") {
        throw new InvalidArgumentError("store", "must be an EventStore");
      }
    }
    for (const name of ["initialState", "evolve", "decide"] as const) {
      if (typeof aggregate?.[name] !== "function") {
        throw new InvalidArgumentError(
          `aggregate.${name}`,
          "must be a function",
        );
      }
    }
    this.#store = store;
    this.#aggregate = aggregate;
    this.#snapshotVersion = aggregate.snapshotVersion === undefined
      ? 1
      : checkVersion(aggregate.snapshotVersion, "aggregate.snapshotVersion");
    this.#snapshotEvery = options.snapshotEvery === undefined
      ? 100
      : checkVersion(options.snapshotEvery, "options.snapshotEvery");
    this.#maxRetries = options.maxRetries === undefined
      ? 3
      : checkVersion(options.maxRetries, "options.maxRetries");
    this.#logger = options.logger ?? silentLogger;
  }

  /**
   * Loads a stream's state: the latest snapshot, when it has the
   * aggregate's `snapshotVersion`, plus only the events after it; otherwise
   * every event from the first. One snapshot read and one event read.
   *
   * @param streamId The stream.
   * @param options Whether to use the snapshot.
   * @returns The state, the version it includes, and how it was loaded.
   * @throws {InvalidArgumentError} The stream id is malformed.
   * @throws {EncodingError} Stored data cannot be decoded.
   */
  async load(
    streamId: string,
    options: LoadAggregateOptions = {},
  ): Promise<LoadedAggregate<S>> {
    checkStreamId(streamId);
    const snapshot = options.useSnapshot === false
      ? undefined
      : this.#usable(streamId, await this.#readSnapshot(streamId));
    const events = await this.#store.loadEvents<unknown>(streamId, {
      fromVersion: (snapshot?.version ?? 0) + 1,
    });
    let state = snapshot?.state ?? this.#aggregate.initialState();
    for (const event of events) {
      state = this.#aggregate.evolve(state, event as RecordedEvent & E);
    }
    return {
      state,
      version: events.at(-1)?.version ?? snapshot?.version ?? 0,
      snapshotAt: snapshot?.version,
      eventsApplied: events.length,
    };
  }

  /**
   * Handles a command: loads the state, decides, and appends the decided
   * events expecting the loaded version. When another writer appended in
   * between ({@linkcode ConcurrencyConflictError}), it loads and decides
   * again, up to `maxRetries` times, then rethrows the conflict. Saves a
   * snapshot when the append crosses a multiple of `snapshotEvery`; a
   * snapshot that cannot be saved is logged and never fails the command.
   *
   * @param streamId The stream.
   * @param command The command, passed to `decide`.
   * @param options Retries and metadata for this command.
   * @returns The new state and version, the events, the retries made.
   * @throws {ConcurrencyConflictError} Every attempt lost a race.
   * @throws {InvalidArgumentError} The stream id, an option or a decided
   *   event is malformed.
   * @throws {Error} Whatever `decide` throws (a domain error), unchanged.
   */
  async handle(
    streamId: string,
    command: C,
    options: HandleOptions = {},
  ): Promise<HandleResult<S, E>> {
    checkStreamId(streamId);
    const maxRetries = options.maxRetries === undefined
      ? this.#maxRetries
      : checkVersion(options.maxRetries, "options.maxRetries");
    for (let retries = 0;; retries++) {
      const loaded = await this.load(streamId);
      const decided = this.#aggregate.decide(command, loaded.state);
      if (decided.length === 0) {
        return {
          state: loaded.state,
          version: loaded.version,
          events: [],
          retries,
          snapshotSavedAt: undefined,
        };
      }
      const events = options.metadata === undefined
        ? decided
        : decided.map((event): E => ({
          ...event,
          // The event's own keys are the more specific: they win.
          metadata: { ...options.metadata, ...event.metadata },
        }));
      let version: number;
      try {
        ({ version } = await this.#store.appendEvents(streamId, events, {
          expectedVersion: loaded.version,
        }));
      } catch (error) {
        if (!(error instanceof ConcurrencyConflictError)) throw error;
        if (retries >= maxRetries) throw error;
        logSafely(
          this.#logger,
          "debug",
          "Retrying a command after a conflict",
          {
            streamId,
            retry: retries + 1,
            expectedVersion: loaded.version,
            actualVersion: error.actualVersion,
          },
        );
        continue;
      }
      let state = loaded.state;
      for (const event of events) state = this.#aggregate.evolve(state, event);
      const snapshotSavedAt = await this.#snapshotIfDue(
        streamId,
        loaded.version,
        version,
        state,
      );
      return { state, version, events, retries, snapshotSavedAt };
    }
  }

  /**
   * The stream's snapshot, or `undefined` when it cannot be decoded (a codec
   * changed, a row was damaged): the events are the truth, and a snapshot
   * that blocked every command on its stream would be worse than none. The
   * next snapshot the repository saves replaces it.
   */
  async #readSnapshot(
    streamId: string,
  ): Promise<{ version: number; state: unknown } | undefined> {
    try {
      return await this.#store.loadSnapshot(streamId);
    } catch (error) {
      if (!(error instanceof EncodingError)) throw error;
      logSafely(
        this.#logger,
        "warn",
        "Ignoring a snapshot that cannot be decoded",
        {
          streamId,
          error: error.message,
        },
      );
      return undefined;
    }
  }

  /** The snapshot, when it is one this aggregate's state shape can use. */
  #usable(
    streamId: string,
    snapshot: { version: number; state: unknown } | undefined,
  ): { version: number; state: S } | undefined {
    if (snapshot === undefined) return undefined;
    const stored = snapshot.state as Partial<StoredState<S>> | null;
    if (
      typeof stored !== "object" || stored === null ||
      stored.snapshotVersion !== this.#snapshotVersion || !("state" in stored)
    ) {
      logSafely(this.#logger, "debug", "Ignoring a snapshot of another shape", {
        streamId,
        snapshotVersion: this.#snapshotVersion,
        stored: typeof stored === "object" && stored !== null
          ? stored.snapshotVersion
          : undefined,
      });
      return undefined;
    }
    return { version: snapshot.version, state: stored.state as S };
  }

  async #snapshotIfDue(
    streamId: string,
    before: number,
    after: number,
    state: S,
  ): Promise<number | undefined> {
    const every = this.#snapshotEvery;
    if (
      every === 0 || Math.floor(after / every) === Math.floor(before / every)
    ) {
      return undefined;
    }
    const stored: StoredState<S> = {
      snapshotVersion: this.#snapshotVersion,
      state,
    };
    try {
      await this.#store.saveSnapshot(streamId, after, stored);
      return after;
    } catch (error) {
      // The events are stored; a missing snapshot only makes loads longer.
      logSafely(this.#logger, "warn", "Could not save a snapshot", {
        streamId,
        version: after,
        error: error instanceof Error ? error.message : String(error),
      });
      return undefined;
    }
  }
}
