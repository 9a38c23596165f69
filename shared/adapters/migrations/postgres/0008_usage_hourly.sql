-- Usage per API key, model and UTC hour (issue 16): one row per key, model and hour
-- instead of one per answer, so a busy instance's database does not grow with its traffic.
-- The answers already in usage_records are folded in; the table stays for backups taken
-- before this version, whose rows the totals still count.
CREATE TABLE IF NOT EXISTS usage_hourly (
    key_name TEXT NOT NULL,
    model TEXT NOT NULL,
    day TEXT NOT NULL,
    hour SMALLINT NOT NULL,
    requests BIGINT NOT NULL,
    cached_requests BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cost_usd DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (key_name, day, hour, model)
);
INSERT INTO usage_hourly (key_name, model, day, hour, requests, cached_requests, prompt_tokens, completion_tokens, cost_usd)
SELECT key_name, model, day, EXTRACT(HOUR FROM created_at AT TIME ZONE 'UTC')::SMALLINT, COUNT(*),
       COUNT(*) FILTER (WHERE cached), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_usd)
FROM usage_records
GROUP BY key_name, model, day, EXTRACT(HOUR FROM created_at AT TIME ZONE 'UTC')::SMALLINT;
DELETE FROM usage_records;
