/**
 * Coalesced appends: group commit done by the client. Appends that wait for
 * a connection (concurrent writers, a busy pool) go together when one comes
 * free: one statement, one transaction, one commit for many single-event
 * appends to different streams, each checked on its own terms. Private to
 * the package.
 *
 * Nothing waits for company: an append that finds a connection free goes at
 * once, alone (the lean statement). Only what is already queued when a
 * connection comes free is taken along. Appends to one stream keep their
 * order: one in flight per stream, the next waits behind it. If the server
 * fails a group's statement as a whole (a key race with another process, a
 * deadlock, a timeout, a lost connection), each of its appends runs again
 * alone, as an append of its own would, and gets its own outcome; after a
 * lost connection it looks for its ids first (the group may have committed).
 *
 * @module
 */

import type { Span } from "@opentelemetry/api";
import type { AppendResult, ExpectedVersion } from "../event_store.ts";
import type { PreparedEvent } from "../_input.ts";
import { repeatedAppend } from "../expected_version.ts";
import { isLostConnection } from "./driver.ts";
import {
  append,
  type AppendContext,
  conflict,
  positionsAhead,
  positionsExhausted,
} from "./append.ts";
import { answer } from "./read.ts";
import {
  arrayLiteral,
  bigintArrayLiteral,
  booleanArrayLiteral,
  byteaArrayLiteral,
} from "./statements.ts";

/** Appends one statement takes at most. */
const MAX_GROUP = 256;

/** One append waiting for a connection. */
interface Request {
  readonly streamId: string;
  readonly expected: ExpectedVersion;
  readonly prepared: readonly PreparedEvent[];
  readonly hasCallerIds: boolean;
  readonly span: Span;
  /** Whether it may go with others: one event. */
  readonly groupable: boolean;
  taken: boolean;
  resolve(result: AppendResult): void;
  reject(error: unknown): void;
}

/** How a coalescer gets a connection: resolves with its release. */
export type Acquire = (
  operation: string,
) => Promise<(() => void) | undefined>;

/** The appends of one store, coalesced while they wait for a connection. */
export class AppendCoalescer {
  readonly #context: AppendContext;
  readonly #acquire: Acquire;
  readonly #queue: Request[] = [];
  /** Streams with an append in flight: the next one to each waits. */
  readonly #busy = new Set<string>();

  /**
   * @param context What an append needs of the store.
   * @param acquire Waits for a connection of the pool (with the store's
   *   `acquireTimeout`), as every operation does.
   */
  constructor(context: AppendContext, acquire: Acquire) {
    this.#context = context;
    this.#acquire = acquire;
  }

  /**
   * Appends checked and encoded events, as {@linkcode append} does: alone
   * when a connection is free, together with the appends queued meanwhile
   * otherwise.
   */
  append(
    span: Span,
    streamId: string,
    expected: ExpectedVersion,
    prepared: readonly PreparedEvent[],
    hasCallerIds: boolean,
    operation: string,
  ): Promise<AppendResult> {
    return new Promise<AppendResult>((resolve, reject) => {
      const request: Request = {
        streamId,
        expected,
        prepared,
        hasCallerIds,
        span,
        groupable: prepared.length === 1,
        taken: false,
        resolve,
        reject,
      };
      this.#queue.push(request);
      this.#pump(request, operation);
    });
  }

