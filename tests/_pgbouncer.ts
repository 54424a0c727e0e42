/**
 * A PgBouncer in front of a test server, for tests of the store behind a
 * connection pooler: {@linkcode startPgBouncer} starts one of its own for
 * the caller, in a fresh temporary directory, on a free loopback port.
 *
 * It gets only the settings it cannot do without (where to listen, how to
 * authenticate, the pool mode, where its log and pid file go) and the
 * caller's `settings`: everything else is PgBouncer's default, as a user
 * who installs it gets it. Clients authenticate with `trust`; PgBouncer logs
 * in to the server as the server URL's user, with its password, if any.
 *
 * PgBouncer refuses to run as root: when the tests run as root it runs as
 * the `postgres` user (which the PostgreSQL packages create), else as
 * `nobody`. It is stopped by its own PID, and a watchdog stops it and
 * deletes its directory once the `deno` process is gone, whether the tests
 * passed, failed or were killed.
 *
 * When PgBouncer is not installed this throws, saying how to install it:
 * the tests are never skipped silently.
 *
 * @module
 */

import { AFTER_DENO_EXITS } from "./_database.ts";

/** How PgBouncer hands server connections to clients (`pool_mode`). */
export type PoolMode = "session" | "transaction" | "statement";

/** What {@linkcode startPgBouncer} starts. */
export interface PgBouncerOptions {
  /** `pool_mode`: when a server connection goes back to the pool. */
  mode: PoolMode;
  /**
   * `default_pool_size`: server connections per database and user pair.
   * PgBouncer's default (20) when not given.
   */
  poolSize?: number;
  /**
   * More `[pgbouncer]` settings, by name, e.g. `{ server_round_robin: "1" }`
   * or `{ ignore_startup_parameters: "statement_timeout" }`. They override
   * the harness's own, so `auth_type` may be changed too (`md5` checks the
   * server URL's password, which `userlist.txt` holds in plain text); keep
   * `logfile` and `pidfile`, which {@linkcode PgBouncer.log} and the
   * watchdog read.
   */
  settings?: Record<string, string>;
}

/** A running PgBouncer of the caller's own. */
export interface PgBouncer {
  /**
   * A `postgres://` URL of the server URL's database through PgBouncer: on
   * 127.0.0.1, with the server URL's user and password. Any other database
   * of the server can be reached by changing the path.
   */
  readonly url: string;
  /** The loopback port PgBouncer listens on. */
  readonly port: number;
  /** The pool mode it runs in. */
  readonly mode: PoolMode;
  /** Its temporary directory: `pgbouncer.ini`, `userlist.txt`, the log. */
  readonly directory: string;
  /**
   * Reads its log file, e.g. to look for `closing because: ...` lines.
   *
   * @returns The log so far; empty once it is stopped.
   */
  log(): Promise<string>;
  /**
   * Stops it (SIGTERM, PgBouncer's immediate shutdown, then SIGKILL after
   * 5 s), waits until it is gone, and deletes its directory. Calling it
   * again does nothing.
   */
  stop(): Promise<void>;
  /** {@linkcode PgBouncer.stop}, for `await using`. */
  [Symbol.asyncDispose](): Promise<void>;
}

/** Who runs PgBouncer when the tests run as root. */
interface BouncerUser {
  uid: number;
  gid: number;
}

const HOW_TO_INSTALL =
  "Install it: apt-get install pgbouncer (Debian, Ubuntu), dnf install " +
  "pgbouncer (Fedora), brew install pgbouncer (macOS); or put the directory " +
  "holding pgbouncer on PATH.";

/**
 * Starts PgBouncer in front of `serverUrl`, in `options.mode`, and waits
 * until it answers on its port.
 *
 * @example A store behind a transaction-mode pooler
 * ```ts ignore
 * import { createTestDatabase } from "./_database.ts";
 * import { startPgBouncer } from "./_pgbouncer.ts";
 *
 * const database = await createTestDatabase();
 * await using bouncer = await startPgBouncer(database.url, {
 *   mode: "transaction",
 * });
 * // connect to bouncer.url
 * ```
 *
 * @param serverUrl A `postgres://` URL of the server, with a user: its
 * host and port are where PgBouncer connects, its database is the one
 * {@linkcode PgBouncer.url} names.
 * @param options The pool mode, pool size and further settings.
 * @returns The running PgBouncer.
 * @throws {Error} When PgBouncer is not installed (saying how to install
 * it), when the URL has no user, when there is no user to run it as, or
 * when it does not start (with its log).
 */
