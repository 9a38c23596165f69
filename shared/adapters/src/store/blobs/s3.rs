//! Backups under an S3 prefix: multipart upload past one part, parts aborted on failure.

use super::*;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use tokio::sync::OnceCell;

/// S3's smallest part but the last is 5 MiB; 8 MiB parts keep a 10,000-part upload
/// good for 80 GB.
pub const DEFAULT_PART_BYTES: usize = 8 * 1024 * 1024;

/// Backups under `s3://bucket/prefix`; the client is built on first use.
pub struct S3Blobs {
    bucket: String,
    prefix: String,
    part_bytes: usize,
    client: OnceCell<aws_sdk_s3::Client>,
}

impl S3Blobs {
    pub fn new(bucket: &str, prefix: &str) -> Self {
        let prefix = prefix.trim_matches('/');
        Self {
            bucket: bucket.to_string(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            part_bytes: DEFAULT_PART_BYTES,
            client: OnceCell::new(),
        }
    }

    /// Smaller parts for tests (S3 refuses parts under 5 MiB but the last).
    pub fn with_part_bytes(mut self, part_bytes: usize) -> Self {
        self.part_bytes = part_bytes;
        self
    }

    async fn client(&self) -> &aws_sdk_s3::Client {
        self.client
            .get_or_init(|| async {
                aws_sdk_s3::Client::new(&crate::store::aws::load_config().await)
            })
            .await
    }

    fn full_key(&self, key: &str) -> Result<String, BlobError> {
        check_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }
}

fn failed<E: std::error::Error>(what: &str, err: E) -> BlobError {
    let detail = aws_sdk_s3::error::DisplayErrorContext(err).to_string();
    BlobError::Unavailable(format!(
        "{what}: {}",
        crate::observability::redact::redact(&detail)
    ))
}

struct S3Writer {
    client: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    part_bytes: usize,
    buffer: Vec<u8>,
    upload_id: Option<String>,
    parts: Vec<CompletedPart>,
    size: u64,
}

impl S3Writer {
    fn name(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }

    async fn upload_part(&mut self) -> Result<(), BlobError> {
        if self.upload_id.is_none() {
            let created = self
                .client
                .create_multipart_upload()
                .bucket(&self.bucket)
                .key(&self.key)
                .send()
                .await
                .map_err(|e| failed(&self.name(), e))?;
            self.upload_id = created.upload_id;
        }
        let number = self.parts.len() as i32 + 1;
        let body = std::mem::take(&mut self.buffer);
        let part = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(self.upload_id.clone().unwrap_or_default())
            .part_number(number)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| failed(&self.name(), e))?;
        self.parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(part.e_tag)
                .build(),
        );
        Ok(())
    }
}

#[async_trait]
impl BlobWriter for S3Writer {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), BlobError> {
        self.buffer.extend_from_slice(bytes);
        self.size += bytes.len() as u64;
        if self.buffer.len() >= self.part_bytes {
            self.upload_part().await?;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<u64, BlobError> {
        let finished = self.complete().await;
        if finished.is_err() {
            // Parts already uploaded are billed until aborted.
            self.abort_upload().await;
        }
        finished
    }

    async fn abort(self: Box<Self>) {
        self.abort_upload().await;
    }
}

impl S3Writer {
    async fn complete(&mut self) -> Result<u64, BlobError> {
        if self.upload_id.is_none() {
            let body = std::mem::take(&mut self.buffer);
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&self.key)
                .body(ByteStream::from(body))
                .send()
                .await
                .map_err(|e| failed(&self.name(), e))?;
            return Ok(self.size);
        }
        if !self.buffer.is_empty() {
            self.upload_part().await?;
        }
        let parts = std::mem::take(&mut self.parts);
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(self.upload_id.clone().unwrap_or_default())
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| failed(&self.name(), e))?;
        Ok(self.size)
    }

    async fn abort_upload(&self) {
        if let Some(upload_id) = &self.upload_id {
            let aborted = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&self.key)
                .upload_id(upload_id)
                .send()
                .await;
            if let Err(err) = aborted {
                tracing::warn!(blob = %self.name(), error = %failed("abort", err), "multipart upload not aborted; a bucket lifecycle rule removes it");
            }
        }
    }
}

struct S3Reader {
    body: ByteStream,
    name: String,
}

#[async_trait]
impl BlobReader for S3Reader {
    async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, BlobError> {
        match self.body.next().await {
            None => Ok(None),
            Some(Ok(bytes)) => Ok(Some(bytes.to_vec())),
            Some(Err(e)) => Err(BlobError::Unavailable(format!("{}: {e}", self.name))),
        }
    }
}

#[async_trait]
impl BlobStore for S3Blobs {
    fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    async fn writer(&self, key: &str) -> Result<Box<dyn BlobWriter>, BlobError> {
        Ok(Box::new(S3Writer {
            client: self.client().await.clone(),
            bucket: self.bucket.clone(),
            key: self.full_key(key)?,
            part_bytes: self.part_bytes,
            buffer: Vec::new(),
            upload_id: None,
            parts: Vec::new(),
            size: 0,
        }))
    }

    async fn reader(&self, key: &str) -> Result<Box<dyn BlobReader>, BlobError> {
        let full = self.full_key(key)?;
        let name = format!("s3://{}/{full}", self.bucket);
        let object = self
            .client()
            .await
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| {
                if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
                    BlobError::NotFound(name.clone())
                } else {
                    failed(&name, e)
                }
            })?;
        Ok(Box::new(S3Reader {
            body: object.body,
            name,
        }))
    }

    async fn list(&self) -> Result<Vec<BlobInfo>, BlobError> {
        let mut found = Vec::new();
        let mut pages = self
            .client()
            .await
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| failed(&self.location(), e))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                let Some(relative) = key.strip_prefix(&self.prefix) else {
                    continue;
                };
                found.push(BlobInfo {
                    key: relative.to_string(),
                    size: object.size().unwrap_or(0).max(0) as u64,
                });
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        let full = self.full_key(key)?;
        self.client()
            .await
            .delete_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| failed(&format!("s3://{}/{full}", self.bucket), e))?;
        Ok(())
    }
}
