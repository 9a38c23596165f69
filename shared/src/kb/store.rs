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
use crate::store::{Database, Pool, StoreError};

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

pub const DOCUMENT_UPLOADED: &str = "document.uploaded";
pub const DOCUMENT_PROCESSED: &str = "document.processed";
pub const DOCUMENT_INDEXED: &str = "document.indexed";
pub const DOCUMENT_DELETED: &str = "document.deleted";

/// One document of a write: its record and its embedded chunks.
pub struct DocumentWrite {
    pub document: NewDocument,
    pub chunks: Vec<EmbeddedChunk>,
}

/// Storage of documents, chunks and events.
#[async_trait::async_trait]
pub trait KnowledgeStore: Send + Sync {
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
    async fn keyword_search(
        &self,
        query: &str,
        k: i64,
        filter: Option<&SearchFilter>,
    ) -> Result<Vec<ChunkHit>, StoreError>;
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
        }),
        crate::store::DatabaseKind::Postgres => Arc::new(PgKnowledgeStore {
            db: database.clone(),
            indexer: Arc::new(VectorIndexer::new(vector_index)),
            common_lexemes: CommonLexemes::default(),
        }),
    }
}

/// Bind parameters per multi-row statement, well under PostgreSQL's limit of 65,535.
const PG_ROWS_PER_STATEMENT: usize = 30_000;

/// Most keyword matches ranked in the every-word pass (PostgreSQL; ranking reads each
/// one's tsvector, ~10-20 µs apiece); see `keyword_search`.
const KEYWORD_CANDIDATES: usize = 500;

/// Most matches ranked in the any-word pass, which only fills the list up to k below the
/// chunks with every word (fewer: its matches are taken in index order anyway).
const KEYWORD_FILL_CANDIDATES: usize = 200;

/// Search words for the keyword index: letters and digits only (no query syntax).
fn keyword_terms(query: &str) -> Vec<String> {
    query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
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

// ---- SQLite ------------------------------------------------------------------------------

pub struct SqliteKnowledgeStore {
    db: Database,
}

fn to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|f| f.to_le_bytes()).collect()
}

