//! Where backups are kept (`BACKUP_URL`): a local folder (the embedded default) or an S3
//! prefix, behind one trait. Files are written as streams (S3: multipart upload past one
//! part) and appear only when finished, so a reader never sees half a file.

use std::path::{Component, Path, PathBuf};

use async_trait::async_trait;

/// Why a blob operation failed; messages name the blob, never a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    #[error("{0} does not exist")]
    NotFound(String),
    /// A key that is not a plain relative path (`..`, absolute, empty).
    #[error("{0}")]
    BadKey(String),
    /// The folder or bucket could not be used (permissions, network, region, disk).
    #[error("{0}")]
    Unavailable(String),
}

/// One stored blob as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// Relative to the store's root, `/`-separated.
    pub key: String,
    pub size: u64,
}

/// A blob being written: bytes go in order; nothing is visible before `finish`.
#[async_trait]
pub trait BlobWriter: Send {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), BlobError>;
    /// Makes the blob visible; returns its size.
    async fn finish(self: Box<Self>) -> Result<u64, BlobError>;
    /// Drops what was written (a failed backup leaves no partial file behind).
    async fn abort(self: Box<Self>);
}

/// A blob being read, in chunks of the store's choosing.
#[async_trait]
pub trait BlobReader: Send {
    async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, BlobError>;
}

/// A folder or an S3 prefix holding backups.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Where the store is, safe to show (`file://...`, `s3://bucket/prefix`).
    fn location(&self) -> String;
    async fn writer(&self, key: &str) -> Result<Box<dyn BlobWriter>, BlobError>;
    async fn reader(&self, key: &str) -> Result<Box<dyn BlobReader>, BlobError>;
    /// Every blob under the root, in key order.
    async fn list(&self) -> Result<Vec<BlobInfo>, BlobError>;
    async fn delete(&self, key: &str) -> Result<(), BlobError>;

    /// A small blob whole (a manifest).
    async fn get(&self, key: &str) -> Result<Vec<u8>, BlobError> {
        let mut reader = self.reader(key).await?;
        let mut all = Vec::new();
        while let Some(chunk) = reader.next_chunk().await? {
            all.extend_from_slice(&chunk);
        }
        Ok(all)
    }

    async fn put(&self, key: &str, bytes: &[u8]) -> Result<u64, BlobError> {
        let mut writer = self.writer(key).await?;
        if let Err(err) = writer.write(bytes).await {
            writer.abort().await;
            return Err(err);
        }
        writer.finish().await
    }
}

/// Keys are `/`-separated relative paths: no absolute paths, no `..`, nothing empty.
pub fn check_key(key: &str) -> Result<&Path, BlobError> {
    let path = Path::new(key);
    let plain = !key.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)));
    if plain {
        Ok(path)
    } else {
        Err(BlobError::BadKey(format!(
            "`{key}` is not a plain relative key"
        )))
    }
}

/// Backups in a local folder (`file://` URLs; the embedded default `.data/backups`).
pub struct FolderBlobs {
    root: PathBuf,
}

impl FolderBlobs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn io_error(&self, what: &Path, err: std::io::Error) -> BlobError {
        let name = what.display().to_string();
        match err.kind() {
            std::io::ErrorKind::NotFound => BlobError::NotFound(name),
            _ => BlobError::Unavailable(format!("{name}: {err}")),
        }
    }
}

struct FolderWriter {
    partial: PathBuf,
    target: PathBuf,
    file: tokio::fs::File,
    size: u64,
}

#[async_trait]
impl BlobWriter for FolderWriter {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), BlobError> {
        use tokio::io::AsyncWriteExt;
        self.file
            .write_all(bytes)
            .await
            .map_err(|e| BlobError::Unavailable(format!("{}: {e}", self.partial.display())))?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<u64, BlobError> {
        let failed =
            |e: std::io::Error| BlobError::Unavailable(format!("{}: {e}", self.target.display()));
        self.file.sync_all().await.map_err(failed)?;
        tokio::fs::rename(&self.partial, &self.target)
            .await
            .map_err(failed)?;
        Ok(self.size)
    }

    async fn abort(self: Box<Self>) {
        drop(self.file);
        let _ = tokio::fs::remove_file(&self.partial).await;
    }
}

