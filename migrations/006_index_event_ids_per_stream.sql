-- Event ids per stream, so that an append with the caller's ids can tell
-- cheaply whether the stream holds them already (a retry of an append whose
-- outcome the caller never learned): a few index probes instead of a read of
-- every row of the stream. Not unique: streams written before this migration
-- may hold an id twice, and the append statement itself keeps new ones apart.
-- IF NOT EXISTS: on a large table, build it first without blocking appends
-- (CREATE INDEX CONCURRENTLY, outside a transaction, which a migration is not);
-- this file then only records itself.

CREATE INDEX IF NOT EXISTS events_stream_event_id_idx
  ON events (stream_id, event_id);

COMMENT ON INDEX events_stream_event_id_idx IS
  'Finds a stream''s events by id: how an append with the caller''s event ids recognises a retry of one already stored (idempotent appends).';
