-- photogpt-pipeline shared state, schema version 2: the review, per run (as in a state file).
-- Reviewers' verdicts are append-only and keyed by the asset's sha256: the newest row per
-- (run, sha256) by "at" (then id) is the current verdict, an 'undo' row clears it.
CREATE TABLE decisions (
    id bigserial PRIMARY KEY,
    run text NOT NULL,
    sha256 text NOT NULL,
    verdict text NOT NULL CHECK (verdict IN ('approve', 'reject', 'undo')),
    note text,
    path text,
    item_id text,
    at text NOT NULL
);
CREATE INDEX decisions_current ON decisions (run, sha256, at DESC, id DESC);

-- The outputs --regenerate-rejected set aside (their files are under .rejected/).
CREATE TABLE retired (
    id bigserial PRIMARY KEY,
    run text NOT NULL,
    unit_key text NOT NULL,
    n integer NOT NULL CHECK (n >= 1),
    phase text NOT NULL CHECK (phase IN ('rejected', 'superseded')),
    path text,
    sha256 text,
    job_id text,
    at text NOT NULL,
    FOREIGN KEY (run, unit_key) REFERENCES units (run, key)
);
CREATE INDEX retired_run ON retired (run, id);
