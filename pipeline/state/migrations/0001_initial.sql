-- photogpt-pipeline shared state, schema version 1.
-- Several runs share one database: every row of a run carries its name in "run".
-- Timestamps the engine reads back (updated_at, submitted_at …) are RFC 3339 text from the
-- engine's clock, as in the SQLite store; leases and limits use the database clock
-- (clock_timestamp()), the only clock every worker agrees on.

CREATE TABLE units (
    run text NOT NULL,
    key text NOT NULL,
    item_id text NOT NULL,
    step text NOT NULL,
    idx integer NOT NULL CHECK (idx >= 1),
    upstream text,
    request_json text NOT NULL,
    expected_outputs integer NOT NULL CHECK (expected_outputs >= 0),
    phase text NOT NULL CHECK (phase IN ('pending', 'submitting', 'submitted', 'succeeded', 'done',
                                         'failed', 'unknown')),
    job_id text,
    attempts integer NOT NULL DEFAULT 0,
    submitted_at text,
    finished_at text,
    last_error text,
    error_kind text,
    updated_at text NOT NULL,
    run_id text,
    holder text,                 -- the worker whose lease covers the unit (host:pid:random)
    lease_until timestamptz,     -- on the database clock
    key_hash text,               -- which API key the unit's job runs under (a hash, never the key)
    must_reconcile boolean NOT NULL DEFAULT false,  -- taken over while submitting: no POST before reconciling
    intent_at timestamptz,       -- when the last intent was written, on the database clock
    PRIMARY KEY (run, key)
);
CREATE INDEX units_open ON units (run, item_id, step, idx)
    WHERE phase NOT IN ('done', 'failed', 'unknown');
CREATE INDEX units_job ON units (run, job_id) WHERE job_id IS NOT NULL;
CREATE INDEX units_active ON units (key_hash) WHERE phase IN ('submitting', 'submitted');

CREATE TABLE outputs (
    run text NOT NULL,
    unit_key text NOT NULL,
    n integer NOT NULL CHECK (n >= 1),
    asset_id text NOT NULL,
    url text NOT NULL,
    path text,
    bytes bigint,
    sha256 text,
    downloaded_at text,
    PRIMARY KEY (run, unit_key, n),
    FOREIGN KEY (run, unit_key) REFERENCES units (run, key)
);

CREATE TABLE events (
    id bigserial PRIMARY KEY,
    run text NOT NULL,
    unit_key text NOT NULL,
    at text NOT NULL,
    phase text NOT NULL,
    detail text NOT NULL,
    holder text,
    FOREIGN KEY (run, unit_key) REFERENCES units (run, key)
);
CREATE INDEX events_unit ON events (run, unit_key, id);

CREATE TABLE resources (
    run text NOT NULL,
    kind text NOT NULL,
    key text NOT NULL,
    value_json text NOT NULL,
    updated_at text NOT NULL,
    PRIMARY KEY (run, kind, key)
);

-- The workers of each run, for `status`: who is there and when it was last heard of.
CREATE TABLE workers (
    run text NOT NULL,
    holder text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    seen_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (run, holder)
);

-- Per API key (by hash): the shared request-rate pacer (GCRA: the theoretical arrival time "tat")
-- and what any worker learned from a 429.
CREATE TABLE api_limits (
    key_hash text PRIMARY KEY,
    tat timestamptz NOT NULL DEFAULT clock_timestamp(),
    rate_per_s double precision CHECK (rate_per_s > 0),
    burst integer NOT NULL DEFAULT 1 CHECK (burst >= 1),
    learned_rate double precision,
    learned_cap integer,
    requests bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The one worker per API key that sweeps the job list, and what its sweeps saw.
CREATE TABLE sweeper (
    key_hash text PRIMARY KEY,
    holder text NOT NULL,
    lease_until timestamptz NOT NULL
);
CREATE TABLE job_status (
    key_hash text NOT NULL,
    job_id text NOT NULL,
    status text NOT NULL,
    seen_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (key_hash, job_id)
);
