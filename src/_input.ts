/**
 * Checks and prepares what callers pass in, shared by every store so that
 * each rejects the same input with the same error, before writing anything.
 *
 * The limits keep both stores identical: PostgreSQL cannot hold NUL in
 * `text` or `jsonb`, and a btree index entry (stream ids and event types are
 * indexed) must stay under about 2.7 kB.
 *
 * @module
 */

import type {
  ExpectedVersion,
  LoadOptions,
  NewEvent,
  ReadAllOptions,
} from "./event_store.ts";
import {
  EncodingError,
  EventStoreError,
  InvalidArgumentError,
} from "./errors.ts";
import type { Codec } from "./codec.ts";

/** Longest stream id or event type, in UTF-16 code units. */
export const MAX_NAME_LENGTH = 500;
/** Deepest nesting of metadata objects and arrays. */
export const MAX_METADATA_DEPTH = 64;
/**
 * Most events in one append. On PostgreSQL a global position is the writing
 * transaction's id shifted left by 20 bits plus the event's index, so one
 * transaction has room for 2^20 - 1 events; the in-memory store keeps the
 * same limit so that both refuse the same appends.
 */
export const MAX_EVENTS_PER_APPEND = 2 ** 20 - 1;
/**
 * Most bytes in one append: every event's encoded data plus its metadata as
 * UTF-8 JSON. The whole batch travels to PostgreSQL in one message, with its
 * bytes as hex text: twice their size, in one JavaScript string, which V8
 * caps at 2^29 - 24 characters (and PostgreSQL caps a message at 1 GiB).
 * 128 MiB keeps an append inside both, and is refused before anything is
 * sent rather than failing half-way through serialization.
 */
export const MAX_APPEND_BYTES = 128 * 1024 * 1024;

const UUID_PATTERN =
  /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** An event ready to store: checked, with its id and its data encoded. */
export interface PreparedEvent {
  id: string;
  type: string;
  data: Uint8Array;
  /** The checked metadata as JSON text: what both stores keep. */
  metadataJson: string;
  /** Whether the id is the caller's rather than generated. */
  idGiven: boolean;
}

/** A checked batch: its events, and whether the caller named any ids. */
export interface PreparedBatch {
  events: PreparedEvent[];
  /**
   * Whether any event came with the caller's id. Only then can the batch
   * repeat an append already stored (a generated id is new by definition),
   * so only then do stores look for its ids in the stream.
   */
  hasCallerIds: boolean;
}

/** Load options with their defaults filled in. */
export interface LoadRange {
  fromVersion: number;
  /** `Infinity` when the caller set no limit. */
  maxCount: number;
}

/**
 * @throws {InvalidArgumentError} `value` is not a usable name.
 */
export function checkName(value: unknown, field: string): string {
  if (typeof value !== "string") {
    throw new InvalidArgumentError(
      field,
      `must be a string, got ${describe(value)}`,
    );
  }
  if (value.length === 0) {
    throw new InvalidArgumentError(field, "must not be empty");
  }
  if (value.length > MAX_NAME_LENGTH) {
    throw new InvalidArgumentError(
      field,
      `must be at most ${MAX_NAME_LENGTH} characters, got ${value.length}`,
    );
  }
  checkText(value, field);
  return value;
}

function checkText(value: string, field: string): void {
  if (value.includes("\0")) {
    throw new InvalidArgumentError(field, "must not contain NUL characters");
  }
  if (!value.isWellFormed()) {
    throw new InvalidArgumentError(
      field,
      "must not contain lone UTF-16 surrogates",
    );
  }
}

/**
 * Checks a stream id.
 *
 * @throws {InvalidArgumentError} It is not a non-empty string within limits.
 */
export function checkStreamId(streamId: unknown): string {
  return checkName(streamId, "streamId");
}

/**
 * Checks a version: a non-negative safe integer, at least `minimum`.
 *
 * @throws {InvalidArgumentError} It is not.
 */
export function checkVersion(
  value: unknown,
  field: string,
  minimum = 0,
): number {
  if (
    typeof value !== "number" || !Number.isSafeInteger(value) ||
    value < minimum
  ) {
    throw new InvalidArgumentError(
      field,
      `must be a safe integer of at least ${minimum}, got ${describe(value)}`,
    );
  }
  return value;
}

/**
 * Checks that a snapshot is not ahead of its stream: that is always a
 * caller's bug.
 *
 * @throws {InvalidArgumentError} `version` is above `streamVersion`.
 */
