-- What the sweeper saw of a job, beyond its status: the server's creation time (followers learn
-- the server's clock from it, for narrow reconcile spans) and the credits the list showed (budget).
ALTER TABLE job_status ADD COLUMN created_at timestamptz, ADD COLUMN credits double precision;
