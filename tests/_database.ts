/**
 * The test database harness: every test that needs PostgreSQL gets a fresh,
 * empty database from {@linkcode createTestDatabase}, and drops it at the end.
 *
 * Where the server comes from, in order:
 *
 * 1. `DATABASE_URL`, when set: databases are created next to the one it names.
 * 2. testcontainers, when a container runtime answers a ping within a second.
 * 3. A throwaway local cluster, from the PostgreSQL server binaries
 *    (`initdb`, `pg_ctl`) found through `pg_config --bindir`.
 *
 * When none of them is possible the harness throws, saying how to provide
 * one: the tests are never skipped silently.
 *
 * A started server is shared by every test file of one `deno test` run. Each
 * file runs in its own isolate, where module state starts afresh, but the
 * process environment is shared, so the server's URL is kept there. A local
 * cluster is stopped and deleted by a watchdog once the `deno` process is
 * gone, whether the tests passed, failed or were killed.
 *
 * Fault tests, which stop and restart the server, get a cluster of their own
 * from {@linkcode startControlledCluster} instead: never shared, always local
 * (server binaries needed), and removed by the same kind of watchdog.
 *
 * @module
 */

import postgres from "postgres";
import { redactUrl } from "../src/postgres/driver.ts";

/** An error of the harness itself, passed on as it is. */
class HarnessError extends Error {}

/** A database made for one caller, on the test server. */
export interface TestDatabase {
  /**
   * A `postgres://` URL of a fresh, empty database made for the caller:
   * host, port, user and, if any, password.
   */
  readonly url: string;
  /** The database's name, `eventstore_test_` and random hex digits. */
  readonly name: string;
  /**
   * Where the server came from: `"DATABASE_URL"`, `"testcontainers"` or
   * `"local cluster"`.
   */
  readonly source: string;
  /**
   * Drops the database, ending any session still connected to it
   * (`WITH (FORCE)`). Calling it again does nothing.
   */
  drop(): Promise<void>;
}

/** How the harness starts a server it starts itself. */
export interface TestServerOptions {
  /**
   * Keep PostgreSQL's durability settings (`fsync`, `synchronous_commit`,
   * `full_page_writes`) on, as a production server has them: for
   * benchmarks. By default they are off, which makes tests faster and is
   * harmless for a cluster thrown away at the end. A durable server is a
   * separate server. Ignored with `DATABASE_URL`, whose server is the user's.
   */
  durable?: boolean;
}

/** A PostgreSQL server the harness creates databases on. */
export interface TestServer {
  /**
   * The URL the harness connects to for `CREATE DATABASE`: `DATABASE_URL`
   * itself, or the `postgres` database of a server the harness started.
   */
  readonly url: string;
  /** `"DATABASE_URL"`, `"testcontainers"` or `"local cluster"`. */
  readonly source: string;
}

/**
 * Creates a fresh, empty database for the caller, starting the test server
 * first if this `deno test` run has none yet.
 *
 * @example One database per test file
 * ```ts ignore
 * import { createTestDatabase } from "./_database.ts";
 *
 * const database = await createTestDatabase();
 * Deno.test("uses the database", async () => {
 *   // connect to database.url
 * });
 * Deno.test("drop the test database", () => database.drop());
 * ```
 *
 * @param options Durability of a server the harness starts.
 * @returns The database: its URL, name, the server's source and `drop()`.
 * @throws {Error} When no PostgreSQL server can be had, saying how to get
 * one; when `DATABASE_URL`'s role may not create databases; when the
 * server refuses.
 */
export async function createTestDatabase(
  options: TestServerOptions = {},
): Promise<TestDatabase> {
  return await createDatabase(await testServerUrl(options));
}

/**
 * {@linkcode createTestDatabase} for a test file: when no PostgreSQL can be
 * had, it registers a failing test named `<label>: a PostgreSQL server for
 * the tests` that says how to get one, and returns `undefined` so that the
 * file registers nothing else. Never a silent skip.
 *
 * @param label The test names' prefix, e.g. `PostgresEventStore`.
 * @returns The database, or `undefined` after registering the failing test.
 */
export async function createTestDatabaseOrFail(
  label: string,
): Promise<TestDatabase | undefined> {
  try {
    return await createTestDatabase();
  } catch (error) {
    Deno.test(`${label}: a PostgreSQL server for the tests`, () => {
      throw error;
    });
    return undefined;
  }
}

/**
 * The admin URL of the test server (its `postgres` database, or
 * `DATABASE_URL`) and where the server came from, starting it if this
 * `deno test` run has none yet.
 *
 * @param options Durability of a server the harness starts.
 * @returns The server's URL and source.
 * @throws {Error} When no PostgreSQL server can be had, saying how to get one.
 */
