/**
 * A database dumped on one cluster and restored into another, as
 * docs/database-setup.md section 8 does it: two real clusters of this file's
 * own, `pg_dump --format=custom` and `pg_restore`. The restored cluster's
 * transaction ids start far below the original's, and global positions are
 * made from transaction ids; what must hold: before `migrate()` no append
 * writes a position below a stored one (it is refused with a
 * `MigrationError` that says to migrate, and writes nothing), and after it
 * `readAll` returns every restored event with the position it had, new
 * appends come after all of them, and a subscription or projection that
 * continues from the last restored position sees the new events.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import {
  cborCodec,
  MigrationError,
  type NewEvent,
  PostgresEventStore,
  type RecordedEvent,
} from "../mod.ts";
import { statementsFor } from "../src/postgres/statements.ts";
import { newCategory } from "./conformance.ts";
import {
  type ControlledCluster,
  createDatabase,
  findServerBinaries,
  machineEnvironment,
  startControlledCluster,
} from "./_database.ts";

const LABEL = "PostgresEventStore after a restore into another cluster";

/** Transactions the original cluster runs first, so that its ids are ahead. */
const BURNED_TRANSACTIONS = 5_000;

let clusters: [ControlledCluster, ControlledCluster] | undefined;
let binDir: string | undefined;
try {
  binDir = await findServerBinaries(machineEnvironment());
  if (binDir === undefined) {
    throw new Error(
      "no PostgreSQL binaries (pg_dump, pg_restore) found through pg_config --bindir or PATH: apt-get install postgresql",
    );
  }
  clusters = await Promise.all([
    startControlledCluster(),
    startControlledCluster(),
  ]);
} catch (error) {
  // Never a silent skip: the test fails, saying what is missing.
  Deno.test(`${LABEL}: two PostgreSQL clusters the test controls`, () => {
    throw error;
  });
}
if (clusters !== undefined && binDir !== undefined) {
  registerTests(clusters, binDir);
}

type Data = { stream: number; n: number };

function batchOf(stream: number, count: number): NewEvent<Data>[] {
  return Array.from({ length: count }, (_, index) => ({
    type: "Happened",
    data: { stream, n: index + 1 },
  }));
}

/** What identifies a recorded event and where it stands. */
function placeOf(event: RecordedEvent<unknown>) {
  return {
    id: event.id,
    streamId: event.streamId,
    version: event.version,
    globalPosition: event.globalPosition,
  };
}

/**
 * Runs a projection of `category` until it has handled `count` events, and
 * returns their positions.
 */
async function project(
  store: PostgresEventStore,
  name: string,
  category: string,
  count: number,
): Promise<bigint[]> {
  const positions: bigint[] = [];
  const controller = new AbortController();
  const timeout = setTimeout(() => controller.abort(), 10_000);
  try {
    await store.runProjection(name, (events) => {
      positions.push(...events.map((event) => event.globalPosition));
      if (positions.length >= count) controller.abort();
    }, { category, signal: controller.signal });
  } finally {
    clearTimeout(timeout);
  }
  return positions;
}