/// Dot product of a query vector with a stored little-endian blob (cosine, as both are
/// unit length), without decoding the blob into a vector first.
fn dot_with_blob(query: &[f32], blob: &[u8]) -> f32 {
    query
        .iter()
        .zip(blob.chunks_exact(4))
        .map(|(q, b)| q * f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .sum()
}

/// The k best (score, id) pairs of a scan; ties go to the smaller id, so results do not
/// depend on row order.
struct TopK {
    k: usize,
    /// Min-heap on (score, reversed id): the root is the worst kept pair.
    heap: std::collections::BinaryHeap<std::cmp::Reverse<(OrdScore, std::cmp::Reverse<String>)>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct OrdScore(f32);
impl Eq for OrdScore {}
impl PartialOrd for OrdScore {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdScore {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl TopK {
    fn new(k: usize) -> Self {
        Self {
            k,
            heap: std::collections::BinaryHeap::with_capacity(k + 1),
        }
    }

    /// Whether a pair with this score could be kept (cheap check before allocating an id).
    fn admits(&self, score: f32) -> bool {
        self.heap.len() < self.k || self.heap.peek().is_some_and(|worst| score >= worst.0 .0 .0)
    }

    fn push(&mut self, score: f32, id: &str) {
        self.heap.push(std::cmp::Reverse((
            OrdScore(score),
            std::cmp::Reverse(id.to_string()),
        )));
        if self.heap.len() > self.k {
            self.heap.pop();
        }
    }

    /// Best first; equal scores by id.
    fn into_sorted(self) -> Vec<(f32, String)> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|std::cmp::Reverse((score, std::cmp::Reverse(id)))| (score.0, id))
            .collect()
    }
}

fn parse_time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

type SqliteDocRow = (
    String,
    String,
    String,
    i64,
    i64,
    String,
    String,
    String,
    String,
    String,
);

fn sqlite_doc(row: SqliteDocRow) -> DocumentRecord {
    DocumentRecord {
        id: row.0,
        title: row.1,
        content_hash: row.2,
        version: row.3,
        chunk_count: row.4,
        content_type: row.5,
        source: row.6,
        metadata: serde_json::from_str(&row.7).unwrap_or(Value::Null),
        created_at: parse_time(&row.8),
        updated_at: parse_time(&row.9),
    }
}

const DOC_COLUMNS: &str =
    "id, title, content_hash, version, chunk_count, content_type, source, metadata, created_at, updated_at";

impl SqliteKnowledgeStore {
    async fn pool(&self) -> Result<&sqlx::SqlitePool, StoreError> {
        match self.db.pool().await? {
            Pool::Sqlite(pool) => Ok(pool),
            Pool::Postgres(_) => unreachable!("SQLite store over a PostgreSQL pool"),
        }
    }
}

/// Runs `work` inside `BEGIN IMMEDIATE` (the write lock is taken first, so concurrent
/// writers of one document queue instead of interleaving), rolling back on error.
macro_rules! sqlite_immediate {
    ($pool:expr, |$conn:ident| $work:block) => {{
        let mut guard = $pool.acquire().await?;
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *guard).await?;
        let result: Result<_, StoreError> = async {
            let $conn = &mut *guard;
            $work
        }
        .await;
        match result {
            Ok(value) => {
                sqlx::query("COMMIT").execute(&mut *guard).await?;
                Ok(value)
            }
            Err(err) => {
                let _ = sqlx::query("ROLLBACK").execute(&mut *guard).await;
                Err(err)
            }
        }
    }};
}

#[async_trait::async_trait]
impl KnowledgeStore for SqliteKnowledgeStore {
    async fn prepare(&self, _dims: usize) -> Result<(), StoreError> {
        self.pool().await.map(|_| ())
    }

    async fn document(&self, id: &str) -> Result<Option<DocumentRecord>, StoreError> {
        let sql = format!("SELECT {DOC_COLUMNS} FROM documents WHERE id = ?");
        let row: Option<SqliteDocRow> = sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(self.pool().await?)
            .await?;
        Ok(row.map(sqlite_doc))
    }

    async fn documents(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DocumentRecord>, StoreError> {
        let sql = format!("SELECT {DOC_COLUMNS} FROM documents WHERE id > ? ORDER BY id LIMIT ?");
        let rows: Vec<SqliteDocRow> = sqlx::query_as(&sql)
            .bind(after.unwrap_or(""))
            .bind(limit)
            .fetch_all(self.pool().await?)
            .await?;
        Ok(rows.into_iter().map(sqlite_doc).collect())
    }

    async fn write_documents(
        &self,
        documents: &[DocumentWrite],
        model: &str,
        correlation_id: &str,
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        let pool = self.pool().await?;
        sqlite_immediate!(pool, |conn| {
            let mut outcomes = Vec::with_capacity(documents.len());
            for DocumentWrite {
                document: doc,
                chunks,
            } in documents
            {
                let current: Option<(String, i64, String)> = sqlx::query_as(
                    "SELECT content_hash, version, created_at FROM documents WHERE id = ?",
                )
                .bind(&doc.id)
                .fetch_optional(&mut *conn)
                .await?;
                if let Some((hash, version, _)) = &current {
                    if *hash == doc.content_hash {
                        outcomes.push(WriteOutcome::Unchanged { version: *version });
                        continue;
                    }
                }
                let now = Utc::now().to_rfc3339();
                let version = current.as_ref().map_or(1, |c| c.1 + 1);
                let created_at = current.as_ref().map_or(now.clone(), |c| c.2.clone());
                sqlx::query("DELETE FROM chunks_fts WHERE chunk_id IN (SELECT id FROM chunks WHERE document_id = ?)").bind(&doc.id).execute(&mut *conn).await?;
                sqlx::query("DELETE FROM chunks WHERE document_id = ?")
                    .bind(&doc.id)
                    .execute(&mut *conn)
                    .await?;
                sqlx::query(
                    "INSERT INTO documents (id, title, content_hash, version, chunk_count, content_type, source, metadata, created_at, updated_at) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                     ON CONFLICT (id) DO UPDATE SET title = excluded.title, content_hash = excluded.content_hash, version = excluded.version, \
                     chunk_count = excluded.chunk_count, content_type = excluded.content_type, source = excluded.source, \
                     metadata = excluded.metadata, updated_at = excluded.updated_at",
                )
                .bind(&doc.id)
                .bind(&doc.title)
                .bind(&doc.content_hash)
                .bind(version)
                .bind(chunks.len() as i64)
                .bind(&doc.content_type)
                .bind(&doc.source)
                .bind(doc.metadata.to_string())
                .bind(&created_at)
                .bind(&now)
                .execute(&mut *conn)
                .await?;
                for c in chunks {
                    sqlx::query("INSERT INTO chunks (id, document_id, idx, text, model, dims, embedding) VALUES (?, ?, ?, ?, ?, ?, ?)")
                        .bind(&c.chunk.id)
                        .bind(&doc.id)
                        .bind(c.chunk.index as i64)
                        .bind(&c.chunk.text)
                        .bind(model)
                        .bind(c.embedding.len() as i64)
                        .bind(to_blob(&c.embedding))
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("INSERT INTO chunks_fts (chunk_id, title, text) VALUES (?, ?, ?)")
                        .bind(&c.chunk.id)
                        .bind(&doc.title)
                        .bind(&c.chunk.text)
                        .execute(&mut *conn)
                        .await?;
                }
                for (id, kind, causation, payload) in
                    write_events(doc, version, chunks.len(), model)
                {
                    sqlx::query(
                        "INSERT INTO events (id, type, aggregate_id, aggregate_version, correlation_id, causation_id, payload, occurred_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    )
                    .bind(id)
                    .bind(kind)
                    .bind(&doc.id)
                    .bind(version)
                    .bind(correlation_id)
                    .bind(causation)
                    .bind(payload.to_string())
                    .bind(&now)
                    .execute(&mut *conn)
                    .await?;
                }
                outcomes.push(if current.is_some() {
                    WriteOutcome::Updated { version }
                } else {
                    WriteOutcome::Created { version }
                });
            }
            Ok(outcomes)
        })
    }

    async fn delete_document(
        &self,
        id: &str,
        correlation_id: &str,
    ) -> Result<Option<i64>, StoreError> {
        let pool = self.pool().await?;
        sqlite_immediate!(pool, |conn| {
            let version: Option<i64> =
                sqlx::query_scalar("SELECT version FROM documents WHERE id = ?")
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await?;
            let Some(version) = version else {
                return Ok(None);
            };
            sqlx::query("DELETE FROM chunks_fts WHERE chunk_id IN (SELECT id FROM chunks WHERE document_id = ?)").bind(id).execute(&mut *conn).await?;
            sqlx::query("DELETE FROM chunks WHERE document_id = ?")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            sqlx::query("DELETE FROM documents WHERE id = ?")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            sqlx::query(
                "INSERT INTO events (id, type, aggregate_id, aggregate_version, correlation_id, causation_id, payload, occurred_at) VALUES (?, ?, ?, ?, ?, NULL, ?, ?)",
            )
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(DOCUMENT_DELETED)
            .bind(id)
            .bind(version + 1)
            .bind(correlation_id)
            .bind(serde_json::json!({"deleted_version": version}).to_string())
            .bind(Utc::now().to_rfc3339())
            .execute(&mut *conn)
            .await?;
            Ok(Some(version + 1))
        })
    }

    async fn vector_search(
        &self,
        query: &[f32],
        model: &str,
        k: i64,
        filter: Option<&SearchFilter>,
    ) -> Result<Vec<ChunkHit>, StoreError> {
        // Exact scan, fine for the embedded mode's corpus sizes: score each embedding
        // straight from its bytes while streaming the rows (no per-row text or vector
        // allocation), keep the best k, then read only their text.
        let k = k.max(0) as usize;
        if k == 0 {
            return Ok(Vec::new());
        }
        let pool = self.pool().await?;
        let mut scan = match filter {
            Some(f) => sqlx::query(
                "SELECT c.id, c.embedding FROM chunks c JOIN documents d ON d.id = c.document_id \
                 WHERE c.model = ? AND c.dims = ? AND json_extract(d.metadata, ?) = ?",
            )
            .bind(model)
            .bind(query.len() as i64)
            .bind(format!("$.{}", f.key))
            .bind(f.value.as_str()),
            None => sqlx::query(
                "SELECT c.id, c.embedding FROM chunks c WHERE c.model = ? AND c.dims = ?",
            )
            .bind(model)
            .bind(query.len() as i64),
        }
        .fetch(pool);
        let mut best = TopK::new(k);
        while let Some(row) = scan.try_next().await? {
            let blob: &[u8] = row.try_get(1)?;
            let score = dot_with_blob(query, blob);
            if best.admits(score) {
                let id: &str = row.try_get(0)?;
                best.push(score, id);
            }
        }
        drop(scan);
        let best = best.into_sorted();
        if best.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders = vec!["?"; best.len()].join(", ");
        let sql = format!(
            "SELECT c.id, c.document_id, d.title, c.text FROM chunks c JOIN documents d ON d.id = c.document_id \
             WHERE c.id IN ({placeholders})"
        );
        let mut fetch = sqlx::query_as::<_, (String, String, String, String)>(&sql);
        for (_, id) in &best {
            fetch = fetch.bind(id);
        }
        let mut texts: std::collections::HashMap<String, (String, String, String)> = fetch
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|(id, document_id, title, text)| (id, (document_id, title, text)))
            .collect();
        // A chunk deleted between the two reads is simply left out.
        Ok(best
            .into_iter()
            .filter_map(|(score, chunk_id)| {
                let (document_id, title, text) = texts.remove(&chunk_id)?;
                Some(ChunkHit {
                    chunk_id,
                    document_id,
                    title,
                    text,
                    score: score as f64,
                })
            })
            .collect())
    }

    async fn keyword_search(
        &self,
        query: &str,
        k: i64,
        filter: Option<&SearchFilter>,
    ) -> Result<Vec<ChunkHit>, StoreError> {
        let terms = keyword_terms(query);
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let expression = terms
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(" OR ");
        let rows: Vec<(String, String, String, String, f64)> = match filter {
            Some(f) => sqlx::query_as(
                "SELECT c.id, c.document_id, d.title, c.text, -bm25(chunks_fts, 0.0, 2.0, 1.0) AS score \
                 FROM chunks_fts JOIN chunks c ON c.id = chunks_fts.chunk_id JOIN documents d ON d.id = c.document_id \
                 WHERE chunks_fts MATCH ? AND json_extract(d.metadata, ?) = ? \
                 ORDER BY score DESC, c.id LIMIT ?",
            )
            .bind(expression)
            .bind(format!("$.{}", f.key))
            .bind(f.value.as_str())
            .bind(k),
            // Rank inside the full-text index first and read the text of the best k
            // only, instead of joining every match to its chunk and document.
            None => sqlx::query_as(
                "SELECT c.id, c.document_id, d.title, c.text, best.score \
                 FROM (SELECT chunk_id, -bm25(chunks_fts, 0.0, 2.0, 1.0) AS score FROM chunks_fts \
                       WHERE chunks_fts MATCH ? ORDER BY score DESC LIMIT ?) best \
                 JOIN chunks c ON c.id = best.chunk_id JOIN documents d ON d.id = c.document_id \
                 ORDER BY best.score DESC, c.id",
            )
            .bind(expression)
            .bind(k),
        }
        .fetch_all(self.pool().await?)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(chunk_id, document_id, title, text, score)| ChunkHit {
                chunk_id,
                document_id,
                title,
                text,
                score,
            })
            .collect())
    }

    async fn events_after(&self, after: i64, limit: i64) -> Result<Vec<EventRecord>, StoreError> {
        type Row = (
            i64,
            String,
            String,
            String,
            i64,
            String,
            Option<String>,
            String,
            String,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT seq, id, type, aggregate_id, aggregate_version, correlation_id, causation_id, payload, occurred_at \
             FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool().await?)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| EventRecord {
                seq: r.0,
                id: r.1,
                kind: r.2,
                aggregate_id: r.3,
                aggregate_version: r.4,
                correlation_id: r.5,
                causation_id: r.6,
                payload: serde_json::from_str(&r.7).unwrap_or(Value::Null),
                occurred_at: parse_time(&r.8),
            })
            .collect())
    }
}