export async function testServerUrl(
  options: TestServerOptions = {},
): Promise<TestServer> {
  return await resolveTestServer(options, machineEnvironment());
}

/**
 * What the harness reads from and does to the machine. Tests pass a fake one
 * to reach the failure paths without disturbing the real, cached server.
 */
export interface HarnessEnvironment {
  /** Reads an environment variable. */
  get(name: string): string | undefined;
  /** Sets an environment variable: the cache shared by all test files. */
  set(name: string, value: string): void;
  /** The user id the tests run as; `null` where there is none (Windows). */
  uid: number | null;
  /** The `pg_config` program to ask for the server binaries' directory. */
  pgConfig: string;
  /** Where Debian's packages put each version's binaries: `<root>/<version>/bin`. */
  serverRoot: string;
  /** The passwd file with the `postgres` user, needed when running as root. */
  passwd: string;
  /** Where a container runtime may listen when `DOCKER_HOST` is unset. */
  dockerSockets: string[];
  /** Runs `task` while no other test file is starting a server. */
  exclusive<T>(task: () => Promise<T>): Promise<T>;
}

/** The real machine: process environment, `pg_config` on PATH, `/etc/passwd`. */
export function machineEnvironment(): HarnessEnvironment {
  const home = Deno.env.get("HOME");
  const runtimeDir = Deno.env.get("XDG_RUNTIME_DIR");
  const uid = Deno.uid();
  // The places testcontainers itself looks, so the runtime we ping is the
  // one it will use.
  const sockets = [
    "/var/run/docker.sock",
    runtimeDir && `${runtimeDir}/docker.sock`,
    home && `${home}/.docker/run/docker.sock`,
    home && `${home}/.docker/desktop/docker.sock`,
    uid !== null && `/run/user/${uid}/docker.sock`,
  ];
  return {
    get: (name) => Deno.env.get(name),
    set: (name, value) => Deno.env.set(name, value),
    uid,
    pgConfig: "pg_config",
    serverRoot: "/usr/lib/postgresql",
    passwd: "/etc/passwd",
    dockerSockets: sockets.filter((path): path is string =>
      typeof path === "string"
    ),
    exclusive: excludingOtherTestFiles,
  };
}

/**
 * Finds the test server by the harness's rules, starting one if needed and
 * remembering it in the environment for the next test files.
 *
 * @param options Durability of a server the harness starts.
 * @param environment The machine, or a fake one.
 * @returns The server's admin URL and source.
 * @throws {Error} When no PostgreSQL server can be had, saying how to get one.
 */
export async function resolveTestServer(
  options: TestServerOptions,
  environment: HarnessEnvironment,
): Promise<TestServer> {
  const databaseUrl = environment.get("DATABASE_URL");
  if (databaseUrl) {
    return { url: checkedDatabaseUrl(databaseUrl), source: "DATABASE_URL" };
  }
  const cached = cachedServer(options, environment);
  if (cached !== undefined) return cached;
  return await environment.exclusive(async () => {
    // Another test file may have started it while this one waited.
    const startedMeanwhile = cachedServer(options, environment);
    if (startedMeanwhile !== undefined) return startedMeanwhile;
    const server = await startServer(options, environment);
    const keys = cacheKeys(options);
    environment.set(keys.url, server.url);
    environment.set(keys.source, server.source);
    return server;
  });
}

/**
 * Creates a fresh, empty database on `server`, next to the database its URL
 * names.
 *
 * @param server Where to create it.
 * @returns The database.
 * @throws {Error} When the role may not create databases (saying so), or the
 * server cannot be reached or refuses.
 */
export async function createDatabase(
  server: TestServer,
): Promise<TestDatabase> {
  const name = `eventstore_test_${randomHex(8)}`;
  const action = `create test database "${name}"`;
  await withConnection(server, action, async (sql) => {
    try {
      // template0: empty even where template1 has objects in it, and never
      // "being accessed by other users".
      await sql`
        create database ${sql(name)}
        template template0 encoding 'UTF8'`;
    } catch (error) {
      if (sqlState(error) !== "42501") throw error;
      const [row] = await sql`select current_user as role`;
      throw new HarnessError(
        `Cannot create test databases with ${server.source}: the role ` +
          `"${row.role}" lacks the CREATEDB privilege; grant it ` +
          `(ALTER ROLE "${row.role}" CREATEDB) or use a role that has it`,
        { cause: error },
      );
    }
  });
  const url = new URL(server.url);
  url.pathname = `/${name}`;
  let dropped = false;
  return {
    url: url.href,
    name,
    source: server.source,
    async drop() {
      if (dropped) return;
      await withConnection(
        server,
        `drop test database "${name}"`,
        (sql) => sql`drop database if exists ${sql(name)} with (force)`,
      );
      dropped = true;
    },
  };
}

