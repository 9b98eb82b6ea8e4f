-- The pinned capabilities leave the queues' requirements with the table.
UPDATE job_queues q SET requirements = (
    SELECT coalesce(jsonb_agg(r ORDER BY n), '[]'::jsonb)
    FROM jsonb_array_elements(q.requirements) WITH ORDINALITY AS a(r, n)
    WHERE NOT EXISTS (SELECT 1 FROM experiment_toolchains t
                      WHERE t.experiment_id = q.experiment_id AND t.capability = a.r #>> '{}'))
WHERE EXISTS (SELECT 1 FROM experiment_toolchains t WHERE t.experiment_id = q.experiment_id);
DROP TABLE experiment_toolchains;