export async function startPgBouncer(
  serverUrl: string,
  options: PgBouncerOptions,
): Promise<PgBouncer> {
  const server = parseServerUrl(serverUrl);
  const program = await findPgBouncer();
  if (program === undefined) {
    throw new Error(
      "Cannot start PgBouncer for the tests: no pgbouncer program was found " +
        `on PATH or in ${EXTRA_DIRS.join(", ")}.\n${HOW_TO_INSTALL}`,
    );
  }
  let user: BouncerUser | undefined;
  if (Deno.uid() === 0) {
    user = await unprivilegedUser();
    if (user === undefined) {
      throw new Error(
        "Cannot start PgBouncer for the tests: they run as root, PgBouncer " +
          "refuses to, and there is neither a postgres nor a nobody user to " +
          "run it as",
      );
    }
  }
  // A root-owned TMPDIR may not be traversable by that user; /tmp is.
  const directory = await Deno.makeTempDir({
    dir: user ? "/tmp" : undefined,
    prefix: "eventstore-test-pgbouncer-",
  });
  let watchdog: Deno.ChildProcess | undefined;
  try {
    if (user) await Deno.chown(directory, user.uid, user.gid);
    // Before PgBouncer runs, so even a run killed while starting it leaves
    // nothing behind.
    watchdog = startWatchdog(directory);
    for (let attempt = 1;; attempt++) {
      const port = freePort();
      await writeConfiguration(directory, server, port, options, user);
      const started = await launch(program, directory, port, user);
      if ("child" in started) {
        return running(started, directory, port, server, options, watchdog);
      }
      // Another program took the port between our probe and PgBouncer's bind.
      if (/already in use/i.test(started.failure) && attempt < 5) continue;
      throw new Error(
        `Cannot start PgBouncer for the tests (${program}):\n${
          tail(started.failure)
        }`,
      );
    }
  } catch (error) {
    await Deno.remove(directory, { recursive: true }).catch(() => undefined);
    try {
      watchdog?.kill("SIGKILL");
    } catch {
      // Already gone.
    }
    throw error;
  }
}

/** The parts of the server URL that PgBouncer needs. */
interface ServerAddress {
  host: string;
  port: string;
  user: string;
  password: string;
  database: string;
}

function parseServerUrl(serverUrl: string): ServerAddress {
  let url: URL | undefined;
  try {
    url = new URL(serverUrl);
  } catch {
    // Reported below, without the value: it may hold a password.
  }
  if (url?.protocol !== "postgres:" && url?.protocol !== "postgresql:") {
    throw new Error(
      "Cannot start PgBouncer for the tests: the server URL is not a " +
        "postgres:// URL",
    );
  }
  const user = decodeURIComponent(url.username);
  if (user === "") {
    throw new Error(
      "Cannot start PgBouncer for the tests: the server URL has no user",
    );
  }
  const database = decodeURIComponent(url.pathname.slice(1)) || user;
  return {
    // IPv6 addresses come in brackets, which PgBouncer does not want.
    host: url.hostname.replace(/^\[(.*)\]$/, "$1") || "127.0.0.1",
    port: url.port || "5432",
    user,
    password: decodeURIComponent(url.password),
    database,
  };
}

/** Where distributions install `pgbouncer`, which may not be on PATH. */
const EXTRA_DIRS = [
  "/usr/sbin",
  "/usr/local/sbin",
  "/usr/local/bin",
  "/opt/homebrew/bin",
];

/** `pgbouncer` on PATH, else where distributions install it. */
async function findPgBouncer(): Promise<string | undefined> {
  const path = (Deno.env.get("PATH") ?? "").split(":").filter(Boolean);
  const candidates = [...path, ...EXTRA_DIRS];
  for (const dir of candidates) {
    const program = `${dir}/pgbouncer`;
    try {
      const info = await Deno.stat(program);
      if (info.isFile && ((info.mode ?? 0o111) & 0o111) !== 0) return program;
    } catch {
      // Not there.
    }
  }
  return undefined;
}

/** The `postgres` user, else `nobody`, from `/etc/passwd`. */
async function unprivilegedUser(): Promise<BouncerUser | undefined> {
  let passwd = "";
  try {
    passwd = await Deno.readTextFile("/etc/passwd");
  } catch {
    return undefined;
  }
  const users = new Map<string, BouncerUser>();
  for (const line of passwd.split("\n")) {
    const [name, , uid, gid] = line.split(":");
    if (name && uid && gid) {
      users.set(name, { uid: Number(uid), gid: Number(gid) });
    }
  }
  return users.get("postgres") ?? users.get("nobody");
}

