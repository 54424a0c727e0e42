-- The end of global positions. A position is ((transaction id + offset) << 20)
-- + the event's index, in a bigint: from (transaction id + offset) = 2^43 on,
-- a shift by 20 bits passes 2^63 - 1, and PostgreSQL's << wraps silently to
-- negative numbers. The store's append statement writes nothing from there
-- (PositionsExhaustedError), and readAll's bound stops at the largest bigint.
-- The realign_positions() of 007 shifted without that check: once the
-- snapshot's xmax + offset reached 2^43 its test for stored positions ahead of
-- the transaction ids wrapped, and it replaced the offset with a lower one;
-- and it accepted an `above` past which no transaction has a position left.
-- This one never wraps, and refuses such an offset instead of setting it.

CREATE OR REPLACE FUNCTION realign_positions(above bigint DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
-- The schema this file runs in, whatever the caller's search_path.
SET search_path FROM CURRENT
AS $$
DECLARE
  -- (transaction id + offset) from which positions would pass 2^63 - 1.
  positions_end CONSTANT bigint := 8796093022208;
  highest bigint;
  horizon bigint;
  needed bigint;
BEGIN
  -- No transaction of this cluster has an id at or above the snapshot's
  -- xmax, so no position written here can lie beyond the horizon; past the
  -- end, every position that can exist lies below it.
  SELECT greatest(max(global_position), above) INTO highest FROM events;
  horizon := pg_snapshot_xmax(pg_current_snapshot())::text::bigint
    + position_offset();
  IF highest IS NULL OR horizon >= positions_end
     OR highest < (horizon << 20) THEN
    RETURN NULL;
  END IF;
  -- One realignment at a time, and none while a migration runs.
  PERFORM pg_advisory_xact_lock(hashtextextended(
    'deno-eventstore migrations ' || current_schema(), 0));
  -- Checked again under the lock: another process may have realigned.
  SELECT greatest(max(global_position), above) INTO highest FROM events;
  horizon := pg_snapshot_xmax(pg_current_snapshot())::text::bigint
    + position_offset();
  IF horizon >= positions_end OR highest < (horizon << 20) THEN
    RETURN NULL;
  END IF;
  -- Every transaction still running or yet to come has an id of at least
  -- the xmin of a snapshot taken now: their positions all start above
  -- highest. (It is above the current offset: highest is at or past the
  -- horizon.)
  needed := (highest >> 20) + 1
    - pg_snapshot_xmin(pg_current_snapshot())::text::bigint;
  -- This function takes a transaction id of its own (at least the xmax), so
  -- the first append after it has a higher one: it must still fit.
  IF pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 1 + needed
     >= positions_end THEN
    RAISE EXCEPTION USING
      ERRCODE = 'program_limit_exceeded',
      MESSAGE = format(
        'Cannot realign global positions above %s: positions end at 9223372036854775807 (2^63 - 1), and no append after this would have one left; nothing was changed. Copy the events into a fresh store (see docs/database-setup.md, "The end of global positions")',
        highest);
  END IF;
  EXECUTE format(
    'CREATE OR REPLACE FUNCTION position_offset() RETURNS bigint '
    'LANGUAGE sql IMMUTABLE PARALLEL SAFE AS %L',
    format('SELECT %s::bigint', needed));
  RETURN needed;
END
$$;

COMMENT ON FUNCTION realign_positions(bigint) IS
  'After a restore into another cluster: raises position_offset() so that new positions start above every stored one (stored positions are kept), and above the position given, if any. Returns the new offset, or NULL when nothing was needed. Refuses (54000) an offset with which no append would have a position left: positions end at 2^63 - 1. Called by migrate() without an argument.';
