import assert from "node:assert/strict";
import {
  ConcurrencyConflictError,
  EncodingError,
  EventStoreError,
  InvalidArgumentError,
  PositionsExhaustedError,
  StoreClosedError,
} from "../mod.ts";

Deno.test("errors: each has its code, its name and the base class", () => {
  const errors: [EventStoreError, string, string][] = [
    [
      new ConcurrencyConflictError("s", {
        expectedVersion: 1,
        actualVersion: 2,
      }),
      "concurrency_conflict",
      "ConcurrencyConflictError",
    ],
    [
      new InvalidArgumentError("streamId", "must not be empty"),
      "invalid_argument",
      "InvalidArgumentError",
    ],
    [
      new EncodingError("state", "unsupported type: Map"),
      "encoding",
      "EncodingError",
    ],
    [new StoreClosedError("load events"), "store_closed", "StoreClosedError"],
    [
      new PositionsExhaustedError("order-1"),
      "positions_exhausted",
      "PositionsExhaustedError",
    ],
  ];
  for (const [error, code, name] of errors) {
    assert.ok(error instanceof EventStoreError);
    assert.ok(error instanceof Error);
    assert.equal(error.code, code);
    assert.equal(error.name, name);
    assert.ok(
      String(error).startsWith(`${name}: Cannot `) ||
        String(error).startsWith(`${name}: Invalid `),
    );
  }
});

Deno.test("errors: conflict messages say what was expected and what was found", () => {
  const message = (
    expectedVersion: 3 | "any" | "no_stream" | "stream_exists",
    actualVersion: number,
  ) =>
    new ConcurrencyConflictError("order-1", { expectedVersion, actualVersion })
      .message;
  assert.equal(
    message(3, 5),
    'Cannot append to stream "order-1": expected version 3, actual version 5',
  );
  assert.equal(
    message("no_stream", 2),
    'Cannot append to stream "order-1": expected no stream, actual version 2',
  );
  assert.equal(
    message("stream_exists", 0),
    'Cannot append to stream "order-1": expected an existing stream, actual version 0',
  );
});

Deno.test("errors: a long stream id is cut in the message, kept whole on the error", () => {
  const streamId = "x".repeat(1000);
  const error = new ConcurrencyConflictError(streamId, {
    expectedVersion: 0,
    actualVersion: 1,
  });
  assert.equal(error.streamId, streamId);
  assert.ok(error.message.length < 300);
});

Deno.test("errors: encoding errors keep their cause and say which way they failed", () => {
  const cause = new TypeError("unsupported type: Map");
  const encoding = new EncodingError("events[0].data", cause.message, {
    cause,
  });
  assert.equal(encoding.cause, cause);
  assert.equal(encoding.operation, "encode");
  assert.equal(
    encoding.message,
    "Cannot encode events[0].data: unsupported type: Map",
  );
  const decoding = new EncodingError("state", "bad bytes", {
    operation: "decode",
  });
  assert.equal(decoding.message, "Cannot decode state: bad bytes");
});

Deno.test("errors: invalid arguments name the field", () => {
  const error = new InvalidArgumentError(
    "events[2].metadata.tags",
    "must be a finite number, got NaN",
  );
  assert.equal(error.field, "events[2].metadata.tags");
  assert.equal(
    error.message,
    "Invalid argument events[2].metadata.tags: must be a finite number, got NaN",
  );
});

Deno.test("errors: the end of global positions says what happened and what to do", () => {
  const error = new PositionsExhaustedError("order-1");
  assert.equal(error.streamId, "order-1");
  assert.match(error.message, /^Cannot append to stream "order-1": /);
  assert.match(error.message, /2\^43/);
  assert.match(error.message, /2\^63 - 1/);
  assert.match(error.message, /nothing was written/);
  assert.match(error.message, /fresh store/);
  assert.match(error.message, /docs\/database-setup\.md/);
});
