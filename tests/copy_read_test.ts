/**
 * The binary COPY read path (src/postgres/copy_read.ts, binary_rows.ts):
 * what it returns equals what the prepared statements return, field for
 * field, for random events of every codec value kind up to the 16 MiB
 * data limit; hostile stream ids, types, categories and positions reach
 * the server only quoted; rows split anywhere between chunks parse the
 * same; reads racing appends see whole prefixes. The kill of a connection
 * mid-COPY is in faults_test.ts, with the other killed connections.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import postgres from "postgres";
import {
  cborCodec,
  type Codec,
  EncodingError,
  type NewEvent,
  PostgresEventStore,
  type RecordedEvent,
} from "../mod.ts";
import { quoteSchema } from "../src/postgres/driver.ts";
import { statementsFor } from "../src/postgres/statements.ts";
import { type QueryContext, recorded } from "../src/postgres/read.ts";
import {
  COPY_AFTER,
  copyEvents,
  copyLoad,
  copyReadAll,
  quoteLiteral,
} from "../src/postgres/copy_read.ts";
import {
  BinaryCopyError,
  BinaryEventRows,
} from "../src/postgres/binary_rows.ts";
import { createTestDatabaseOrFail } from "./_database.ts";
import { codecValueArb } from "./_codec_values.ts";

const LABEL = "binary COPY reads";

/** Every value kind the codec round-trips. */
const dataArb = codecValueArb;

/** Text PostgreSQL can hold: no NUL, no lone surrogate. */
const textArb = (maxLength: number) =>
  fc.string({ unit: "binary", minLength: 1, maxLength }).filter((text) =>
    text.isWellFormed() && !text.includes("\0")
  );

/** JSON metadata, Unicode keys and values included. */
const metadataArb: fc.Arbitrary<Record<string, unknown>> = fc.dictionary(
  textArb(20),
  fc.oneof(
    textArb(40),
    fc.integer(),
    fc.boolean(),
    fc.constant(null),
    fc.array(fc.integer(), { maxLength: 3 }),
  ),
  { maxKeys: 4 },
);

/** Strings made to end a literal early, or to be read as something else. */
const HOSTILE = [
  "'",
  "''",
  "\\",
  "\\'",
  "'\\",
  "E'",
  "x'; DROP TABLE events; --",
  "x\\'; SELECT pg_sleep(10); --",
  "$$",
  "$tag$ $$ '",
  "\n\r\t",
  "\u00e9\u4e2d\ud83d\ude00",
  "\\x00",
  "%_*?",
  '"',
  "{a,b}",
  "a".repeat(400),
];

