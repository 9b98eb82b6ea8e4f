-- The result cache (issue 14, item 2). A side whose key (caldera_core::fingerprint::cache_key:
-- crate, toolchain and its build, mode, lint cap, overrides, the worker's sandbox image, limits
-- and classifier version) matches a trustworthy earlier result is settled from it when its
-- experiment starts, instead of running.
--
-- * `results.cache_key`: the key the worker computed for a side it ran, kept only when the
--   outcome may be reused (caldera_core::fingerprint::is_trustworthy); NULL otherwise, and for
--   rows that were themselves settled from the cache (so every source is an original run).
-- * `results.cached_from` / `cached_from_name`: the experiment the row was copied from (its id,
--   and its name for links; no foreign key, the row stays when the source is deleted).
-- * `jobs.only_side`: a job whose other side was settled from the cache runs only this side
--   (never changes after the start, so claims and completions stay HOT updates).
ALTER TABLE results ADD COLUMN cache_key text;
ALTER TABLE results ADD COLUMN cached_from uuid;
ALTER TABLE results ADD COLUMN cached_from_name text;
CREATE INDEX results_cache_key_idx ON results (cache_key, created_at DESC)
    WHERE cache_key IS NOT NULL AND run = 0;
ALTER TABLE jobs ADD COLUMN only_side text CHECK (only_side IN ('start', 'end'));