export function checkSnapshotVersion(
  streamId: string,
  version: number,
  streamVersion: number,
): void {
  if (version > streamVersion) {
    throw new InvalidArgumentError(
      "version",
      `${version} is ahead of stream ${
        JSON.stringify(streamId)
      }, which is at version ${streamVersion}`,
    );
  }
}

/**
 * Checks `options.expectedVersion`, defaulting to `"any"`.
 *
 * @throws {InvalidArgumentError} The options or the version are malformed.
 */
export function checkExpectedVersion(options: unknown): ExpectedVersion {
  const expected = readOption(options, "expectedVersion");
  if (expected === undefined) return "any";
  if (
    expected === "any" || expected === "no_stream" ||
    expected === "stream_exists"
  ) {
    return expected;
  }
  if (typeof expected === "string") {
    throw new InvalidArgumentError(
      "options.expectedVersion",
      `must be "any", "no_stream", "stream_exists" or a version, got ${
        describe(expected)
      }`,
    );
  }
  return checkVersion(expected, "options.expectedVersion");
}

/**
 * Checks load options and fills in their defaults.
 *
 * @throws {InvalidArgumentError} The options are malformed.
 */
export function checkLoadOptions(options: unknown): LoadRange {
  const fromVersion = readOption<LoadOptions>(options, "fromVersion");
  const maxCount = readOption<LoadOptions>(options, "maxCount");
  return {
    // 0 reads as "from the start", like 1: no event has version 0.
    fromVersion: fromVersion === undefined
      ? 1
      : Math.max(1, checkVersion(fromVersion, "options.fromVersion")),
    maxCount: maxCount === undefined
      ? Infinity
      : checkVersion(maxCount, "options.maxCount", 1),
  };
}

/** Read-all options with their defaults filled in. */
export interface ReadAllRange {
  fromPosition: bigint;
  /** `Infinity` when the caller set no limit. */
  maxCount: number;
  types: string[] | undefined;
  category: string | undefined;
}

/**
 * Checks read-all options and fills in their defaults.
 *
 * @throws {InvalidArgumentError} The options are malformed.
 */
export function checkReadAllOptions(options: unknown): ReadAllRange {
  const fromPosition = readOption<ReadAllOptions>(options, "fromPosition");
  const maxCount = readOption<ReadAllOptions>(options, "maxCount");
  const types = readOption<ReadAllOptions>(options, "types");
  const category = readOption<ReadAllOptions>(options, "category");
  if (
    fromPosition !== undefined &&
    (typeof fromPosition !== "bigint" || fromPosition < 0n ||
      fromPosition > MAX_POSITION)
  ) {
    throw new InvalidArgumentError(
      "options.fromPosition",
      `must be a bigint from 0n to 2^63 - 1, got ${describe(fromPosition)}`,
    );
  }
  if (types !== undefined && !Array.isArray(types)) {
    throw new InvalidArgumentError(
      "options.types",
      `must be an array of event types, got ${describe(types)}`,
    );
  }
  const checkedCategory = category === undefined
    ? undefined
    : checkName(category, "options.category");
  if (checkedCategory?.includes("-")) {
    throw new InvalidArgumentError(
      "options.category",
      "must not contain '-': a category is the part of a stream id before its first '-'",
    );
  }
  return {
    fromPosition: fromPosition ?? 0n,
    maxCount: maxCount === undefined
      ? Infinity
      : checkVersion(maxCount, "options.maxCount", 1),
    types: types?.map((type, index) =>
      checkName(type, `options.types[${index}]`)
    ),
    category: checkedCategory,
  };
}

/** The category of a stream: its id's prefix before the first `-`. */
export function categoryOf(streamId: string): string {
  const dash = streamId.indexOf("-");
  return dash === -1 ? streamId : streamId.slice(0, dash);
}

/** The largest `bigint` PostgreSQL stores. */
const MAX_POSITION = 2n ** 63n - 1n;

function readOption<T = Record<string, unknown>>(
  options: unknown,
  key: keyof T & string,
): unknown {
  if (options === undefined) return undefined;
  if (
    typeof options !== "object" || options === null || Array.isArray(options)
  ) {
    throw new InvalidArgumentError(
      "options",
      `must be an object, got ${describe(options)}`,
    );
  }
  try {
    return (options as Record<string, unknown>)[key];
  } catch (error) {
    throw asTypedError(error, `options.${key}`);
  }
}

