DROP INDEX results_borrowed_logs_idx;