/**
 * How `pg_ctl stop` (and so a restart) ends the server: `"smart"` waits for
 * every client to disconnect; `"fast"` rolls back every transaction and
 * ends every session (57P01), then shuts down cleanly; `"immediate"` kills
 * the server, which recovers from its WAL at the next start, as after a
 * crash.
 */
export type ShutdownMode = "smart" | "fast" | "immediate";

/**
 * A PostgreSQL cluster of one caller's own, which it may stop, start and
 * restart: for fault tests, which must not disturb the server every other
 * test file shares.
 */
export interface ControlledCluster {
  /**
   * A `postgres://` URL of the cluster's `postgres` database, as its
   * superuser `postgres` (no password), on 127.0.0.1. It stays the same
   * across restarts.
   */
  readonly url: string;
  /** The loopback port the server listens on, the same across restarts. */
  readonly port: number;
  /**
   * Stops the server (`pg_ctl stop -m <mode>`, waiting until it is gone)
   * and starts it again on the same port, waiting until it accepts
   * connections: what `pg_ctl restart -m <mode>` does.
   *
   * Without `durable`, commits are acknowledged before they reach the WAL
   * on disk (`synchronous_commit=off`): `"immediate"` may then lose the
   * last ones, which `"fast"` never does.
   *
   * @param mode How to stop it; `"fast"` by default.
   * @throws {Error} When it does not stop or start, with the server's log.
   */
  restart(mode?: ShutdownMode): Promise<void>;
  /**
   * Stops the server (`pg_ctl stop -m <mode>`) and waits until it is gone.
   *
   * @param mode How to stop it; `"fast"` by default.
   * @throws {Error} When it does not stop, with pg_ctl's output.
   */
  stop(mode?: ShutdownMode): Promise<void>;
  /**
   * Starts a stopped server on its port and waits until it accepts
   * connections.
   *
   * @throws {Error} When it does not start, with the server's log.
   */
  start(): Promise<void>;
  /**
   * Stops the server at once (`-m immediate`) and deletes the cluster.
   * Calling it again does nothing. The watchdog does the same when `deno`
   * exits, in case this is never called.
   */
  remove(): Promise<void>;
  /** {@linkcode ControlledCluster.remove}, for `await using`. */
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * Starts a PostgreSQL cluster of the caller's own, never shared or cached:
 * a new cluster in a temporary directory, on a random loopback port, with
 * the settings of {@linkcode serverSettings}, from the server binaries that
 * `pg_config --bindir` names (else the newest `/usr/lib/postgresql/<version>/bin`,
 * else PATH). It runs as the `postgres` user when the tests run as root.
 * `DATABASE_URL` and container runtimes are not used: a test that stops
 * the server needs one it owns.
 *
 * @example Restart the server under a test
 * ```ts ignore
 * import { startControlledCluster } from "./_database.ts";
 *
 * const cluster = await startControlledCluster();
 * Deno.test("survives a restart", async () => {
 *   // connect to cluster.url, then:
 *   await cluster.restart("fast");
 * });
 * Deno.test("remove the cluster", () => cluster.remove());
 * ```
 *
 * @param options Durability of the cluster.
 * @param environment The machine, or a fake one.
 * @returns The cluster, started and accepting connections.
 * @throws {Error} When there are no server binaries, or no `postgres` user
 * to run them as root, saying how to get them; when the cluster does not
 * start, with its log.
 */
export async function startControlledCluster(
  options: TestServerOptions = {},
  environment: HarnessEnvironment = machineEnvironment(),
): Promise<ControlledCluster> {
  const cannotStart = (reason: string) =>
    new HarnessError(
      `Cannot start a PostgreSQL cluster that the tests control: ${reason}.\n` +
        "These tests stop and restart the server, so they need a cluster " +
        "of their own, from the PostgreSQL server binaries: DATABASE_URL or " +
        "a container runtime will not do.\n" +
        "Install them: apt-get install postgresql (Debian, Ubuntu), dnf " +
        "install postgresql-server (Fedora), brew install postgresql@17 " +
        "(macOS); or put the directory holding initdb and pg_ctl on PATH.",
    );
  const cluster = await createLocalCluster(options, environment, {
    noBinaries: (where) =>
      cannotStart(
        `no PostgreSQL server binaries (initdb, pg_ctl) were found through ${where}`,
      ),
    cannotStart,
  });
  const { binDir, directory, user, port, serverOptions } = cluster;
  const dataDir = `${directory}/data`;
  let removed = false;
  const checkNotRemoved = (action: string) => {
    if (removed) {
      throw new HarnessError(`Cannot ${action}: the cluster was removed`);
    }
  };
  const stop = async (mode: ShutdownMode = "fast") => {
    checkNotRemoved("stop the cluster");
    const result = await run(`${binDir}/pg_ctl`, [
      "stop",
      "-m",
      mode,
      "-D",
      dataDir,
    ], { cwd: directory, user });
    if (!result.success) {
      throw new HarnessError(
        `Cannot stop the PostgreSQL cluster (-m ${mode}):\n${
          tail(result.output)
        }`,
      );
    }
  };
  const start = async () => {
    checkNotRemoved("start the cluster");
    const failure = await launchCluster(binDir, directory, serverOptions, user);
    if (failure !== undefined) {
      throw new HarnessError(
        `Cannot start the PostgreSQL cluster on port ${port}:\n${
          tail(failure)
        }`,
      );
    }
  };
  const remove = async () => {
    if (removed) return;
    removed = true;
    await removeCluster(binDir, directory, user);
  };
  return {
    url: clusterUrl(port),
    port,
    async restart(mode: ShutdownMode = "fast") {
      // pg_ctl restart, in its two steps: so that the start is judged by
      // what the new server logs, not by the FATAL lines of the sessions
      // the stop ended.
      await stop(mode);
      await start();
    },
    stop,
    start,
    remove,
    [Symbol.asyncDispose]: remove,
  };
}

/**
 * The server settings a started server gets: room for many pools, and
 * without durability unless asked, since the cluster is thrown away.
 *
 * @param options Whether to keep durability.
 * @returns `name=value` settings, for `postgres -c`.
 */
export function serverSettings(options: TestServerOptions): string[] {
  const settings = ["max_connections=300"];
  if (!options.durable) {
    settings.push(
      "fsync=off",
      "synchronous_commit=off",
      "full_page_writes=off",
    );
  }
  return settings;
}

/**
 * Whether a container runtime answers `GET /_ping` on a unix socket within
 * `timeoutMs`: a socket file alone proves nothing (Docker Desktop leaves it
 * behind when stopped), and a test run must not hang on it.
 *
 * @param path The socket's path.
 * @param timeoutMs How long to wait for the answer.
 * @returns `true` when it answered `200 OK`.
 */
export async function containerRuntimeAnswers(
  path: string,
  timeoutMs = 1000,
): Promise<boolean> {
  let connection: Deno.Conn | undefined;
  let settled = false;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const ping = async () => {
    const opened = await Deno.connect({ transport: "unix", path });
    if (settled) {
      opened.close();
      return false;
    }
    connection = opened;
    const request = "GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n";
    await opened.write(new TextEncoder().encode(request));
    const buffer = new Uint8Array(256);
    let response = "";
    while (!response.includes("\r\n")) {
      const count = await opened.read(buffer);
      if (count === null) break;
      response += new TextDecoder().decode(buffer.subarray(0, count));
    }
    return /^HTTP\/1\.[01] 200 /.test(response);
  };
  const timedOut = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), timeoutMs);
  });
  try {
    return await Promise.race([ping().catch(() => false), timedOut]);
  } finally {
    settled = true;
    clearTimeout(timer);
    try {
      connection?.close();
    } catch {
      // Already closed by the peer.
    }
  }
}

