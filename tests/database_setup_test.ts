/**
 * docs/database-setup.md is checked, not just written: every SQL query of
 * its monitoring, backup and troubleshooting sections runs against a store
 * with events in it, and its backup commands really back up and restore.
 * Its TypeScript blocks run in `docs_test.ts` like every other doc's.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import { AggregateRepository, PostgresEventStore } from "../mod.ts";
import { orderAggregate } from "../examples/order_processing.ts";
import {
  createTestDatabase,
  createTestDatabaseOrFail,
  findServerBinaries,
  machineEnvironment,
} from "./_database.ts";

const GUIDE = new URL("../docs/database-setup.md", import.meta.url);

/** A fenced block of the guide, with the section it stands in. */
interface Block {
  section: number;
  language: string;
  text: string;
  line: number;
}

function blocksOf(markdown: string): Block[] {
  const blocks: Block[] = [];
  let section = 0;
  let open: Block | undefined;
  markdown.split("\n").forEach((line, index) => {
    if (open !== undefined) {
      if (line.startsWith("```")) {
        blocks.push(open);
        open = undefined;
      } else {
        open.text += `${line}\n`;
      }
      return;
    }
    const heading = line.match(/^## (\d+)\. /);
    if (heading) section = Number(heading[1]);
    const fence = line.match(/^```(\S*)/);
    if (fence) {
      open = { section, language: fence[1], text: "", line: index + 1 };
    }
  });
  return blocks;
}

const blocks = blocksOf(await Deno.readTextFile(GUIDE));
const CHECKED_SECTIONS = [7, 8, 9];

Deno.test("database setup guide: its ten sections, and commands only where they are run", () => {
  const markdown = Deno.readTextFileSync(GUIDE);
  const sections = [...markdown.matchAll(/^## (\d+)\. /gm)].map((match) =>
    Number(match[1])
  );
  assert.deepEqual(sections, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  // sh and sql blocks are executed by this file; elsewhere they would be
  // commands nobody checks.
  const unchecked = blocks.filter((block) =>
    ["sh", "bash", "sql", "psql"].includes(block.language) &&
    !CHECKED_SECTIONS.includes(block.section)
  );
  assert.deepEqual(
    unchecked.map((block) => `line ${block.line}: ${block.language}`),
    [],
  );
  for (const section of [7, 9]) {
    assert.ok(
      blocks.some((block) =>
        block.section === section && block.language === "sql"
      ),
      `section ${section} has no sql block`,
    );
  }
  assert.ok(
    blocks.some((block) => block.section === 8 && block.language === "sh"),
  );
});

const database = await createTestDatabaseOrFail("database setup guide");
if (database !== undefined) {
  const sql = postgres(database.url, { max: 2, onnotice: () => {} });
  // What a guide reader's database would hold: migrated, some orders with
  // snapshots, a few streams.
  {
    await using store = await PostgresEventStore.connect(database.url);
    await store.migrate();
    const orders = new AggregateRepository(store, orderAggregate, {
      snapshotEvery: 5,
    });
    for (let order = 1; order <= 5; order++) {
      const id = order === 1 ? "order-42" : `order-${order}`;
      await orders.handle(id, {
        type: "PlaceOrder",
        customer: "Ada",
        items: [{ sku: "TEA-42", quantity: 1, unitPriceCents: 1250 }],
      });
      for (let line = 0; line < order * 2; line++) {
        await orders.handle(id, {
          type: "AddLineItem",
          item: { sku: `PART-${line}`, quantity: 1, unitPriceCents: 100 },
        });
      }
    }
  }

  const runnable = (section: number, language: string) =>
    blocks.filter((block) =>
      block.section === section && block.language === language
    );

  for (const section of [7, 9]) {
    for (const block of runnable(section, "sql")) {
      Deno.test(`database setup guide: the query at line ${block.line} (section ${section}) runs`, async () => {
        const results = await sql.unsafe(block.text);
        assert.ok(results !== undefined);
      });
    }
  }

  Deno.test("database setup guide: the backup commands back up, and the restore matches", async () => {
    const restore = await createTestDatabase();
    const directory = await Deno.makeTempDir({ prefix: "eventstore-backup-" });
    try {
      const binaries = await findServerBinaries(machineEnvironment());
      const path = [binaries, Deno.env.get("PATH")].filter(Boolean).join(":");
      for (const block of runnable(8, "sh")) {
        const result: Deno.CommandOutput = await new Deno.Command("bash", {
          args: ["-euo", "pipefail", "-c", block.text],
          cwd: directory,
          clearEnv: true,
          env: {
            PATH: path,
            HOME: Deno.env.get("HOME") ?? directory,
            DATABASE_URL: database.url,
            RESTORE_URL: restore.url,
          },
        }).output();
        const output: string = new TextDecoder().decode(result.stdout) +
          new TextDecoder().decode(result.stderr);
        assert.equal(
          result.code,
          0,
          `line ${block.line}:\n${block.text}\n${output}`,
        );
      }
      const verification = runnable(8, "sql");
      assert.ok(verification.length > 0, "section 8 has no verification query");
      const restored = postgres(restore.url, { max: 1, onnotice: () => {} });
      try {
        for (const block of verification) {
          const before = await sql.unsafe(block.text);
          const after = await restored.unsafe(block.text);
          assert.deepEqual(
            JSON.parse(JSON.stringify([...after], replacer)),
            JSON.parse(JSON.stringify([...before], replacer)),
          );
        }
        // And the restore holds what the live database holds.
        const count = (client: postgres.Sql) =>
          client`SELECT count(*)::int AS n, max(global_position)::text AS last FROM events`;
        const [live] = await count(sql);
        const [copy] = await count(restored);
        assert.deepEqual(copy, live);
        assert.ok(live.n > 30);
      } finally {
        await restored.end();
      }
    } finally {
      await Deno.remove(directory, { recursive: true });
      await restore.drop();
    }
  });

  Deno.test("database setup guide: drop the test database", async () => {
    await sql.end();
    await database.drop();
  });
}

/** Query results may hold bigints; compare them as text. */
function replacer(_key: string, value: unknown): unknown {
  return typeof value === "bigint" ? value.toString() : value;
}
