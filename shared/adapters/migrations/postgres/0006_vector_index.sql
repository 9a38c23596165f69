-- Vector index built in bulk (issue 4). pgvector maintains an HNSW graph row by row at
-- 3-6 ms per 384-d vector at 100k chunks, against ~1 ms per vector when the index is
-- built in one go, so bulk imports skip the index and a maintainer builds it afterwards
-- (pgvector's own advice: load, then index), while small writes keep being indexed as
-- they come. Each chunk carries the index generation it belongs to: the live HNSW index
-- of a dimension covers `segment <= generation`; newer segments (the delta) are searched
-- exactly until the next build or fold (see shared::kb::vector_index).
ALTER TABLE chunks ADD COLUMN IF NOT EXISTS segment BIGINT NOT NULL DEFAULT 0;
-- Keep vectors in the row (other columns are compressed or moved out first), so an exact
-- scan of the delta reads no TOAST pages.
ALTER TABLE chunks ALTER COLUMN embedding SET STORAGE MAIN;
CREATE INDEX IF NOT EXISTS chunks_segment ON chunks (dims, segment);
-- Every keyword search scans the GIN index's whole pending list (fast-update inserts not
-- yet merged); after a bulk import it held 340 pages and cost ~3.5 ms per search. A
-- smaller list is merged more often, and the maintainer merges it after bulk imports.
ALTER INDEX chunks_tsv SET (gin_pending_list_limit = 512);

CREATE TABLE IF NOT EXISTS vector_indexes (
    dims INTEGER PRIMARY KEY,
    -- Chunks with segment <= generation are in index_name (when it is set).
    generation BIGINT NOT NULL DEFAULT 0,
    index_name TEXT,
    -- A build to generation + 1 is running: bulk writes go to generation + 2.
    building BOOLEAN NOT NULL DEFAULT false,
    indexed_rows BIGINT NOT NULL DEFAULT 0,
    built_at TIMESTAMPTZ
);

-- Earlier versions kept one row-by-row HNSW index per dimension; the maintainer replaces
-- it with a bulk-built one, so drop it rather than pay for both.
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT indexname FROM pg_indexes
             WHERE tablename = 'chunks' AND indexname ~ '^chunks_embedding_hnsw_[0-9]+$'
    LOOP
        EXECUTE format('DROP INDEX IF EXISTS %I', r.indexname);
    END LOOP;
END $$;
