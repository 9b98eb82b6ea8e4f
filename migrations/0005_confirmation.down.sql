-- Confirmation runs and their results go; run 0 stays as the only job and result of each crate.
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
    UPDATE job_queues q SET next_job = n.lo
    FROM (SELECT experiment_id, min(id) AS lo FROM new_rows WHERE state = 'queued' GROUP BY experiment_id) n
    WHERE q.experiment_id = n.experiment_id AND q.next_job > n.lo;
    RETURN NULL;
END $$;

ALTER TABLE job_queues DROP COLUMN confirm;

DELETE FROM results WHERE run > 0;
ALTER TABLE results DROP CONSTRAINT results_pkey;
ALTER TABLE results ADD PRIMARY KEY (experiment_id, crate_id, toolchain);
ALTER TABLE results DROP COLUMN run;

-- the delete trigger takes them out of the counts
DELETE FROM leases l WHERE EXISTS (SELECT 1 FROM jobs j WHERE j.lease_id = l.id AND j.run > 0);
DELETE FROM jobs WHERE run > 0;
DROP INDEX jobs_confirmation_idx;
ALTER TABLE jobs DROP CONSTRAINT jobs_experiment_id_crate_id_run_key;
ALTER TABLE jobs ADD CONSTRAINT jobs_experiment_id_crate_id_key UNIQUE (experiment_id, crate_id);
ALTER TABLE jobs DROP COLUMN avoid_worker;
ALTER TABLE jobs DROP COLUMN run;
