/**
 * Applies the store's pending migrations to `DATABASE_URL`, then exits:
 * `deno task migrate`, or from the published package
 * `deno run --allow-net --allow-env --allow-read jsr:@deno-eventstore/core/migrate`.
 *
 * The schema is `public` unless `--schema NAME` (or `EVENTSTORE_SCHEMA`)
 * says otherwise. Exit code 0 when the schema is up to date, 1 on failure,
 * 2 on bad usage. The URL is printed with its password redacted.
 *
 * @example Migrate a local database
 * ```sh
 * DATABASE_URL=postgres://app:secret@localhost:5432/app deno task migrate
 * ```
 *
 * @module
 */

import { EventStoreError, PostgresEventStore } from "./mod.ts";

/** What {@linkcode main} needs from the process, so a test can fake it. */
export interface MigrateCommand {
  /** The command-line arguments. */
  args: readonly string[];
  /** Reads an environment variable. */
  env(name: string): string | undefined;
  /** Prints a line. */
  print(line: string): void;
}

const USAGE =
  "Usage: DATABASE_URL=postgres://… deno task migrate [--schema NAME]";

/**
 * Runs the command.
 *
 * @param command Arguments, environment and output.
 * @returns The exit code.
 */
export async function main(command: MigrateCommand): Promise<number> {
  const { args, env, print } = command;
  let schema = env("EVENTSTORE_SCHEMA") ?? "public";
  for (let index = 0; index < args.length; index++) {
    if (args[index] === "--schema" && index + 1 < args.length) {
      schema = args[++index];
    } else if (args[index].startsWith("--schema=")) {
      schema = args[index].slice("--schema=".length);
    } else {
      print(`Unknown argument ${JSON.stringify(args[index])}\n${USAGE}`);
      return 2;
    }
  }
  const url = env("DATABASE_URL");
  if (url === undefined || url.trim() === "") {
    print(`DATABASE_URL is not set.\n${USAGE}`);
    return 2;
  }
  try {
    await using store = await PostgresEventStore.connect(url, {
      schema,
      max: 1,
    });
    print(`Migrating ${store}`);
    const { applied, alreadyApplied } = await store.migrate();
    for (const name of applied) print(`  applied ${name}`);
    print(
      applied.length === 0
        ? `Up to date: ${alreadyApplied.length} migration(s) already applied.`
        : `Applied ${applied.length} migration(s); ${alreadyApplied.length} were already applied.`,
    );
    return 0;
  } catch (error) {
    // Typed errors never hold the password; anything else is not printed raw.
    print(
      error instanceof EventStoreError
        ? error.message
        : `Cannot migrate: ${(error as Error)?.name ?? "unknown error"}`,
    );
    return 1;
  }
}

if (import.meta.main) {
  Deno.exit(
    await main({
      args: Deno.args,
      env: (name) => Deno.env.get(name),
      print: (line) => console.log(line),
    }),
  );
}
