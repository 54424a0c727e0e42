/**
 * The optimistic concurrency rule, written once so that every store applies
 * the same one.
 *
 * @module
 */

import type { ExpectedVersion } from "./event_store.ts";
import { ConcurrencyConflictError, DuplicateEventError } from "./errors.ts";

/**
 * Whether a stream at `actualVersion` satisfies `expected`.
 *
 * @param expected The caller's expectation.
 * @param actualVersion The stream's version (0: no events).
 * @returns `true` when an append may go ahead.
 */
export function isExpectedVersion(
  expected: ExpectedVersion,
  actualVersion: number,
): boolean {
  switch (expected) {
    case "any":
      return true;
    case "no_stream":
      return actualVersion === 0;
    case "stream_exists":
      return actualVersion > 0;
    default:
      return actualVersion === expected;
  }
}

/**
 * Throws unless a stream at `actualVersion` satisfies `expected`.
 *
 * @param streamId The stream the append targets.
 * @param expected The caller's expectation.
 * @param actualVersion The stream's version (0: no events).
 * @throws {ConcurrencyConflictError} The versions do not match.
 */
export function assertExpectedVersion(
  streamId: string,
  expected: ExpectedVersion,
  actualVersion: number,
): void {
  if (!isExpectedVersion(expected, actualVersion)) {
    throw new ConcurrencyConflictError(streamId, {
      expectedVersion: expected,
      actualVersion,
    });
  }
}

/** Where a stream holds one event id of an append's batch. */
export interface StoredId {
  /** The event id, in lower case. */
  id: string;
  /** The version the stream holds it at. */
  version: number;
}

/**
 * Decides whether an append is a repeat of one its stream already stored,
 * from where the stream holds any of the batch's ids. A client whose append
 * timed out cannot know whether it committed, so it sends the same append
 * again: that must not store the events twice.
 *
 * @param streamId The stream the append targets.
 * @param expected The append's expectation.
 * @param batchIds The batch's event ids, in order, in lower case.
 * @param stored Where the stream holds ids of the batch; any order.
 * @returns `undefined` when the stream holds none of them (a new append),
 *   else the version of the batch's last event: the stream holds every id,
 *   consecutively and in the batch's order, right after a version that
 *   satisfies `expected`, so this append already happened.
 * @throws {DuplicateEventError} The stream holds some of the ids, but not as
 *   that repeat.
 */
export function repeatedAppend(
  streamId: string,
  expected: ExpectedVersion,
  batchIds: readonly string[],
  stored: readonly StoredId[],
): number | undefined {
  if (stored.length === 0) return undefined;
  const versions = new Map(stored.map(({ id, version }) => [id, version]));
  const firstStored = batchIds.find((id) => versions.has(id))!;
  const duplicate = (reason: string) =>
    new DuplicateEventError(streamId, {
      eventId: firstStored,
      storedVersion: versions.get(firstStored)!,
    }, reason);
  const first = versions.get(batchIds[0]);
  for (let index = 0; index < batchIds.length; index++) {
    const version = versions.get(batchIds[index]);
    if (version === undefined) {
      throw duplicate(`events[${index}] (${batchIds[index]}) is not stored`);
    }
    if (first === undefined || version !== first + index) {
      throw duplicate(
        "the batch's events are not stored consecutively in its order",
      );
    }
  }
  const previous = first! - 1;
  if (!isExpectedVersion(expected, previous)) {
    throw duplicate(
      `that append followed version ${previous}, which this one's expected version (${
        JSON.stringify(expected)
      }) does not allow`,
    );
  }
  return previous + batchIds.length;
}
