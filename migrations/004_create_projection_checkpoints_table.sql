-- Projection checkpoints: how far each projection has read the global order.

CREATE TABLE projection_checkpoints (
  name text NOT NULL,
  position bigint NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT projection_checkpoints_pkey PRIMARY KEY (name)
);

COMMENT ON TABLE projection_checkpoints IS
  'One row per projection: the global position of the last event it handled, so that it resumes there after a restart. Deleting a row replays that projection from the start.';
COMMENT ON COLUMN projection_checkpoints.name IS
  'The projection, as the application names it.';
COMMENT ON COLUMN projection_checkpoints.position IS
  'The global position of the last event handled. Saved in the same transaction as the handler''s own writes, when the handler writes through the transaction it is given.';
COMMENT ON COLUMN projection_checkpoints.updated_at IS
  'When the checkpoint last moved: a projection that stopped shows here.';