const HOW_TO_GET_POSTGRES = [
  "The tests need a PostgreSQL server (13 or later). Give them one of:",
  "  - DATABASE_URL=postgres://user:pass@host:5432/db, whose role may CREATE DATABASE " +
  "(each test file creates its own databases next to that one);",
  "  - a running container runtime (Docker, Podman) for testcontainers;",
  "  - the PostgreSQL server binaries (apt-get install postgresql), so the tests " +
  "start a throwaway cluster.",
].join("\n");

function noServerError(reason: string, cause?: unknown): Error {
  return new HarnessError(
    `Cannot get a PostgreSQL server for the tests: ${reason}.\n${HOW_TO_GET_POSTGRES}`,
    { cause },
  );
}

function checkedDatabaseUrl(value: string): string {
  let url: URL | undefined;
  try {
    url = new URL(value);
  } catch {
    // Reported below, without the value: it may hold a password.
  }
  if (url?.protocol !== "postgres:" && url?.protocol !== "postgresql:") {
    throw new HarnessError(
      "Cannot use DATABASE_URL: it is not a postgres:// URL " +
        "(postgres://user:pass@host:5432/db)",
    );
  }
  return value;
}

function cacheKeys(
  options: TestServerOptions,
): { url: string; source: string } {
  const prefix = options.durable
    ? "DENO_EVENTSTORE_TEST_DURABLE_SERVER"
    : "DENO_EVENTSTORE_TEST_SERVER";
  return { url: `${prefix}_URL`, source: `${prefix}_SOURCE` };
}

function cachedServer(
  options: TestServerOptions,
  environment: HarnessEnvironment,
): TestServer | undefined {
  const keys = cacheKeys(options);
  const url = environment.get(keys.url);
  const source = environment.get(keys.source);
  return url && source ? { url, source } : undefined;
}

