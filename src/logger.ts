/**
 * Structured logging: stores report what they do to a {@linkcode Logger} the
 * application gives them, and stay silent without one.
 *
 * @module
 */

/** How much a log record matters. */
export type LogLevel = "debug" | "info" | "warn" | "error";

/** One structured log record. */
export interface LogRecord {
  /** How much it matters. */
  level: LogLevel;
  /** What happened, one sentence without data in it, e.g. "Applied migration". */
  message: string;
  /** The data: stream id, versions, durations, error codes. Never a password. */
  fields: Record<string, unknown>;
}

/**
 * Receives a store's log records. Route them to the application's logger;
 * a logger that throws is ignored, so logging never fails an operation.
 *
 * @example Log to the console as JSON lines
 * ```ts
 * import type { Logger } from "@deno-eventstore/core";
 *
 * const logger: Logger = (record) => console.log(JSON.stringify(record));
 * logger({ level: "info", message: "Applied migration", fields: { name: "001" } });
 * ```
 */
export type Logger = (record: LogRecord) => void;

/** The default: drops every record. */
export const silentLogger: Logger = () => {};

/**
 * Sends one record to a logger, ignoring a logger that throws: logging never
 * fails the operation it reports on.
 */
export function logSafely(
  logger: Logger,
  level: LogLevel,
  message: string,
  fields: Record<string, unknown>,
): void {
  if (logger === silentLogger) return;
  try {
    logger({ level, message, fields });
  } catch {
    // A broken logger is the application's to notice; the data is safe.
  }
}
