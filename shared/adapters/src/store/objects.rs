//! Objects to ingest: from S3 (aws-sdk-s3), or from a local folder standing in for a
//! bucket in embedded mode.

use std::path::{Component, Path};

use tokio::sync::OnceCell;

/// Why an object was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    /// This object can never be read as it is: missing, too large, or a key that is
    /// not a plain path. Retrying the event would fail the same way.
    #[error("{0}")]
    Refused(String),
    /// The store, or its configuration (region, credentials, endpoint), failed: the
    /// event should fail so that Lambda retries it (and, in the end, dead-letters it).
    #[error("{0}")]
    Unavailable(String),
}

/// Reads objects from S3, or from a local folder in embedded mode.
pub enum ObjectSource {
    Folder(std::path::PathBuf),
    /// The client is built on first use and then shared.
    S3(OnceCell<aws_sdk_s3::Client>),
}

impl ObjectSource {
    pub fn s3() -> Self {
        ObjectSource::S3(OnceCell::new())
    }

    /// The object's bytes, refused past `limit`; the error names the object, never a credential.
    pub async fn read(
        &self,
        bucket: &str,
        key: &str,
        limit: usize,
    ) -> Result<Vec<u8>, ObjectError> {
        match self {
            ObjectSource::Folder(dir) => read_file(dir, key, limit).await,
            ObjectSource::S3(client) => {
                let client = client
                    .get_or_init(|| async {
                        aws_sdk_s3::Client::new(&super::aws::load_config().await)
                    })
                    .await;
                read_object(client, bucket, key, limit).await
            }
        }
    }
}

fn too_large(limit: usize) -> ObjectError {
    ObjectError::Refused(format!(
        "object is larger than {limit} bytes (MAX_DOCUMENT_BYTES)"
    ))
}

async fn read_file(dir: &Path, key: &str, limit: usize) -> Result<Vec<u8>, ObjectError> {
    // Keys are paths below the folder: no absolute paths, no `..`.
    let relative = Path::new(key);
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(ObjectError::Refused(format!(
            "key `{key}` is not a plain relative path"
        )));
    }
    let path = dir.join(relative);
    let failed = |e: std::io::Error| {
        let message = format!("{}: {e}", path.display());
        match e.kind() {
            std::io::ErrorKind::NotFound => ObjectError::Refused(message),
            _ => ObjectError::Unavailable(message),
        }
    };
    let size = tokio::fs::metadata(&path).await.map_err(failed)?.len();
    if size as usize > limit {
        return Err(too_large(limit));
    }
    tokio::fs::read(&path).await.map_err(failed)
}

async fn read_object(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    limit: usize,
) -> Result<Vec<u8>, ObjectError> {
    let object = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| {
            let missing = e.as_service_error().is_some_and(|s| s.is_no_such_key());
            let detail = aws_sdk_s3::error::DisplayErrorContext(&e).to_string();
            let message = format!(
                "s3://{bucket}/{key}: {}",
                crate::observability::redact::redact(&detail)
            );
            if missing {
                ObjectError::Refused(message)
            } else {
                ObjectError::Unavailable(message)
            }
        })?;
    if object.content_length().unwrap_or(0) as usize > limit {
        return Err(too_large(limit));
    }
    let bytes = object
        .body
        .collect()
        .await
        .map_err(|e| ObjectError::Unavailable(format!("s3://{bucket}/{key}: {e}")))?;
    Ok(bytes.into_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_file_is_refused_and_a_bad_key_too() {
        let dir = std::env::temp_dir();
        let source = ObjectSource::Folder(dir);
        let missing = source.read("b", "no-such-object-here.md", 10).await;
        assert!(
            matches!(missing, Err(ObjectError::Refused(_))),
            "{missing:?}"
        );
        let escape = source.read("b", "../etc/passwd", 10).await;
        assert!(matches!(escape, Err(ObjectError::Refused(_))), "{escape:?}");
    }

    #[tokio::test]
    async fn an_s3_client_without_a_region_is_unavailable_not_refused() {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .build();
        let source = ObjectSource::S3(OnceCell::new_with(Some(aws_sdk_s3::Client::from_conf(
            config,
        ))));
        let read = source.read("bucket", "key.md", 10).await;
        match read {
            Err(ObjectError::Unavailable(message)) => {
                assert!(message.contains("region"), "{message}")
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
}