// ---- PostgreSQL --------------------------------------------------------------------------

pub struct PgKnowledgeStore {
    db: Database,
    indexer: Arc<VectorIndexer>,
    common_lexemes: CommonLexemes,
}

/// Lexemes in more than this share of chunks are left out of keyword queries.
const COMMON_LEXEME_SHARE: f32 = 0.1;
/// How long a read of the column statistics is reused (ANALYZE refreshes them rarely).
const COMMON_LEXEMES_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// The corpus' most common lexemes, from PostgreSQL's statistics of `chunks.tsv`
/// (gathered by ANALYZE and autovacuum), cached for `COMMON_LEXEMES_TTL`.
struct CommonLexemes(moka::future::Cache<(), Arc<Vec<String>>>);

impl Default for CommonLexemes {
    fn default() -> Self {
        Self(
            moka::future::Cache::builder()
                .time_to_live(COMMON_LEXEMES_TTL)
                .build(),
        )
    }
}

impl CommonLexemes {
    async fn get(&self, pool: &sqlx::PgPool) -> Arc<Vec<String>> {
        self.0
            .get_with((), async {
                // No statistics yet, or no permission to read them: nothing is left out.
                let lexemes: Vec<String> = sqlx::query_scalar(
                    "SELECT e.lexeme FROM pg_stats s, \
                     unnest(s.most_common_elems::text::text[]) WITH ORDINALITY AS e(lexeme, n) \
                     WHERE s.schemaname = current_schema() AND s.tablename = 'chunks' AND s.attname = 'tsv' \
                     AND s.most_common_elem_freqs[e.n] > $1",
                )
                .bind(COMMON_LEXEME_SHARE)
                .fetch_all(pool)
                .await
                .unwrap_or_default();
                Arc::new(lexemes)
            })
            .await
    }
}

