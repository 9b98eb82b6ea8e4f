-- The job queue without per-transition index maintenance (see ARCHITECTURE "The job queue").
--
-- Before this, every claim and every completion wrote a new `jobs` row version *and* a new entry
-- in each of five indexes, because `state` and the lease columns were indexed (no HOT update
-- possible): that was most of Postgres's time in the scheduler benchmark. Now no index of `jobs`
-- mentions a column that changes after the job is created, so claims and completions are HOT
-- updates (the row version stays on its page, no index is touched), and what the indexes served
-- is kept elsewhere:
--
-- * `job_queues`: per experiment, a claim cursor. Every queued job of the experiment has an
--   id >= `next_job`; a claim scans from there along (experiment_id, id) and moves it past what
--   it took. A job that becomes queued again lowers the cursor (the trigger below).
-- * `leases`: one row per claim (a batch of jobs for one worker) with its expiry, renewed by the
--   worker's heartbeats; the reaper finds expired leases here, not by scanning jobs.
-- * `job_counts`: job counts per experiment and state, kept by statement-level triggers on
--   `jobs` (so no writer can forget them), in 16 stripes chosen by backend so that a claim and a
--   completion committing at the same time do not wait on one counter row. A reader sums stripes.

-- 1. jobs: drop the indexes on changing columns; job priority is the experiment's (read at claim).
DROP INDEX jobs_claim_idx;
DROP INDEX jobs_lease_idx;
DROP INDEX jobs_experiment_state_idx;
DROP INDEX jobs_lease_owner_idx;
CREATE INDEX jobs_experiment_id_idx ON jobs (experiment_id, id);
-- room on each page for the new row versions of HOT updates
ALTER TABLE jobs SET (fillfactor = 50);

-- 2. leases
CREATE TABLE leases (
    id         bigserial PRIMARY KEY,
    worker     uuid NOT NULL,
    expires_at timestamptz NOT NULL,
    -- the jobs claimed together; those still running hold `jobs.lease_id = id`
    jobs       bigint[] NOT NULL
);
CREATE INDEX leases_expiry_idx ON leases (expires_at);
ALTER TABLE jobs ADD COLUMN lease_id bigint;
-- the running jobs of an existing database each get a lease of their own
INSERT INTO leases (id, worker, expires_at, jobs)
SELECT id, coalesce(lease_owner, '00000000-0000-0000-0000-000000000000'), coalesce(lease_expires_at, now()), ARRAY[id]
FROM jobs WHERE state = 'running';
UPDATE jobs SET lease_id = id WHERE state = 'running';
SELECT setval('leases_id_seq', greatest((SELECT max(id) FROM leases), 1));
ALTER TABLE jobs DROP COLUMN lease_expires_at;
ALTER TABLE jobs DROP COLUMN priority;

-- 3. claim cursors
CREATE TABLE job_queues (
    experiment_id uuid PRIMARY KEY REFERENCES experiments (id) ON DELETE CASCADE,
    -- every queued job of the experiment has an id >= next_job
    next_job      bigint NOT NULL,
    -- the experiment's highest job id: next_job > last_job means nothing is queued
    last_job      bigint NOT NULL,
    -- the experiment's `requirements` (copied from its spec at the start, so that a claim need not
    -- read the spec, which can hold a million crate names)
    requirements  jsonb NOT NULL DEFAULT '[]'
);
INSERT INTO job_queues (experiment_id, next_job, last_job, requirements)
SELECT j.experiment_id,
       coalesce(min(j.id) FILTER (WHERE j.state = 'queued'), max(j.id) + 1),
       max(j.id),
       coalesce(e.spec->'requirements', '[]'::jsonb)
FROM jobs j JOIN experiments e ON e.id = j.experiment_id
GROUP BY j.experiment_id, e.spec;

-- 4. job counts
CREATE TABLE job_counts (
    experiment_id uuid NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    stripe        smallint NOT NULL,
    queued        bigint NOT NULL DEFAULT 0,
    running       bigint NOT NULL DEFAULT 0,
    done          bigint NOT NULL DEFAULT 0,
    error         bigint NOT NULL DEFAULT 0,
    cancelled     bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (experiment_id, stripe)
);
INSERT INTO job_counts (experiment_id, stripe, queued, running, done, error, cancelled)
SELECT experiment_id, 0,
       count(*) FILTER (WHERE state = 'queued'), count(*) FILTER (WHERE state = 'running'),
       count(*) FILTER (WHERE state = 'done'), count(*) FILTER (WHERE state = 'error'),
       count(*) FILTER (WHERE state = 'cancelled')
FROM jobs GROUP BY experiment_id;

