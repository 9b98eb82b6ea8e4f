-- A job queued again is never stranded behind its experiment's claim cursor.
--
-- The race this closes: a claim statement reads the queued jobs of its window with the snapshot
-- taken when the statement began, but locks and updates the `job_queues` row in its newest
-- version. A job that became queued again (hand-back, expired lease, infrastructure error,
-- confirmation run) in a transaction that committed after the claim's snapshot is invisible to
-- the claim's window, yet the claim moved the cursor past it: the job stayed queued forever.
-- Before, the triggers also touched the cursor row only when the cursor was above the job, so
-- nothing even ordered the two.
--
-- * `job_queues.requeues`: bumped, under the row lock, by every statement that makes a job of
--   the experiment queued (insert or update). The triggers now always lock the cursor row when
--   they queue a job, so a claim and a requeue are ordered by that lock.
-- * The triggers lock the cursor row before the job counts: a claim locks the cursor row, then
--   (its own trigger) a counts stripe, so a requeue that took a stripe first could deadlock with
--   it when both hashed to the same stripe.
-- * A claim compares the counter of the row it locked (the newest version) with the counter in
--   its own snapshot: when they differ, a requeue committed after its snapshot, so the claim
--   takes what it picked but leaves the cursor where it is (`caldera_db::jobs::claims`). The next
--   claim, with a newer snapshot, sees the job.

ALTER TABLE job_queues ADD COLUMN requeues bigint NOT NULL DEFAULT 0;

CREATE OR REPLACE FUNCTION jobs_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- every queued job at or above the cursor, every job at or below `last_job`; the row is
    -- locked (and `requeues` bumped) whenever a job is queued, whether the cursor moves or not
    UPDATE job_queues q SET next_job = least(q.next_job, n.lo), last_job = greatest(q.last_job, n.hi),
                            requeues = q.requeues + (n.lo IS NOT NULL)::int
    FROM (SELECT experiment_id, min(id) FILTER (WHERE state = 'queued') AS lo, max(id) AS hi
          FROM new_rows GROUP BY experiment_id) n
    WHERE q.experiment_id = n.experiment_id AND (n.lo IS NOT NULL OR q.last_job < n.hi);
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
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION jobs_count_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- a job queued again must be at or above its experiment's claim cursor; the row is locked
    -- (and `requeues` bumped) even when the cursor is below the job already: a claim running
    -- now may be about to move it (see the header of this migration)
    UPDATE job_queues q SET next_job = least(q.next_job, n.lo), requeues = q.requeues + 1
    FROM (SELECT experiment_id, min(id) AS lo FROM new_rows WHERE state = 'queued' GROUP BY experiment_id) n
    WHERE q.experiment_id = n.experiment_id;
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
    RETURN NULL;
END $$;
