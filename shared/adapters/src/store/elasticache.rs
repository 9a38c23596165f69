//! ElastiCache snapshots of a Redis replication group (aws-sdk-elasticache): what the
//! backup function creates beside its logical backup, and deletes with the same
//! retention. The client is built on first use; `AWS_ENDPOINT_URL` selects an emulator.

use async_trait::async_trait;
use tokio::sync::OnceCell;

/// A snapshot as ElastiCache describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub name: String,
    /// `creating`, `available`, ... as ElastiCache reports it.
    pub status: String,
}

/// A snapshot call failed; the message is ElastiCache's, with credentials redacted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("elasticache: {0}")]
pub struct SnapshotError(pub String);

/// Snapshots of one cache, by name.
#[async_trait]
pub trait CacheSnapshots: Send + Sync {
    /// What is snapshotted, safe to show (the replication group id).
    fn source(&self) -> String;
    async fn create(&self, name: &str) -> Result<SnapshotInfo, SnapshotError>;
    /// Manual snapshots of the cache whose names start with `prefix`.
    async fn list(&self, prefix: &str) -> Result<Vec<SnapshotInfo>, SnapshotError>;
    async fn delete(&self, name: &str) -> Result<(), SnapshotError>;
}

/// Snapshots of an ElastiCache replication group.
pub struct ElastiCacheSnapshots {
    replication_group_id: String,
    client: OnceCell<aws_sdk_elasticache::Client>,
}

impl ElastiCacheSnapshots {
    pub fn new(replication_group_id: &str) -> Self {
        Self {
            replication_group_id: replication_group_id.to_string(),
            client: OnceCell::new(),
        }
    }

    async fn client(&self) -> &aws_sdk_elasticache::Client {
        self.client
            .get_or_init(|| async {
                aws_sdk_elasticache::Client::new(&super::aws::load_config().await)
            })
            .await
    }
}

fn failed<E: std::error::Error>(err: E) -> SnapshotError {
    let detail = aws_sdk_elasticache::error::DisplayErrorContext(err).to_string();
    SnapshotError(crate::observability::redact::redact(&detail).into_owned())
}

#[async_trait]
impl CacheSnapshots for ElastiCacheSnapshots {
    fn source(&self) -> String {
        format!("elasticache:{}", self.replication_group_id)
    }

    async fn create(&self, name: &str) -> Result<SnapshotInfo, SnapshotError> {
        let created = self
            .client()
            .await
            .create_snapshot()
            .replication_group_id(&self.replication_group_id)
            .snapshot_name(name)
            .send()
            .await
            .map_err(failed)?;
        let snapshot = created.snapshot;
        Ok(SnapshotInfo {
            name: snapshot
                .as_ref()
                .and_then(|s| s.snapshot_name())
                .unwrap_or(name)
                .to_string(),
            status: snapshot
                .as_ref()
                .and_then(|s| s.snapshot_status())
                .unwrap_or("creating")
                .to_string(),
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<SnapshotInfo>, SnapshotError> {
        let mut found = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let sent = marker.clone();
            let page = self
                .client()
                .await
                .describe_snapshots()
                .replication_group_id(&self.replication_group_id)
                .snapshot_source("manual")
                .set_marker(marker.take())
                .send()
                .await
                .map_err(failed)?;
            for snapshot in page.snapshots() {
                let Some(name) = snapshot.snapshot_name() else {
                    continue;
                };
                if name.starts_with(prefix) {
                    found.push(SnapshotInfo {
                        name: name.to_string(),
                        status: snapshot.snapshot_status().unwrap_or("").to_string(),
                    });
                }
            }
            match page.marker() {
                // (An emulator that echoes the marker back would loop forever.)
                Some(next) if !next.is_empty() && Some(next) != sent.as_deref() => {
                    marker = Some(next.to_string())
                }
                _ => break,
            }
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }

    async fn delete(&self, name: &str) -> Result<(), SnapshotError> {
        self.client()
            .await
            .delete_snapshot()
            .snapshot_name(name)
            .send()
            .await
            .map_err(failed)?;
        Ok(())
    }
}
