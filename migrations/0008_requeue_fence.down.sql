-- The triggers as 0005 (insert) and 0004 (update) left them; the counter goes.
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

CREATE OR REPLACE FUNCTION jobs_count_updated() RETURNS trigger LANGUAGE plpgsql AS $$
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

ALTER TABLE job_queues DROP COLUMN requeues;
