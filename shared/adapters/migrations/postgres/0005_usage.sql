-- Usage and cost per answer (C10): tokens, cache hits and cost per API key and model.
CREATE TABLE IF NOT EXISTS usage_records (
    id BIGSERIAL PRIMARY KEY,
    key_name TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cached BOOLEAN NOT NULL,
    cost_usd DOUBLE PRECISION NOT NULL,
    day TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_records_key_day ON usage_records (key_name, day);
