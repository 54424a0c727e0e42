/**
 * The end of global positions. A position is `(xid + position_offset()) <<
 * 20` plus the event's index in its transaction, in a signed bigint: once
 * `xid + offset` reaches 2^43 the shift would wrap to negative positions
 * (PostgreSQL's `<<` does not check), and `readAll`'s bound, made the same
 * way from the snapshot's xmin, would wrap too and hide every event. Far
 * off (2^43 transactions), but it must fail loudly: appends are refused with
 * `PositionsExhaustedError` and write nothing, every stored event stays
 * readable, and `realign_positions()` (migrations 007 and 008) refuses an
 * offset that leaves nothing to write. The test gets there with
 * `realign_positions(above)`, which moves new positions above `above`.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import {
  type NewEvent,
  PositionsExhaustedError,
  PostgresEventStore,
  type RecordedEvent,
} from "../mod.ts";
import { newStreamId } from "./conformance.ts";
import { createTestDatabaseOrFail, type TestDatabase } from "./_database.ts";

const LABEL = "PostgresEventStore at the end of global positions";

/** `xid + offset` from which a transaction's positions would overflow. */
const LIMIT = 2n ** 43n;

/** The largest bigint, and the last position a transaction can write. */
const MAX_POSITION = 2n ** 63n - 1n;

const database = await createTestDatabaseOrFail(LABEL);
if (database !== undefined) await registerTests(database);

function events(count: number, n: number): NewEvent<{ n: number }>[] {
  return Array.from({ length: count }, (_, index) => ({
    type: "Happened",
    data: { n: n * 10 + index },
  }));
}

/** Whether `error` is the refusal of an append past the last position. */
function isExhausted(error: unknown): boolean {
  return error instanceof PositionsExhaustedError &&
    error.code === "positions_exhausted" &&
    error.name === "PositionsExhaustedError";
}

