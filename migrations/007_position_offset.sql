-- Global positions that survive a move to another cluster. A position is
-- ((writing transaction's id + offset) << 20) + the event's index, and readers
-- see those below ((xmin of their snapshot + offset) << 20). A dump restored
-- into another cluster (a new server, a new major version, a logical replica
-- promoted) keeps the positions but not the transaction-id counter, which
-- starts again far lower: without an offset, every restored event stays
-- hidden and new appends take positions below them. After such a move,
-- migrate() calls realign_positions(), which raises the offset just past the
-- highest stored position; until then appends refuse to write (the append
-- statement checks that no stored position lies beyond the transaction ids
-- this cluster has handed out).

-- A constant that the planner inlines: it costs the append nothing. Replaced
-- (never altered in place) by realign_positions(); replacing a function
-- invalidates every cached plan that inlined it, in every session.
CREATE FUNCTION position_offset() RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT 0::bigint $$;

COMMENT ON FUNCTION position_offset() IS
  'Added to transaction ids to make global positions: 0 on the cluster where the store was created, raised by realign_positions() after a restore into another cluster. Only ever raised.';

-- Run by migrate() after the migrations: a no-op (no lock, no DDL) unless
-- the stored positions lie beyond this cluster's transaction ids. An operator
-- may call it with a position that consumers outside the database have seen
-- (after a point-in-time recovery or the promotion of a replica that lagged,
-- positions past the recovery point are handed out again): new positions
-- then start above it too.
CREATE FUNCTION realign_positions(above bigint DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql VOLATILE
-- The schema this file runs in, whatever the caller's search_path.
SET search_path FROM CURRENT
AS $$
DECLARE
  highest bigint;
  needed bigint;
BEGIN
  -- No transaction of this cluster has an id at or above the snapshot's
  -- xmax, so no position written here can lie beyond it.
  SELECT greatest(max(global_position), above) INTO highest FROM events;
  IF highest IS NULL OR highest <
     ((pg_snapshot_xmax(pg_current_snapshot())::text::bigint
       + position_offset()) << 20) THEN
    RETURN NULL;
  END IF;
  -- One realignment at a time, and none while a migration runs.
  PERFORM pg_advisory_xact_lock(hashtextextended(
    'deno-eventstore migrations ' || current_schema(), 0));
  -- Checked again under the lock: another process may have realigned.
  SELECT greatest(max(global_position), above) INTO highest FROM events;
  IF highest < ((pg_snapshot_xmax(pg_current_snapshot())::text::bigint
                 + position_offset()) << 20) THEN
    RETURN NULL;
  END IF;
  -- Every transaction still running or yet to come has an id of at least
  -- the xmin of a snapshot taken now: their positions all start above
  -- highest.
  needed := (highest >> 20) + 1
    - pg_snapshot_xmin(pg_current_snapshot())::text::bigint;
  EXECUTE format(
    'CREATE OR REPLACE FUNCTION position_offset() RETURNS bigint '
    'LANGUAGE sql IMMUTABLE PARALLEL SAFE AS %L',
    format('SELECT %s::bigint', needed));
  RETURN needed;
END
$$;

COMMENT ON FUNCTION realign_positions(bigint) IS
  'After a restore into another cluster: raises position_offset() so that new positions start above every stored one (stored positions are kept), and above the position given, if any. Returns the new offset, or NULL when nothing was needed. Called by migrate() without an argument.';
