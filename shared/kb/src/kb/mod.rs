//! The knowledge base (I1-I6): normalise -> chunk -> embed -> store, idempotent by
//! content hash, with an event log and cache invalidation, and hybrid search.

pub mod embed;
pub mod openai;
pub mod rank;
pub mod search;
mod settings;
pub mod store;
pub mod text;
pub mod vector_index;

pub use rank::Fusion;
pub use search::{Candidates, RelevanceFloor, SearchResponse, SearchResult};
pub use settings::{IngestLimits, KbSettings};

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::cache::{Namespace, TieredCache};
use crate::store::StoreError;
use embed::{EmbedError, Embedder};
use store::{
    DocumentRecord, DocumentWrite, EmbeddedChunk, EventRecord, KnowledgeStore, NewDocument,
    WriteOutcome,
};
use text::ChunkConfig;

/// Why an ingest, delete or search failed.
#[derive(Debug, thiserror::Error)]
pub enum KbError {
    /// The caller's input cannot be ingested (empty text, bad id...): 422.
    #[error("{0}")]
    Invalid(String),
    #[error("document `{0}` not found")]
    NotFound(String),
    /// Over `MAX_DOCUMENT_BYTES` or `MAX_BATCH_DOCUMENTS`: 413.
    #[error("{0}")]
    TooLarge(String),
    /// The embedder is down: nothing was stored; 503.
    #[error(transparent)]
    Embedder(#[from] EmbedError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A document to ingest, as parsed from HTTP or S3.
#[derive(Debug, Clone)]
pub struct IngestRequest {
    pub id: Option<String>,
    pub title: Option<String>,
    pub text: String,
    pub content_type: String,
    pub source: String,
    pub metadata: Value,
}

/// The result of one ingest, as `POST /documents` reports it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IngestResult {
    pub id: String,
    pub status: &'static str,
    pub chunks: i64,
    pub version: i64,
}

/// Valid document ids: safe in URLs, logs and keys.
pub(crate) fn valid_document_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
}

/// The id of a document posted without one (and without a file or object name): its
/// text's hash. Never derived from a title or first line, which unrelated documents
/// share (every Debian copyright file starts with the same `Format:` line), so one
/// document never silently replaces another; the same text posted again is `unchanged`.
fn content_id(normalised: &str) -> String {
    format!("doc-{}", &text::content_hash(normalised)[..16])
}

/// A validated, embedded document waiting to be written (or known to be unchanged).
#[derive(Debug)]
pub enum Prepared {
    Unchanged(IngestResult),
    Ready {
        document: NewDocument,
        chunks: Vec<EmbeddedChunk>,
    },
}

/// Ingest and search over one store and one embedder.
pub struct KnowledgeBase {
    store: Arc<dyn KnowledgeStore>,
    embedder: Arc<dyn Embedder>,
    cache: TieredCache,
    chunking: ChunkConfig,
    limits: IngestLimits,
    /// Passages less relevant than this are never returned (`RETRIEVAL_MIN_SIMILARITY*`).
    relevance: RelevanceFloor,
    /// How the keyword and vector lists are fused (`RETRIEVAL_VECTOR_WEIGHT`).
    fusion: Fusion,
    prepared: OnceCell<()>,
}

impl std::fmt::Debug for KnowledgeBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnowledgeBase")
            .field("model", &self.embedder.model())
            .field("chunking", &self.chunking)
            .finish()
    }
}

/// Texts embedded per call to the embedder.
const EMBED_BATCH: usize = 64;

impl KnowledgeBase {
    pub fn new(
        store: Arc<dyn KnowledgeStore>,
        embedder: Arc<dyn Embedder>,
        cache: TieredCache,
        chunking: ChunkConfig,
    ) -> Self {
        Self {
            store,
            embedder,
            cache,
            chunking,
            limits: IngestLimits::default(),
            relevance: RelevanceFloor::OFFLINE_DEFAULT,
            fusion: Fusion::OFFLINE_DEFAULT,
            prepared: OnceCell::new(),
        }
    }