/**
 * Test files run concurrently under `deno test --parallel`, in isolates of
 * one process. An exclusive `flock` on this module's own file lets one of
 * them start the server while the others wait, and is released by the kernel
 * if the process dies; a file that always exists leaves nothing behind.
 */
async function excludingOtherTestFiles<T>(task: () => Promise<T>): Promise<T> {
  const path = import.meta.filename;
  if (path === undefined) return await task();
  using file = await Deno.open(path, { read: true });
  await file.lock(true);
  try {
    return await task();
  } finally {
    await file.unlock();
  }
}

async function startServer(
  options: TestServerOptions,
  environment: HarnessEnvironment,
): Promise<TestServer> {
  const runtime = await findContainerRuntime(environment);
  if (runtime !== undefined) {
    return {
      url: await startContainer(options, runtime, environment),
      source: "testcontainers",
    };
  }
  return {
    url: await startLocalCluster(options, environment),
    source: "local cluster",
  };
}

async function findContainerRuntime(
  environment: HarnessEnvironment,
): Promise<string | undefined> {
  const dockerHost = environment.get("DOCKER_HOST");
  if (dockerHost) {
    // testcontainers uses DOCKER_HOST first, so nothing else is worth a look.
    if (dockerHost.startsWith("unix://")) {
      const answers = await containerRuntimeAnswers(dockerHost.slice(7));
      return answers ? dockerHost : undefined;
    }
    if (
      dockerHost.startsWith("tcp://") && !environment.get("DOCKER_TLS_VERIFY")
    ) {
      return await httpRuntimeAnswers(dockerHost) ? dockerHost : undefined;
    }
    // TLS or ssh: not pingable cheaply; the user set it on purpose, and
    // testcontainers reports its own errors.
    return dockerHost;
  }
  for (const path of environment.dockerSockets) {
    if (await containerRuntimeAnswers(path)) return `unix://${path}`;
  }
  return undefined;
}

async function httpRuntimeAnswers(dockerHost: string): Promise<boolean> {
  try {
    const address = dockerHost.slice("tcp://".length);
    const response = await fetch(`http://${address}/_ping`, {
      signal: AbortSignal.timeout(1000),
    });
    await response.body?.cancel();
    return response.ok;
  } catch {
    return false;
  }
}

/** The part of `@testcontainers/postgresql` the harness uses. */
interface PostgreSqlContainerModule {
  PostgreSqlContainer: new (image: string) => PostgreSqlContainerBuilder;
}

interface PostgreSqlContainerBuilder {
  withCommand(command: string[]): PostgreSqlContainerBuilder;
  withTmpFs(mounts: Record<string, string>): PostgreSqlContainerBuilder;
  start(): Promise<{ getConnectionUri(): string; getId(): string }>;
}

async function startContainer(
  options: TestServerOptions,
  dockerHost: string,
  environment: HarnessEnvironment,
): Promise<string> {
  // testcontainers probes sockets by existence, not by answer; point it at
  // the one that answered.
  if (!environment.get("DOCKER_HOST")) {
    environment.set("DOCKER_HOST", dockerHost);
  }
  // Ryuk, testcontainers' reaper, removes the container once its socket to
  // this process closes; but sockets belong to the test file's isolate,
  // closed when that file is done, while later files still use the server.
  // The watchdog removes the container at the process's exit instead.
  environment.set("TESTCONTAINERS_RYUK_DISABLED", "true");
  // A non-literal specifier: Deno downloads testcontainers only when this
  // branch runs, never for the machines that use another server.
  const specifier = "npm:@testcontainers/postgresql@^11";
  try {
    const module = await import(specifier) as PostgreSqlContainerModule;
    let container = new module.PostgreSqlContainer("postgres:17-alpine")
      .withCommand([
        "postgres",
        ...serverSettings(options).flatMap((setting) => ["-c", setting]),
      ]);
    if (!options.durable) {
      container = container.withTmpFs({ "/var/lib/postgresql/data": "rw" });
    }
    const started = await container.start();
    startWatchdog(REMOVE_CONTAINER, [
      started.getId(),
      ...removalRequest(dockerHost, started.getId()),
    ]);
    const url = new URL(started.getConnectionUri());
    url.pathname = "/postgres";
    return url.href;
  } catch (error) {
    throw noServerError(
      `a container runtime answers at ${dockerHost}, but starting PostgreSQL ` +
        `with testcontainers failed: ${messageOf(error)}`,
      error,
    );
  }
}

