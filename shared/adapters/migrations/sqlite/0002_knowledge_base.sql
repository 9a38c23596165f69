-- Knowledge base (I3-I5): documents, their chunks with embeddings, keyword index, event log.
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    version INTEGER NOT NULL,
    chunk_count INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    source TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS chunks (
    id TEXT PRIMARY KEY,
    document_id TEXT NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    text TEXT NOT NULL,
    model TEXT NOT NULL,
    dims INTEGER NOT NULL,
    -- Little-endian f32 values; searched by an exact scan.
    embedding BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_document ON chunks (document_id, idx);
CREATE INDEX IF NOT EXISTS chunks_model ON chunks (model);

-- Keyword search: porter-stemmed full text, kept in the same transaction as chunks.
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5 (
    chunk_id UNINDEXED,
    title,
    text,
    tokenize = 'porter unicode61'
);

-- Durable event log / outbox (I5); seq orders it for consumers (GET /events?after=).
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    aggregate_version INTEGER NOT NULL,
    correlation_id TEXT NOT NULL,
    causation_id TEXT,
    payload TEXT NOT NULL,
    occurred_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_aggregate ON events (aggregate_id, seq);