CREATE FUNCTION jobs_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_counts AS c (experiment_id, stripe, queued, running, done, error, cancelled)
    SELECT experiment_id, pg_backend_pid() % 16,
           count(*) FILTER (WHERE state = 'queued'), count(*) FILTER (WHERE state = 'running'),
           count(*) FILTER (WHERE state = 'done'), count(*) FILTER (WHERE state = 'error'),
           count(*) FILTER (WHERE state = 'cancelled')
    FROM new_rows GROUP BY experiment_id
    ON CONFLICT (experiment_id, stripe) DO UPDATE SET
        queued = c.queued + excluded.queued, running = c.running + excluded.running,
        done = c.done + excluded.done, error = c.error + excluded.error,
        cancelled = c.cancelled + excluded.cancelled;
    UPDATE job_queues q SET next_job = n.lo
    FROM (SELECT experiment_id, min(id) AS lo FROM new_rows WHERE state = 'queued' GROUP BY experiment_id) n
    WHERE q.experiment_id = n.experiment_id AND q.next_job > n.lo;
    RETURN NULL;
END $$;

CREATE FUNCTION jobs_count_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_counts AS c (experiment_id, stripe, queued, running, done, error, cancelled)
    SELECT experiment_id, pg_backend_pid() % 16, sum(q), sum(r), sum(d), sum(e), sum(x)
    FROM (SELECT experiment_id, (state = 'queued')::int AS q, (state = 'running')::int AS r,
                 (state = 'done')::int AS d, (state = 'error')::int AS e, (state = 'cancelled')::int AS x
          FROM new_rows
          UNION ALL
          SELECT experiment_id, -(state = 'queued')::int, -(state = 'running')::int,
                 -(state = 'done')::int, -(state = 'error')::int, -(state = 'cancelled')::int
          FROM old_rows) t
    GROUP BY experiment_id
    HAVING sum(q) <> 0 OR sum(r) <> 0 OR sum(d) <> 0 OR sum(e) <> 0 OR sum(x) <> 0
    ON CONFLICT (experiment_id, stripe) DO UPDATE SET
        queued = c.queued + excluded.queued, running = c.running + excluded.running,
        done = c.done + excluded.done, error = c.error + excluded.error,
        cancelled = c.cancelled + excluded.cancelled;
    -- a job queued again must be at or above its experiment's claim cursor
    UPDATE job_queues q SET next_job = n.lo
    FROM (SELECT experiment_id, min(id) AS lo FROM new_rows WHERE state = 'queued' GROUP BY experiment_id) n
    WHERE q.experiment_id = n.experiment_id AND q.next_job > n.lo;
    RETURN NULL;
END $$;

CREATE FUNCTION jobs_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- (deleting an experiment removes its counts by cascade; this keeps other deletions exact)
    INSERT INTO job_counts AS c (experiment_id, stripe, queued, running, done, error, cancelled)
    SELECT o.experiment_id, pg_backend_pid() % 16,
           -count(*) FILTER (WHERE state = 'queued'), -count(*) FILTER (WHERE state = 'running'),
           -count(*) FILTER (WHERE state = 'done'), -count(*) FILTER (WHERE state = 'error'),
           -count(*) FILTER (WHERE state = 'cancelled')
    FROM old_rows o WHERE EXISTS (SELECT 1 FROM experiments e WHERE e.id = o.experiment_id)
    GROUP BY o.experiment_id
    ON CONFLICT (experiment_id, stripe) DO UPDATE SET
        queued = c.queued + excluded.queued, running = c.running + excluded.running,
        done = c.done + excluded.done, error = c.error + excluded.error,
        cancelled = c.cancelled + excluded.cancelled;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_count_inserted AFTER INSERT ON jobs REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_inserted();
CREATE TRIGGER jobs_count_updated AFTER UPDATE ON jobs REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_updated();
CREATE TRIGGER jobs_count_deleted AFTER DELETE ON jobs REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_deleted();

-- 5. results: the natural key is the primary key; the surrogate id and the report index (whose
-- queries all start with the experiment, which the key serves) go.
--
-- The last foreign keys on rows written per job go too (an RI check is a query of its own per
-- row: ≈ 7 % of the machine in the scheduler benchmark after the changes above). They hold by
-- construction: jobs are inserted by the start's transaction, which holds the experiment's row
-- lock and has just inserted the crates; results only by transactions that updated their job
-- (see 0003). Deleting an experiment deletes its results and jobs explicitly
-- (`experiments::delete`), as the cascade did.
ALTER TABLE results DROP CONSTRAINT results_experiment_id_fkey;
ALTER TABLE jobs DROP CONSTRAINT jobs_experiment_id_fkey;
ALTER TABLE jobs DROP CONSTRAINT jobs_crate_id_fkey;
ALTER TABLE results DROP CONSTRAINT results_pkey;
ALTER TABLE results DROP COLUMN id;
DROP INDEX results_report_idx;
ALTER TABLE results DROP CONSTRAINT results_experiment_id_crate_id_toolchain_key;
ALTER TABLE results ADD PRIMARY KEY (experiment_id, crate_id, toolchain);
