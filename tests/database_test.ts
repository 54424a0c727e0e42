/**
 * The test database harness, on the real test server and, for the paths
 * that cannot be reached on this machine, on a fake environment that leaves
 * the real, cached server alone.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import {
  containerRuntimeAnswers,
  createDatabase,
  createTestDatabase,
  findServerBinaries,
  type HarnessEnvironment,
  resolveTestServer,
  serverSettings,
  startControlledCluster,
  testServerUrl,
} from "./_database.ts";

const server = await testServerUrl();
const canCreateRoles = await adminQuery(async (sql) => {
  const [row] = await sql<{ allowed: boolean }[]>`
    select rolsuper or rolcreaterole as allowed
    from pg_roles where rolname = current_user`;
  return row.allowed;
});

const NAME = /^eventstore_test_[0-9a-f]{16}$/;

Deno.test("createTestDatabase: two calls give distinct, empty, connectable databases on one server", async () => {
  const first = await createTestDatabase();
  const second = await createTestDatabase();
  try {
    assert.match(first.name, NAME);
    assert.match(second.name, NAME);
    assert.notEqual(first.name, second.name);
    for (const database of [first, second]) {
      const url = new URL(database.url);
      assert.equal(url.pathname, `/${database.name}`);
      assert.equal(url.host, new URL(server.url).host);
      assert.equal(database.source, server.source);
      await query(database.url, async (sql) => {
        const [row] = await sql<{ name: string; relations: number }[]>`
          select current_database() as name, (
            select count(*)::int from pg_class c
            join pg_namespace n on n.oid = c.relnamespace
            where n.nspname not in ('pg_catalog', 'information_schema')
              and n.nspname not like 'pg_toast%'
          ) as relations`;
        assert.deepEqual(row, { name: database.name, relations: 0 });
      });
    }
    // Separate databases, not two names for one.
    await query(first.url, (sql) => sql`create table marker (id int)`);
    await query(second.url, async (sql) => {
      const [row] = await sql`select to_regclass('public.marker') as found`;
      assert.equal(row.found, null);
    });
    // The server is reused, not started again.
    assert.deepEqual(await testServerUrl(), server);
  } finally {
    await first.drop();
    await second.drop();
  }
});

Deno.test("testServerUrl: reports the source and keeps the server in the environment", async () => {
  if (Deno.env.get("DATABASE_URL")) {
    assert.deepEqual(server, {
      url: Deno.env.get("DATABASE_URL"),
      source: "DATABASE_URL",
    });
    return;
  }
  assert.ok(
    server.source === "local cluster" || server.source === "testcontainers",
    server.source,
  );
  // The cache the next test files read.
  assert.equal(Deno.env.get("DENO_EVENTSTORE_TEST_SERVER_URL"), server.url);
  assert.equal(
    Deno.env.get("DENO_EVENTSTORE_TEST_SERVER_SOURCE"),
    server.source,
  );
  const settings = await adminQuery(async (sql) => {
    const rows = await sql<{ name: string; setting: string }[]>`
      select name, setting from pg_settings where name in (
        'fsync', 'synchronous_commit', 'full_page_writes', 'max_connections',
        'server_encoding', 'listen_addresses')`;
    return Object.fromEntries(rows.map((row) => [row.name, row.setting]));
  });
  assert.equal(settings.fsync, "off");
  assert.equal(settings.synchronous_commit, "off");
  assert.equal(settings.full_page_writes, "off");
  assert.equal(settings.max_connections, "300");
  assert.equal(settings.server_encoding, "UTF8");
  if (server.source === "local cluster") {
    assert.equal(settings.listen_addresses, "127.0.0.1");
    assert.equal(new URL(server.url).hostname, "127.0.0.1");
  }
});

Deno.test("serverSettings: durability is off unless asked for", () => {
  assert.deepEqual(serverSettings({}), [
    "max_connections=300",
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
  ]);
  assert.deepEqual(serverSettings({ durable: true }), ["max_connections=300"]);
});

Deno.test("drop: removes the database despite open sessions, and again does nothing", async () => {
  const database = await createTestDatabase();
  const session = postgres(database.url, { max: 1, onnotice: () => {} });
  try {
    await session`select 1`;
    // Without FORCE this fails: the database is in use.
    await database.drop();
    await database.drop();
    const remaining = await adminQuery((sql) =>
      sql`select 1 from pg_database where datname = ${database.name}`
    );
    assert.equal(remaining.length, 0);
    await assert.rejects(
      query(database.url, (sql) => sql`select 1`),
      (error) =>
        error instanceof postgres.PostgresError && error.code === "3D000",
    );
  } finally {
    await session.end();
  }
});

Deno.test("DATABASE_URL: used as is, wins over the cache, databases go next to it", async () => {
  const host = await createTestDatabase();
  try {
    const environment = fakeEnvironment({
      DATABASE_URL: host.url,
      DENO_EVENTSTORE_TEST_SERVER_URL: "postgres://cached@127.0.0.1:1/postgres",
      DENO_EVENTSTORE_TEST_SERVER_SOURCE: "local cluster",
    });
    const resolved = await resolveTestServer({}, environment);
    assert.deepEqual(resolved, { url: host.url, source: "DATABASE_URL" });
    assert.deepEqual(environment.writes, []);
    const created = await createDatabase(resolved);
    try {
      assert.equal(created.source, "DATABASE_URL");
      assert.notEqual(created.name, host.name);
      assert.equal(new URL(created.url).host, new URL(host.url).host);
      await query(created.url, async (sql) => {
        const [row] = await sql`select current_database() as name`;
        assert.equal(row.name, created.name);
      });
    } finally {
      await created.drop();
    }
  } finally {
    await host.drop();
  }
});

Deno.test("DATABASE_URL: a malformed one is refused without echoing it", async () => {
  const environment = fakeEnvironment({
    DATABASE_URL: "mysql://user:hunter2@db.example/app",
  });
  await assert.rejects(resolveTestServer({}, environment), (error) => {
    assert.ok(error instanceof Error);
    assert.match(error.message, /DATABASE_URL: it is not a postgres:\/\/ URL/);
    assert.doesNotMatch(error.message, /hunter2/);
    return true;
  });
});

Deno.test({
  name: canCreateRoles
    ? "DATABASE_URL: a role without CREATEDB gets a clear error, without its password"
    : "DATABASE_URL: a role without CREATEDB (ignored: the server's role may not create roles)",
  ignore: !canCreateRoles,
  async fn() {
    const role = `eventstore_test_role_${crypto.randomUUID().slice(0, 8)}`;
    const password = `secret-${crypto.randomUUID()}`;
    await adminQuery((sql) =>
      sql.unsafe(
        `create role "${role}" login nocreatedb password '${password}'`,
      )
    );
    try {
      const url = new URL(server.url);
      url.username = role;
      url.password = password;
      const environment = fakeEnvironment({ DATABASE_URL: url.href });
      const resolved = await resolveTestServer({}, environment);
      await assert.rejects(createDatabase(resolved), (error) => {
        assert.ok(error instanceof Error);
        assert.match(
          error.message,
          new RegExp(
            `^Cannot create test databases with DATABASE_URL: the role "${role}" lacks the CREATEDB privilege`,
          ),
        );
        assert.ok(!error.message.includes(password), error.message);
        return true;
      });
    } finally {
      await adminQuery((sql) => sql.unsafe(`drop role "${role}"`));
    }
  },
});

Deno.test("no PostgreSQL anywhere: the error says how to get one, and nothing is cached", async () => {
  const environment = fakeEnvironment({});
  await assert.rejects(resolveTestServer({}, environment), (error) => {
    assert.ok(error instanceof Error);
    assert.match(
      error.message,
      /^Cannot get a PostgreSQL server for the tests: no container runtime answers, and no PostgreSQL server binaries/,
    );
    assert.match(
      error.message,
      /DATABASE_URL=postgres:\/\/user:pass@host:5432\/db/,
    );
    assert.match(
      error.message,
      /container runtime \(Docker, Podman\) for testcontainers/,
    );
    assert.match(error.message, /apt-get install postgresql/);
    return true;
  });
  assert.deepEqual(environment.writes, []);
  assert.equal(environment.exclusiveCalls, 1);
  if (server.source !== "DATABASE_URL") {
    assert.equal(Deno.env.get("DENO_EVENTSTORE_TEST_SERVER_URL"), server.url);
  }
});

Deno.test("startControlledCluster: without server binaries the error says how to get them, whatever else there is", async () => {
  // DATABASE_URL and a cached server do not count: the cluster must be its own.
  const environment = fakeEnvironment({
    DATABASE_URL: "postgres://app@127.0.0.1:5999/app",
    DENO_EVENTSTORE_TEST_SERVER_URL:
      "postgres://postgres@127.0.0.1:5999/postgres",
    DENO_EVENTSTORE_TEST_SERVER_SOURCE: "local cluster",
  });
  await assert.rejects(startControlledCluster({}, environment), (error) => {
    assert.ok(error instanceof Error);
    assert.match(
      error.message,
      /^Cannot start a PostgreSQL cluster that the tests control: no PostgreSQL server binaries \(initdb, pg_ctl\) were found through pg_config --bindir, \/nonexistent\/postgresql\/\*\/bin or PATH/,
    );
    assert.match(
      error.message,
      /DATABASE_URL or a container runtime will not do/,
    );
    assert.match(error.message, /apt-get install postgresql/);
    return true;
  });
  assert.deepEqual(environment.writes, []);
  assert.equal(environment.exclusiveCalls, 0);
});

Deno.test("startControlledCluster: as root without a postgres user, the error says so", async () => {
  const root = await Deno.makeTempDir();
  try {
    await fakeServerBinaries(root, "16");
    await Deno.writeTextFile(`${root}/passwd`, "root:x:0:0::/root:/bin/sh\n");
    const environment = fakeEnvironment({}, {
      uid: 0,
      serverRoot: root,
      passwd: `${root}/passwd`,
    });
    await assert.rejects(startControlledCluster({}, environment), (error) => {
      assert.ok(error instanceof Error);
      assert.match(
        error.message,
        /^Cannot start a PostgreSQL cluster that the tests control: the tests run as root.*no postgres user/,
      );
      assert.match(error.message, /apt-get install postgresql/);
      return true;
    });
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("a cached server is reused without starting anything", async () => {
  const cached = {
    url: "postgres://postgres@127.0.0.1:5999/postgres",
    source: "local cluster",
  };
  // Starting would fail in this environment: no binaries, no runtime.
  const environment = fakeEnvironment({
    DENO_EVENTSTORE_TEST_SERVER_URL: cached.url,
    DENO_EVENTSTORE_TEST_SERVER_SOURCE: cached.source,
  });
  assert.deepEqual(await resolveTestServer({}, environment), cached);
  assert.equal(environment.exclusiveCalls, 0);
  // A durable server is another server.
  await assert.rejects(
    resolveTestServer({ durable: true }, environment),
    /no PostgreSQL server binaries/,
  );
});

Deno.test("root without a postgres user: the error says so and how to get PostgreSQL", async () => {
  const root = await Deno.makeTempDir();
  try {
    await fakeServerBinaries(root, "16");
    const environment = fakeEnvironment({}, {
      uid: 0,
      serverRoot: root,
      passwd: `${root}/passwd`,
    });
    await Deno.writeTextFile(`${root}/passwd`, "root:x:0:0::/root:/bin/sh\n");
    await assert.rejects(resolveTestServer({}, environment), (error) => {
      assert.ok(error instanceof Error);
      assert.match(error.message, /run as root.*no postgres user/);
      assert.match(error.message, /apt-get install postgresql/);
      return true;
    });
    assert.deepEqual(environment.writes, []);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("findServerBinaries: pg_config first, else the newest version with initdb", async () => {
  const root = await Deno.makeTempDir();
  try {
    for (const version of ["9.6", "13", "16"]) {
      await fakeServerBinaries(root, version);
    }
    // A client-only version, as Debian's libpq-dev installs: no initdb.
    await Deno.mkdir(`${root}/17/bin`, { recursive: true });
    const pgConfig = `${root}/pg_config`;
    const answer = async (bindir: string) => {
      await Deno.writeTextFile(pgConfig, `#!/bin/sh\necho '${bindir}'\n`);
      await Deno.chmod(pgConfig, 0o755);
    };
    const environment = fakeEnvironment({}, { pgConfig, serverRoot: root });
    await answer(`${root}/13/bin`);
    assert.equal(await findServerBinaries(environment), `${root}/13/bin`);
    await answer(`${root}/17/bin`);
    assert.equal(await findServerBinaries(environment), `${root}/16/bin`);
    assert.equal(
      await findServerBinaries(
        fakeEnvironment({ PATH: `/nonexistent:${root}/9.6/bin` }),
      ),
      `${root}/9.6/bin`,
    );
    assert.equal(await findServerBinaries(fakeEnvironment({})), undefined);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("containerRuntimeAnswers: only a runtime answering the ping counts, and it never hangs", async () => {
  const directory = await Deno.makeTempDir();
  try {
    assert.equal(
      await containerRuntimeAnswers(`${directory}/missing.sock`),
      false,
    );
    await Deno.writeTextFile(`${directory}/file.sock`, "");
    assert.equal(
      await containerRuntimeAnswers(`${directory}/file.sock`),
      false,
    );

    await withUnixServer(`${directory}/docker.sock`, async (connection) => {
      await connection.read(new Uint8Array(1024));
      await connection.write(new TextEncoder().encode(
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK",
      ));
    }, async (path) => {
      assert.equal(await containerRuntimeAnswers(path), true);
    });

    await withUnixServer(`${directory}/failing.sock`, async (connection) => {
      await connection.read(new Uint8Array(1024));
      await connection.write(new TextEncoder().encode(
        "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
      ));
    }, async (path) => {
      assert.equal(await containerRuntimeAnswers(path), false);
    });

    // A stuck daemon: accepts, never answers.
    await withUnixServer(`${directory}/silent.sock`, async (connection) => {
      await connection.read(new Uint8Array(1024));
      await connection.read(new Uint8Array(1024)).catch(() => null);
    }, async (path) => {
      const started = performance.now();
      assert.equal(await containerRuntimeAnswers(path, 300), false);
      const elapsed = performance.now() - started;
      assert.ok(elapsed >= 250 && elapsed < 1500, `${elapsed} ms`);
    });
  } finally {
    await Deno.remove(directory, { recursive: true });
  }
});

Deno.test({
  name: server.source === "local cluster"
    ? "local cluster: started once for all test files, removed when deno test exits, output never held"
    : `local cluster: started once, removed at exit (ignored: the server comes from ${server.source})`,
  ignore: server.source !== "local cluster",
  async fn() {
    const directory = await Deno.makeTempDir();
    try {
      const harness = new URL("./_database.ts", import.meta.url).href;
      // Each file reports its server, and which other processes hold its
      // stdout or stderr (Linux's /proc shows them; null elsewhere): only
      // the parent, which reads them, may.
      const report = `
import postgres from "postgres";
import { createTestDatabase, testServerUrl } from "${harness}";
const database = await createTestDatabase();
const server = await testServerUrl();
function outputHolders() {
  let ours;
  try {
    ours = new Set([Deno.readLinkSync("/proc/self/fd/1"), Deno.readLinkSync("/proc/self/fd/2")]);
  } catch {
    return null;
  }
  const holders = [];
  for (const process of Deno.readDirSync("/proc")) {
    const pid = Number(process.name);
    if (!pid || pid === Deno.pid || pid === Deno.ppid) continue;
    try {
      for (const fd of Deno.readDirSync(\`/proc/\${pid}/fd\`)) {
        if (ours.has(Deno.readLinkSync(\`/proc/\${pid}/fd/\${fd.name}\`))) {
          holders.push(Deno.readTextFileSync(\`/proc/\${pid}/cmdline\`).replaceAll("\\0", " "));
          break;
        }
      }
    } catch {
      // Gone, or not ours to inspect.
    }
  }
  return holders;
}
Deno.test("report", async () => {
  const sql = postgres(server.url, { max: 1, onnotice: () => {} });
  try {
    const [row] = await sql\`select current_setting('data_directory') as directory\`;
    console.log("SERVER " + JSON.stringify({ ...server, directory: row.directory }));
    console.log("HOLDERS " + JSON.stringify(outputHolders()));
  } finally {
    await sql.end();
  }
});
`;
      await Deno.writeTextFile(
        `${directory}/a_test.ts`,
        `${report}Deno.test("drop", () => database.drop());\n`,
      );
      await Deno.writeTextFile(
        `${directory}/b_test.ts`,
        `${report}Deno.test("fails on purpose", () => { throw new Error("deliberate"); });\n` +
          `Deno.test("drop", () => database.drop());\n`,
      );
      // Without the cache variables the child starts its own cluster, as a
      // fresh `deno test` run does.
      const env = Object.fromEntries(
        Object.entries(Deno.env.toObject()).filter(([name]) =>
          !name.startsWith("DENO_EVENTSTORE_TEST_")
        ),
      );
      const child = new Deno.Command(Deno.execPath(), {
        args: [
          "test",
          "-A",
          "--no-check",
          "--no-lock",
          "--parallel",
          "--config",
          new URL("../deno.json", import.meta.url).pathname,
          "a_test.ts",
          "b_test.ts",
        ],
        cwd: directory,
        clearEnv: true,
        env: { ...env, NO_COLOR: "1" },
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const stdout = collect(child.stdout);
      const stderr = collect(child.stderr);
      const status = await child.status;
      // Guards this test against the hang it checks for below: a process
      // left holding the output keeps the pipe from ending.
      let held = false;
      const timer = setTimeout(() => {
        held = true;
        void stdout.cancel();
        void stderr.cancel();
      }, 5000);
      const output = (await Promise.all([stdout.text, stderr.text])).join("");
      clearTimeout(timer);
      assert.equal(
        held,
        false,
        "a process the harness started still holds deno test's output open",
      );
      assert.notEqual(status.code, 0, output);
      assert.match(output, /FAILED \| 4 passed \| 1 failed/, output);
      const reports = [...output.matchAll(/^SERVER (.*)$/gm)].map((match) =>
        JSON.parse(match[1]) as {
          url: string;
          source: string;
          directory: string;
        }
      );
      assert.equal(reports.length, 2, output);
      assert.deepEqual(reports[0], reports[1], "both files share one server");
      const [reported] = reports;
      assert.equal(reported.source, "local cluster");
      // `deno test | tee log` ends only once every holder of the pipe has
      // closed it: the watchdog and the server must not hold it.
      const holders = [...output.matchAll(/^HOLDERS (.*)$/gm)].map((match) =>
        JSON.parse(match[1]) as string[] | null
      );
      const inspectable = await exists("/proc/self/fd");
      assert.deepEqual(holders, inspectable ? [[], []] : [null, null]);
      assert.notEqual(reported.url, server.url, "the child started its own");

      const clusterDirectory = reported.directory.replace(/\/data$/, "");
      const port = Number(new URL(reported.url).port);
      const deadline = Date.now() + 5000;
      while (
        (await exists(clusterDirectory) || await accepts(port)) &&
        Date.now() < deadline
      ) {
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      assert.equal(await exists(clusterDirectory), false, clusterDirectory);
      assert.equal(await accepts(port), false, `port ${port}`);
    } finally {
      await Deno.remove(directory, { recursive: true });
    }
  },
});

/** A fake machine with no server, no runtime and no binaries of its own. */
function fakeEnvironment(
  variables: Record<string, string>,
  overrides: Partial<HarnessEnvironment> = {},
): HarnessEnvironment & { writes: string[]; exclusiveCalls: number } {
  const values = new Map(Object.entries(variables));
  const environment = {
    writes: [] as string[],
    exclusiveCalls: 0,
    get: (name: string) => values.get(name),
    set(name: string, value: string) {
      environment.writes.push(name);
      values.set(name, value);
    },
    uid: 1000,
    pgConfig: "/nonexistent/pg_config",
    serverRoot: "/nonexistent/postgresql",
    passwd: "/nonexistent/passwd",
    dockerSockets: ["/nonexistent/docker.sock"],
    exclusive<T>(task: () => Promise<T>): Promise<T> {
      environment.exclusiveCalls++;
      return task();
    },
    ...overrides,
  };
  return environment;
}

