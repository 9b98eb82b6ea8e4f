ALTER TABLE experiments DROP COLUMN implied_requirements;