/// pgvector's text form: `[0.1,0.2,...]`.
fn vector_literal(v: &[f32]) -> String {
    let mut s = String::with_capacity(v.len() * 10 + 2);
    s.push('[');
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&x.to_string());
    }
    s.push(']');
    s
}

type PgDocRow = (
    String,
    String,
    String,
    i64,
    i32,
    String,
    String,
    Value,
    DateTime<Utc>,
    DateTime<Utc>,
);

fn pg_doc(r: PgDocRow) -> DocumentRecord {
    DocumentRecord {
        id: r.0,
        title: r.1,
        content_hash: r.2,
        version: r.3,
        chunk_count: r.4 as i64,
        content_type: r.5,
        source: r.6,
        metadata: r.7,
        created_at: r.8,
        updated_at: r.9,
    }
}

impl PgKnowledgeStore {
    async fn pool(&self) -> Result<&sqlx::PgPool, StoreError> {
        match self.db.pool().await? {
            Pool::Postgres(pool) => Ok(pool),
            Pool::Sqlite(_) => unreachable!("PostgreSQL store over a SQLite pool"),
        }
    }
}

#[async_trait::async_trait]
impl KnowledgeStore for PgKnowledgeStore {
    async fn prepare(&self, _dims: usize) -> Result<(), StoreError> {
        // The HNSW index is built by the maintainer once there are chunks (vector_index).
        Ok(())
    }

