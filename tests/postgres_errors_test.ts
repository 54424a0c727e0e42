/**
 * How driver errors and connection strings are turned into what users see:
 * typed errors, and text that never holds a password. Pure functions, so
 * these run without a server, including the cases a local server cannot
 * produce (a refused login, a full server).
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import {
  DatabaseError,
  MigrationError,
  StoreUnavailableError,
} from "../mod.ts";
import {
  isConnectionError,
  passwordOf,
  redactUrl,
  translateError,
} from "../src/postgres/driver.ts";

Deno.test("postgres errors: passwords are redacted from connection strings, whatever they contain", () => {
  const cases: [string, string, string][] = [
    [
      "postgres://app:s3cret@db:5432/app",
      "s3cret",
      "postgres://app:***@db:5432/app",
    ],
    [
      "postgres://app:se#cr/et?x@db/app?sslmode=require",
      "se#cr/et?x",
      "postgres://app:***@db/app?sslmode=require",
    ],
    ["postgresql://app:p%40ss@db/app", "p@ss", "postgresql://app:***@db/app"],
    ["postgres://app:a@b@db/app", "a@b", "postgres://app:***@db/app"],
    [
      "postgres://db/app?user=app&password=hunter22",
      "hunter22",
      "postgres://db/app?user=app&password=***",
    ],
  ];
  for (const [url, password, redacted] of cases) {
    assert.equal(passwordOf(url), password, url);
    assert.equal(redactUrl(url), redacted, url);
  }
  assert.equal(passwordOf("postgres://app@db/app"), undefined);
  assert.equal(redactUrl("postgres://app@db/app"), "postgres://app@db/app");
});

function serverError(code: string, message: string): Error {
  return new postgres.PostgresError({
    severity: "FATAL",
    code,
    message,
  } as unknown as string);
}

Deno.test("postgres errors: each kind of failure gets its typed error, with the password scrubbed", () => {
  const context = {
    operation: "append events",
    server: "postgres://app:***@db:5432/app",
    schema: "public",
    password: "hunter22",
  };
  const cases: [unknown, new (...args: never[]) => Error, RegExp][] = [
    [
      serverError("28P01", 'password authentication failed for user "app"'),
      StoreUnavailableError,
      /authentication failed \(28P01/,
    ],
    [
      serverError("53300", "sorry, too many clients already"),
      StoreUnavailableError,
      /no free connection slots/,
    ],
    [
      serverError("57P01", "terminating connection"),
      StoreUnavailableError,
      /shutting down/,
    ],
    [
      serverError("08006", "connection failure"),
      StoreUnavailableError,
      /the connection failed/,
    ],
    [
      serverError("57014", "canceling statement due to statement timeout"),
      StoreUnavailableError,
      /timed out/,
    ],
    [
      // lock_timeout, an operator's setting: a lock held elsewhere for
      // longer, "cannot serve now" (an append retries its races first).
      serverError("55P03", "canceling statement due to lock timeout"),
      StoreUnavailableError,
      /lock_timeout \(55P03: canceling statement due to lock timeout\)/,
    ],
    [
      serverError("42P01", 'relation "public.events" does not exist'),
      MigrationError,
      /run the migrations first/,
    ],
    [
      serverError("42501", "permission denied for table events"),
      DatabaseError,
      /42501: permission denied/,
    ],
    [
      Object.assign(new Error("connect ECONNREFUSED 10.0.0.1:5432"), {
        code: "ECONNREFUSED",
      }),
      StoreUnavailableError,
      /unreachable/,
    ],
    [
      Object.assign(new Error("write CONNECT_TIMEOUT db:5432"), {
        code: "CONNECT_TIMEOUT",
      }),
      StoreUnavailableError,
      /unreachable/,
    ],
    [
      new Error("something echoed hunter22 back"),
      DatabaseError,
      /echoed \*\*\* back/,
    ],
  ];
  for (const [error, type, message] of cases) {
    const typed = translateError(error, context);
    assert.ok(typed instanceof type, `${typed.name}: ${typed.message}`);
    assert.match(
      typed.message,
      /^Cannot append events \(postgres:\/\/app:\*\*\*@db:5432\/app\): /,
    );
    assert.match(typed.message, message);
    assert.ok(!typed.message.includes("hunter22"), typed.message);
    assert.equal(typed.cause, error);
  }
});

Deno.test("postgres errors: connection errors are told apart from refusals", () => {
  assert.ok(isConnectionError(serverError("57P01", "terminating")));
  assert.ok(isConnectionError(serverError("08006", "failure")));
  assert.ok(
    isConnectionError(
      Object.assign(new Error("x"), { code: "CONNECTION_CLOSED" }),
    ),
  );
  assert.ok(!isConnectionError(serverError("23505", "duplicate key")));
  assert.ok(!isConnectionError(serverError("57014", "statement timeout")));
  assert.ok(!isConnectionError(new Error("plain")));
});
