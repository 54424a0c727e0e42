/**
 * The PostgreSQL store's snapshots: saving one unless a newer one is stored,
 * and loading the latest. Private to the package.
 *
 * @module
 */

import type { Span } from "@opentelemetry/api";
import type { Snapshot } from "../event_store.ts";
import { decodeValue } from "../_input.ts";
import { answer, asBytes, type QueryContext, read } from "./read.ts";

/**
 * Saves an encoded snapshot unless the stored one is newer, if the stream
 * has reached `version`.
 *
 * @returns The stream's version, for the caller to check against `version`.
 */
export async function saveSnapshot(
  context: QueryContext,
  streamId: string,
  version: number,
  encoded: Uint8Array,
): Promise<number> {
  const [row] = await answer(
    context,
    context.sql.unsafe(context.statements.saveSnapshot, [
      streamId,
      version,
      encoded,
    ], { prepare: context.prepare }),
  );
  return Number(row.version);
}

/**
 * The stream's latest snapshot, decoded, if it has one: a read. Sets the
 * span's version.
 */
export async function loadSnapshot<S>(
  context: QueryContext,
  span: Span,
  streamId: string,
): Promise<Snapshot<S> | undefined> {
  const [row] = await read(
    context,
    () =>
      context.sql.unsafe(context.statements.loadSnapshot, [streamId], {
        prepare: context.prepare,
      }),
  );
  if (row === undefined) return undefined;
  const version = Number(row.version);
  span.setAttribute("eventstore.version", version);
  return {
    streamId,
    version,
    state: decodeValue(
      context.codec,
      asBytes(row.state),
      `snapshot of stream ${JSON.stringify(streamId)}`,
    ) as S,
    createdAt: row.created,
  };
}
