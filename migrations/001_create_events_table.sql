-- The events table: every stream's events, appended, never updated.
-- Unqualified names: the runner sets search_path to the store's schema.

CREATE TABLE events (
  global_position bigint GENERATED ALWAYS AS IDENTITY,
  stream_id text NOT NULL,
  version bigint NOT NULL,
  event_id uuid NOT NULL,
  event_type text NOT NULL,
  data bytea NOT NULL,
  metadata jsonb NOT NULL DEFAULT '{}',
  created_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT events_pkey PRIMARY KEY (stream_id, version),
  CONSTRAINT events_version_positive CHECK (version >= 1),
  CONSTRAINT events_metadata_object CHECK (jsonb_typeof(metadata) = 'object')
);

CREATE INDEX events_created_at_idx ON events (created_at);
CREATE INDEX events_event_type_idx ON events (event_type);

COMMENT ON TABLE events IS
  'Append-only event streams. A stream is the rows of one stream_id; its version is its event count. Rows are only ever inserted.';
COMMENT ON COLUMN events.global_position IS
  'Store-wide order of events: strictly increasing, but sparse (a rolled-back append burns numbers).';
COMMENT ON COLUMN events.stream_id IS
  'The stream, e.g. order-42. First column of the primary key, so loading a stream is one index range scan.';
COMMENT ON COLUMN events.version IS
  'Position in the stream, from 1 without gaps. With stream_id the primary key: of two writers racing for the same version exactly one can insert (optimistic concurrency).';
COMMENT ON COLUMN events.event_id IS
  'The event''s UUID, given by the caller or generated. Not unique-indexed on purpose: a random-UUID index halved batch insert speed.';
COMMENT ON COLUMN events.event_type IS
  'What happened, e.g. OrderPlaced.v1. Indexed for projections that read one type.';
COMMENT ON COLUMN events.data IS
  'The payload encoded by the store''s codec (CBOR by default): compact, and keeps bigint, bytes and dates exact.';
COMMENT ON COLUMN events.metadata IS
  'Correlation ids, user ids and the like: a JSON object, readable by humans and SQL.';
COMMENT ON COLUMN events.created_at IS
  'When the append''s transaction started (now()): one value per append.';
COMMENT ON CONSTRAINT events_pkey ON events IS
  'The concurrency guard: a second event at the same stream version is refused with 23505, which the store reports as a ConcurrencyConflictError.';
COMMENT ON INDEX events_created_at_idx IS
  'Time-range queries for monitoring and archiving.';
COMMENT ON INDEX events_event_type_idx IS
  'Reads and counts by event type.';
