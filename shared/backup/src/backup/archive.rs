//! A backup file: JSON lines, gzip'd, streamed to a blob with its hashes taken on the way
//! (SHA-256 of the stored bytes, and of the lines themselves), and read back the same
//! way in bounded batches.

use std::io::Write;

use flate2::write::{GzDecoder, GzEncoder};
use sha2::{Digest, Sha256};

use super::manifest::FileEntry;
use super::BackupError;
use crate::store::blobs::{BlobReader, BlobWriter};

/// Compressed bytes gathered before they are handed to the blob.
const FLUSH_BYTES: usize = 256 * 1024;

/// A file being written.
pub(crate) struct LinesWriter {
    blob: Option<Box<dyn BlobWriter>>,
    gzip: GzEncoder<Vec<u8>>,
    file_hash: Sha256,
    content_hash: Sha256,
    rows: u64,
    /// Uncompressed bytes, for progress.
    pub(crate) raw_bytes: u64,
    name: String,
    file: String,
}

impl LinesWriter {
    pub(crate) fn new(blob: Box<dyn BlobWriter>, name: &str, file: &str) -> Self {
        Self {
            blob: Some(blob),
            gzip: GzEncoder::new(Vec::new(), flate2::Compression::new(6)),
            file_hash: Sha256::new(),
            content_hash: Sha256::new(),
            rows: 0,
            raw_bytes: 0,
            name: name.to_string(),
            file: file.to_string(),
        }
    }

    pub(crate) fn rows(&self) -> u64 {
        self.rows
    }

    /// One row; `line` holds no newline (JSON text never does).
    pub(crate) async fn push(&mut self, line: &str) -> Result<(), BackupError> {
        self.content_hash.update(line.as_bytes());
        self.content_hash.update(b"\n");
        self.gzip
            .write_all(line.as_bytes())
            .and_then(|_| self.gzip.write_all(b"\n"))
            .map_err(|e| BackupError::Internal(format!("compressing {}: {e}", self.file)))?;
        self.rows += 1;
        self.raw_bytes += line.len() as u64 + 1;
        if self.gzip.get_ref().len() >= FLUSH_BYTES {
            let out = std::mem::take(self.gzip.get_mut());
            self.send(out).await?;
        }
        Ok(())
    }

    async fn send(&mut self, out: Vec<u8>) -> Result<(), BackupError> {
        self.file_hash.update(&out);
        let blob = self.blob.as_mut().expect("writer open");
        blob.write(&out).await?;
        Ok(())
    }

    /// Closes the file and describes it for the manifest.
    pub(crate) async fn finish(mut self, columns: Vec<String>) -> Result<FileEntry, BackupError> {
        let gzip = std::mem::replace(
            &mut self.gzip,
            GzEncoder::new(Vec::new(), Default::default()),
        );
        let sent = match gzip.finish() {
            Ok(out) => self.send(out).await,
            Err(e) => Err(BackupError::Internal(format!(
                "compressing {}: {e}",
                self.file
            ))),
        };
        if let Err(err) = sent {
            self.abort_blob().await;
            return Err(err);
        }
        let bytes = self.blob.take().expect("writer open").finish().await?;
        Ok(FileEntry {
            name: self.name.clone(),
            file: self.file.clone(),
            rows: self.rows,
            bytes,
            sha256: hex::encode(self.file_hash.finalize_reset()),
            content_sha256: hex::encode(self.content_hash.finalize_reset()),
            columns,
            table: None,
        })
    }

    /// Drops the partial file.
    pub(crate) async fn abort(mut self) {
        self.abort_blob().await;
    }

    async fn abort_blob(&mut self) {
        if let Some(blob) = self.blob.take() {
            blob.abort().await;
        }
    }
}

/// A file being read back: lines in batches, hashes checked at the end.
pub(crate) struct LinesReader {
    blob: Box<dyn BlobReader>,
    gunzip: GzDecoder<Vec<u8>>,
    file_hash: Sha256,
    content_hash: Sha256,
    /// Decompressed bytes; those before `start` are already split into lines.
    pending: Vec<u8>,
    start: usize,
    rows: u64,
    bytes: u64,
    done: bool,
    file: String,
}

impl LinesReader {
    pub(crate) fn new(blob: Box<dyn BlobReader>, file: &str) -> Self {
        Self {
            blob,
            gunzip: GzDecoder::new(Vec::new()),
            file_hash: Sha256::new(),
            content_hash: Sha256::new(),
            pending: Vec::new(),
            start: 0,
            rows: 0,
            bytes: 0,
            done: false,
            file: file.to_string(),
        }
    }

    fn corrupt(&self, detail: impl std::fmt::Display) -> BackupError {
        BackupError::Corrupt {
            file: self.file.clone(),
            detail: detail.to_string(),
        }
    }

    /// Up to `max_rows` lines (at least one chunk's worth is read); `None` at the end.
    pub(crate) async fn next_batch(
        &mut self,
        max_rows: usize,
    ) -> Result<Option<Vec<String>>, BackupError> {
        let mut lines = Vec::new();
        loop {
            while lines.len() < max_rows {
                let rest = &self.pending[self.start..];
                let Some(end) = rest.iter().position(|&b| b == b'\n') else {
                    break;
                };
                let line = &rest[..=end];
                self.content_hash.update(line);
                let text = std::str::from_utf8(&line[..end])
                    .map_err(|_| self.corrupt(format!("line {} is not UTF-8", self.rows + 1)))?
                    .to_string();
                self.start += end + 1;
                self.rows += 1;
                lines.push(text);
            }
            if lines.len() >= max_rows || self.done {
                break;
            }
            match self.blob.next_chunk().await? {
                Some(chunk) => {
                    self.file_hash.update(&chunk);
                    self.bytes += chunk.len() as u64;
                    self.gunzip
                        .write_all(&chunk)
                        .map_err(|e| self.corrupt(format!("not valid gzip: {e}")))?;
                }
                None => {
                    self.gunzip
                        .try_finish()
                        .map_err(|e| self.corrupt(format!("not valid gzip: {e}")))?;
                    self.done = true;
                }
            }
            // Drop the lines already taken once per chunk, not once per line.
            self.pending.drain(..self.start);
            self.start = 0;
            let decoded = std::mem::take(self.gunzip.get_mut());
            self.pending.extend_from_slice(&decoded);
        }
        if lines.is_empty() && self.done {
            if self.start < self.pending.len() {
                return Err(self.corrupt("the last line is cut off"));
            }
            return Ok(None);
        }
        Ok(Some(lines))
    }

    /// After the last batch: the file matches its manifest entry, or the error names
    /// the file and what differs.
    pub(crate) fn check(&mut self, entry: &FileEntry) -> Result<(), BackupError> {
        let sha = hex::encode(self.file_hash.finalize_reset());
        if sha != entry.sha256 {
            return Err(self.corrupt(format!(
                "SHA-256 {sha} does not match the manifest's {} ({} bytes read, {} expected)",
                entry.sha256, self.bytes, entry.bytes
            )));
        }
        if self.rows != entry.rows {
            return Err(self.corrupt(format!(
                "{} rows, the manifest says {}",
                self.rows, entry.rows
            )));
        }
        let content = hex::encode(self.content_hash.finalize_reset());
        if content != entry.content_sha256 {
            return Err(self.corrupt("the content hash does not match the manifest's"));
        }
        Ok(())
    }
}
