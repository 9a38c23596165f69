//! Knowledge-base storage (I3-I5) behind one trait, with a PostgreSQL + pgvector adapter
//! and a SQLite adapter. A document, all its chunks and its events are written in one
//! transaction: they appear together or not at all.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use serde::Serialize;
use serde_json::Value;
use sqlx::Row;

use super::text::Chunk;
use super::vector_index::{IndexState, Maintenance, VectorIndexConfig, VectorIndexer};
use crate::store::{Database, StoreError};

mod bm25;
mod guarded;
mod postgres;
mod sqlite;
mod sqlite_keywords;
mod sqlite_vectors;
mod sqlite_writes;

pub use guarded::{GuardedStore, KNOWLEDGE_BASE_BREAKER};

use postgres::PgKnowledgeStore;
use sqlite::SqliteKnowledgeStore;

/// A stored document (without its text; chunks hold the text).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DocumentRecord {
    pub id: String,
    pub title: String,
    pub content_hash: String,
    pub version: i64,
    pub chunk_count: i64,
    pub content_type: String,
    pub source: String,
    pub metadata: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A document to write.
#[derive(Debug, Clone)]
pub struct NewDocument {
    pub id: String,
    pub title: String,
    pub content_hash: String,
    pub content_type: String,
    pub source: String,
    pub metadata: Value,
}

/// A chunk with its embedding.
#[derive(Debug, Clone)]
pub struct EmbeddedChunk {
    pub chunk: Chunk,
    pub embedding: Vec<f32>,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "status")]
pub enum WriteOutcome {
    Created {
        version: i64,
    },
    Updated {
        version: i64,
    },
    /// Same content hash as stored: nothing written, no event.
    Unchanged {
        version: i64,
    },
}

impl WriteOutcome {
    pub fn version(self) -> i64 {
        match self {
            WriteOutcome::Created { version }
            | WriteOutcome::Updated { version }
            | WriteOutcome::Unchanged { version } => version,
        }
    }

    pub fn status(self) -> &'static str {
        match self {
            WriteOutcome::Created { .. } => "created",
            WriteOutcome::Updated { .. } => "updated",
            WriteOutcome::Unchanged { .. } => "unchanged",
        }
    }
}

/// A chunk found by a search.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChunkHit {
    pub chunk_id: String,
    pub document_id: String,
    pub title: String,
    pub text: String,
    pub score: f64,
}

/// The query's embedding, which keyword hits are scored against.
#[derive(Debug, Clone, Copy)]
pub struct QueryEmbedding<'a> {
    pub vector: &'a [f32],
    pub model: &'a str,
}

/// A keyword hit and its similarity to the query's embedding, when known.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredHit {
    pub hit: ChunkHit,
    pub similarity: Option<f64>,
}

/// A search's row: chunk id, document id, title, text, score.
pub(crate) type HitRow<S> = (String, String, String, String, S);

impl<S: Into<f64>> From<HitRow<S>> for ChunkHit {
    fn from((chunk_id, document_id, title, text, score): HitRow<S>) -> Self {
        Self {
            chunk_id,
            document_id,
            title,
            text,
            score: score.into(),
        }
    }
}

/// `filter=key:value`: documents whose metadata has that value at that key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchFilter {
    pub key: String,
    pub value: String,
}

/// One entry of the event log.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EventRecord {
    pub seq: i64,
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub aggregate_id: String,
    pub aggregate_version: i64,
    pub correlation_id: String,
    pub causation_id: Option<String>,
    pub payload: Value,
    pub occurred_at: DateTime<Utc>,
}

pub(crate) const DOCUMENT_UPLOADED: &str = "document.uploaded";
pub(crate) const DOCUMENT_PROCESSED: &str = "document.processed";
pub(crate) const DOCUMENT_INDEXED: &str = "document.indexed";
pub(crate) const DOCUMENT_DELETED: &str = "document.deleted";

/// One document of a write: its record and its embedded chunks.
pub struct DocumentWrite {
    pub document: NewDocument,
    pub chunks: Vec<EmbeddedChunk>,
}

