-- Baseline: the SQLite store's schema 3 as sql.SCHEMA creates it and sql.MIGRATIONS brings older files up
-- to it (columns added in place when an older database is opened). Nothing to run here: this row marks
-- the point from which every schema change is a new numbered file in this folder.
SELECT 1;
