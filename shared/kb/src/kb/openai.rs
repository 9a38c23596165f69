//! Embeddings from any OpenAI-compatible endpoint (OpenAI, Azure-style gateways, local
//! servers) through async-openai.

use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::embeddings::{CreateEmbeddingRequest, EmbeddingInput};
use async_openai::Client;

use super::embed::{EmbedError, EmbedFuture, Embedder};
use crate::openai::{self, UpstreamStatus};
use crate::resilience::retry::{retry, RetryClass, RetryPolicy};
use crate::secret::Secret;

/// An OpenAI-compatible `/embeddings` endpoint.
pub struct OpenAiEmbedder {
    client: Client<OpenAIConfig>,
    model: String,
    dimensions: usize,
    timeout: Duration,
    retry: RetryPolicy,
}

impl std::fmt::Debug for OpenAiEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiEmbedder")
            .field("model", &self.model)
            .field("dimensions", &self.dimensions)
            .finish()
    }
}

#[derive(Debug)]
enum CallError {
    Timeout(Duration),
    Http(String),
    Status(UpstreamStatus),
    Shape(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Timeout(t) => write!(f, "no answer within {} ms", t.as_millis()),
            CallError::Status(s) => s.fmt(f),
            CallError::Http(m) | CallError::Shape(m) => f.write_str(m),
        }
    }
}

impl RetryClass for CallError {
    /// Timeouts, network failures, 408, 429 and 5xx are retried (the client makes one
    /// attempt per call); other answers (bad model, bad key) are not worth repeating.
    fn is_retryable(&self) -> bool {
        match self {
            CallError::Timeout(_) | CallError::Http(_) => true,
            CallError::Status(s) => s.status == 408 || s.status == 429 || s.status >= 500,
            CallError::Shape(_) => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            CallError::Status(s) => s.retry_after,
            _ => None,
        }
    }
}

impl OpenAiEmbedder {
    pub fn new(
        base_url: &str,
        api_key: Option<&Secret>,
        model: &str,
        dimensions: usize,
        timeout: Duration,
        retry: RetryPolicy,
    ) -> Self {
        Self {
            client: openai::client(base_url, api_key, timeout),
            model: model.to_string(),
            dimensions,
            timeout,
            retry,
        }
    }

    async fn call(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, CallError> {
        let request = CreateEmbeddingRequest {
            model: self.model.clone(),
            input: EmbeddingInput::StringArray(texts.to_vec()),
            encoding_format: None,
            user: None,
            dimensions: Some(self.dimensions as u32),
        };
        let response = match tokio::time::timeout(
            self.timeout,
            self.client.embeddings().create(request),
        )
        .await
        {
            Err(_) => return Err(CallError::Timeout(self.timeout)),
            Ok(Err(err)) => {
                return Err(match UpstreamStatus::from_error(err) {
                    Ok(status) => CallError::Status(status),
                    Err(OpenAIError::Reqwest(e)) => CallError::Http(e.to_string()),
                    Err(other) => CallError::Shape(other.to_string()),
                })
            }
            Ok(Ok(response)) => response,
        };
        let mut data = response.data;
        data.sort_by_key(|e| e.index);
        if data.len() != texts.len() {
            return Err(CallError::Shape(format!(
                "{} embeddings for {} inputs",
                data.len(),
                texts.len()
            )));
        }
        Ok(data
            .into_iter()
            .map(|e| {
                let mut v = e.embedding;
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                if norm > 0.0 {
                    v.iter_mut().for_each(|x| *x /= norm);
                }
                v
            })
            .collect())
    }
}

impl Embedder for OpenAiEmbedder {
    fn model(&self) -> &str {
        &self.model
    }

    fn dimensions(&self) -> usize {
        self.dimensions
    }

    fn embed<'a>(&'a self, texts: &'a [String]) -> EmbedFuture<'a> {
        Box::pin(async move {
            retry(&self.retry, "embeddings", || self.call(texts))
                .await
                .map_err(|e| match e {
                    CallError::Shape(m) => EmbedError::Invalid(m),
                    other => EmbedError::Unavailable(
                        crate::observability::redact::redact(&other.to_string()).into_owned(),
                    ),
                })
        })
    }
}
