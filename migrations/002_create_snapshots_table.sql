-- Snapshots: at most one per stream, replaced as the stream grows.

CREATE TABLE snapshots (
  stream_id text NOT NULL,
  version bigint NOT NULL,
  state bytea NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT snapshots_pkey PRIMARY KEY (stream_id),
  CONSTRAINT snapshots_version_positive CHECK (version >= 1)
);

COMMENT ON TABLE snapshots IS
  'The latest saved state of a stream, so an aggregate loads as one snapshot plus the events after it. One row per stream, upserted.';
COMMENT ON COLUMN snapshots.stream_id IS
  'The stream; the primary key, so loading a snapshot is one index lookup.';
COMMENT ON COLUMN snapshots.version IS
  'The stream version the state includes. A save with a lower version than the stored one is ignored, so a slow writer cannot go back in time.';
COMMENT ON COLUMN snapshots.state IS
  'The state encoded by the store''s codec (CBOR by default).';
COMMENT ON COLUMN snapshots.created_at IS
  'When this snapshot was saved.';