/** curl's arguments for the Docker API's "remove container", where curl can. */
function removalRequest(dockerHost: string, id: string): string[] {
  const path = `/containers/${id}?force=true&v=true`;
  if (dockerHost.startsWith("unix://")) {
    return ["--unix-socket", dockerHost.slice(7), `http://localhost${path}`];
  }
  if (dockerHost.startsWith("tcp://")) {
    return [`http://${dockerHost.slice(6)}${path}`];
  }
  return [];
}

/** Who runs the server: PostgreSQL refuses to run as root. */
export interface ServerUser {
  uid: number;
  gid: number;
}

async function startLocalCluster(
  options: TestServerOptions,
  environment: HarnessEnvironment,
): Promise<string> {
  const cluster = await createLocalCluster(options, environment, {
    noBinaries: (where) =>
      noServerError(
        "no container runtime answers, and no PostgreSQL server binaries " +
          `(initdb, pg_ctl) were found through ${where}`,
      ),
    cannotStart: (reason) => noServerError(reason),
  });
  return clusterUrl(cluster.port);
}

/** A cluster the harness made: where it lives, who runs it, its port. */
interface LocalCluster {
  binDir: string;
  /** Holds `data/` (the cluster), `postgres.log` and the server's socket. */
  directory: string;
  user: ServerUser | undefined;
  port: number;
  /** The `postgres` options it was started with: `-h`, `-p`, `-k`, `-c`. */
  serverOptions: string;
}

/** The errors a caller of `createLocalCluster` wants, saying what to do. */
interface ClusterFailures {
  /** When there are no server binaries, given where they were looked for. */
  noBinaries(where: string): Error;
  /** When the server cannot run, given why. */
  cannotStart(reason: string): Error;
}

/**
 * Makes a cluster in a new temporary directory, with its watchdog, and
 * starts it on a free loopback port.
 */
async function createLocalCluster(
  options: TestServerOptions,
  environment: HarnessEnvironment,
  failures: ClusterFailures,
): Promise<LocalCluster> {
  const binDir = await findServerBinaries(environment);
  if (binDir === undefined) {
    throw failures.noBinaries(
      `pg_config --bindir, ${environment.serverRoot}/*/bin or PATH`,
    );
  }
  let user: ServerUser | undefined;
  if (environment.uid === 0) {
    user = await postgresUser(environment);
    if (user === undefined) {
      throw failures.cannotStart(
        "the tests run as root, PostgreSQL refuses to, and there is no " +
          "postgres user to run it as (the postgresql package creates one)",
      );
    }
  }
  // A root-owned TMPDIR may not be traversable by the postgres user; /tmp is.
  const directory = await Deno.makeTempDir({
    dir: user ? "/tmp" : undefined,
    prefix: "eventstore-test-pg-",
  });
  const dataDir = `${directory}/data`;
  try {
    if (user) {
      await Deno.chmod(directory, 0o700);
      await Deno.chown(directory, user.uid, user.gid);
    }
    // Before anything runs in it, so even a run killed while starting
    // leaves nothing behind.
    startWatchdog(REMOVE_CLUSTER, [directory]);
    await initCluster(binDir, dataDir, directory, user);
    const started = await startCluster(binDir, directory, options, user);
    return { binDir, directory, user, ...started };
  } catch (error) {
    await removeCluster(binDir, directory, user);
    throw error;
  }
}

function clusterUrl(port: number): string {
  return `postgres://postgres@127.0.0.1:${port}/postgres`;
}

/**
 * The directory holding `initdb` and `pg_ctl`: `pg_config --bindir`, else
 * the newest `<serverRoot>/<version>/bin`, else a PATH entry.
 *
 * @param environment The machine, or a fake one.
 * @returns The directory, or `undefined` when there is none.
 */
export async function findServerBinaries(
  environment: HarnessEnvironment,
): Promise<string | undefined> {
  const candidates: string[] = [];
  const fromPgConfig = await run(environment.pgConfig, ["--bindir"]).catch(
    () => undefined,
  );
  if (fromPgConfig?.success) candidates.push(fromPgConfig.output.trim());
  // pg_config may come from a client package of another version (Debian's
  // libpq-dev), whose bindir has no initdb: the newest server wins then.
  candidates.push(...await versionedBinDirs(environment.serverRoot));
  candidates.push(
    ...(environment.get("PATH") ?? "").split(":").filter(Boolean),
  );
  for (const dir of candidates) {
    if (await isFile(`${dir}/initdb`) && await isFile(`${dir}/pg_ctl`)) {
      return dir;
    }
  }
  return undefined;
}

async function versionedBinDirs(root: string): Promise<string[]> {
  const versions: number[] = [];
  try {
    for await (const entry of Deno.readDir(root)) {
      if (/^\d+(\.\d+)?$/.test(entry.name)) versions.push(Number(entry.name));
    }
  } catch {
    return [];
  }
  return versions.sort((a, b) => b - a).map((version) =>
    `${root}/${version}/bin`
  );
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}