/**
 * Checks a batch of new events and encodes their data, so that a store only
 * has to write. Ids are lower-cased (as PostgreSQL's `uuid` prints them) or
 * generated.
 *
 * @throws {InvalidArgumentError} The batch or one of its events is malformed,
 *   or the batch is over {@linkcode MAX_EVENTS_PER_APPEND} events or
 *   {@linkcode MAX_APPEND_BYTES} bytes.
 * @throws {EncodingError} The codec cannot encode an event's data.
 */
export function prepareEvents(
  events: unknown,
  codec: Codec,
  generateId: () => string,
): PreparedBatch {
  if (!Array.isArray(events)) {
    throw new InvalidArgumentError(
      "events",
      `must be an array, got ${describe(events)}`,
    );
  }
  if (events.length === 0) {
    throw new InvalidArgumentError("events", "must hold at least one event");
  }
  if (events.length > MAX_EVENTS_PER_APPEND) {
    throw new InvalidArgumentError(
      "events",
      `must hold at most ${MAX_EVENTS_PER_APPEND} events (2^20 - 1, the room one transaction has for global positions), got ${events.length}: split the append`,
    );
  }
  const prepared = new Array<PreparedEvent>(events.length);
  // Ids of the default generator (random UUIDs) cannot repeat: only the
  // caller's and a configured generator's are looked for here.
  const seenIds = new Set<string>();
  const checkAll = generateId !== defaultGenerateId;
  let hasCallerIds = false;
  let bytes = 0;
  for (let index = 0; index < events.length; index++) {
    // Field names (`events[3].type`) are written only for an error: built
    // for every event, they took a fifth of an in-memory append.
    let event: PreparedEvent;
    try {
      event = prepareEvent(events[index], index, codec, generateId);
    } catch (error) {
      throw asTypedError(error, `events[${index}]`);
    }
    prepared[index] = event;
    hasCallerIds ||= event.idGiven;
    if (checkAll || event.idGiven) {
      if (seenIds.has(event.id)) {
        throw new InvalidArgumentError(
          `events[${index}].id`,
          `repeats the id of an earlier event in the batch: ${event.id}`,
        );
      }
      seenIds.add(event.id);
    }
    bytes = addAppendBytes(bytes, event, index);
  }
  return { events: prepared, hasCallerIds };
}

/**
 * Adds an event's size to its batch's and checks the total against
 * {@linkcode MAX_APPEND_BYTES}. UTF-8 JSON takes at most 3 bytes per UTF-16
 * unit: the exact length is computed only when that bound is not enough.
 */
function addAppendBytes(
  total: number,
  event: PreparedEvent,
  index: number,
): number {
  let sum = total + event.data.byteLength + 3 * event.metadataJson.length;
  if (sum > MAX_APPEND_BYTES) {
    sum = total + event.data.byteLength +
      new TextEncoder().encode(event.metadataJson).byteLength;
  }
  if (sum > MAX_APPEND_BYTES) {
    throw new InvalidArgumentError(
      `events[${index}]`,
      `takes the append to ${sum} bytes of encoded data and metadata, over the limit of ${MAX_APPEND_BYTES} (128 MiB): split the append, or keep large payloads outside the store`,
    );
  }
  return sum;
}

function prepareEvent(
  event: unknown,
  index: number,
  codec: Codec,
  generateId: () => string,
): PreparedEvent {
  if (typeof event !== "object" || event === null) {
    throw new InvalidArgumentError(
      `events[${index}]`,
      `must be an event object, got ${describe(event)}`,
    );
  }
  const { type, metadata, id, data } = event as NewEvent;
  return {
    type: isName(type) ? type : checkName(type, `events[${index}].type`),
    metadataJson: metadata === undefined ? "{}" : JSON.stringify(
      copyJsonQuickly(metadata) ??
        checkMetadata(metadata, `events[${index}].metadata`),
    ),
    id: id === undefined
      ? generateId === defaultGenerateId
        ? crypto.randomUUID() // always a lower-case UUID: nothing to check
        : checkGeneratedId(generateId())
      : checkUuid(id, `events[${index}].id`),
    idGiven: id !== undefined,
    data: encodeData(codec, data, index),
  };
}

/** `encodeValue` of an event's data, its field named only on failure. */
function encodeData(codec: Codec, data: unknown, index: number): Uint8Array {
  try {
    return codec.encode(data);
  } catch (cause) {
    throw new EncodingError(`events[${index}].data`, problemOf(cause), {
      cause,
    });
  }
}

/**
 * Whether `value` is a valid name, as {@linkcode checkName} checks it, but
 * without naming a field: when it is not, `checkName` says what is wrong.
 */
function isName(value: unknown): value is string {
  return typeof value === "string" && value.length > 0 &&
    value.length <= MAX_NAME_LENGTH && !value.includes("\0") &&
    value.isWellFormed();
}

