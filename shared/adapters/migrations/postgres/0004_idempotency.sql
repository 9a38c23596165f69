-- Idempotency records (C8): one per API key and Idempotency-Key. Times in epoch ms.
CREATE TABLE IF NOT EXISTS idempotency_records (
    key TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('INPROGRESS', 'COMPLETED')),
    payload_hash TEXT NOT NULL,
    response TEXT,
    expires_at BIGINT NOT NULL,
    in_progress_until BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_records_expiry ON idempotency_records (expires_at);
