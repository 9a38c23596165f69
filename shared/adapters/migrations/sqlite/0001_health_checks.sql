-- Results of the scheduled deep health check (H2), kept for a week.
CREATE TABLE IF NOT EXISTS health_checks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    checked_at TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'degraded', 'down')),
    report TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS health_checks_checked_at ON health_checks (checked_at);