async function writeConfiguration(
  directory: string,
  server: ServerAddress,
  port: number,
  options: PgBouncerOptions,
  user: BouncerUser | undefined,
): Promise<void> {
  const settings: Record<string, string> = {
    listen_addr: "127.0.0.1",
    listen_port: String(port),
    // No unix socket: nothing outside the directory, and no clash between
    // two PgBouncers in one directory such as /tmp.
    unix_socket_dir: "",
    auth_type: "trust",
    auth_file: `${directory}/userlist.txt`,
    pool_mode: options.mode,
    logfile: `${directory}/pgbouncer.log`,
    pidfile: `${directory}/pgbouncer.pid`,
  };
  if (options.poolSize !== undefined) {
    settings.default_pool_size = String(options.poolSize);
  }
  Object.assign(settings, options.settings);
  for (const [name, value] of Object.entries(settings)) {
    if (!/^[a-z_]+$/.test(name) || /[\r\n]/.test(value)) {
      throw new Error(
        `Cannot start PgBouncer for the tests: bad setting ${
          JSON.stringify(name)
        }`,
      );
    }
  }
  // Every database of the server, by the name the client asks for.
  const target = `host=${connectionValue(server.host)} port=${server.port}`;
  const ini = [
    "[databases]",
    `* = ${target}`,
    "",
    "[pgbouncer]",
    ...Object.entries(settings).map(([name, value]) => `${name} = ${value}`),
    "",
  ].join("\n");
  // trust still wants the user in the auth file; the password is the one
  // PgBouncer logs in to the server with.
  const userlist = `${quoted(server.user)} ${quoted(server.password)}\n`;
  for (
    const [file, text] of [["pgbouncer.ini", ini], ["userlist.txt", userlist]]
  ) {
    const path = `${directory}/${file}`;
    await Deno.writeTextFile(path, text, { mode: 0o600 });
    if (user) await Deno.chown(path, user.uid, user.gid);
  }
}

