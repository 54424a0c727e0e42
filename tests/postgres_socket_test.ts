/**
 * The first write of src/postgres/socket.ts's socket: it drops what a dead
 * connection left buffered in front of the StartupMessage, and the padding
 * that makes postgres.js flush it, and leaves every other write alone.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import {
  resilientSocketOptions,
  sanitizeFirstWrite,
} from "../src/postgres/socket.ts";

/** A StartupMessage (protocol 3.0) of `name\0value\0` pairs. */
function startup(parameters: string[]): Buffer {
  const body = Buffer.from(
    parameters.map((text) => `${text}\0`).join("") + "\0",
  );
  const header = Buffer.alloc(8);
  header.writeInt32BE(8 + body.length, 0);
  header.writeInt32BE(196608, 4);
  return Buffer.concat([header, body]);
}

/** A typed frontend message: a type byte, then its length and payload. */
function typed(type: string, payload: Buffer): Buffer {
  const header = Buffer.alloc(5);
  header.write(type, 0);
  header.writeInt32BE(4 + payload.length, 1);
  return Buffer.concat([header, payload]);
}

const base = ["user", "app", "database", "db", "application_name", "x"];
const padded = startup([...base, "deno_eventstore.pad", "x".repeat(1024)]);
const clean = startup(base);
const stale = Buffer.concat([
  typed("B", Buffer.alloc(7)),
  typed("E", Buffer.alloc(5)),
  typed("S", Buffer.alloc(0)),
]);

Deno.test("postgres socket: the padding of the StartupMessage is removed", () => {
  assert.ok(sanitizeFirstWrite(padded).equals(clean));
});

Deno.test("postgres socket: a dead connection's buffered bytes are dropped", () => {
  assert.ok(sanitizeFirstWrite(Buffer.concat([stale, padded])).equals(clean));
  assert.ok(
    sanitizeFirstWrite(Buffer.concat([stale, clean, stale, padded])).equals(
      clean,
    ),
  );
});

Deno.test("postgres socket: a cancel request and other writes pass unchanged", () => {
  const cancel = Buffer.alloc(16);
  cancel.writeInt32BE(16, 0);
  cancel.writeInt32BE(80877102, 4);
  assert.ok(sanitizeFirstWrite(cancel).equals(cancel));
  assert.ok(sanitizeFirstWrite(stale).equals(stale));
});

Deno.test("postgres socket: TLS and several hosts keep postgres.js's own socket", () => {
  const connection = { application_name: "x" };
  assert.equal(
    resilientSocketOptions("postgres://a@h/db?sslmode=require", connection)
      .socket,
    undefined,
  );
  assert.equal(
    resilientSocketOptions("postgres://a@h1,h2/db", connection).socket,
    undefined,
  );
  const plain = resilientSocketOptions("postgres://a@h/db", connection);
  assert.equal(typeof plain.socket, "function");
  assert.equal(plain.connection.application_name, "x");
});