/**
 * A getter or proxy of the caller's that throws while the input is read is
 * still bad input: report it as such, keeping the original as `cause`.
 */
function asTypedError(error: unknown, field: string): unknown {
  if (error instanceof EventStoreError) return error;
  const message = error instanceof Error ? error.message : String(error);
  return new InvalidArgumentError(field, `could not be read: ${message}`, {
    cause: error,
  });
}

/**
 * The stores' id generator when `options.generateId` is not given. Its ids
 * are not checked as a configured generator's are: `crypto.randomUUID()`
 * returns lower-case UUIDs (the check took 7% of an in-memory 100-event
 * append, docs/performance.md).
 */
export function defaultGenerateId(): string {
  return crypto.randomUUID();
}

/** A store's id generator is configuration: a bad one is named as such. */
function checkGeneratedId(value: unknown): string {
  if (typeof value !== "string" || !UUID_PATTERN.test(value)) {
    throw new InvalidArgumentError(
      "options.generateId",
      `must return UUIDs, returned ${describe(value)}`,
    );
  }
  return value.toLowerCase();
}

function checkUuid(value: unknown, field: string): string {
  if (typeof value !== "string" || !UUID_PATTERN.test(value)) {
    throw new InvalidArgumentError(
      field,
      `must be a UUID, got ${describe(value)}`,
    );
  }
  return value.toLowerCase();
}

/**
 * Checks that metadata is a plain JSON object that PostgreSQL's `jsonb`
 * stores and gives back unchanged, and returns a checked copy of it.
 *
 * @throws {InvalidArgumentError} It is not, naming the offending path.
 */
export function checkMetadata(
  metadata: unknown,
  field: string,
): Record<string, unknown> {
  if (!isPlainObject(metadata)) {
    throw new InvalidArgumentError(
      field,
      `must be a plain JSON object, got ${describe(metadata)}`,
    );
  }
  return copyJsonValue(metadata, field, new Set(), 1) as Record<
    string,
    unknown
  >;
}

/** What {@linkcode quickCopy} returns for a value it does not take. */
const NOT_TAKEN = Symbol("not taken");

/**
 * The copy {@linkcode checkMetadata} makes, for metadata it takes, or
 * `undefined` for anything it would refuse (and then says why, naming the
 * field). No field names are built, and cycles are not tracked: one shows
 * as nesting past {@linkcode MAX_METADATA_DEPTH}, which `checkMetadata`
 * then reports as the cycle it is. A getter's error is thrown as it is, as
 * `checkMetadata` throws it.
 */
function copyJsonQuickly(
  metadata: unknown,
): Record<string, unknown> | undefined {
  if (!isPlainObject(metadata)) return undefined;
  const copy = quickCopy(metadata, 1);
  return copy === NOT_TAKEN ? undefined : copy as Record<string, unknown>;
}

function quickCopy(value: unknown, depth: number): unknown {
  switch (typeof value) {
    case "string":
      return value.includes("\0") || !value.isWellFormed() ? NOT_TAKEN : value;
    case "boolean":
      return value;
    case "number":
      return Number.isFinite(value) ? value : NOT_TAKEN;
    case "object":
      if (value === null) return value;
      break;
    default:
      return NOT_TAKEN;
  }
  if (depth > MAX_METADATA_DEPTH) return NOT_TAKEN;
  if (Array.isArray(value)) {
    const array = new Array(value.length);
    for (let index = 0; index < value.length; index++) {
      const copied = quickCopy(value[index], depth + 1);
      if (copied === NOT_TAKEN) return NOT_TAKEN;
      array[index] = copied;
    }
    return array;
  }
  if (
    !isPlainObject(value) || Object.getOwnPropertySymbols(value).length > 0
  ) {
    return NOT_TAKEN;
  }
  const object: Record<string, unknown> = {};
  for (const key of Object.keys(value)) {
    if (key.includes("\0") || !key.isWellFormed()) return NOT_TAKEN;
    const copied = quickCopy(value[key], depth + 1);
    if (copied === NOT_TAKEN) return NOT_TAKEN;
    if (key === "__proto__") {
      // Assignment would set the copy's prototype; this keeps it a key.
      Object.defineProperty(object, key, {
        value: copied,
        enumerable: true,
        writable: true,
        configurable: true,
      });
    } else {
      object[key] = copied;
    }
  }
  return object;
}

/**
 * Checks one JSON value and returns a copy of it, so that what is stored is
 * what was checked: a getter cannot answer differently later, nor can the
 * caller change the value between the check and the write.
 */
