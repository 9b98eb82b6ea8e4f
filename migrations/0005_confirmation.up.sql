-- Confirmation of regressions and fixes (ARCHITECTURE "Scheduling"): a crate whose first run
-- compares as regressed or fixed is run again, both sides, `confirm` times (the experiment's
-- spec). Each run is a job of its own, with its own results rows.
--
-- * `jobs.run`: 0 for the crate's first run, 1..=confirm for the confirmation runs (created by
--   the completion that records a regressed/fixed run 0, in its statement). The job key becomes
--   (experiment, crate, run). `jobs.avoid_worker`: the worker that ran run 0; a claim by that
--   worker skips the job while another connected worker could take it.
-- * `results.run`: the run the row belongs to; the key becomes (experiment, crate, run, side).
--   Everything that reads results for the report reads run 0.
-- * `job_queues.confirm`: the experiment's `confirm`, copied from the spec at the start (like
--   `requirements`), so that a completion need not read the spec.
-- * The insert trigger also raises `job_queues.last_job` to the highest id inserted, so that jobs
--   added to a running experiment are inside its claim range (it already lowered `next_job`).
--
-- None of the new columns changes after the row is written, so claims and completions stay HOT.

ALTER TABLE jobs ADD COLUMN run smallint NOT NULL DEFAULT 0 CHECK (run >= 0);
ALTER TABLE jobs ADD COLUMN avoid_worker uuid;
ALTER TABLE jobs DROP CONSTRAINT jobs_experiment_id_crate_id_key;
ALTER TABLE jobs ADD CONSTRAINT jobs_experiment_id_crate_id_run_key UNIQUE (experiment_id, crate_id, run);
-- the crates of an experiment that were re-run (`caldera_db::confirmations`), without reading all
-- its jobs; only confirmation jobs are in it, and none of its columns ever changes (HOT stays)
CREATE INDEX jobs_confirmation_idx ON jobs (experiment_id, crate_id) WHERE run > 0;

ALTER TABLE results ADD COLUMN run smallint NOT NULL DEFAULT 0 CHECK (run >= 0);
ALTER TABLE results DROP CONSTRAINT results_pkey;
ALTER TABLE results ADD PRIMARY KEY (experiment_id, crate_id, run, toolchain);

-- the experiments started before this migration: their spec's value, or the default (2)
ALTER TABLE job_queues ADD COLUMN confirm smallint NOT NULL DEFAULT 0;
UPDATE job_queues q SET confirm = coalesce((e.spec->>'confirm')::smallint, 2)
FROM experiments e WHERE e.id = q.experiment_id;

CREATE OR REPLACE FUNCTION jobs_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
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
    -- every queued job at or above the cursor, every job at or below `last_job`
    UPDATE job_queues q SET next_job = least(q.next_job, n.lo), last_job = greatest(q.last_job, n.hi)
    FROM (SELECT experiment_id, min(id) FILTER (WHERE state = 'queued') AS lo, max(id) AS hi
          FROM new_rows GROUP BY experiment_id) n
    WHERE q.experiment_id = n.experiment_id AND (q.next_job > n.lo OR q.last_job < n.hi);
    RETURN NULL;
END $$;