/**
 * The `postgres` user of the machine, which server programs run as when the
 * tests run as root; `undefined` when there is none.
 */
export async function postgresUser(
  environment: HarnessEnvironment = machineEnvironment(),
): Promise<ServerUser | undefined> {
  let passwd = "";
  try {
    passwd = await Deno.readTextFile(environment.passwd);
  } catch {
    // No passwd file: no postgres user, reported below.
  }
  for (const line of passwd.split("\n")) {
    const [name, , uid, gid] = line.split(":");
    if (name === "postgres" && uid && gid) {
      return { uid: Number(uid), gid: Number(gid) };
    }
  }
  return undefined;
}

/**
 * A bash prologue that returns once this `deno` process ($1) is gone, then
 * shifts it off. `kill -0` also succeeds for a zombie, which its parent may
 * be slow to reap (the postmaster's parent is init once pg_ctl has exited),
 * so /proc is asked too where there is one. It defines `alive PID` for the
 * script that follows.
 */
export const AFTER_DENO_EXITS = `
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  [ -r "/proc/$1/stat" ] || return 0
  local stat
  read -r stat < "/proc/$1/stat"
  [[ "\${stat##*) }" != Z* ]]
}
while alive "$1"; do sleep 0.2; done
shift
`;

/** Stops the cluster in $1 and deletes it; root may signal postgres's processes. */
const REMOVE_CLUSTER = `
pidfile="$1/data/postmaster.pid"
if [ -f "$pidfile" ]; then
  read -r postmaster < "$pidfile"
  # What pg_ctl stop -m immediate sends.
  kill -QUIT "$postmaster" 2>/dev/null
  for ((i = 0; i < 100; i++)); do alive "$postmaster" || break; sleep 0.05; done
  alive "$postmaster" && kill -KILL "$postmaster"
fi
rm -rf "$1"
`;

/** Removes container $1 with the docker CLI, else with curl and the rest of the arguments. */
const REMOVE_CONTAINER = `
id=$1
shift
docker rm -f -v "$id" >/dev/null 2>&1 || curl -fsS -X DELETE "$@" >/dev/null 2>&1
`;

/**
 * Runs `cleanup` once this process is gone, however it ends: a test run
 * that fails or is killed leaves nothing behind. Detached (its own session,
 * so Ctrl-C reaches it only through our exit), unreferenced (the run does
 * not wait for it) and with no stdio: a child holding the test's stdout
 * would keep `deno test | tee log` open forever.
 */
function startWatchdog(cleanup: string, args: string[]): void {
  const watchdog = new Deno.Command("bash", {
    args: [
      "-c",
      AFTER_DENO_EXITS + cleanup,
      "eventstore-test-watchdog",
      String(Deno.pid),
      ...args,
    ],
    stdin: "null",
    stdout: "null",
    stderr: "null",
    detached: true,
  }).spawn();
  watchdog.unref();
}

async function initCluster(
  binDir: string,
  dataDir: string,
  directory: string,
  user: ServerUser | undefined,
): Promise<void> {
  const result = await run(`${binDir}/initdb`, [
    "-D",
    dataDir,
    "--auth=trust",
    "-U",
    "postgres",
    "--encoding=UTF8",
    // C: byte order, no dependence on the machine's locales, and faster.
    "--no-locale",
    // The cluster is thrown away: flushing it to disk is wasted time.
    "--no-sync",
  ], { cwd: directory, user });
  if (!result.success) {
    throw noServerError(`initdb failed:\n${tail(result.output)}`);
  }
}

/** Starts the cluster on a free loopback port; returns the port and options. */
async function startCluster(
  binDir: string,
  directory: string,
  options: TestServerOptions,
  user: ServerUser | undefined,
): Promise<{ port: number; serverOptions: string }> {
  const settings = serverSettings(options).map((setting) => `-c ${setting}`);
  for (let attempt = 1;; attempt++) {
    const port = freePort();
    const serverOptions = [
      "-h 127.0.0.1",
      `-p ${port}`,
      `-k ${shellQuote(directory)}`,
      ...settings,
    ].join(" ");
    const failure = await launchCluster(binDir, directory, serverOptions, user);
    if (failure === undefined) return { port, serverOptions };
    // Another program took the port between our probe and the server's bind.
    if (/already in use/i.test(failure) && attempt < 5) continue;
    throw noServerError(
      `the PostgreSQL server did not start:\n${tail(failure)}`,
    );
  }
}

/**
 * Runs `pg_ctl start` and waits until the server accepts connections.
 *
 * @returns `undefined` once ready, or why it did not start.
 */