  /**
   * Waits for a connection on behalf of `request`, then sends what the
   * queue holds by then (`request` among it, unless another pump took it
   * first), until nothing more can go.
   */
  async #pump(request: Request, operation: string): Promise<void> {
    let release: (() => void) | undefined;
    try {
      release = await this.#acquire(operation);
    } catch (error) {
      // No connection in time: the append was never sent, unless a group
      // took it meanwhile (then that group answers it).
      if (!request.taken) {
        this.#queue.splice(this.#queue.indexOf(request), 1);
        request.reject(error);
      }
      return;
    }
    try {
      for (let group = this.#take(); group.length > 0; group = this.#take()) {
        await this.#send(group);
      }
    } finally {
      release?.();
    }
  }

  /**
   * The next appends to send together, in queue order: the first one whose
   * stream is not busy, and if it may go with others, every later one that
   * may too, one per stream, none overtaking an earlier append to its
   * stream.
   */
  #take(): Request[] {
    const group: Request[] = [];
    const streams = new Set<string>();
    for (let index = 0; index < this.#queue.length;) {
      const request = this.#queue[index];
      const free = !this.#busy.has(request.streamId) &&
        !streams.has(request.streamId);
      // A later append to this stream must not go before this one.
      streams.add(request.streamId);
      if (
        free &&
        (group.length === 0 || (request.groupable && group[0].groupable))
      ) {
        this.#queue.splice(index, 1);
        request.taken = true;
        group.push(request);
        if (!request.groupable || group.length === MAX_GROUP) break;
        continue;
      }
      index++;
    }
    for (const request of group) this.#busy.add(request.streamId);
    return group;
  }

  /** Sends one group (or one append), and answers each of its appends. */
  async #send(group: Request[]): Promise<void> {
    try {
      if (group.length === 1) {
        const [request] = group;
        await this.#alone(request, request.hasCallerIds);
        return;
      }
      for (const request of group) {
        request.span.setAttribute("eventstore.coalesced", group.length);
      }
      if (group.every(isLeanGroupable)) {
        await this.#sendExact(group);
        return;
      }
      let rows: Record<string, unknown>[];
      try {
        rows = await this.#statement(group);
      } catch (error) {
        await this.#eachAlone(group, error);
        return;
      }
      this.#context.log("debug", "Appends coalesced", {
        appends: group.length,
      });
      let appended = -1n;
      group.forEach((request, index) => {
        const row = rows[index];
        if (row.exhausted) {
          request.reject(positionsExhausted(this.#context, request.streamId));
        } else if (row.ahead) {
          request.reject(positionsAhead(this.#context, request.streamId));
        } else if (row.storedversion !== null) {
          // Its id is in the stream: a repeat of an append stored before,
          // or a duplicate.
          try {
            const repeated = repeatedAppend(
              request.streamId,
              request.expected,
              [request.prepared[0].id],
              [{
                id: request.prepared[0].id,
                version: Number(row.storedversion),
              }],
            );
            request.span.setAttribute("eventstore.repeated", true);
            request.resolve({
              version: repeated!,
              globalPosition: BigInt(row.storedposition as bigint),
            });
          } catch (error) {
            request.reject(error);
          }
        } else if (row.position === null) {
          request.reject(
            conflict(
              this.#context.log,
              request.streamId,
              request.expected,
              Number(row.previous),
            ),
          );
        } else {
          const version = Number(row.previous) + 1;
          request.span.setAttribute("eventstore.version", version);
          const globalPosition = BigInt(row.position as bigint);
          if (globalPosition > appended) appended = globalPosition;
          request.resolve({ version, globalPosition });
        }
      });
      if (appended >= 0n) this.#context.notifyAppended(appended);
    } finally {
      for (const request of group) this.#busy.delete(request.streamId);
    }
  }

  /**
   * Sends a group whose appends all expect an exact version and carry no
   * ids of the caller's, in the lean group statement: what it inserted is
   * answered at once; what it left out (a version missing or taken, or
   * positions ahead or exhausted) runs again alone, which says why.
   */
  async #sendExact(group: Request[]): Promise<void> {
    let rows: Record<string, unknown>[];
    try {
      rows = await this.#exactStatement(group);
    } catch (error) {
      await this.#eachAlone(group, error);
      return;
    }
    this.#context.log("debug", "Appends coalesced", {
      appends: group.length,
      inserted: rows.length,
    });
    const positions = new Map<string, bigint>();
    let appended = -1n;
    for (const row of rows) {
      const position = BigInt(row.position as bigint);
      positions.set(row.stream as string, position);
      if (position > appended) appended = position;
    }
    if (appended >= 0n) this.#context.notifyAppended(appended);
    const left: Request[] = [];
    for (const request of group) {
      const globalPosition = positions.get(request.streamId);
      if (globalPosition === undefined) {
        left.push(request);
        continue;
      }
      const version = exactOf(request.expected) + 1;
      request.span.setAttribute("eventstore.version", version);
      request.resolve({ version, globalPosition });
    }
    for (const request of left) await this.#alone(request, false);
  }

  /**
   * After the server failed a group's statement as a whole (a key race, a
   * deadlock, a timeout, a lost connection): each append on its own, looking
   * for its ids if the group may have committed.
   */
  async #eachAlone(group: Request[], error: unknown): Promise<void> {
    this.#context.log("debug", "Appends of a group sent again alone", {
      appends: group.length,
      error: error instanceof Error ? error.message : String(error),
    });
    const lost = isLostConnection(error);
    for (const request of group) {
      await this.#alone(request, request.hasCallerIds || lost);
    }
  }

  /** One append by itself, as the store has always sent it. */
  async #alone(request: Request, lookForIds: boolean): Promise<void> {
    try {
      request.resolve(
        await append(
          this.#context,
          request.span,
          request.streamId,
          request.expected,
          request.prepared,
          lookForIds,
        ),
      );
    } catch (error) {
      request.reject(error);
    }
  }

  /** The lean group statement: one row per append inserted. */
  #exactStatement(group: Request[]): Promise<Record<string, unknown>[]> {
    return this.#query(this.#context.statements.appendGroupExact, [
      ...eventArrays(group),
      bigintArrayLiteral(group.map(({ expected }) => exactOf(expected))),
    ]);
  }

  /** The group's statement: one row per append, in order. */
  #statement(group: Request[]): Promise<Record<string, unknown>[]> {
    return this.#query(this.#context.statements.appendGroup, [
      ...eventArrays(group),
      bigintArrayLiteral(
        group.map(({ expected }) =>
          typeof expected === "number"
            ? expected
            : expected === "no_stream"
            ? 0
            : null
        ),
      ),
      booleanArrayLiteral(
        group.map(({ expected }) => expected === "stream_exists"),
      ),
      booleanArrayLiteral(group.map((request) => request.hasCallerIds)),
    ]);
  }

  /** Sends a group statement with its array literals. */
  #query(
    statement: string,
    parameters: string[],
  ): Promise<Record<string, unknown>[]> {
    return answer(
      this.#context,
      this.#context.sql.unsafe(statement, parameters as never[], {
        prepare: this.#context.prepare,
      }),
    ) as Promise<Record<string, unknown>[]>;
  }
}

/**
 * A group's parameters `$1`–`$5`, one element per append: stream ids,
 * event ids, types, data and metadata, as array literals.
 */
function eventArrays(group: readonly Request[]): string[] {
  const events = group.map((request) => request.prepared[0]);
  return [
    arrayLiteral(group.map((request) => request.streamId)),
    arrayLiteral(events.map((event) => event.id)),
    arrayLiteral(events.map((event) => event.type)),
    byteaArrayLiteral(events.map((event) => event.data)),
    arrayLiteral(events.map((event) => event.metadataJson)),
  ];
}

/**
 * Whether an append may go in the lean group statement: it expects an
 * exact version (a number, or `"no_stream"`: 0) and looks for no ids.
 */
function isLeanGroupable(request: Request): boolean {
  return !request.hasCallerIds &&
    (typeof request.expected === "number" || request.expected === "no_stream");
}

/** The exact version an append expects: `"no_stream"` is 0. */
function exactOf(expected: ExpectedVersion): number {
  return typeof expected === "number" ? expected : 0;
}
