/**
 * The optimistic concurrency rule, written once so that every store applies
 * the same one.
 *
 * @module
 */

import type { ExpectedVersion } from "./event_store.ts";
import { ConcurrencyConflictError } from "./errors.ts";

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
