-- What the sweeper saw of a job, beyond its status: the server's creation time (followers learn
-- the server's clock from it, for narrow reconcile spans) and the credits the list showed (budget).
ALTER TABLE job_status ADD COLUMN created_at timestamptz, ADD COLUMN credits double precision;

-- Every API request of every worker on a key, paced together at the request rate a 429 taught
-- (learned_rate): a GCRA of its own ("req_tat"), apart from the submissions' --rate ("tat"), and
-- the count of requests charged, from which a worker tells its share of the key's traffic.
ALTER TABLE api_limits ADD COLUMN req_tat timestamptz NOT NULL DEFAULT clock_timestamp(),
    ADD COLUMN api_requests bigint NOT NULL DEFAULT 0;
