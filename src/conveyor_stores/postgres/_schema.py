"""The PostgreSQL schema and its versioned migrations (``conveyor_migrations``).

Every table lives in one schema (``public`` unless the store is given another), and every name
reaches SQL through ``psycopg.sql.Identifier``: a schema called ``my "jobs"; drop`` is just a
name. Migrations run in one transaction that first takes an advisory lock keyed on the schema,
so any number of processes connecting at once apply each migration exactly once; the others
wait for the lock, then find the work done.

Tables (the same shape as the SQLite store's; see ``conveyor_stores/sqlite/_schema.py``):

* ``conveyor_jobs``: one row per job; ``record`` is the job as the converter's JSON, minus the
  claim fields, which live in columns; the other columns are copies of what queries filter and
  sort on. Times are ``timestamptz``; ``seq`` orders a job within its state. ``record`` is
  ``json``, not ``jsonb``: ``jsonb`` keeps numbers as ``numeric``, so a float such as ``1e300``
  would read back as an int; ``json`` keeps the text exactly as written.
* ``conveyor_lanes``: per queue and group, when it was last served and how many of its jobs
  are waiting, active and queued, kept by a trigger (jobs without a group skip it).
* ``conveyor_queues``: one row of counters per queue (sequence, round-robin tick, totals).
* ``conveyor_paused``, ``conveyor_rate``, ``conveyor_metrics``.
* ``conveyor_seq`` (version 2): the sequence every ``seq`` is taken from. Claims and
  completions run side by side without the schema's write lock, so they cannot take numbers
  from a counter row that every writer would then wait on; a sequence hands them out without
  locking. (The queue row's ``seq`` column is no longer used.)
* Version 3 changes no table: it marks that a record may leave out ``created_at`` and
  ``delay_until``, which every read takes from their columns (a plain add writes them there
  only, with the server's time). A conveyor that predates it refuses the schema at connect
  rather than read those jobs' times as missing.
* ``conveyor_totals`` (version 4): a queue's totals of completed and failed jobs, in rows per
  shard, and ``conveyor_metrics`` rows per shard too. Every completion adds to them; in one
  row per queue (and per minute), each completion held that row until it committed, so the
  completions of every worker process on the database were written one after another. A
  transaction now writes the shard of its connection (its server process id modulo
  ``SHARDS``); reads add the shards up. (The queue row's ``completed`` and ``failed`` columns
  are no longer used: version 4 moves their values to shard 0.)
* ``conveyor_listeners`` (version 5): the server processes (``pg_backend_pid()``) of the
  ``LISTEN`` connections that take every event, not only wake-ups. Claims and completions
  send their events (``active``, ``completed``) only while it has a row: a database whose
  processes only run workers is spared a ``NOTIFY`` per claim and per completion (each takes
  a database-wide lock at commit, and wakes every listening connection). A row left by a
  process that died costs only events nobody reads, until the next listener clears it.
"""

from __future__ import annotations

from psycopg import sql

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SHARDS", "qualified"]

SHARDS = 16
"""Rows per queue that its totals and each minute of its metrics are spread over."""


def qualified(schema: str) -> dict[str, str]:
    """The quoted names of the schema and its tables, for ``str.format`` into SQL text."""
    names = {"s": sql.Identifier(schema).as_string(None)}
    tables = ("jobs", "lanes", "queues", "paused", "rate", "metrics", "totals", "listeners")
    for table in (*tables, "migrations"):
        names[table] = sql.Identifier(schema, f"conveyor_{table}").as_string(None)
    names["lane_trigger_fn"] = sql.Identifier(schema, "conveyor_jobs_lanes").as_string(None)
    names["seq"] = sql.Identifier(schema, "conveyor_seq").as_string(None)
    names["seq_name"] = sql.Literal(names["seq"]).as_string(None)  # for nextval('...')
    names["notify_fn"] = sql.Identifier(schema, "conveyor_notify").as_string(None)
    return names


