/**
 * A hot standby of a cluster the tests control: `pg_basebackup -R` from a
 * {@linkcode ControlledCluster} (streaming replication, PostgreSQL's own
 * defaults: `wal_level=replica`, and initdb's `pg_hba.conf` trusts
 * replication from 127.0.0.1), started on a free loopback port of its own.
 * Like the clusters of `tests/_database.ts` it runs as the `postgres` user
 * when the tests run as root, every step is bounded in time, and a
 * watchdog stops and deletes it once `deno` is gone, should the test never
 * get to {@linkcode Standby.remove}.
 *
 * @module
 */

import {
  AFTER_DENO_EXITS,
  type ControlledCluster,
  findServerBinaries,
  freePort,
  machineEnvironment,
  postgresUser,
  run as runServerProgram,
  serverSettings,
  type ServerUser,
} from "./_database.ts";

/** A running hot standby: read-only, replaying what its primary writes. */
export interface Standby {
  /** A `postgres://` URL of the standby's `postgres` database. */
  readonly url: string;
  /** The loopback port it listens on. */
  readonly port: number;
  /**
   * Stops the standby at once (`pg_ctl stop -m immediate`, else a signal to
   * the postmaster's pid) and deletes its directory. Calling it again does
   * nothing.
   */
  remove(): Promise<void>;
  /** {@linkcode Standby.remove}, for `await using`. */
  [Symbol.asyncDispose](): Promise<void>;
}

/** How long pg_basebackup and the standby's start may take. */
const STEP_TIMEOUT_MS = 60_000;

/**
 * Makes a hot standby of `primary` and starts it.
 *
 * @param primary A running cluster of the caller's, from `startControlledCluster()`.
 * @returns The standby, accepting (read-only) connections.
 * @throws {Error} When there are no server binaries, or the base backup or
 *   the start fails (with the tool's output or the server's log).
 */
export async function startStandby(
  primary: ControlledCluster,
): Promise<Standby> {
  const binDir = await findServerBinaries(machineEnvironment());
  if (binDir === undefined) {
    throw new Error(
      "Cannot start a hot standby: no PostgreSQL server binaries found through pg_config --bindir or PATH (apt-get install postgresql)",
    );
  }
  const user = Deno.uid() === 0 ? await postgresUser() : undefined;
  if (Deno.uid() === 0 && user === undefined) {
    throw new Error(
      "Cannot start a hot standby: the tests run as root and there is no postgres user to run it as",
    );
  }
  // A root-owned TMPDIR may not be traversable by the postgres user; /tmp is.
  const directory = await Deno.makeTempDir({
    dir: user ? "/tmp" : undefined,
    prefix: "eventstore-test-standby-",
  });
  const dataDir = `${directory}/data`;
  let removed = false;
  const remove = async () => {
    if (removed) return;
    removed = true;
    await stopStandby(binDir, directory, user);
    await Deno.remove(directory, { recursive: true }).catch(() => undefined);
  };
  try {
    if (user) {
      await Deno.chmod(directory, 0o700);
      await Deno.chown(directory, user.uid, user.gid);
    }
    startWatchdog(directory);
    const backup = await run(`${binDir}/pg_basebackup`, [
      "-h",
      "127.0.0.1",
      "-p",
      String(primary.port),
      "-U",
      "postgres",
      "-D",
      dataDir,
      // standby.signal and primary_conninfo: it starts as a standby.
      "-R",
      "-X",
      "stream",
      // Not the spread checkpoint, which would wait minutes.
      "--checkpoint=fast",
      "--no-sync",
    ], { cwd: directory, user });
    if (!backup.success) {
      throw new Error(
        `Cannot start a hot standby: pg_basebackup failed:\n${
          tail(backup.output)
        }`,
      );
    }
    // The primary's settings came on its command line, not in the copied
    // postgresql.conf; a standby needs max_connections at least the primary's.
    const settings = serverSettings({}).map((setting) => `-c ${setting}`);
    for (let attempt = 1;; attempt++) {
      const port = freePort();
      const started = await run(`${binDir}/pg_ctl`, [
        "start",
        "-w",
        "-t",
        String(STEP_TIMEOUT_MS / 1000),
        "-D",
        dataDir,
        "-l",
        `${directory}/postgres.log`,
        "-o",
        [
          "-h 127.0.0.1",
          `-p ${port}`,
          `-k ${shellQuote(directory)}`,
          ...settings,
        ].join(" "),
      ], { cwd: directory, user });
      if (started.success) {
        return {
          url: `postgres://postgres@127.0.0.1:${port}/postgres`,
          port,
          remove,
          [Symbol.asyncDispose]: remove,
        };
      }
      const log = await Deno.readTextFile(`${directory}/postgres.log`).catch(
        () => "",
      );
      // Another program took the port between our probe and the bind.
      if (/already in use/i.test(log) && attempt < 5) continue;
      throw new Error(
        `Cannot start a hot standby on port ${port}:\n${
          tail(started.output + log)
        }`,
      );
    }
  } catch (error) {
    await remove();
    throw error;
  }
}

/** pg_ctl's immediate stop; a SIGQUIT to the postmaster if pg_ctl fails. */
async function stopStandby(
  binDir: string,
  directory: string,
  user: ServerUser | undefined,
): Promise<void> {
  const pidFile = `${directory}/data/postmaster.pid`;
  const pid = Number(
    (await Deno.readTextFile(pidFile).catch(() => "")).split("\n")[0],
  );
  if (!Number.isInteger(pid) || pid <= 0) return;
  const stopped = await run(`${binDir}/pg_ctl`, [
    "stop",
    "-m",
    "immediate",
    "-D",
    `${directory}/data`,
  ], { cwd: directory, user }).catch(() => ({ success: false, output: "" }));
  if (!stopped.success) {
    try {
      Deno.kill(pid, "SIGQUIT"); // what pg_ctl stop -m immediate sends
    } catch {
      // Already gone.
    }
  }
}

/**
 * Stops the standby in $2 and deletes it once this `deno` process ($1) is
 * gone, however the run ends (the wait is tests/_database.ts's).
 */
const WATCHDOG = `${AFTER_DENO_EXITS}pidfile="$1/data/postmaster.pid"
if [ -f "$pidfile" ]; then
  read -r postmaster < "$pidfile"
  kill -QUIT "$postmaster" 2>/dev/null
  for ((i = 0; i < 100; i++)); do alive "$postmaster" || break; sleep 0.05; done
  alive "$postmaster" && kill -KILL "$postmaster"
fi
rm -rf "$1"
`;

function startWatchdog(directory: string): void {
  // Detached, unreferenced and without stdio, as in tests/_database.ts: a
  // child holding the test's stdout would keep `deno test | tee` open.
  new Deno.Command("bash", {
    args: [
      "-c",
      WATCHDOG,
      "eventstore-standby-watchdog",
      String(Deno.pid),
      directory,
    ],
    stdin: "null",
    stdout: "null",
    stderr: "null",
    detached: true,
  }).spawn().unref();
}

/** A server program, bounded by the step timeout. */
function run(
  program: string,
  args: string[],
  options: { cwd: string; user: ServerUser | undefined },
): Promise<{ success: boolean; output: string }> {
  return runServerProgram(program, args, {
    ...options,
    timeoutMs: STEP_TIMEOUT_MS + 10_000,
  });
}

/** Quotes for the shell pg_ctl runs `postgres` with. */
function shellQuote(value: string): string {
  return `'${value.replaceAll("'", `'\\''`)}'`;
}

function tail(text: string, lines = 20): string {
  return text.trimEnd().split("\n").slice(-lines).join("\n");
}
