ALTER TABLE jobs DROP COLUMN only_side;
DROP INDEX results_cache_key_idx;
ALTER TABLE results DROP COLUMN cached_from_name;
ALTER TABLE results DROP COLUMN cached_from;
ALTER TABLE results DROP COLUMN cache_key;
