-- Global positions from the writing transaction's id, so that a reader can
-- tell which positions are final: an identity value is taken at insert time,
-- but transactions commit in another order, and a reader that went past a
-- position still uncommitted would never see it. Rows already stored keep
-- their identity positions, which all sort before the new ones.

DO $$
BEGIN
  IF (SELECT coalesce(max(global_position), 0) FROM events)
     >= (pg_current_xact_id()::text::bigint << 20) THEN
    RAISE EXCEPTION 'events.global_position already reaches the positions of this transaction; cannot switch to transaction positions';
  END IF;
END
$$;

ALTER TABLE events ALTER COLUMN global_position DROP IDENTITY;

CREATE UNIQUE INDEX events_global_position_idx ON events (global_position);

COMMENT ON COLUMN events.global_position IS
  'Store-wide order of events: (id of the writing transaction << 20) + the event''s index in that transaction, set by the append statement. Strictly increasing, sparse, ordered by transaction start; at most 2^20 - 1 events per transaction. Readers see only positions below (xmin of their snapshot << 20): those no running transaction can still precede.';
COMMENT ON INDEX events_global_position_idx IS
  'Reads of every stream in global order (readAll, subscriptions), and the uniqueness of positions.';
