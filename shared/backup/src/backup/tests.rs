use std::time::Duration;

use chrono::{DateTime, Utc};

use super::archive::{LinesReader, LinesWriter};
use super::*;
use crate::store::blobs::{BlobStore, FolderBlobs};

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().to_utc()
}

fn summary(id: &str, good: bool) -> BackupSummary {
    let id: BackupId = id.parse().unwrap();
    BackupSummary {
        started_at: id.started_at(),
        id,
        status: if good { "complete" } else { "incomplete" },
        finished_at: None,
        bytes: 1,
        rows: None,
        files: 1,
        snapshot: None,
        problem: None,
    }
}

#[test]
fn retention_deletes_old_backups_but_never_the_newest_good_one() {
    let week = Duration::from_secs(7 * 86_400);
    // Newest first, as `list` gives them.
    let backups = [
        summary("20261204-020000-aaaaaa", false), // failed run, 1 day 10 h old
        summary("20261203-020000-bbbbbb", true),
        summary("20261120-020000-cccccc", true), // 15 days old
        summary("20261110-020000-dddddd", false), // old and incomplete
    ];
    let now = at("2026-12-05T12:00:00Z");
    let doomed = plan_retention(&backups, now, week);
    let ids: Vec<&str> = doomed.iter().map(BackupId::as_str).collect();
    assert_eq!(
        ids,
        [
            "20261204-020000-aaaaaa",
            "20261120-020000-cccccc",
            "20261110-020000-dddddd"
        ]
    );

    // A month later with no new backup: the newest good one stays, however old.
    let later = at("2027-01-05T12:00:00Z");
    let ids: Vec<String> = plan_retention(&backups, later, week)
        .iter()
        .map(|i| i.to_string())
        .collect();
    assert!(
        !ids.contains(&"20261203-020000-bbbbbb".to_string()),
        "{ids:?}"
    );
    assert_eq!(ids.len(), 3);

    // A backup whose manifest cannot be read is never deleted.
    let mut damaged = summary("20261001-020000-ffffff", true);
    damaged.status = "damaged";
    assert!(plan_retention(&[damaged], later, week).is_empty());

    // An incomplete backup of an hour ago may still be running.
    let running = [summary("20261205-110000-eeeeee", false)];
    assert!(plan_retention(&running, now, week).is_empty());
}

#[test]
fn backup_urls_name_a_folder_or_an_s3_prefix_and_refuse_anything_else() {
    assert_eq!(
        BackupUrl::parse("file:///var/backups").unwrap(),
        BackupUrl::Folder("/var/backups".into())
    );
    assert_eq!(
        BackupUrl::parse(BackupUrl::DEFAULT).unwrap(),
        BackupUrl::Folder(".data/backups".into())
    );
    assert_eq!(
        BackupUrl::parse("s3://my-bucket/prod/chatkb/").unwrap(),
        BackupUrl::S3 {
            bucket: "my-bucket".into(),
            prefix: "prod/chatkb".into()
        }
    );
    for bad in ["file://", "s3://", "s3://Upper/x", "ftp://x", "/tmp/x"] {
        assert!(BackupUrl::parse(bad).is_err(), "{bad}");
    }
}

async fn write_file(store: &FolderBlobs, key: &str, lines: &[String]) -> FileEntry {
    let mut out = LinesWriter::new(store.writer(key).await.unwrap(), "t", key);
    for line in lines {
        out.push(line).await.unwrap();
    }
    out.finish(vec!["a".into()]).await.unwrap()
}

async fn read_all(
    store: &FolderBlobs,
    entry: &FileEntry,
    batch: usize,
) -> Result<Vec<String>, BackupError> {
    let mut lines = LinesReader::new(store.reader(&entry.file).await?, &entry.file);
    let mut all = Vec::new();
    while let Some(chunk) = lines.next_batch(batch).await? {
        assert!(chunk.len() <= batch);
        all.extend(chunk);
    }
    lines.check(entry)?;
    Ok(all)
}

#[tokio::test]
async fn a_file_reads_back_in_bounded_batches_and_damage_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = FolderBlobs::new(dir.path());
    // Enough varied rows to span several compressed flushes.
    let lines: Vec<String> = (0..40_000)
        .map(|i| {
            serde_json::json!({"a": i, "t": format!("row {i} é {}", fastrand::u64(..))}).to_string()
        })
        .collect();
    let entry = write_file(&store, "x/db/t.jsonl.gz", &lines).await;
    assert_eq!(entry.rows, 40_000);
    assert_eq!(read_all(&store, &entry, 700).await.unwrap(), lines);

    let path = dir.path().join("x/db/t.jsonl.gz");
    let original = std::fs::read(&path).unwrap();
    // One flipped byte in the middle.
    let mut flipped = original.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x55;
    std::fs::write(&path, &flipped).unwrap();
    let err = read_all(&store, &entry, 700).await.unwrap_err();
    assert!(
        matches!(&err, BackupError::Corrupt { file, .. } if file == "x/db/t.jsonl.gz"),
        "{err}"
    );
    // Cut short.
    std::fs::write(&path, &original[..original.len() - 100]).unwrap();
    let err = read_all(&store, &entry, 700).await.unwrap_err();
    assert!(err.to_string().starts_with("x/db/t.jsonl.gz: "), "{err}");
    // Whole again, but a manifest that expects another row count.
    std::fs::write(&path, &original).unwrap();
    let wrong = FileEntry {
        rows: 39_999,
        ..entry.clone()
    };
    let err = read_all(&store, &wrong, 700).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("40000 rows, the manifest says 39999"),
        "{err}"
    );
}
