-- The hot path of the scheduler writes two results rows per job and claims every job with its
-- worker id. Each foreign key checked on those writes is a query of its own inside Postgres (an RI
-- trigger with a `FOR KEY SHARE` lock): eight per job, ≈ 14 % of the machine's CPU in the
-- scheduler benchmark. These four are guaranteed by construction instead: a results row is written
-- only in the transaction that has just locked and updated its job (`jobs::complete`), copying the
-- job's crate and id and the lease owner, and `jobs.lease_owner` is the id of the worker whose
-- session claims. Nothing deletes workers, jobs or crates except the experiment cascade, which
-- removes the rows referring to them too. The experiment keys (with their ON DELETE CASCADE) stay.
ALTER TABLE results DROP CONSTRAINT results_crate_id_fkey;
ALTER TABLE results DROP CONSTRAINT results_job_id_fkey;
ALTER TABLE results DROP CONSTRAINT results_worker_id_fkey;
ALTER TABLE jobs DROP CONSTRAINT jobs_lease_owner_fkey;

