//! The knowledge store behind a circuit breaker (issue 14, finding 5): while its database
//! is down, every request waited for a connection (`DATABASE_TIMEOUT_MS`, 2 s) before
//! failing; once the breaker is open they fail at once (ingest and search 503 with
//! `Retry-After`, chat answers without passages) until a trial call finds it back.

use super::*;
use crate::resilience::breaker::CircuitBreaker;

/// The breaker's name, as `/health/detailed` and the logs show it.
pub const KNOWLEDGE_BASE_BREAKER: &str = "knowledge-base";

/// A [`KnowledgeStore`] whose calls go through a breaker; only outages count as its
/// failures (not data or queries the database refuses).
pub struct GuardedStore {
    inner: Arc<dyn KnowledgeStore>,
    breaker: CircuitBreaker,
}

impl GuardedStore {
    pub fn new(inner: Arc<dyn KnowledgeStore>, breaker: CircuitBreaker) -> Self {
        Self { inner, breaker }
    }

    async fn guard<T, F, Fut>(&self, call: F) -> Result<T, StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let failed = |r: &Result<T, StoreError>| r.as_ref().is_err_and(StoreError::is_unavailable);
        match self.breaker.call(call, failed).await {
            Ok(result) => result,
            Err(open) => Err(StoreError::BreakerOpen(open.to_string(), open.retry_after)),
        }
    }
}

#[async_trait::async_trait]
impl KnowledgeStore for GuardedStore {
    fn db_system(&self) -> &'static str {
        self.inner.db_system()
    }

    async fn prepare(&self, dims: usize) -> Result<(), StoreError> {
        self.guard(|| self.inner.prepare(dims)).await
    }

    async fn document(&self, id: &str) -> Result<Option<DocumentRecord>, StoreError> {
        self.guard(|| self.inner.document(id)).await
    }

    async fn documents(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DocumentRecord>, StoreError> {
        self.guard(|| self.inner.documents(after, limit)).await
    }

    async fn write_documents(
        &self,
        documents: &[DocumentWrite],
        model: &str,
        correlation_id: &str,
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        self.guard(|| self.inner.write_documents(documents, model, correlation_id))
            .await
    }

    async fn delete_document(
        &self,
        id: &str,
        correlation_id: &str,
    ) -> Result<Option<i64>, StoreError> {
        self.guard(|| self.inner.delete_document(id, correlation_id))
            .await
    }

    async fn vector_search(
        &self,
        query: &[f32],
        model: &str,
        k: i64,
        filter: Option<&SearchFilter>,
    ) -> Result<Vec<ChunkHit>, StoreError> {
        self.guard(|| self.inner.vector_search(query, model, k, filter))
            .await
    }

    async fn keyword_search_scored(
        &self,
        query: &str,
        k: i64,
        filter: Option<&SearchFilter>,
        scored_by: Option<QueryEmbedding<'_>>,
    ) -> Result<Vec<ScoredHit>, StoreError> {
        self.guard(|| {
            self.inner
                .keyword_search_scored(query, k, filter, scored_by)
        })
        .await
    }

    async fn events_after(&self, after: i64, limit: i64) -> Result<Vec<EventRecord>, StoreError> {
        self.guard(|| self.inner.events_after(after, limit)).await
    }

    async fn maintain_vector_index(
        &self,
        due: bool,
    ) -> Result<Vec<(usize, Maintenance)>, StoreError> {
        self.guard(|| self.inner.maintain_vector_index(due)).await
    }

    async fn vector_index_state(&self, dims: usize) -> Result<Option<IndexState>, StoreError> {
        self.guard(|| self.inner.vector_index_state(dims)).await
    }
}
