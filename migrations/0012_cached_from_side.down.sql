ALTER TABLE results DROP COLUMN cached_from_side;