const database = await createTestDatabaseOrFail(LABEL);
if (database !== undefined) {
  const url = database.url;
  {
    await using store = await PostgresEventStore.connect(url);
    await store.migrate();
  }
  const sql = postgres(url, {
    max: 2,
    onnotice: () => {},
  });
  await Promise.all([sql`SELECT 1`, sql`SELECT 1`]);
  const context: QueryContext = {
    sql,
    statements: statementsFor(quoteSchema("public")),
    codec: cborCodec,
    responseTimeout: undefined,
    log: () => {},
    prepare: true,
    cancelAfter: undefined,
  };
  const store = await PostgresEventStore.connect(url, { max: 2 });

  /** A stream's events through the prepared statement alone: the old path. */
  const preparedLoad = async (
    streamId: string,
    fromVersion = 1,
  ): Promise<RecordedEvent[]> => {
    const rows = await sql.unsafe(context.statements.load, [
      streamId,
      fromVersion,
      null,
    ]);
    return rows.map((row) => recorded(cborCodec, streamId, row));
  };
  /** `readAll`'s events through the prepared statement alone. */
  const preparedReadAll = async (
    fromPosition: bigint,
    maxCount: number | null,
    types: string[] | null = null,
    category: string | null = null,
  ): Promise<RecordedEvent[]> => {
    const rows = await sql.unsafe(context.statements.readAll, [
      String(fromPosition),
      maxCount,
      types === null
        ? null
        : `{${
          types.map((type) =>
            `"${type.replaceAll("\\", "\\\\").replaceAll('"', '\\"')}"`
          ).join(",")
        }}`,
      category,
    ] as never[]);
    return rows.map((row) => recorded(cborCodec, row.stream, row));
  };
  const headBefore = async (): Promise<bigint> => {
    const [row] = await sql`
      SELECT coalesce(max(global_position), 0)::text AS head FROM events`;
    return BigInt(row.head);
  };

  Deno.test(`${LABEL}: random events of every value kind read back by COPY as the prepared statements read them`, async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.record({
            type: textArb(30),
            data: dataArb,
            metadata: metadataArb,
          }),
          { minLength: 1, maxLength: 30 },
        ),
        textArb(40),
        async (events, name) => {
          const streamId = `${name}-${crypto.randomUUID()}`;
          const before = await headBefore();
          await store.appendEvents(streamId, events as NewEvent[]);
          const expected = await preparedLoad(streamId);
          assert.equal(expected.length, events.length);
          // The COPY alone, of the whole stream and of its tail.
          assert.deepStrictEqual(
            await copyEvents(
              context,
              copyLoad(context.statements.schema, streamId, 1, Infinity),
              streamId,
            ),
            expected,
          );
          assert.deepStrictEqual(
            await copyEvents(
              context,
              copyLoad(context.statements.schema, streamId, 2, 5),
              streamId,
            ),
            expected.slice(1, 6),
          );
          const all = await copyEvents(
            context,
            copyReadAll(context.statements.schema, {
              fromPosition: before,
              maxCount: Infinity,
              types: undefined,
              category: undefined,
            }),
          );
          assert.deepStrictEqual(
            all.filter((event) => event.streamId === streamId),
            expected,
          );
        },
      ),
      { numRuns: 40 },
    );
  });

  Deno.test(`${LABEL}: loads and readAll past ${COPY_AFTER} events (prepared, then COPY) equal the prepared statement's whole read`, async () => {
    const streamId = `long-${crypto.randomUUID()}`;
    const before = await headBefore();
    const events = Array.from({ length: 2 * COPY_AFTER + 7 }, (_, n) => ({
      type: n % 3 === 0 ? "Started" : "Moved",
      data: { n, at: new Date(1_700_000_000_000 + n), big: BigInt(n) ** 5n },
      metadata: { n, text: "\u00e9".repeat(n % 5) },
    }));
    await store.appendEvents(streamId, events);
    const expected = await preparedLoad(streamId);
    assert.deepStrictEqual(await store.loadEvents(streamId), expected);
    for (
      const maxCount of [
        1,
        COPY_AFTER - 1,
        COPY_AFTER,
        COPY_AFTER + 1,
        2 * COPY_AFTER + 6,
        2 * COPY_AFTER + 7,
        10_000,
      ]
    ) {
      assert.deepStrictEqual(
        await store.loadEvents(streamId, { maxCount }),
        expected.slice(0, maxCount),
        `maxCount ${maxCount}`,
      );
      for (const fromVersion of [1, 2, COPY_AFTER + 3]) {
        assert.deepStrictEqual(
          await store.loadEvents(streamId, { fromVersion, maxCount }),
          expected.slice(fromVersion - 1, fromVersion - 1 + maxCount),
          `fromVersion ${fromVersion}, maxCount ${maxCount}`,
        );
      }
      const all = await store.readAll({ fromPosition: before, maxCount });
      assert.deepStrictEqual(all, await preparedReadAll(before, maxCount));
    }
    // Filters hold on both sides of the switch.
    assert.deepStrictEqual(
      await store.readAll({ fromPosition: before, types: ["Started"] }),
      expected.filter((event) => event.type === "Started"),
    );
    assert.deepStrictEqual(
      await store.readAll({ fromPosition: before, category: "long" }),
      expected,
    );
    assert.deepStrictEqual(
      await store.readAll({ fromPosition: before, types: [] }),
      [],
    );
  });

  Deno.test(`${LABEL}: data up to the 16 MiB limit reads back by COPY`, async () => {
    const streamId = `huge-${crypto.randomUUID()}`;
    const huge = new Uint8Array(16 * 1024 * 1024 - 16);
    for (let index = 0; index < huge.length; index += 4093) {
      huge[index] = index % 251;
    }
    const text = "\u00e9\ud83d\ude00x".repeat(1_000_000);
    const events: NewEvent[] = [
      ...Array.from({ length: COPY_AFTER }, (_, n) => ({
        type: "Small",
        data: n,
      })),
      { type: "Bytes", data: huge },
      { type: "Text", data: { text } },
      { type: "Small", data: "after" },
    ];
    for (const event of events) await store.appendEvents(streamId, [event]);
    const loaded = await store.loadEvents(streamId);
    assert.equal(loaded.length, events.length);
    assert.deepStrictEqual(loaded[COPY_AFTER].data, huge);
    assert.equal((loaded[COPY_AFTER + 1].data as { text: string }).text, text);
    assert.deepStrictEqual(loaded, await preparedLoad(streamId));
  });

  Deno.test(`${LABEL}: hostile stream ids, types, categories and positions go through every read quoted`, async () => {
    const [{ tables: tablesBefore }] = await sql`
      SELECT count(*)::int AS tables FROM pg_tables WHERE schemaname = 'public'`;
    for (const hostile of HOSTILE) {
      const streamId = `${hostile}-${crypto.randomUUID()}`;
      const before = await headBefore();
      await store.appendEvents(
        streamId,
        Array.from({ length: COPY_AFTER + 5 }, (_, n) => ({
          type: n % 2 === 0 ? hostile : `${hostile}${n}`,
          data: { hostile, n },
          metadata: { hostile },
        })),
      );
      const expected = await preparedLoad(streamId);
      assert.equal(expected.length, COPY_AFTER + 5);
      assert.deepStrictEqual(await store.loadEvents(streamId), expected);
      assert.deepStrictEqual(
        await store.readAll({ fromPosition: before }),
        expected,
      );
      assert.deepStrictEqual(
        await store.readAll({ fromPosition: before, types: [hostile] }),
        expected.filter((event) => event.type === hostile),
      );
      const category = streamId.slice(0, streamId.indexOf("-"));
      if (category !== "") {
        assert.deepStrictEqual(
          await store.readAll({ fromPosition: before, category }),
          expected,
        );
      }
      // A stream id that differs by the characters the quoting doubles.
      assert.deepStrictEqual(
        await copyEvents(
          context,
          copyLoad(context.statements.schema, `${streamId}'`, 1, Infinity),
          streamId,
        ),
        [],
      );
    }
    // The extremes of a position.
    for (const fromPosition of [0n, 2n ** 63n - 2n, 2n ** 63n - 1n]) {
      assert.deepStrictEqual(
        await copyEvents(
          context,
          copyReadAll(context.statements.schema, {
            fromPosition,
            maxCount: 3,
            types: undefined,
            category: undefined,
          }),
        ),
        await preparedReadAll(fromPosition, 3),
      );
    }
    const [{ tables }] = await sql`
      SELECT count(*)::int AS tables FROM pg_tables WHERE schemaname = 'public'`;
    assert.equal(tables, tablesBefore);
  });

  Deno.test(`${LABEL}: quoteLiteral gives back every string PostgreSQL can hold, whatever standard_conforming_strings says, and refuses NUL`, async () => {
    for (const conforming of ["on", "off"]) {
      await sql.begin(async (transaction) => {
        await transaction.unsafe(
          `SET LOCAL standard_conforming_strings = ${conforming}`,
        );
        await transaction.unsafe("SET LOCAL escape_string_warning = off");
        for (const text of [...HOSTILE, ""]) {
          const [row] = await transaction.unsafe(
            `SELECT ${quoteLiteral(text)} AS text`,
          );
          assert.equal(row.text, text);
        }
        await fc.assert(
          fc.asyncProperty(
            fc.string({ unit: "binary", maxLength: 60 }).filter((text) =>
              text.isWellFormed() && !text.includes("\0")
            ),
            async (text) => {
              const [row] = await transaction.unsafe(
                `SELECT ${quoteLiteral(text)} AS text`,
              );
              assert.equal(row.text, text);
            },
          ),
          { numRuns: 200 },
        );
      });
    }
    assert.throws(() => quoteLiteral("a\0b"), TypeError);
  });

  Deno.test(`${LABEL}: rows split anywhere between chunks, and chunks holding many rows, parse the same; a cut or foreign COPY is an error`, async () => {
    const streamId = `split-${crypto.randomUUID()}`;
    await store.appendEvents(
      streamId,
      Array.from({ length: 40 }, (_, n) => ({
        type: `T${n % 3}`,
        data: { n, text: "x".repeat(n * 7) },
        metadata: { n },
      })),
    );
    const expected = await preparedLoad(streamId);
    const bytes = await copyBytes(
      sql,
      copyLoad(context.statements.schema, streamId, 1, Infinity),
    );
    const parse = (cuts: number[]) => {
      const rows = new BinaryEventRows(cborCodec, streamId);
      let start = 0;
      for (const cut of [...cuts].sort((a, b) => a - b)) {
        rows.push(bytes.subarray(start, cut));
        start = cut;
      }
      rows.push(bytes.subarray(start));
      return rows.finish();
    };
    assert.deepStrictEqual(parse([]), expected);
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 0, max: bytes.length }), { maxLength: 30 }),
        (cuts) => assert.deepStrictEqual(parse(cuts), expected),
      ),
      { numRuns: 200 },
    );
    // One byte a chunk.
    assert.deepStrictEqual(
      parse(Array.from({ length: bytes.length }, (_, index) => index)),
      expected,
    );
    // Cut short: no trailer.
    const cut = new BinaryEventRows(cborCodec, streamId);
    cut.push(bytes.subarray(0, bytes.length - 2));
    assert.throws(() => cut.finish(), BinaryCopyError);
    // Not a binary COPY, or not of these columns.
    assert.throws(
      () => new BinaryEventRows(cborCodec).push(bytes),
      BinaryCopyError,
    );
    assert.throws(
      () =>
        new BinaryEventRows(cborCodec, streamId).push(
          new TextEncoder().encode("PGCOPY\nnot binary at all"),
        ),
      BinaryCopyError,
    );
  });

  Deno.test(`${LABEL}: reads racing appends return whole, gap-free prefixes`, async () => {
    const streamId = `race-${crypto.randomUUID()}`;
    const before = await headBefore();
    let appending = true;
    const writer = (async () => {
      let version = 0;
      while (version < 1_500) {
        const size = 1 + (version % 97);
        await store.appendEvents(
          streamId,
          Array.from({ length: size }, (_, n) => ({
            type: "Raced",
            data: { n: version + n + 1 },
          })),
          { expectedVersion: version },
        );
        version += size;
      }
    })().finally(() => appending = false);
    let reads = 0;
    let longest = 0;
    while (appending || reads < 3) {
      reads++;
      const loaded = await withDeadline(
        store.loadEvents(streamId),
        20_000,
        `load ${reads}`,
      );
      loaded.forEach((event, index) => {
        assert.equal(event.version, index + 1);
        assert.deepStrictEqual(event.data, { n: index + 1 });
      });
      longest = Math.max(longest, loaded.length);
      const all = await withDeadline(
        store.readAll({ fromPosition: before }),
        20_000,
        `readAll ${reads}`,
      );
      all.forEach((event, index) => {
        assert.equal(event.streamId, streamId);
        assert.equal(event.version, index + 1);
        if (index > 0) {
          assert.ok(event.globalPosition > all[index - 1].globalPosition);
        }
      });
    }
    await writer;
    assert.ok(longest > COPY_AFTER, `the longest read had ${longest} events`);
    assert.deepStrictEqual(
      await store.loadEvents(streamId),
      await preparedLoad(streamId),
    );
  });

  Deno.test(`${LABEL}: a row that does not decode fails the read with an EncodingError naming it, and the connection serves the next read`, async () => {
    const json: Codec = {
      encode: (value) => new TextEncoder().encode(JSON.stringify(value)),
      decode: (bytes) => {
        const value = JSON.parse(new TextDecoder().decode(bytes));
        if (value.n === COPY_AFTER + 3) throw new SyntaxError("corrupt bytes");
        return value;
      },
    };
    await using picky = await PostgresEventStore.connect(url, {
      max: 1,
      codec: json,
    });
    const streamId = `corrupt-${crypto.randomUUID()}`;
    await picky.appendEvents(
      streamId,
      Array.from({ length: COPY_AFTER + 10 }, (_, index) => ({
        type: "Counted",
        data: { n: index + 1 },
      })),
    );
    await assert.rejects(picky.loadEvents(streamId), (error) => {
      assert.ok(error instanceof EncodingError);
      assert.equal(error.operation, "decode");
      assert.equal(
        error.message,
        `Cannot decode stream ${JSON.stringify(streamId)} version ${
          COPY_AFTER + 3
        } data: corrupt bytes`,
      );
      return true;
    });
    const head = await picky.loadEvents(streamId, { maxCount: COPY_AFTER + 2 });
    assert.equal(head.length, COPY_AFTER + 2);
  });

  Deno.test(`${LABEL}: close the connections and drop the database`, async () => {
    await store.close();
    await sql.end();
    await database.drop();
  });
}

/** The whole output of a binary COPY, as one array. */
async function copyBytes(sql: postgres.Sql, text: string): Promise<Uint8Array> {
  const stream = await sql.unsafe(text).readable();
  const chunks: Uint8Array[] = await new Promise((resolve, reject) => {
    const received: Uint8Array[] = [];
    stream.on("data", (chunk: Uint8Array) => received.push(chunk.slice()));
    stream.on("end", () => resolve(received));
    stream.on("error", reject);
  });
  const bytes = new Uint8Array(
    chunks.reduce((total, chunk) => total + chunk.length, 0),
  );
  let at = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, at);
    at += chunk.length;
  }
  return bytes;
}

/**
 * `promise`, or a failure after `ms`: a read that hangs fails the test
 * instead of holding up the run (a paused socket once hung it so).
 */
function withDeadline<T>(
  promise: Promise<T>,
  ms: number,
  what: string,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`${what}: no answer in ${ms} ms`)),
        ms,
      );
    }),
  ]).finally(() => clearTimeout(timer));
}
