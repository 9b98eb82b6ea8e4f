-- Which side of its source a row settled from the result cache was copied from (the key does not
-- depend on the side, so an earlier end side can settle a start side). A confirmation run of a
-- crate whose side was settled from the cache takes that side's re-runs from the source
-- experiment's confirmation runs of the same side, when the source has them, instead of building
-- the same thing again (caldera_db::jobs::completion, CONFIRMING). NULL on rows that ran.
ALTER TABLE results ADD COLUMN cached_from_side text CHECK (cached_from_side IN ('start', 'end'));
