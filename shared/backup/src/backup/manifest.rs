//! What a backup holds, written last: a backup without its manifest is incomplete and
//! never used or counted as good.

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};

/// The manifest's own format; a reader refuses a newer one.
pub const FORMAT: u32 = 1;
/// The manifest's file name inside a backup's folder.
pub const MANIFEST: &str = "manifest.json";
/// ElastiCache snapshots this function creates are named with this prefix and the
/// backup id, so retention deletes only its own.
pub const SNAPSHOT_PREFIX: &str = "chatkb-backup-";

/// A backup's id: its UTC start time and a random suffix (`20261205-143000-3fa9c1`),
/// so ids sort by time and are safe as folder, key and snapshot names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BackupId(String);

impl BackupId {
    /// The suffix is the millisecond and 12 random bits, so backups taken within one
    /// second still sort by time.
    pub fn new(at: DateTime<Utc>) -> Self {
        BackupId(format!(
            "{}-{:03}{:03x}",
            at.format("%Y%m%d-%H%M%S"),
            at.timestamp_subsec_millis().min(999),
            fastrand::u32(..0x1000)
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// When the backup started, from the id itself.
    pub fn started_at(&self) -> DateTime<Utc> {
        NaiveDateTime::parse_from_str(&self.0[..15], "%Y%m%d-%H%M%S")
            .map(|t| t.and_utc())
            .unwrap_or_default()
    }

    pub fn snapshot_name(&self) -> String {
        format!("{SNAPSHOT_PREFIX}{}", self.0)
    }

    /// The backup a snapshot name of ours belongs to.
    pub fn of_snapshot(name: &str) -> Option<Self> {
        name.strip_prefix(SNAPSHOT_PREFIX)?.parse().ok()
    }
}

impl std::str::FromStr for BackupId {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        let bytes = raw.as_bytes();
        let shape = bytes.len() == 22
            && bytes[8] == b'-'
            && bytes[15] == b'-'
            && bytes[..8].iter().all(u8::is_ascii_digit)
            && bytes[9..15].iter().all(u8::is_ascii_digit)
            && bytes[16..]
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
        let time = shape && NaiveDateTime::parse_from_str(&raw[..15], "%Y%m%d-%H%M%S").is_ok();
        if time {
            Ok(BackupId(raw.to_string()))
        } else {
            Err(format!(
                "`{}` is not a backup id (like 20261205-143000-3fa9c1)",
                raw.chars().take(64).collect::<String>()
            ))
        }
    }
}

impl TryFrom<String> for BackupId {
    type Error = String;
    fn try_from(raw: String) -> Result<Self, String> {
        raw.parse()
    }
}

impl From<BackupId> for String {
    fn from(id: BackupId) -> String {
        id.0
    }
}

impl std::fmt::Display for BackupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One file of a backup: a table of the database or of DynamoDB, as gzip'd JSON lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The table (`documents`), or for DynamoDB the store (`sessions`).
    pub name: String,
    /// The file, relative to the backup's folder.
    pub file: String,
    pub rows: u64,
    /// Size of the compressed file.
    pub bytes: u64,
    /// SHA-256 of the file as stored.
    pub sha256: String,
    /// SHA-256 of the uncompressed JSON lines: a restore re-reads what it loaded and
    /// compares.
    pub content_sha256: String,
    /// The columns each line holds (database tables).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    /// The DynamoDB table the items came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
}

/// The database a backup was taken of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// `sqlite` or `postgres`: a backup restores into the same dialect.
    pub dialect: String,
    /// The database URL without credentials.
    pub database: String,
    /// The newest migration applied when the backup was taken.
    pub migration_version: i64,
}

/// An ElastiCache snapshot taken with the backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub source: String,
    pub name: String,
    pub status: String,
}

/// The manifest: the last file written, and the proof a backup is whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub id: BackupId,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// What started it: `schedule`, `api`, `event` or `cli`.
    pub trigger: String,
    pub tool_version: String,
    pub compression: String,
    pub source: Source,
    pub tables: Vec<FileEntry>,
    #[serde(default)]
    pub dynamodb: Vec<FileEntry>,
    #[serde(default)]
    pub elasticache_snapshot: Option<SnapshotRecord>,
    /// Compressed bytes of every file.
    pub bytes: u64,
}

impl Manifest {
    pub fn files(&self) -> impl Iterator<Item = &FileEntry> {
        self.tables.iter().chain(self.dynamodb.iter())
    }

    pub fn rows(&self) -> u64 {
        self.files().map(|f| f.rows).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_carry_their_time_and_refuse_anything_else() {
        let at = DateTime::parse_from_rfc3339("2026-12-05T14:30:00Z")
            .unwrap()
            .to_utc();
        let id = BackupId::new(at);
        assert!(id.as_str().starts_with("20261205-143000-"), "{id}");
        assert_eq!(id.started_at(), at);
        assert_eq!(id.as_str().parse::<BackupId>().unwrap(), id);
        assert_eq!(BackupId::of_snapshot(&id.snapshot_name()), Some(id.clone()));
        let later = BackupId::new(at + chrono::Duration::seconds(1));
        assert!(later > id);
        for bad in [
            "../etc",
            "20261205-143000-3FA9C1",
            "20261305-143000-3fa9c1",
            "20261205-143000-3fa9c1/x",
            "",
            "latest",
        ] {
            assert!(bad.parse::<BackupId>().is_err(), "{bad}");
        }
    }
}