function copyJsonValue(
  value: unknown,
  path: string,
  ancestors: Set<object>,
  depth: number,
): unknown {
  switch (typeof value) {
    case "string":
      checkText(value, path);
      return value;
    case "boolean":
      return value;
    case "number":
      if (!Number.isFinite(value)) {
        throw new InvalidArgumentError(
          path,
          `must be a finite number, got ${value}`,
        );
      }
      return value;
    case "object":
      if (value === null) return value;
      break;
    default:
      throw new InvalidArgumentError(
        path,
        `is not JSON: got ${describe(value)}`,
      );
  }
  if (depth > MAX_METADATA_DEPTH) {
    throw new InvalidArgumentError(
      path,
      `nests deeper than ${MAX_METADATA_DEPTH} levels`,
    );
  }
  if (ancestors.has(value)) {
    throw new InvalidArgumentError(path, "refers back to itself (a cycle)");
  }
  ancestors.add(value);
  let copy: unknown;
  if (Array.isArray(value)) {
    const array = new Array(value.length);
    for (let index = 0; index < value.length; index++) {
      array[index] = copyJsonValue(
        value[index],
        `${path}[${index}]`,
        ancestors,
        depth + 1,
      );
    }
    copy = array;
  } else if (isPlainObject(value)) {
    if (Object.getOwnPropertySymbols(value).length > 0) {
      throw new InvalidArgumentError(path, "has symbol keys, which JSON drops");
    }
    const object: Record<string, unknown> = {};
    for (const key of Object.keys(value)) {
      const keyPath = `${path}${describeKey(key)}`;
      checkText(key, keyPath);
      const copied = copyJsonValue(value[key], keyPath, ancestors, depth + 1);
      if (key === "__proto__") {
        // Assignment would set the copy's prototype; this keeps it a key.
        Object.defineProperty(object, key, {
          value: copied,
          enumerable: true,
          writable: true,
          configurable: true,
        });
      } else {
        object[key] = copied;
      }
    }
    copy = object;
  } else {
    throw new InvalidArgumentError(
      path,
      `is not JSON: got ${describe(value)}`,
    );
  }
  ancestors.delete(value);
  return copy;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== "object" || value === null) return false;
  const prototype = Object.getPrototypeOf(value);
  return prototype === Object.prototype || prototype === null;
}

/**
 * Encodes a value with the codec.
 *
 * @throws {EncodingError} The codec threw, naming `field`.
 */
export function encodeValue(
  codec: Codec,
  value: unknown,
  field: string,
): Uint8Array {
  try {
    return codec.encode(value);
  } catch (cause) {
    throw new EncodingError(field, problemOf(cause), { cause });
  }
}

/**
 * Decodes stored bytes with the codec.
 *
 * @param field Names the value in the error, or makes the name: reads pass
 *   a function, so that the name is written only for an error, not for
 *   every event read (it was 0.3–0.5 µs of each, docs/performance.md).
 * @throws {EncodingError} The codec threw, naming `field`.
 */
export function decodeValue(
  codec: Codec,
  bytes: Uint8Array,
  field: string | (() => string),
): unknown {
  try {
    return codec.decode(bytes);
  } catch (cause) {
    const name = typeof field === "string" ? field : field();
    throw new EncodingError(name, problemOf(cause), {
      cause,
      operation: "decode",
    });
  }
}

function problemOf(cause: unknown): string {
  if (cause instanceof RangeError) {
    return "the value nests too deeply"; // the call stack overflowed
  }
  const message = cause instanceof Error ? cause.message : String(cause);
  return message.replace(/^CBOR (en|de)code error: /, "");
}

/** A short, safe description of a value for an error message. */
function describe(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  switch (typeof value) {
    case "string": {
      const shown = value.length > 40 ? `${value.slice(0, 40)}…` : value;
      return `the string ${JSON.stringify(shown)}`;
    }
    case "number":
    case "boolean":
    case "undefined":
      return String(value);
    case "bigint":
      return `the bigint ${value}n`;
    case "object": {
      const name = Object.getPrototypeOf(value)?.constructor?.name;
      return typeof name === "string" && name !== "Object"
        ? `an instance of ${name}`
        : "an object";
    }
    default:
      return `a ${typeof value}`;
  }
}

function describeKey(key: string): string {
  return /^[A-Za-z_$][\w$]*$/.test(key)
    ? `.${key}`
    : `[${JSON.stringify(key.length > 40 ? `${key.slice(0, 40)}…` : key)}]`;
}
