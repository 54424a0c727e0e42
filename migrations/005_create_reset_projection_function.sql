-- Resetting a projection as one parameterized call: wait for any batch of the
-- projection in flight (the advisory lock its runner holds while it handles
-- a batch), then delete its checkpoint. Two statements in one transaction,
-- the second with a snapshot taken after the lock, so that a checkpoint the
-- batch saved is seen and deleted, not missed.

CREATE FUNCTION reset_projection(projection text) RETURNS void
LANGUAGE plpgsql VOLATILE
-- The schema this file runs in, whatever the caller's search_path.
SET search_path FROM CURRENT
AS $$
BEGIN
  PERFORM pg_advisory_xact_lock(hashtextextended(
    'deno-eventstore projection ' || current_schema() || ' ' || projection, 0));
  DELETE FROM projection_checkpoints WHERE name = projection;
END
$$;

COMMENT ON FUNCTION reset_projection(text) IS
  'Forgets a projection''s checkpoint after any batch of it in flight, so that its next run replays every event. Called with the name as a parameter: no statement is built from the name.';
