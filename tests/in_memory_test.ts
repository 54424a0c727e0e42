import assert from "node:assert/strict";
import {
  type Codec,
  EncodingError,
  InMemoryEventStore,
  InvalidArgumentError,
  StoreClosedError,
} from "../mod.ts";
import { newStreamId, testEventStore } from "./conformance.ts";

testEventStore("InMemoryEventStore", () => new InMemoryEventStore());

Deno.test("InMemoryEventStore: uses the clock and id generator it is given", async () => {
  let tick = Date.UTC(2026, 0, 1);
  let nextId = 0;
  await using store = new InMemoryEventStore({
    clock: () => new Date(tick += 1000),
    generateId: () =>
      `00000000-0000-4000-8000-${String(++nextId).padStart(12, "0")}`,
  });
  const streamId = newStreamId();
  await store.appendEvents(streamId, [{ type: "A", data: 1 }, {
    type: "B",
    data: 2,
  }]);
  await store.appendEvents(streamId, [{ type: "C", data: 3 }]);
  await store.saveSnapshot(streamId, 3, "state");
  const loaded = await store.loadEvents(streamId);
  assert.deepEqual(loaded.map((event) => event.id), [
    "00000000-0000-4000-8000-000000000001",
    "00000000-0000-4000-8000-000000000002",
    "00000000-0000-4000-8000-000000000003",
  ]);
  assert.deepEqual(loaded.map((event) => event.createdAt.toISOString()), [
    "2026-01-01T00:00:01.000Z",
    "2026-01-01T00:00:01.000Z",
    "2026-01-01T00:00:02.000Z",
  ]);
  assert.equal(
    (await store.loadSnapshot(streamId))?.createdAt.toISOString(),
    "2026-01-01T00:00:03.000Z",
  );
});

Deno.test("InMemoryEventStore: global positions start at 1 and have no gaps", async () => {
  await using store = new InMemoryEventStore();
  const first = await store.appendEvents("a", [{ type: "A", data: 1 }]);
  await assert.rejects(
    store.appendEvents("a", [{ type: "A", data: 1 }], { expectedVersion: 0 }),
  );
  const second = await store.appendEvents("b", [{ type: "B", data: 1 }, {
    type: "B",
    data: 2,
  }]);
  assert.equal(first.globalPosition, 1n);
  assert.equal(second.globalPosition, 3n);
});

Deno.test("InMemoryEventStore: plugs in another codec", async () => {
  const encoded: unknown[] = [];
  const jsonCodec: Codec = {
    encode(value) {
      encoded.push(value);
      return new TextEncoder().encode(JSON.stringify(value));
    },
    decode: (bytes) => JSON.parse(new TextDecoder().decode(bytes)),
  };
  await using store = new InMemoryEventStore({ codec: jsonCodec });
  await store.appendEvents("s", [{ type: "A", data: { n: 1 } }]);
  await store.saveSnapshot("s", 1, { total: 1 });
  assert.deepEqual(encoded, [{ n: 1 }, { total: 1 }]);
  assert.deepEqual((await store.loadEvents("s"))[0].data, { n: 1 });
  assert.deepEqual((await store.loadSnapshot("s"))?.state, { total: 1 });
});

Deno.test("InMemoryEventStore: bytes the codec cannot decode give an EncodingError", async () => {
  const failing: Codec = {
    encode: (value) => new TextEncoder().encode(JSON.stringify(value)),
    decode: () => {
      throw new SyntaxError("corrupt bytes");
    },
  };
  await using store = new InMemoryEventStore({ codec: failing });
  await store.appendEvents("order-1", [{ type: "A", data: 1 }]);
  await store.saveSnapshot("order-1", 1, "state");
  await assert.rejects(store.loadEvents("order-1"), (error) => {
    assert.ok(error instanceof EncodingError);
    assert.equal(error.operation, "decode");
    assert.equal(
      error.message,
      'Cannot decode stream "order-1" version 1 data: corrupt bytes',
    );
    assert.ok(error.cause instanceof SyntaxError);
    return true;
  });
  await assert.rejects(
    store.loadSnapshot("order-1"),
    (error) => error instanceof EncodingError && error.operation === "decode",
  );
});

Deno.test("InMemoryEventStore: close drops the data and names the refused call", async () => {
  const store = new InMemoryEventStore();
  await store.appendEvents("s", [{ type: "A", data: 1 }]);
  await store.close();
  await assert.rejects(store.loadEvents("s"), (error) => {
    assert.ok(error instanceof StoreClosedError);
    assert.equal(error.message, "Cannot load events: the store is closed");
    return true;
  });
});

Deno.test("InMemoryEventStore: a configured generateId that repeats an id within a batch is refused before writing", async () => {
  const id = crypto.randomUUID();
  await using store = new InMemoryEventStore({ generateId: () => id });
  await store.appendEvents("s", [{ type: "A", data: 1 }]);
  await assert.rejects(
    store.appendEvents("t", [{ type: "A", data: 1 }, { type: "B", data: 2 }]),
    (error) =>
      error instanceof InvalidArgumentError && error.field === "events[1].id",
  );
  assert.equal(await store.streamVersion("t"), 0);
});

Deno.test("InMemoryEventStore: ids from a broken generateId are refused before writing", async () => {
  await using store = new InMemoryEventStore({
    generateId: () => "not-a-uuid",
  });
  await assert.rejects(
    store.appendEvents("s", [{ type: "A", data: 1 }]),
    (error) =>
      error instanceof InvalidArgumentError &&
      error.field === "options.generateId",
  );
  assert.equal(await store.streamVersion("s"), 0);
});