    async fn document(&self, id: &str) -> Result<Option<DocumentRecord>, StoreError> {
        let sql = format!("SELECT {DOC_COLUMNS} FROM documents WHERE id = $1");
        let row: Option<PgDocRow> = sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(self.pool().await?)
            .await?;
        Ok(row.map(pg_doc))
    }

    async fn documents(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DocumentRecord>, StoreError> {
        let sql = format!("SELECT {DOC_COLUMNS} FROM documents WHERE id > $1 ORDER BY id LIMIT $2");
        let rows: Vec<PgDocRow> = sqlx::query_as(&sql)
            .bind(after.unwrap_or(""))
            .bind(limit)
            .fetch_all(self.pool().await?)
            .await?;
        Ok(rows.into_iter().map(pg_doc).collect())
    }

    async fn write_documents(
        &self,
        documents: &[DocumentWrite],
        model: &str,
        correlation_id: &str,
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        let mut tx = self.pool().await?.begin().await?;
        // Serialises writers of one document id, including the first insert. Locks are
        // taken in id order, so two batches sharing ids cannot deadlock.
        let mut ids: Vec<&str> = documents.iter().map(|d| d.document.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended(id, 0)) FROM unnest($1::text[]) AS id ORDER BY id")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        // Which vector index generation the chunks join: the live index, or (bulk) the
        // delta the maintainer indexes later.
        let dims = documents
            .iter()
            .flat_map(|d| d.chunks.first())
            .map(|c| c.embedding.len())
            .next();
        let (segment, bulk) = match dims {
            Some(dims) => {
                let count = documents.iter().map(|d| d.chunks.len()).sum();
                self.indexer.segment_for_write(&mut tx, dims, count).await?
            }
            None => (0, false),
        };
        // Set-based: a handful of statements per batch, not per document (round trips
        // were a large share of ingest time). Later copies of an id in one batch see
        // the earlier ones, as if written one after the other.
        let current: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT id, content_hash, version FROM documents WHERE id = ANY($1)")
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await?;
        let mut stored: std::collections::HashMap<&str, (&str, i64)> = current
            .iter()
            .map(|(id, hash, version)| (id.as_str(), (hash.as_str(), *version)))
            .collect();
        let now = Utc::now();
        let mut outcomes = Vec::with_capacity(documents.len());
        // The last write of each id (with its version) is what gets stored.
        let mut last: std::collections::HashMap<&str, (usize, i64)> = Default::default();
        let mut replaced: Vec<&str> = Vec::new();
        let mut events = Vec::new();
        for (
            i,
            DocumentWrite {
                document: doc,
                chunks,
            },
        ) in documents.iter().enumerate()
        {
            let previous = stored.get(doc.id.as_str()).copied();
            if let Some((hash, version)) = previous {
                if hash == doc.content_hash {
                    outcomes.push(WriteOutcome::Unchanged { version });
                    continue;
                }
                replaced.push(doc.id.as_str());
            }
            let version = previous.map_or(1, |p| p.1 + 1);
            stored.insert(doc.id.as_str(), (doc.content_hash.as_str(), version));
            last.insert(doc.id.as_str(), (i, version));
            for (id, kind, causation, payload) in write_events(doc, version, chunks.len(), model) {
                events.push((id, kind, causation, payload, doc.id.as_str(), version));
            }
            outcomes.push(if previous.is_some() {
                WriteOutcome::Updated { version }
            } else {
                WriteOutcome::Created { version }
            });
        }
        if !replaced.is_empty() {
            sqlx::query("DELETE FROM chunks WHERE document_id = ANY($1)")
                .bind(&replaced)
                .execute(&mut *tx)
                .await?;
        }
        let mut written: Vec<(usize, i64)> = last.into_values().collect();
        written.sort_unstable();
        for group in written.chunks(PG_ROWS_PER_STATEMENT / 10) {
            let mut builder = sqlx::QueryBuilder::new(
                "INSERT INTO documents (id, title, content_hash, version, chunk_count, content_type, source, metadata, created_at, updated_at) ",
            );
            builder.push_values(group, |mut row, &(i, version)| {
                let (doc, chunks) = (&documents[i].document, &documents[i].chunks);
                row.push_bind(&doc.id)
                    .push_bind(&doc.title)
                    .push_bind(&doc.content_hash)
                    .push_bind(version)
                    .push_bind(chunks.len() as i32)
                    .push_bind(&doc.content_type)
                    .push_bind(&doc.source)
                    .push_bind(&doc.metadata)
                    .push_bind(now)
                    .push_bind(now);
            });
            builder.push(
                " ON CONFLICT (id) DO UPDATE SET title = excluded.title, content_hash = excluded.content_hash, version = excluded.version, \
                 chunk_count = excluded.chunk_count, content_type = excluded.content_type, source = excluded.source, \
                 metadata = excluded.metadata, updated_at = excluded.updated_at",
            );
            builder.build().execute(&mut *tx).await?;
        }
        let rows: Vec<(&NewDocument, &EmbeddedChunk)> = written
            .iter()
            .flat_map(|&(i, _)| {
                let write = &documents[i];
                write.chunks.iter().map(move |c| (&write.document, c))
            })
            .collect();
        for group in rows.chunks(PG_ROWS_PER_STATEMENT / 9) {
            let mut builder = sqlx::QueryBuilder::new(
                "INSERT INTO chunks (id, document_id, idx, title, text, model, dims, segment, embedding) ",
            );
            builder.push_values(group, |mut row, (doc, c)| {
                row.push_bind(&c.chunk.id)
                    .push_bind(&doc.id)
                    .push_bind(c.chunk.index as i32)
                    .push_bind(&doc.title)
                    .push_bind(&c.chunk.text)
                    .push_bind(model)
                    .push_bind(c.embedding.len() as i32)
                    .push_bind(segment)
                    .push_bind(vector_literal(&c.embedding))
                    .push_unseparated("::vector");
            });
            builder.build().execute(&mut *tx).await?;
        }
        for group in events.chunks(PG_ROWS_PER_STATEMENT / 8) {
            let mut builder = sqlx::QueryBuilder::new(
                "INSERT INTO events (id, type, aggregate_id, aggregate_version, correlation_id, causation_id, payload, occurred_at) ",
            );
            builder.push_values(
                group,
                |mut row, (id, kind, causation, payload, aggregate, version)| {
                    row.push_bind(id)
                        .push_bind(*kind)
                        .push_bind(*aggregate)
                        .push_bind(*version)
                        .push_bind(correlation_id)
                        .push_bind(causation)
                        .push_bind(payload)
                        .push_bind(now);
                },
            );
            builder.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        if let (true, Some(dims)) = (bulk, dims) {
            self.indexer.bulk_written(self.pool().await?, dims);
        }
        Ok(outcomes)
    }

    async fn delete_document(
        &self,
        id: &str,
        correlation_id: &str,
    ) -> Result<Option<i64>, StoreError> {
        let mut tx = self.pool().await?.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let version: Option<i64> =
            sqlx::query_scalar("DELETE FROM documents WHERE id = $1 RETURNING version")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(version) = version else {
            return Ok(None);
        };
        sqlx::query(
            "INSERT INTO events (id, type, aggregate_id, aggregate_version, correlation_id, causation_id, payload, occurred_at) VALUES ($1, $2, $3, $4, $5, NULL, $6, now())",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(DOCUMENT_DELETED)
        .bind(id)
        .bind(version + 1)
        .bind(correlation_id)
        .bind(serde_json::json!({"deleted_version": version}))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(version + 1))
    }

    async fn vector_search(
        &self,
        query: &[f32],
        model: &str,
        k: i64,
        filter: Option<&SearchFilter>,
    ) -> Result<Vec<ChunkHit>, StoreError> {
        let dims = query.len();
        let (key, value) = filter.map_or((String::new(), String::new()), |f| {
            (f.key.clone(), f.value.clone())
        });
        let pool = self.pool().await?;
        let state = self.indexer.state(pool, dims).await?;
        let nearest = |segments: &str| {
            format!(
                "SELECT c.id, c.document_id, d.title, c.text, (c.embedding::vector({dims})) <=> $1::vector({dims}) AS distance \
                 FROM chunks c JOIN documents d ON d.id = c.document_id \
                 WHERE c.dims = {dims} AND {segments} AND c.model = $2 AND ($3 = '' OR d.metadata ->> $3 = $4) \
                 ORDER BY (c.embedding::vector({dims})) <=> $1::vector({dims}) LIMIT $5"
            )
        };
        // The live index (its partial predicate repeated, so the planner can use it) plus
        // an exact scan of the delta that bulk writes left outside it (see vector_index).
        let sql = if state.indexed {
            let generation = state.generation;
            format!(
                "SELECT id, document_id, title, text, 1 - distance FROM (({}) UNION ALL ({})) hits ORDER BY distance LIMIT $5",
                nearest(&format!("c.segment <= {generation}")),
                nearest(&format!("c.segment > {generation}"))
            )
        } else {
            format!(
                "SELECT id, document_id, title, text, 1 - distance FROM ({}) hits",
                nearest("true")
            )
        };
        // An unnamed statement: planned with the actual values, so the partial HNSW index
        // is chosen (a cached generic plan may scan and sort every chunk instead).
        let rows: Vec<(String, String, String, String, f64)> = sqlx::query_as(&sql)
            .persistent(false)
            .bind(vector_literal(query))
            .bind(model)
            .bind(&key)
            .bind(&value)
            .bind(k)
            .fetch_all(pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(chunk_id, document_id, title, text, score)| ChunkHit {
                chunk_id,
                document_id,
                title,
                text,
                score,
            })
            .collect())
    }

    async fn keyword_search(
        &self,
        query: &str,
        k: i64,
        filter: Option<&SearchFilter>,
    ) -> Result<Vec<ChunkHit>, StoreError> {
        let terms = keyword_terms(query);
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let (key, value) = filter.map_or((String::new(), String::new()), |f| {
            (f.key.clone(), f.value.clone())
        });
        // Chunks with every word first: the GIN index intersects posting lists cheaply,
        // and they are the best matches. Only when fewer than k have every word does the
        // search widen to any word, the chunks with every word staying on top. Both
        // passes are one statement: the any-word pass is gated by a one-time filter on
        // the every-word pass's count, so it never runs when it cannot add anything (a
        // phrase of common words has hundreds of chunks with every word, and OR-ing those
        // words matches most of the corpus).
        //
        // Ranking is bounded: at most KEYWORD_CANDIDATES (every word) and
        // KEYWORD_FILL_CANDIDATES (any word) matches, found through the GIN index, are
        // ranked, so a very common word cannot make a search scan the corpus; chunk
        // texts are read only for the top k.
        // When widening to any word, words in more than COMMON_LEXEME_SHARE of chunks
        // (PostgreSQL's own statistics of the tsvector column) are left out unless
        // nothing else is left: matching any of them matches most of the corpus, and
        // their posting lists are what makes the scan slow. The every-word pass keeps
        // them: with them a remembered phrase still narrows to its chunk.
        let matching = |query: &str, limit: usize| {
            format!(
                "SELECT c.id, c.document_id, c.tsv FROM chunks c, q WHERE {query} \
                 AND ($2 = '' OR EXISTS (SELECT 1 FROM documents d WHERE d.id = c.document_id AND d.metadata ->> $2 = $3)) \
                 LIMIT {limit}"
            )
        };
        let sql = format!(
            "WITH lex AS (SELECT array_agg(lexeme) AS every, array_agg(lexeme) FILTER (WHERE lexeme <> ALL($5::text[])) AS rare \
                 FROM unnest(to_tsvector('english', $1))), \
             q AS (SELECT array_to_string(ARRAY(SELECT quote_literal(x) FROM unnest(lex.every) AS x), ' & ')::tsquery AS every, \
                 array_to_string(ARRAY(SELECT quote_literal(x) FROM unnest(coalesce(lex.rare, lex.every)) AS x), ' | ')::tsquery AS some, \
                 cardinality(lex.every) > 1 AS several FROM lex), \
             every_hits AS (SELECT m.id, m.document_id, ts_rank_cd(m.tsv, q.every) AS score FROM ({}) m, q \
                 ORDER BY score DESC, m.id LIMIT $4), \
             some_hits AS (SELECT m.id, m.document_id, ts_rank_cd(m.tsv, q.some) AS score FROM ({}) m, q \
                 ORDER BY score DESC, m.id LIMIT $4), \
             ranked AS (SELECT id, document_id, score, 0 AS tier FROM every_hits \
                 UNION ALL SELECT id, document_id, score, 1 FROM some_hits WHERE id NOT IN (SELECT id FROM every_hits) \
                 ORDER BY tier, score DESC, id LIMIT $4) \
             SELECT r.id, r.document_id, d.title, c.text, r.score FROM ranked r \
             JOIN chunks c ON c.id = r.id JOIN documents d ON d.id = r.document_id \
             ORDER BY r.tier, r.score DESC, r.id",
            matching("c.tsv @@ q.every", KEYWORD_CANDIDATES),
            matching(
                "q.several AND (SELECT count(*) FROM every_hits) < $4 AND c.tsv @@ q.some",
                KEYWORD_FILL_CANDIDATES
            ),
        );
        let pool = self.pool().await?;
        let common = self.common_lexemes.get(pool).await;
        let rows: Vec<(String, String, String, String, f32)> = sqlx::query_as(&sql)
            .persistent(false)
            .bind(terms.join(" "))
            .bind(&key)
            .bind(&value)
            .bind(k)
            .bind(common.as_slice())
            .fetch_all(pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(chunk_id, document_id, title, text, score)| ChunkHit {
                chunk_id,
                document_id,
                title,
                text,
                score: score as f64,
            })
            .collect())
    }

