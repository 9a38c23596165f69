-- Each chunk records its row of the keyword index (issue 16, item 3): replacing or
-- deleting a document then deletes its keyword rows by rowid, instead of scanning the
-- whole index for their chunk ids (chunk_id is not an indexed column of chunks_fts),
-- which made ingest slower with every chunk already stored. The FTS5 table's rowids are
-- its own explicit keys, so VACUUM keeps them.
ALTER TABLE chunks ADD COLUMN fts_rowid INTEGER;

CREATE TEMP TABLE fts_rows AS SELECT rowid AS fts_rowid, chunk_id FROM chunks_fts;
CREATE INDEX temp.fts_rows_chunk ON fts_rows (chunk_id);
UPDATE chunks SET fts_rowid = (SELECT r.fts_rowid FROM fts_rows r WHERE r.chunk_id = chunks.id);
DROP TABLE fts_rows;
