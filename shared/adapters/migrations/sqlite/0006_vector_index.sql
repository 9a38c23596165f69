-- The PostgreSQL migration of the same number adds a bulk-built HNSW index and this
-- table to track it. SQLite searches vectors exactly and has no index to track, so the
-- table stays empty here; it exists so both backends have the same schema (and backups
-- the same tables).
CREATE TABLE IF NOT EXISTS vector_indexes (
    dims INTEGER PRIMARY KEY,
    generation INTEGER NOT NULL DEFAULT 0,
    index_name TEXT,
    building INTEGER NOT NULL DEFAULT 0,
    indexed_rows INTEGER NOT NULL DEFAULT 0,
    built_at TEXT
);