/** Every test of this file, on one fresh database. */
async function registerTests(database: TestDatabase): Promise<void> {
  const admin = postgres(database.url, { max: 2, onnotice: () => {} });
  await Promise.all([admin`SELECT 1`, admin`SELECT 1`]);
  let schemas = 0;
  /** A store on a schema of its own, migrated. */
  const openFresh = async () => {
    const schema = `limit_${++schemas}_${
      crypto.randomUUID().replaceAll("-", "").slice(0, 8)
    }`;
    const store = await PostgresEventStore.connect(database.url, {
      schema,
      max: 2,
    });
    await store.migrate();
    return { store, schema };
  };
  /** What the schema's events table holds: count, least and greatest position. */
  const stored = async (schema: string) => {
    const [row] = await admin.unsafe(
      `SELECT count(*)::int AS count, min(global_position)::text AS least,
              max(global_position)::text AS greatest
       FROM "${schema}".events`,
    );
    return {
      count: row.count as number,
      least: BigInt(row.least ?? 0),
      greatest: BigInt(row.greatest ?? 0),
    };
  };
  /** Every stored event's id, in position order. */
  const storedIds = async (schema: string) =>
    (await admin.unsafe(
      `SELECT event_id::text AS id FROM "${schema}".events
       ORDER BY global_position`,
    )).map((row) => row.id as string);
  const realign = (schema: string, above: bigint) =>
    admin.unsafe(
      `SELECT "${schema}".realign_positions($1::bigint)::text AS "offset"`,
      [above.toString()],
    );
  const offsetOf = async (schema: string) => {
    const [row] = await admin.unsafe(
      `SELECT "${schema}".position_offset()::text AS "offset"`,
    );
    return BigInt(row.offset);
  };
  const ids = (recorded: RecordedEvent<unknown>[]) =>
    recorded.map((event) => event.id);

  Deno.test(`${LABEL}: appends are refused before a position would overflow, nothing is written, every event stays readable`, async () => {
    const { store, schema } = await openFresh();
    try {
      const early = newStreamId("early");
      await store.appendEvents(early, events(3, 0));
      // New positions start just above this: about 20 transactions before
      // the end.
      await realign(schema, (LIMIT - 20n) << 20n);
      const late = newStreamId("late");
      let refusal: unknown;
      let last = 0n;
      for (let n = 1; n <= 100 && refusal === undefined; n++) {
        // Both statements: one event (appendOne) and a batch (append).
        const before = await stored(schema);
        try {
          const result = await store.appendEvents(
            late,
            events(n % 2 === 0 ? 1 : 3, n),
          );
          assert.ok(
            result.globalPosition > last,
            String(result.globalPosition),
          );
          last = result.globalPosition;
        } catch (error) {
          refusal = error;
          assert.deepEqual(await stored(schema), before);
        }
      }
      assert.ok(isExhausted(refusal), String(refusal));
      assert.match(String(refusal), /nothing was written/);
      const atRefusal = await stored(schema);
      assert.ok(
        atRefusal.least > 0n,
        `a negative position: ${atRefusal.least}`,
      );
      assert.ok(atRefusal.greatest <= MAX_POSITION);
      assert.ok(atRefusal.count > 3, "no append got through before the end");

      // Refused again, either statement, and by a stream of its own.
      for (const count of [1, 2]) {
        const again = await store.appendEvents(
          newStreamId("other"),
          events(count, 0),
          { expectedVersion: "no_stream" },
        ).then(() => undefined, (error) => error);
        assert.ok(isExhausted(again), String(again));
      }
      assert.deepEqual(await stored(schema), atRefusal);

      // Every transaction still to come is past the end, so readAll's
      // bound, (xmin + offset) << 20, would overflow too.
      const [bound] = await admin.unsafe(
        `SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint
                  + "${schema}".position_offset() >= $1::bigint AS past`,
        [LIMIT.toString()],
      );
      assert.equal(bound.past, true);
      const all = await store.readAll();
      assert.deepEqual(ids(all), await storedIds(schema));
      assert.equal(all.length, atRefusal.count);
      // In order, and from any position on.
      const middle = all[4].globalPosition;
      assert.deepEqual(
        ids(await store.readAll({ fromPosition: middle })),
        ids(all).slice(5),
      );
      assert.deepEqual(
        ids(await store.readAll({ category: "late", maxCount: 2 })),
        ids(all).slice(3, 5),
      );

      // migrate() (which realigns after a restore) changes nothing here:
      // no stored position lies beyond the transaction ids.
      const offset = await offsetOf(schema);
      await store.migrate();
      assert.equal(await offsetOf(schema), offset);
      const afterMigrate = await store.appendEvents(late, events(1, 0))
        .then(() => undefined, (error) => error);
      assert.ok(isExhausted(afterMigrate), String(afterMigrate));

      // The very last position a transaction can write (xid + offset =
      // 2^43 − 1, its 2^20 − 1st event) is readable too: the bound is
      // inclusive once it would overflow.
      await admin.unsafe(
        `INSERT INTO "${schema}".events
           (global_position, stream_id, version, event_id, event_type, data)
         VALUES ($1::bigint, $2, 1, gen_random_uuid(), 'Happened', '\\xa0')`,
        [MAX_POSITION.toString(), newStreamId("last")],
      );
      const withLast = await store.readAll();
      assert.equal(withLast.length, atRefusal.count + 1);
      assert.equal(withLast.at(-1)?.globalPosition, MAX_POSITION);
      assert.deepEqual(
        ids(await store.readAll({ fromPosition: MAX_POSITION - 1n })),
        [withLast.at(-1)!.id],
      );
    } finally {
      await store.close();
    }
  });

  Deno.test(`${LABEL}: realign_positions() refuses an offset that leaves no position to write`, async () => {
    const { store, schema } = await openFresh();
    try {
      await store.appendEvents(newStreamId(), events(1, 0));
      const before = await stored(schema);
      // Where no transaction after this one could write: positions above
      // the second-to-last transaction's first (this realignment takes a
      // transaction id itself), the last one's, the largest bigint.
      for (
        const above of [(LIMIT - 2n) << 20n, (LIMIT - 1n) << 20n, MAX_POSITION]
      ) {
        const error = await realign(schema, above).then(
          () => undefined,
          (error) => error,
        );
        assert.ok(error instanceof postgres.PostgresError, String(error));
        assert.equal(error.code, "54000");
        assert.match(error.message, /9223372036854775807/);
        assert.equal(await offsetOf(schema), 0n);
      }
      assert.deepEqual(await stored(schema), before);
      // A few transactions' worth of room is still a realignment.
      const above = (LIMIT - 10n) << 20n;
      const [row] = await realign(schema, above);
      assert.ok(BigInt(row.offset) > 0n);
      const result = await store.appendEvents(newStreamId(), events(2, 0));
      assert.ok(result.globalPosition > above);
      assert.ok(result.globalPosition <= MAX_POSITION);
    } finally {
      await store.close();
    }
  });

  // Registered last, so it runs after every other test of this file.
  Deno.test(`${LABEL}: drop the test database`, async () => {
    await admin.end();
    await database.drop();
  });
}