/** A value in a `[databases]` connection string. */
function connectionValue(value: string): string {
  return /^[^\s'\\]+$/.test(value)
    ? value
    : `'${value.replace(/['\\]/g, "\\$&")}'`;
}

/** A name or password in `userlist.txt`: double quotes, doubled inside. */
function quoted(value: string): string {
  return `"${value.replaceAll('"', '""')}"`;
}

/** A started PgBouncer, with what drains its standard error. */
interface Launched {
  child: Deno.ChildProcess;
  stderr: Promise<string>;
}

/**
 * Starts PgBouncer in the foreground, so that the child is PgBouncer itself,
 * and waits until it answers an SSLRequest on its port.
 *
 * @returns The child, or why it did not start (its log and standard error).
 */
async function launch(
  program: string,
  directory: string,
  port: number,
  user: BouncerUser | undefined,
): Promise<Launched | { failure: string }> {
  const child = new Deno.Command(program, {
    args: [`${directory}/pgbouncer.ini`],
    cwd: directory,
    env: { LC_MESSAGES: "C" },
    clearEnv: true,
    uid: user?.uid,
    gid: user?.gid,
    stdin: "null",
    stdout: "null",
    // Piped and drained, never inherited: a child holding the test's stdout
    // would keep `deno test | tee log` open.
    stderr: "piped",
  }).spawn();
  const stderr = drain(child.stderr);
  let exited = false;
  const status = child.status.then((status) => {
    exited = true;
    return status;
  });
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline && !exited) {
    if (await answers(port)) return { child, stderr };
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  if (!exited) {
    child.kill("SIGKILL");
  }
  const { code, signal } = await status;
  const log = await readText(`${directory}/pgbouncer.log`);
  // Standard error has what the log has, and what came before the log file
  // was open: a configuration PgBouncer cannot read.
  const failure = (await stderr).trim() || log.trim() ||
    `pgbouncer exited (code ${code}, signal ${signal}) and logged nothing`;
  // A next attempt starts afresh: its own log, and no stale pid file.
  for (const file of ["pgbouncer.log", "pgbouncer.pid"]) {
    await Deno.remove(`${directory}/${file}`).catch(() => undefined);
  }
  return { failure: exited ? failure : `no answer after 30 s:\n${failure}` };
}

/**
 * Whether PgBouncer answers an SSLRequest on `port` ('N' or 'S') within a
 * second: a program that took the port and stays silent is not it.
 */
async function answers(port: number): Promise<boolean> {
  let connection: Deno.Conn | undefined;
  const timer = setTimeout(() => {
    try {
      connection?.close();
    } catch {
      // Already closed.
    }
  }, 1000);
  try {
    connection = await Deno.connect({ hostname: "127.0.0.1", port });
    // Length 8, code 80877103: PgBouncer answers with one byte and waits.
    await connection.write(
      new Uint8Array([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]),
    );
    const reply = new Uint8Array(1);
    const count = await connection.read(reply);
    return count === 1 && (reply[0] === 0x4e || reply[0] === 0x53);
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
    try {
      connection?.close();
    } catch {
      // Already closed, by the peer or the timer.
    }
  }
}

function running(
  launched: Launched,
  directory: string,
  port: number,
  server: ServerAddress,
  options: PgBouncerOptions,
  watchdog: Deno.ChildProcess,
): PgBouncer {
  const { child, stderr } = launched;
  const url = new URL(`postgres://127.0.0.1:${port}/`);
  url.username = encodeURIComponent(server.user);
  url.password = encodeURIComponent(server.password);
  url.pathname = `/${encodeURIComponent(server.database)}`;
  let stopping: Promise<void> | undefined;
  const stop = () =>
    stopping ??= (async () => {
      try {
        child.kill("SIGTERM");
      } catch {
        // Already gone.
      }
      const killer = setTimeout(() => {
        try {
          child.kill("SIGKILL");
        } catch {
          // Gone meanwhile.
        }
      }, 5_000);
      try {
        await child.status;
      } finally {
        clearTimeout(killer);
      }
      await stderr;
      await Deno.remove(directory, { recursive: true }).catch(() => undefined);
      // Referenced again, or awaiting it would not keep the event loop alive.
      watchdog.ref();
      try {
        watchdog.kill("SIGKILL");
      } catch {
        // Already gone.
      }
      await watchdog.status;
    })();
  return {
    url: url.href,
    port,
    mode: options.mode,
    directory,
    log: () => readText(`${directory}/pgbouncer.log`),
    stop,
    [Symbol.asyncDispose]: stop,
  };
}

/**
 * Once this `deno` process ($1) is gone, stops the PgBouncer whose pid file
 * is in $2 and deletes $2 (the wait is tests/_database.ts's, which then
 * shifts $1 off). A PgBouncer that was started but has not yet written its
 * pid file is given a moment to do so.
 */
const STOP_PGBOUNCER = `${AFTER_DENO_EXITS}dir=$1
[ -d "$dir" ] || exit 0
pidfile="$dir/pgbouncer.pid"
if [ -f "$dir/pgbouncer.ini" ]; then
  for ((i = 0; i < 20; i++)); do [ -s "$pidfile" ] && break; sleep 0.1; done
fi
if [ -s "$pidfile" ]; then
  read -r pid < "$pidfile"
  if [ -n "$pid" ] && grep -qs pgbouncer "/proc/$pid/comm" 2>/dev/null ||
    { [ ! -d /proc ] && alive "$pid"; }; then
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 100; i++)); do alive "$pid" || break; sleep 0.05; done
    alive "$pid" && kill -KILL "$pid"
  fi
fi
rm -rf "$dir"
`;

/**
 * Stops PgBouncer and deletes `directory` once this process is gone, however
 * it ends. Detached (its own session, so Ctrl-C reaches it only through our
 * exit), unreferenced (the run does not wait for it) and with no stdio.
 */
function startWatchdog(directory: string): Deno.ChildProcess {
  const watchdog = new Deno.Command("bash", {
    args: [
      "-c",
      STOP_PGBOUNCER,
      "eventstore-test-pgbouncer-watchdog",
      String(Deno.pid),
      directory,
    ],
    stdin: "null",
    stdout: "null",
    stderr: "null",
    detached: true,
  }).spawn();
  watchdog.unref();
  return watchdog;
}

/** A port nothing listens on now; PgBouncer may still lose it in a race. */
function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr;
  listener.close();
  return port;
}

/** Reads a stream to its end, keeping the last 64 KiB. */
async function drain(stream: ReadableStream<Uint8Array>): Promise<string> {
  const decoder = new TextDecoder();
  let text = "";
  for await (const chunk of stream) {
    text = (text + decoder.decode(chunk, { stream: true })).slice(-65536);
  }
  return text + decoder.decode();
}

async function readText(path: string): Promise<string> {
  try {
    return await Deno.readTextFile(path);
  } catch {
    return "";
  }
}

function tail(text: string, lines = 20): string {
  return text.trimEnd().split("\n").slice(-lines).join("\n");
}