struct FolderReader {
    file: tokio::fs::File,
    name: PathBuf,
}

#[async_trait]
impl BlobReader for FolderReader {
    async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, BlobError> {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 256 * 1024];
        let n = self
            .file
            .read(&mut buf)
            .await
            .map_err(|e| BlobError::Unavailable(format!("{}: {e}", self.name.display())))?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        Ok(Some(buf))
    }
}

#[async_trait]
impl BlobStore for FolderBlobs {
    fn location(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn writer(&self, key: &str) -> Result<Box<dyn BlobWriter>, BlobError> {
        let target = self.root.join(check_key(key)?);
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| self.io_error(parent, e))?;
        }
        let mut partial = target.clone().into_os_string();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let file = tokio::fs::File::create(&partial)
            .await
            .map_err(|e| self.io_error(&partial, e))?;
        Ok(Box::new(FolderWriter {
            partial,
            target,
            file,
            size: 0,
        }))
    }

    async fn reader(&self, key: &str) -> Result<Box<dyn BlobReader>, BlobError> {
        let name = self.root.join(check_key(key)?);
        let file = tokio::fs::File::open(&name)
            .await
            .map_err(|e| self.io_error(&name, e))?;
        Ok(Box::new(FolderReader { file, name }))
    }

    async fn list(&self) -> Result<Vec<BlobInfo>, BlobError> {
        let mut found = Vec::new();
        let mut pending = vec![(self.root.clone(), String::new())];
        while let Some((dir, prefix)) = pending.pop() {
            let mut entries = match tokio::fs::read_dir(&dir).await {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io_error(&dir, e)),
            };
            while let Some(entry) = entries
                .next_entry()
                .await
                .map_err(|e| self.io_error(&dir, e))?
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                let key = format!("{prefix}{name}");
                let meta = entry
                    .metadata()
                    .await
                    .map_err(|e| self.io_error(&entry.path(), e))?;
                if meta.is_dir() {
                    pending.push((entry.path(), format!("{key}/")));
                } else if !name.ends_with(".partial") {
                    found.push(BlobInfo {
                        key,
                        size: meta.len(),
                    });
                }
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        let path = self.root.join(check_key(key)?);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io_error(&path, e)),
        }
        // Drop the folders the last file of which this was (never the root).
        let mut parent = path.parent();
        while let Some(dir) = parent.filter(|p| *p != self.root && p.starts_with(&self.root)) {
            if tokio::fs::remove_dir(dir).await.is_err() {
                break;
            }
            parent = dir.parent();
        }
        Ok(())
    }
}

#[cfg(feature = "s3")]
pub use s3::S3Blobs;

#[cfg(feature = "s3")]
mod s3;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_folder_store_shows_a_file_only_when_finished_and_refuses_escaping_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderBlobs::new(dir.path());
        let mut writer = store.writer("b1/table.jsonl.gz").await.unwrap();
        writer.write(b"hello ").await.unwrap();
        assert!(
            store.list().await.unwrap().is_empty(),
            "visible before finish"
        );
        writer.write(b"world").await.unwrap();
        assert_eq!(writer.finish().await.unwrap(), 11);
        assert_eq!(
            store.get("b1/table.jsonl.gz").await.unwrap(),
            b"hello world"
        );
        let mut aborted = store.writer("b1/other").await.unwrap();
        aborted.write(b"half").await.unwrap();
        assert!(dir.path().join("b1/other.partial").exists());
        aborted.abort().await;
        assert!(
            !dir.path().join("b1/other.partial").exists(),
            "aborted bytes left behind"
        );
        let listed = store.list().await.unwrap();
        assert_eq!(
            listed,
            vec![BlobInfo {
                key: "b1/table.jsonl.gz".into(),
                size: 11
            }]
        );
        for bad in ["../x", "/etc/passwd", "", "a/../../b"] {
            assert!(
                matches!(store.writer(bad).await, Err(BlobError::BadKey(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            store.get("b2/none").await,
            Err(BlobError::NotFound(_))
        ));
        store.delete("b1/table.jsonl.gz").await.unwrap();
        assert!(store.list().await.unwrap().is_empty());
        assert!(
            !dir.path().join("b1").exists(),
            "empty backup folder removed"
        );
    }
}