async function launchCluster(
  binDir: string,
  directory: string,
  serverOptions: string,
  user: ServerUser | undefined,
): Promise<string | undefined> {
  const logFile = `${directory}/postgres.log`;
  // Only what this start logs tells whether it failed.
  const logSize = await fileSize(logFile);
  // -l: the server's output goes to the log, not to our stdout; and pg_ctl
  // output is piped, so no pipe of the test run stays open in the server.
  // -W: pg_ctl's own wait polls every 100 ms; waitUntilReady polls every
  // 10 ms, which makes the start about 50 ms (a fifth) shorter.
  const result = await run(`${binDir}/pg_ctl`, [
    "start",
    "-W",
    "-D",
    `${directory}/data`,
    "-l",
    logFile,
    "-o",
    serverOptions,
  ], { cwd: directory, user });
  return result.success
    ? await waitUntilReady(directory, logFile, logSize)
    : result.output;
}

/**
 * Waits until the postmaster reports "ready" in its pid file (line 8, since
 * PostgreSQL 10).
 *
 * @returns `undefined` once ready, or the log of a failed start.
 */
async function waitUntilReady(
  directory: string,
  logFile: string,
  logSize: number,
): Promise<string | undefined> {
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    const pidFile = await readFrom(`${directory}/data/postmaster.pid`, 0);
    if (pidFile.split("\n")[7]?.trim() === "ready") return undefined;
    // A postmaster that failed has logged why and removed its pid file (or
    // never made one); a FATAL of a mere client would leave the file there.
    const log = await readFrom(logFile, logSize);
    if (pidFile === "" && /\b(FATAL|PANIC): /.test(log)) return log;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  return `not ready after 60 s:\n${await readFrom(logFile, logSize)}`;
}

async function removeCluster(
  binDir: string,
  directory: string,
  user: ServerUser | undefined,
): Promise<void> {
  if (await isFile(`${directory}/data/postmaster.pid`)) {
    await run(`${binDir}/pg_ctl`, [
      "stop",
      "-m",
      "immediate",
      "-D",
      `${directory}/data`,
    ], { cwd: directory, user }).catch(() => undefined);
  }
  await Deno.remove(directory, { recursive: true }).catch(() => undefined);
}

/** A loopback port nothing listens on now; a server may still lose it in a race. */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr;
  listener.close();
  return port;
}

/**
 * Runs a server program (initdb, pg_ctl, pg_basebackup, …) to its end, as
 * `options.user` if given, and returns whether it succeeded and what it
 * printed (stdout, then stderr).
 *
 * @param options The working directory, the user, and how long it may take
 *   (killed, and reported as failed, after `timeoutMs`; no limit by default).
 */
export async function run(
  program: string,
  args: string[],
  options: { cwd?: string; user?: ServerUser; timeoutMs?: number } = {},
): Promise<{ success: boolean; output: string }> {
  const { success, stdout, stderr } = await new Deno.Command(program, {
    args,
    cwd: options.cwd,
    // The cluster's time zone and the messages' language do not depend on
    // the machine; TZ also spares initdb its search for the local zone.
    env: { TZ: "UTC", LC_MESSAGES: "C" },
    uid: options.user?.uid,
    gid: options.user?.gid,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: options.timeoutMs === undefined
      ? undefined
      : AbortSignal.timeout(options.timeoutMs),
  }).output();
  const decoder = new TextDecoder();
  return { success, output: decoder.decode(stdout) + decoder.decode(stderr) };
}

async function fileSize(path: string): Promise<number> {
  try {
    return (await Deno.stat(path)).size;
  } catch {
    return 0;
  }
}

async function readFrom(path: string, offset: number): Promise<string> {
  try {
    return (await Deno.readTextFile(path)).slice(offset);
  } catch {
    return "";
  }
}

function tail(text: string, lines = 20): string {
  return text.trimEnd().split("\n").slice(-lines).join("\n");
}

/** Quotes for the shell pg_ctl runs `postgres` with. */
function shellQuote(value: string): string {
  return `'${value.replaceAll("'", `'\\''`)}'`;
}

async function withConnection(
  server: TestServer,
  action: string,
  task: (sql: postgres.Sql) => Promise<unknown>,
): Promise<void> {
  const sql = postgres(server.url, {
    max: 1,
    connect_timeout: 10,
    onnotice: () => {},
  });
  try {
    await task(sql);
  } catch (error) {
    if (error instanceof HarnessError) throw error;
    throw new Error(
      `Cannot ${action} on ${redactUrl(server.url)} (${server.source}): ${
        messageOf(error)
      }`,
      { cause: error },
    );
  } finally {
    await sql.end();
  }
}

function sqlState(error: unknown): string | undefined {
  return error instanceof postgres.PostgresError ? error.code : undefined;
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function randomHex(bytes: number): string {
  return Array.from(
    crypto.getRandomValues(new Uint8Array(bytes)),
    (byte) => byte.toString(16).padStart(2, "0"),
  ).join("");
}