/// Storage of documents, chunks and events.
#[async_trait::async_trait]
pub trait KnowledgeStore: Send + Sync {
    /// The backend's OpenTelemetry `db.system.name` (`sqlite`, `postgresql`,
    /// `aws.dynamodb`), for the spans of its calls.
    fn db_system(&self) -> &'static str;
    /// Creates what depends on the embedding dimension (PostgreSQL: the HNSW index).
    async fn prepare(&self, dims: usize) -> Result<(), StoreError>;
    async fn document(&self, id: &str) -> Result<Option<DocumentRecord>, StoreError>;
    /// Documents ordered by id, after the cursor `after` (keyset pagination).
    async fn documents(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DocumentRecord>, StoreError>;
    /// Writes documents with all their chunks and their uploaded/processed/indexed
    /// events, replacing any previous chunks, in one transaction: the whole batch appears
    /// or none of it does. Unchanged content writes nothing.
    async fn write_documents(
        &self,
        documents: &[DocumentWrite],
        model: &str,
        correlation_id: &str,
    ) -> Result<Vec<WriteOutcome>, StoreError>;
    /// Deletes a document and its chunks and records `document.deleted`; `None` if unknown.
    async fn delete_document(
        &self,
        id: &str,
        correlation_id: &str,
    ) -> Result<Option<i64>, StoreError>;
    async fn vector_search(
        &self,
        query: &[f32],
        model: &str,
        k: i64,
        filter: Option<&SearchFilter>,
    ) -> Result<Vec<ChunkHit>, StoreError>;
    /// Keyword hits, best first.
    async fn keyword_search(
        &self,
        query: &str,
        k: i64,
        filter: Option<&SearchFilter>,
    ) -> Result<Vec<ChunkHit>, StoreError> {
        let scored = self.keyword_search_scored(query, k, filter, None).await?;
        Ok(scored.into_iter().map(|s| s.hit).collect())
    }
    /// Keyword hits, best first, each with its cosine similarity to `scored_by` from its
    /// stored embedding of that model (`None` when it has none), read in the same
    /// statement: what the relevance floor needs for chunks the vector list missed.
    async fn keyword_search_scored(
        &self,
        query: &str,
        k: i64,
        filter: Option<&SearchFilter>,
        scored_by: Option<QueryEmbedding<'_>>,
    ) -> Result<Vec<ScoredHit>, StoreError>;
    async fn events_after(&self, after: i64, limit: i64) -> Result<Vec<EventRecord>, StoreError>;
    /// Indexes chunks that bulk writes left outside the vector index, for every dimension
    /// (PostgreSQL; SQLite searches exactly and has nothing to do). `due` indexes any
    /// such chunks; otherwise only as many as the thresholds allow to wait.
    async fn maintain_vector_index(
        &self,
        _due: bool,
    ) -> Result<Vec<(usize, Maintenance)>, StoreError> {
        Ok(Vec::new())
    }
    /// The vector index of one dimension (PostgreSQL), `None` where there is none to keep.
    async fn vector_index_state(&self, _dims: usize) -> Result<Option<IndexState>, StoreError> {
        Ok(None)
    }
}

/// The adapter for the configured database, with the default vector index settings and
/// no background maintenance (tests and tools call `maintain_vector_index`).
pub fn knowledge_store(database: &Database) -> Arc<dyn KnowledgeStore> {
    knowledge_store_with(database, VectorIndexConfig::default())
}

/// The adapter for the configured database.
pub fn knowledge_store_with(
    database: &Database,
    vector_index: VectorIndexConfig,
) -> Arc<dyn KnowledgeStore> {
    match database.kind() {
        crate::store::DatabaseKind::Sqlite => Arc::new(SqliteKnowledgeStore {
            db: database.clone(),
            vectors: Default::default(),
            keywords: Default::default(),
        }),
        crate::store::DatabaseKind::Postgres => Arc::new(PgKnowledgeStore {
            db: database.clone(),
            indexer: Arc::new(VectorIndexer::new(vector_index)),
            statistics: bm25::CorpusStatistics::default(),
        }),
    }
}

const DOC_COLUMNS: &str =
    "id, title, content_hash, version, chunk_count, content_type, source, metadata, created_at, updated_at";

/// Bind parameters per multi-row statement, well under PostgreSQL's limit of 65,535.
const PG_ROWS_PER_STATEMENT: usize = 30_000;

/// Most keyword matches ranked in the every-word pass (PostgreSQL; ranking reads each
/// one's tsvector); see `keyword_search_scored`.
const KEYWORD_CANDIDATES: i64 = 500;

/// Search words for the keyword index: letters and digits only (no query syntax).
/// The words of a keyword query, stopwords left out: a passage that shares only "what",
/// "is" and "the" with the question is no match (SQLite indexes every word; PostgreSQL's
/// `english` configuration drops its own stopwords too).
fn keyword_terms(query: &str) -> Vec<String> {
    query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .filter(|w| !crate::kb::text::is_stopword(w))
        .take(32)
        .collect()
}

/// Events of one write, chained: uploaded -> processed -> indexed.
fn write_events(
    doc: &NewDocument,
    version: i64,
    chunk_count: usize,
    model: &str,
) -> Vec<(String, &'static str, Option<String>, Value)> {
    let uploaded = uuid::Uuid::new_v4().to_string();
    let processed = uuid::Uuid::new_v4().to_string();
    let indexed = uuid::Uuid::new_v4().to_string();
    vec![
        (
            uploaded.clone(),
            DOCUMENT_UPLOADED,
            None,
            serde_json::json!({"title": doc.title, "content_hash": doc.content_hash, "content_type": doc.content_type, "source": doc.source}),
        ),
        (
            processed.clone(),
            DOCUMENT_PROCESSED,
            Some(uploaded),
            serde_json::json!({"chunks": chunk_count, "model": model}),
        ),
        (
            indexed,
            DOCUMENT_INDEXED,
            Some(processed),
            serde_json::json!({"chunks": chunk_count, "version": version}),
        ),
    ]
}
