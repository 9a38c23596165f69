-- Chat session history (C2): one row per message, newest read first, expired by time.
CREATE TABLE IF NOT EXISTS chat_messages (
    owner TEXT NOT NULL,
    session_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    message JSONB NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (owner, session_id, seq)
);
CREATE INDEX IF NOT EXISTS chat_messages_expiry ON chat_messages (expires_at);