    /// With these limits instead of the defaults (1 MiB, 100 documents).
    pub fn with_limits(mut self, limits: IngestLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the relevance floor ([`RelevanceFloor::NONE`] keeps every passage).
    pub fn with_relevance_floor(mut self, relevance: RelevanceFloor) -> Self {
        self.relevance = relevance;
        self
    }

    /// Sets the weight of the vector list in hybrid ranking.
    pub fn with_fusion(mut self, fusion: Fusion) -> Self {
        self.fusion = fusion;
        self
    }

    /// The fusion in force: part of every cache key whose answer depends on it.
    pub fn fusion(&self) -> Fusion {
        self.fusion
    }

    /// The floor in force: part of every cache key whose answer depends on it.
    pub fn relevance_floor(&self) -> RelevanceFloor {
        self.relevance
    }

    pub fn limits(&self) -> IngestLimits {
        self.limits
    }

    /// `what` names the document in the message ("the document", "document 2").
    fn check_size(&self, request: &IngestRequest, what: &str) -> Result<(), KbError> {
        if request.text.len() > self.limits.max_document_bytes {
            return Err(KbError::TooLarge(format!(
                "{what} is larger than {} bytes (MAX_DOCUMENT_BYTES)",
                self.limits.max_document_bytes
            )));
        }
        Ok(())
    }

    pub fn embedder(&self) -> &Arc<dyn Embedder> {
        &self.embedder
    }

    pub fn store(&self) -> &Arc<dyn KnowledgeStore> {
        &self.store
    }

    async fn prepare_store(&self) -> Result<(), StoreError> {
        self.prepared
            .get_or_try_init(|| self.store.prepare(self.embedder.dimensions()))
            .await
            .map(|_| ())
    }

    /// Embeddings of `texts`, reusing cached vectors (namespace `embedding`, keyed by
    /// model and content hash) and embedding only the rest, in batches.
    async fn embeddings(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let model = self.embedder.model().to_string();
        let keys: Vec<String> = texts
            .iter()
            .map(|t| format!("{model}:{}", hex::encode(Sha256::digest(t.as_bytes()))))
            .collect();
        // One cache round trip for the whole document, not one per chunk.
        let mut vectors: Vec<Option<Vec<f32>>> =
            self.cache.get_many(Namespace::Embedding, &keys).await;
        let missing: Vec<usize> = (0..texts.len()).filter(|i| vectors[*i].is_none()).collect();
        for batch in missing.chunks(EMBED_BATCH) {
            let inputs: Vec<String> = batch.iter().map(|i| texts[*i].clone()).collect();
            let embedded = self.embedder.embed(&inputs).await?;
            if embedded.len() != inputs.len() {
                return Err(EmbedError::Invalid(format!(
                    "{} vectors for {} texts",
                    embedded.len(),
                    inputs.len()
                )));
            }
            if let Some(wrong) = embedded
                .iter()
                .find(|v| v.len() != self.embedder.dimensions())
            {
                return Err(EmbedError::Invalid(format!(
                    "{} dimensions, expected {}",
                    wrong.len(),
                    self.embedder.dimensions()
                )));
            }
            let items: Vec<(&str, &Vec<f32>)> = batch
                .iter()
                .zip(&embedded)
                .map(|(i, vector)| (keys[*i].as_str(), vector))
                .collect();
            self.cache.set_many(Namespace::Embedding, &items).await;
            for (i, vector) in batch.iter().zip(embedded) {
                vectors[*i] = Some(vector);
            }
        }
        Ok(vectors.into_iter().map(|v| v.unwrap_or_default()).collect())
    }

    /// Validates, chunks and embeds a document without writing anything: identical
    /// content is recognised here, before any embedding.
    pub async fn prepare(&self, request: IngestRequest) -> Result<Prepared, KbError> {
        self.check_size(&request, "the document")?;
        let text = text::normalise(&request.text);
        if text.is_empty() {
            return Err(KbError::Invalid("the document has no text".into()));
        }
        let title = request
            .title
            .as_deref()
            .map(|t| text::normalise(t).replace('\n', " "))
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| text::derive_title(&text));
        if title.chars().count() > 500 {
            return Err(KbError::Invalid(
                "title is longer than 500 characters".into(),
            ));
        }
        if let Some(path) = crate::canonical::nul_at(&request.metadata, "metadata") {
            return Err(KbError::Invalid(format!(
                "{path} contains a NUL character (U+0000), which no field accepts"
            )));
        }
        let metadata = crate::canonical::canonical_json(&request.metadata);
        let hash = text::content_hash(&format!("{title}\n\n{text}\n\n{metadata}"));
        let id = match request.id {
            Some(id) if valid_document_id(&id) => id,
            Some(_) => {
                return Err(KbError::Invalid(
                    "id must be 1-128 of A-Z a-z 0-9 - _ . :".into(),
                ))
            }
            None => content_id(&text),
        };
        self.prepare_store().await?;

        // The common re-ingest: same content, nothing to do (and nothing to embed).
        if let Some(existing) = self.store.document(&id).await? {
            if existing.content_hash == hash {
                return Ok(Prepared::Unchanged(IngestResult {
                    id,
                    status: "unchanged",
                    chunks: existing.chunk_count,
                    version: existing.version,
                }));
            }
        }

        let chunks = text::chunk(&id, &text, self.chunking);
        let inputs: Vec<String> = chunks
            .iter()
            .map(|c| format!("{title}\n\n{}", c.text))
            .collect();
        let vectors = self.embeddings(&inputs).await?;
        let chunks = chunks
            .into_iter()
            .zip(vectors)
            .map(|(chunk, embedding)| EmbeddedChunk { chunk, embedding })
            .collect();
        Ok(Prepared::Ready {
            document: NewDocument {
                id,
                title,
                content_hash: hash,
                content_type: request.content_type,
                source: request.source,
                metadata: request.metadata,
            },
            chunks,
        })
    }