_V1 = """
CREATE TABLE {jobs} (
    pk bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue text NOT NULL,
    id text NOT NULL,
    name text NOT NULL,
    state text NOT NULL,
    lane text NOT NULL,
    priority integer NOT NULL,
    seq bigint NOT NULL,
    created_at timestamptz NOT NULL,
    processed_at timestamptz,
    delay_until timestamptz,
    lock_until timestamptz,
    locked_by text,
    lock_token text,
    finished_at timestamptz,
    dedup_key text,
    dedup_until timestamptz,
    parent_queue text,
    parent_id text,
    version bigint NOT NULL DEFAULT 0,
    record json NOT NULL
);
CREATE UNIQUE INDEX conveyor_jobs_key ON {jobs} (id, queue);
CREATE INDEX conveyor_jobs_claim ON {jobs} (queue, lane, priority, seq)
    WHERE state = 'waiting';
CREATE INDEX conveyor_jobs_claim_name ON {jobs} (queue, lane, name, priority, seq)
    WHERE state = 'waiting';
CREATE INDEX conveyor_jobs_delayed ON {jobs} (queue, delay_until, seq) WHERE state = 'delayed';
CREATE INDEX conveyor_jobs_state ON {jobs} (queue, state, seq)
    WHERE state NOT IN ('waiting', 'delayed');
CREATE INDEX conveyor_jobs_dedup ON {jobs} (queue, dedup_key) WHERE dedup_key IS NOT NULL;
CREATE INDEX conveyor_jobs_parent ON {jobs} (parent_queue, parent_id)
    WHERE parent_id IS NOT NULL;

CREATE TABLE {lanes} (
    queue text NOT NULL,
    lane text NOT NULL,
    served bigint NOT NULL DEFAULT 0,
    waiting bigint NOT NULL DEFAULT 0,
    active bigint NOT NULL DEFAULT 0,
    queued bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, lane)
);
CREATE INDEX conveyor_lanes_turn ON {lanes} (queue, served, lane) WHERE waiting > 0;

CREATE TABLE {queues} (
    name text PRIMARY KEY,
    live integer NOT NULL DEFAULT 1,
    seq bigint NOT NULL DEFAULT 0,
    tick bigint NOT NULL DEFAULT 0,
    plain_served bigint NOT NULL DEFAULT 0,
    completed bigint NOT NULL DEFAULT 0,
    failed bigint NOT NULL DEFAULT 0
);
CREATE TABLE {paused} (queue text NOT NULL, name text NOT NULL, PRIMARY KEY (queue, name));
CREATE TABLE {rate} (queue text NOT NULL, scope text NOT NULL, at timestamptz NOT NULL);
CREATE INDEX conveyor_rate_window ON {rate} (queue, scope, at);
CREATE TABLE {metrics} (
    queue text NOT NULL,
    kind text NOT NULL,
    minute bigint NOT NULL,
    count bigint NOT NULL,
    PRIMARY KEY (queue, kind, minute)
);

-- Per-group counts, kept by the database so that no code path can forget them. Jobs without
-- a group (lane '') skip it: the WHEN clauses keep the trigger from even being called.
CREATE FUNCTION {lane_trigger_fn}() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.lane <> '' THEN
        UPDATE {lanes} SET
            waiting = waiting - (OLD.state = 'waiting')::int,
            active = active - (OLD.state = 'active')::int,
            queued = queued - (OLD.state IN ('waiting', 'delayed'))::int
        WHERE queue = OLD.queue AND lane = OLD.lane;
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') AND NEW.lane <> '' THEN
        INSERT INTO {lanes} AS l (queue, lane, waiting, active, queued)
        VALUES (NEW.queue, NEW.lane, (NEW.state = 'waiting')::int,
                (NEW.state = 'active')::int, (NEW.state IN ('waiting', 'delayed'))::int)
        ON CONFLICT (queue, lane) DO UPDATE SET
            waiting = l.waiting + excluded.waiting,
            active = l.active + excluded.active,
            queued = l.queued + excluded.queued;
    END IF;
    RETURN NULL;
END
$fn$;
CREATE TRIGGER conveyor_jobs_added AFTER INSERT ON {jobs}
    FOR EACH ROW WHEN (NEW.lane <> '') EXECUTE FUNCTION {lane_trigger_fn}();
CREATE TRIGGER conveyor_jobs_removed AFTER DELETE ON {jobs}
    FOR EACH ROW WHEN (OLD.lane <> '') EXECUTE FUNCTION {lane_trigger_fn}();
CREATE TRIGGER conveyor_jobs_moved AFTER UPDATE OF state, lane ON {jobs}
    FOR EACH ROW WHEN ((OLD.lane <> '' OR NEW.lane <> '')
        AND (OLD.state IS DISTINCT FROM NEW.state OR OLD.lane IS DISTINCT FROM NEW.lane))
    EXECUTE FUNCTION {lane_trigger_fn}();
"""