    async fn maintain_vector_index(
        &self,
        due: bool,
    ) -> Result<Vec<(usize, Maintenance)>, StoreError> {
        let pool = self.pool().await?;
        let mut done = Vec::new();
        for dims in self.indexer.dimensions_with_delta(pool).await? {
            done.push((dims, self.indexer.maintain(pool, dims, due).await?));
        }
        Ok(done)
    }

    async fn vector_index_state(&self, dims: usize) -> Result<Option<IndexState>, StoreError> {
        let pool = self.pool().await?;
        Ok(Some(self.indexer.fresh_state(pool, dims).await?))
    }

    async fn events_after(&self, after: i64, limit: i64) -> Result<Vec<EventRecord>, StoreError> {
        type Row = (
            i64,
            String,
            String,
            String,
            i64,
            String,
            Option<String>,
            Value,
            DateTime<Utc>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT seq, id, type, aggregate_id, aggregate_version, correlation_id, causation_id, payload, occurred_at \
             FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool().await?)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| EventRecord {
                seq: r.0,
                id: r.1,
                kind: r.2,
                aggregate_id: r.3,
                aggregate_version: r.4,
                correlation_id: r.5,
                causation_id: r.6,
                payload: r.7,
                occurred_at: r.8,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_the_best_scores_and_breaks_ties_by_id_whatever_the_order() {
        let pairs = [
            (0.2, "e"),
            (0.9, "b"),
            (0.5, "d"),
            (0.9, "a"),
            (0.1, "f"),
            (0.5, "c"),
        ];
        let mut forward = TopK::new(3);
        let mut backward = TopK::new(3);
        for (score, id) in pairs {
            if forward.admits(score) {
                forward.push(score, id);
            }
        }
        for (score, id) in pairs.iter().rev() {
            if backward.admits(*score) {
                backward.push(*score, id);
            }
        }
        let expected = vec![(0.9, "a".to_string()), (0.9, "b".into()), (0.5, "c".into())];
        assert_eq!(forward.into_sorted(), expected);
        assert_eq!(backward.into_sorted(), expected);
        assert!(TopK::new(0).into_sorted().is_empty());
    }

    #[test]
    fn the_dot_product_reads_the_stored_bytes_as_little_endian_floats() {
        let stored = [0.5f32, -1.0, 2.0];
        assert_eq!(dot_with_blob(&[1.0, 2.0, 0.25], &to_blob(&stored)), -1.0);
    }
}
