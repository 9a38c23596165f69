-- Knowledge base (I3-I5): documents, their chunks with pgvector embeddings, a tsvector
-- GIN index for keywords, and the event log. Needs the pgvector extension
-- (local/install-pgvector.sh installs it locally; RDS ships it).
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    version BIGINT NOT NULL,
    chunk_count INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    source TEXT NOT NULL,
    metadata JSONB NOT NULL DEFAULT '{}',
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE IF NOT EXISTS chunks (
    id TEXT PRIMARY KEY,
    document_id TEXT NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    model TEXT NOT NULL,
    dims INTEGER NOT NULL,
    -- Dimensions vary by model, so the column is untyped; the store creates one HNSW
    -- expression index per dimension in use (see KnowledgeStore::prepare).
    embedding vector NOT NULL,
    tsv tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english', title), 'A') || to_tsvector('english', text)
    ) STORED
);
CREATE INDEX IF NOT EXISTS chunks_document ON chunks (document_id, idx);
CREATE INDEX IF NOT EXISTS chunks_tsv ON chunks USING gin (tsv);

CREATE TABLE IF NOT EXISTS events (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    aggregate_version BIGINT NOT NULL,
    correlation_id TEXT NOT NULL,
    causation_id TEXT,
    payload JSONB NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS events_aggregate ON events (aggregate_id, seq);
