-- SQLite only (its chunks record their row of the FTS5 keyword index). PostgreSQL's
-- keyword index is the tsv column's GIN index, which needs no such link; the file keeps
-- both dialects at the same migration version.
SELECT 1;
