import assert from "node:assert/strict";
import {
  assertExpectedVersion,
  isExpectedVersion,
  repeatedAppend,
} from "../src/expected_version.ts";
import { ConcurrencyConflictError, DuplicateEventError } from "../mod.ts";

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

Deno.test("repeatedAppend: a new batch, an exact repeat, and every way of being neither", () => {
  const [a, b, c] = ["a", "b", "c"];
  // Stored: a at 4, b at 5 (the batch [a, b] appended after version 3).
  const stored = [{ id: b, version: 5 }, { id: a, version: 4 }];
  assert.equal(repeatedAppend("s", 3, [a, b], []), undefined);
  for (const expected of [3, "any", "stream_exists"] as const) {
    assert.equal(repeatedAppend("s", expected, [a, b], stored), 5);
  }
  // A prefix or a suffix is where it was, too.
  assert.equal(repeatedAppend("s", 3, [a], stored), 4);
  assert.equal(repeatedAppend("s", 4, [b], stored), 5);
  const refused: [string[], Parameters<typeof repeatedAppend>[1], RegExp][] = [
    [[a, b, c], 3, /events\[2\] \(c\) is not stored/],
    [[c, a, b], 3, /events\[0\] \(c\) is not stored/],
    [[b, a], 3, /not stored consecutively/],
    [[a, b], 2, /followed version 3/],
    [[a, b], "no_stream", /followed version 3/],
  ];
  for (const [batch, expected, reason] of refused) {
    assert.throws(
      () => repeatedAppend("s", expected, batch, stored),
      (error) => {
        assert.ok(error instanceof DuplicateEventError, String(error));
        assert.equal(error.streamId, "s");
        assert.equal(error.eventId, batch.find((id) => id !== c));
        assert.equal(error.storedVersion, batch[0] === b ? 5 : 4);
        assert.match(error.message, reason);
        return true;
      },
    );
  }
  // From version 0: "no_stream" allows it, "stream_exists" does not.
  const first = [{ id: a, version: 1 }];
  assert.equal(repeatedAppend("s", "no_stream", [a], first), 1);
  assert.throws(
    () => repeatedAppend("s", "stream_exists", [a], first),
    DuplicateEventError,
  );
});