async function command(binary: string, args: string[]): Promise<void> {
  const output = await new Deno.Command(binary, {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!output.success) {
    throw new Error(
      `${binary} ${args[0]} failed: ${new TextDecoder().decode(output.stderr)}`,
    );
  }
}

function registerTests(
  [original, fresh]: [ControlledCluster, ControlledCluster],
  binDir: string,
): void {
  Deno.test(`${LABEL}: every event keeps its position, new ones come after, consumers continue`, async () => {
    const source = await createDatabase({ url: original.url, source: "test" });
    const target = await createDatabase({ url: fresh.url, source: "test" });
    const dumpDir = await Deno.makeTempDir({ prefix: "eventstore-restore-" });
    const admin = postgres(target.url, { max: 1, onnotice: () => {} });
    try {
      // The original: a cluster that has run some thousands of transactions
      // (each COMMIT of the loop ends one), then 300 events in 40 appends.
      const category = newCategory();
      const before: RecordedEvent<Data>[] = [];
      {
        const burner = postgres(source.url, { max: 1, onnotice: () => {} });
        await burner.unsafe(`DO $$ BEGIN
            FOR i IN 1..${BURNED_TRANSACTIONS} LOOP
              PERFORM pg_current_xact_id(); COMMIT;
            END LOOP;
          END $$`);
        await burner.end();
        await using store = await PostgresEventStore.connect(source.url);
        await store.migrate();
        for (let stream = 0; stream < 20; stream++) {
          await store.appendEvents(`${category}-${stream}`, batchOf(stream, 1));
          await store.appendEvents(
            `${category}-${stream}`,
            batchOf(stream, 14),
          );
        }
        await store.saveSnapshot(`${category}-0`, 15, { total: 15 });
        // A projection that has handled everything: its checkpoint is the
        // last restored position, and travels with the dump.
        await project(store, `${category}-projection`, category, 300);
        before.push(...await store.readAll<Data>({ category }));
      }
      assert.equal(before.length, 300);
      const last = before.at(-1)!.globalPosition;

      const dump = `${dumpDir}/eventstore.dump`;
      await command(`${binDir}/pg_dump`, [
        "--format=custom",
        `--file=${dump}`,
        source.url,
      ]);
      await command(`${binDir}/pg_restore`, [
        "--no-owner",
        "--no-privileges",
        `--dbname=${target.url}`,
        dump,
      ]);
      const [ids] = await admin`
        SELECT pg_current_xact_id()::text::bigint AS xid,
               max(global_position) AS highest FROM events`;
      // The premise: the new cluster's ids are far behind the positions.
      assert.ok(
        BigInt(ids.xid) << 20n < BigInt(ids.highest),
        `transaction id ${ids.xid} of the new cluster is not behind position ${ids.highest}`,
      );

      await using store = await PostgresEventStore.connect(target.url);
      const counted = async () =>
        Number((await admin`SELECT count(*) FROM events`)[0].count);

      // Before migrate(): no position below a stored one is ever written.
      const refused = await store.appendEvents(
        `${category}-new`,
        batchOf(99, 1),
      )
        .then(() => undefined, (error) => error);
      assert.ok(
        refused instanceof MigrationError,
        `expected a MigrationError, got ${refused}`,
      );
      assert.match(refused.message, /migrate/);
      assert.match(refused.message, /restore/);
      assert.equal(await counted(), 300);

      const migrated = await store.migrate();
      assert.deepEqual(migrated.applied, []);

      // Every restored event, in the original order, at its position.
      const after = await store.readAll<Data>({ category });
      assert.deepEqual(after.map(placeOf), before.map(placeOf));
      assert.deepEqual(
        after.map((event) => event.data),
        before.map((event) => event.data),
      );
      assert.equal((await store.loadSnapshot(`${category}-0`))?.version, 15);

      // A subscription and the projection continue from the last one.
      const controller = new AbortController();
      const subscribed: RecordedEvent<Data>[] = [];
      const delivered = (async () => {
        for await (
          const event of store.subscribe<Data>({
            fromPosition: last,
            category,
            signal: controller.signal,
          })
        ) {
          subscribed.push(event);
          if (subscribed.length === 2) controller.abort();
        }
      })();
      const appended = [
        await store.appendEvents(`${category}-0`, batchOf(0, 1), {
          expectedVersion: 15,
        }),
        await store.appendEvents(`${category}-new`, batchOf(99, 1), {
          expectedVersion: "no_stream",
        }),
      ];
      for (const result of appended) {
        assert.ok(
          result.globalPosition > last,
          `new position ${result.globalPosition} is not after the restored ${last}`,
        );
      }
      assert.ok(appended[1].globalPosition > appended[0].globalPosition);
      await delivered;
      assert.deepEqual(
        subscribed.map((event) => event.globalPosition),
        appended.map((result) => result.globalPosition),
      );
      assert.equal(
        await store.projectionPosition(`${category}-projection`),
        last,
      );
      assert.deepEqual(
        await project(store, `${category}-projection`, category, 2),
        appended.map((result) => result.globalPosition),
      );

      // Still gap-free on the realigned positions: an append held open at
      // a lower position hides a later commit from readers until it ends.
      const seenWhileOpen = await admin.begin(async (transaction) => {
        await transaction.unsafe(statementsFor('"public"').appendOne, [
          `${category}-slow`,
          crypto.randomUUID(),
          "Slow",
          cborCodec.encode({ stream: 98, n: 1 }),
          "{}",
          null,
          false,
          false,
        ] as never[]);
        const fast = await store.appendEvents(
          `${category}-fast`,
          batchOf(97, 1),
        );
        return await store.readAll({ fromPosition: fast.globalPosition - 1n });
      });
      assert.deepEqual(seenWhileOpen, []);
      const lateOnes = await store.readAll<Data>({
        fromPosition: appended[1].globalPosition,
      });
      assert.deepEqual(lateOnes.map((event) => event.type), [
        "Slow",
        "Happened",
      ]);
      assert.ok(lateOnes[0].globalPosition < lateOnes[1].globalPosition);

      // Migrating again changes nothing: no DDL, the same positions.
      await store.migrate();
      const again = await store.readAll<Data>({ category });
      assert.deepEqual(
        again.map(placeOf).slice(0, 300),
        before.map(placeOf),
      );
      assert.equal(again.length, 304);
    } finally {
      await admin.end();
      await Deno.remove(dumpDir, { recursive: true });
      await source.drop();
      await target.drop();
    }
  });

  Deno.test(`${LABEL}: remove the clusters`, async () => {
    await original.remove();
    await fresh.remove();
  });
}
