-- Good backups (B1-B5), so /health/detailed reports the age of the last one. The
-- backups themselves live in BACKUP_URL; this table is not part of them.
CREATE TABLE IF NOT EXISTS backup_runs (
    id TEXT PRIMARY KEY,
    finished_at TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    row_count INTEGER NOT NULL,
    location TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS backup_runs_finished_at ON backup_runs (finished_at);
