-- A confirmation run's row copied from the source of a cached side (CONFIRMING in
-- caldera_db::jobs::completion) names the source's log. When the source is deleted, those rows'
-- logs are copied into their own experiment's prefix (caldera_db::cache::borrowed_logs); this
-- index finds them by the source's name, which outlives the source's rows. Only copied rows of
-- confirmation runs are in it: few.
CREATE INDEX results_borrowed_logs_idx ON results (cached_from_name) WHERE run > 0 AND cached_from IS NOT NULL;