async function fakeServerBinaries(
  root: string,
  version: string,
): Promise<void> {
  await Deno.mkdir(`${root}/${version}/bin`, { recursive: true });
  await Deno.writeTextFile(`${root}/${version}/bin/initdb`, "");
  await Deno.writeTextFile(`${root}/${version}/bin/pg_ctl`, "");
}

async function query<T>(
  url: string,
  task: (sql: postgres.Sql) => Promise<T>,
): Promise<T> {
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  try {
    return await task(sql);
  } finally {
    await sql.end();
  }
}

function adminQuery<T>(task: (sql: postgres.Sql) => Promise<T>): Promise<T> {
  return query(server.url, task);
}

/** Serves one connection at a time on a unix socket while `use` runs. */
async function withUnixServer(
  path: string,
  handle: (connection: Deno.Conn) => Promise<void>,
  use: (path: string) => Promise<void>,
): Promise<void> {
  const listener = Deno.listen({ transport: "unix", path });
  const serving = (async () => {
    for await (const connection of listener) {
      try {
        await handle(connection);
      } catch {
        // The client hung up.
      } finally {
        connection.close();
      }
    }
  })();
  try {
    await use(path);
  } finally {
    listener.close();
    await serving;
  }
}

function collect(stream: ReadableStream<Uint8Array>) {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  const text = (async () => {
    let result = "";
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return result + decoder.decode();
      result += decoder.decode(value, { stream: true });
    }
  })();
  return { text, cancel: () => reader.cancel() };
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

async function accepts(port: number): Promise<boolean> {
  try {
    const connection = await Deno.connect({ hostname: "127.0.0.1", port });
    connection.close();
    return true;
  } catch {
    return false;
  }
}