_V2 = """
CREATE SEQUENCE {seq} AS bigint;
SELECT setval({seq_name}, coalesce((SELECT max(abs(seq)) FROM {jobs}), 0) + 1, false);

-- Events of a statement sent from inside it (claims and completions are one statement each):
-- the items, each a JSON array already small enough, packed greedily into payloads that stay
-- under NOTIFY's 8,000 bytes, as the store packs the events of its other transactions.
CREATE FUNCTION {notify_fn}(channel text, head text, items text[]) RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    body text := '';
    item text;
    sent integer := 0;
BEGIN
    FOREACH item IN ARRAY coalesce(items, '{{}}'::text[]) LOOP
        IF body <> '' AND octet_length(head) + octet_length(body) + octet_length(item) + 3 > 7900
        THEN
            PERFORM pg_notify(channel, head || body || ']}}');
            sent := sent + 1;
            body := '';
        END IF;
        body := CASE WHEN body = '' THEN item ELSE body || ',' || item END;
    END LOOP;
    IF body <> '' THEN
        PERFORM pg_notify(channel, head || body || ']}}');
        sent := sent + 1;
    END IF;
    RETURN sent;
END
$fn$;
"""

_V3 = """
COMMENT ON COLUMN {jobs}.record IS 'The job as conveyor''s JSON, less the fields kept in columns:
the claim (processed_at, lock_until, locked_by, lock_token) and, since schema version 3, its
times created_at and delay_until, which a record may leave out: every read takes them from
their columns.';
"""

_V4 = """
CREATE TABLE {totals} (
    queue text NOT NULL,
    shard smallint NOT NULL,
    completed bigint NOT NULL DEFAULT 0,
    failed bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, shard)
);
INSERT INTO {totals} (queue, shard, completed, failed)
    SELECT name, 0, completed, failed FROM {queues} WHERE completed <> 0 OR failed <> 0;
UPDATE {queues} SET completed = 0, failed = 0 WHERE completed <> 0 OR failed <> 0;
ALTER TABLE {metrics} ADD COLUMN shard smallint NOT NULL DEFAULT 0;
ALTER TABLE {metrics} DROP CONSTRAINT conveyor_metrics_pkey;
ALTER TABLE {metrics} ADD CONSTRAINT conveyor_metrics_pkey
    PRIMARY KEY (queue, kind, minute, shard);
"""

_V5 = """
CREATE TABLE {listeners} (
    pid integer PRIMARY KEY,
    since timestamptz NOT NULL DEFAULT now()
);
"""

MIGRATIONS: list[tuple[str, str]] = [
    (
        "jobs, lanes, queues, pauses, rate windows, metrics",
        _V1,
    ),
    (
        "one sequence for every seq, so that claims and completions need no counter row; "
        "events sent from inside a statement",
        _V2,
    ),
    (
        "records may leave out created_at and delay_until (a plain add writes them only in "
        "their columns); a conveyor older than this version would read them as missing",
        _V3,
    ),
    (
        "totals and metrics in rows per shard, so that completions written side by side do not "
        "wait on one row per queue",
        _V4,
    ),
    (
        "the listeners of every event, so that claims and completions send their events only "
        "while some process takes them",
        _V5,
    ),
]
"""Migration ``n`` (1-based) brings the schema from version ``n - 1`` to ``n``: what it is, and
its script (``str.format`` fills in the quoted names of :func:`qualified`). Append only."""

SCHEMA_VERSION = len(MIGRATIONS)