    /// Writes a prepared document: the document, its chunks and events in one transaction.
    pub async fn commit(
        &self,
        prepared: Prepared,
        correlation_id: &str,
    ) -> Result<IngestResult, KbError> {
        let mut results = self.commit_all(vec![prepared], correlation_id).await?;
        Ok(results.remove(0))
    }

    /// Writes prepared documents in one transaction: all of them appear or none does.
    pub async fn commit_all(
        &self,
        prepared: Vec<Prepared>,
        correlation_id: &str,
    ) -> Result<Vec<IngestResult>, KbError> {
        let mut results: Vec<Option<IngestResult>> = Vec::with_capacity(prepared.len());
        let mut writes = Vec::new();
        for p in prepared {
            match p {
                Prepared::Unchanged(result) => results.push(Some(result)),
                Prepared::Ready { document, chunks } => {
                    results.push(None);
                    writes.push(DocumentWrite { document, chunks });
                }
            }
        }
        if writes.is_empty() {
            return Ok(results.into_iter().flatten().collect());
        }
        let outcomes = self
            .store
            .write_documents(&writes, self.embedder.model(), correlation_id)
            .await?;
        if outcomes
            .iter()
            .any(|o| !matches!(o, WriteOutcome::Unchanged { .. }))
        {
            self.invalidate_caches().await;
        }
        let mut written = writes.into_iter().zip(outcomes);
        Ok(results
            .into_iter()
            .map(|slot| {
                slot.unwrap_or_else(|| {
                    let (write, outcome) = written.next().expect("one outcome per write");
                    IngestResult {
                        id: write.document.id,
                        status: outcome.status(),
                        chunks: write.chunks.len() as i64,
                        version: outcome.version(),
                    }
                })
            })
            .collect())
    }

    /// Normalise -> chunk -> embed -> store. Identical content changes nothing (no
    /// embedding, no event); changed content replaces the chunks atomically.
    pub async fn ingest(
        &self,
        request: IngestRequest,
        correlation_id: &str,
    ) -> Result<IngestResult, KbError> {
        let prepared = self.prepare(request).await?;
        self.commit(prepared, correlation_id).await
    }

    /// Ingests several documents: all are validated and embedded before anything is
    /// written, and all are written in one transaction, so bad input, an embedder outage
    /// or a database failure half-way leaves nothing written.
    pub async fn ingest_batch(
        &self,
        requests: Vec<IngestRequest>,
        correlation_id: &str,
    ) -> Result<Vec<IngestResult>, KbError> {
        if requests.len() > self.limits.max_batch_documents {
            return Err(KbError::TooLarge(format!(
                "{} documents in one request; the limit is {} (MAX_BATCH_DOCUMENTS)",
                requests.len(),
                self.limits.max_batch_documents
            )));
        }
        // Sizes first: an oversized document is refused before anything is embedded.
        for (index, request) in requests.iter().enumerate() {
            self.check_size(request, &format!("document {}", index + 1))?;
        }
        let mut prepared = Vec::with_capacity(requests.len());
        for (index, request) in requests.into_iter().enumerate() {
            match self.prepare(request).await {
                Ok(p) => prepared.push(p),
                Err(KbError::Invalid(message)) => {
                    return Err(KbError::Invalid(format!(
                        "document {}: {message}",
                        index + 1
                    )))
                }
                Err(other) => return Err(other),
            }
        }
        self.commit_all(prepared, correlation_id).await
    }

    /// No stale search result or answer outlives a change of the knowledge base (I6).
    async fn invalidate_caches(&self) {
        self.cache.invalidate_namespace(Namespace::Search).await;
        self.cache.invalidate_namespace(Namespace::Chat).await;
    }

    /// A page of documents in id order, after `cursor`.
    pub async fn documents(
        &self,
        cursor: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DocumentRecord>, KbError> {
        Ok(self.store.documents(cursor, limit).await?)
    }

    /// The event log after `after`, oldest first.
    pub async fn events_after(&self, after: i64, limit: i64) -> Result<Vec<EventRecord>, KbError> {
        Ok(self.store.events_after(after, limit).await?)
    }

    /// Indexes what bulk writes left outside the vector index (the scheduled maintenance).
    pub async fn maintain_vector_index(
        &self,
        due: bool,
    ) -> Result<Vec<(usize, vector_index::Maintenance)>, KbError> {
        Ok(self.store.maintain_vector_index(due).await?)
    }

    pub async fn document(&self, id: &str) -> Result<DocumentRecord, KbError> {
        self.store
            .document(id)
            .await?
            .ok_or_else(|| KbError::NotFound(id.to_string()))
    }

    pub async fn delete(&self, id: &str, correlation_id: &str) -> Result<i64, KbError> {
        let version = self
            .store
            .delete_document(id, correlation_id)
            .await?
            .ok_or_else(|| KbError::NotFound(id.to_string()))?;
        self.invalidate_caches().await;
        Ok(version)
    }
}

#[cfg(test)]
mod tests;
