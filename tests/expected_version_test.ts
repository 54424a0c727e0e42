import assert from "node:assert/strict";
import {
  assertExpectedVersion,
  isExpectedVersion,
} from "../src/expected_version.ts";
import { ConcurrencyConflictError } from "../mod.ts";

Deno.test("isExpectedVersion: every form against empty and non-empty streams", () => {
  const table: [Parameters<typeof isExpectedVersion>[0], number, boolean][] = [
    ["any", 0, true],
    ["any", 7, true],
    ["no_stream", 0, true],
    ["no_stream", 1, false],
    ["stream_exists", 0, false],
    ["stream_exists", 1, true],
    [0, 0, true],
    [0, 1, false],
    [3, 3, true],
    [3, 2, false],
    [3, 4, false],
  ];
  for (const [expected, actual, matches] of table) {
    assert.equal(
      isExpectedVersion(expected, actual),
      matches,
      `${expected} vs ${actual}`,
    );
  }
});

Deno.test("assertExpectedVersion: throws a conflict with the facts", () => {
  assertExpectedVersion("s", 2, 2);
  assert.throws(() => assertExpectedVersion("s", 2, 5), (error) => {
    assert.ok(error instanceof ConcurrencyConflictError);
    assert.deepEqual(
      [error.streamId, error.expectedVersion, error.actualVersion],
      ["s", 2, 5],
    );
    return true;
  });
});
