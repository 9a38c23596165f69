//! The knowledge store on SQLite: BM25 over postings in memory for keywords (FTS5 when a
//! metadata filter narrows the search), an in-memory scan of the embeddings.

use super::sqlite_keywords::SqliteKeywords;
use super::sqlite_vectors::{SqliteVectors, TopK};
use super::sqlite_writes::{delete_chunks, write_batch};
use super::*;

pub(crate) struct SqliteKnowledgeStore {
    pub(super) db: Database,
    /// The embeddings in memory, for unfiltered vector searches.
    pub(super) vectors: SqliteVectors,
    /// The chunks' words in memory, for unfiltered keyword searches.
    pub(super) keywords: SqliteKeywords,
}

pub(super) fn to_blob(v: &[f32]) -> Vec<u8> {
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

impl SqliteKnowledgeStore {
    async fn pool(&self) -> Result<&sqlx::SqlitePool, StoreError> {
        self.db.sqlite().await
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
    fn db_system(&self) -> &'static str {
        "sqlite"
    }

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
            write_batch(conn, documents, model, correlation_id).await
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
            delete_chunks(conn, &[id]).await?;
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
        let k = k.max(0) as usize;
        if k == 0 {
            return Ok(Vec::new());
        }
        let pool = self.pool().await?;
        // A metadata filter scans the matching rows in SQL, scoring each embedding
        // straight from its bytes (no per-row allocation). Without one, the in-memory
        // matrix's int8 scan finds twice k (and 16 more) candidates, whose stored floats
        // then give their exact scores and order.
        let best = match filter {
            Some(f) => {
                let mut scan = sqlx::query(
                    "SELECT c.id, c.embedding FROM chunks c JOIN documents d ON d.id = c.document_id \
                     WHERE c.model = ? AND c.dims = ? AND json_extract(d.metadata, ?) = ?",
                )
                .bind(model)
                .bind(query.len() as i64)
                .bind(format!("$.{}", f.key))
                .bind(f.value.as_str())
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
                best.into_sorted()
            }
            None => self.vectors.nearest(pool, query, model, 2 * k + 16).await?,
        };
        if best.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders = vec!["?"; best.len()].join(", ");
        let sql = format!(
            "SELECT c.id, c.document_id, d.title, c.text, c.embedding FROM chunks c JOIN documents d ON d.id = c.document_id \
             WHERE c.id IN ({placeholders})"
        );
        let mut fetch = sqlx::query_as::<_, (String, String, String, String, Vec<u8>)>(&sql);
        for (_, id) in &best {
            fetch = fetch.bind(id);
        }
        // A chunk deleted between the two reads is simply left out.
        let mut exact = TopK::new(k);
        let mut texts: std::collections::HashMap<String, (String, String, String)> =
            std::collections::HashMap::new();
        for (id, document_id, title, text, embedding) in fetch.fetch_all(pool).await? {
            exact.push(dot_with_blob(query, &embedding), &id);
            texts.insert(id, (document_id, title, text));
        }
        Ok(exact
            .into_sorted()
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

    async fn keyword_search_scored(
        &self,
        query: &str,
        k: i64,
        filter: Option<&SearchFilter>,
        scored_by: Option<QueryEmbedding<'_>>,
    ) -> Result<Vec<ScoredHit>, StoreError> {
        let terms = keyword_terms(query);
        if terms.is_empty() || k <= 0 {
            return Ok(Vec::new());
        }
        let pool = self.pool().await?;
        let rows = match filter {
            Some(filter) => filtered_keyword_rows(pool, &terms, k, filter, scored_by).await?,
            None => {
                let best = self.keywords.best(pool, &terms, k as usize).await?;
                chunk_rows(pool, best, scored_by).await?
            }
        };
        Ok(rows
            .into_iter()
            .map(|(chunk_id, document_id, title, text, score, blob, model)| {
                let similarity = match (scored_by, blob, model) {
                    (Some(q), Some(blob), Some(model))
                        if model == q.model && blob.len() == q.vector.len() * 4 =>
                    {
                        Some(f64::from(dot_with_blob(q.vector, &blob)))
                    }
                    _ => None,
                };
                let hit = ChunkHit::from((chunk_id, document_id, title, text, score));
                ScoredHit { hit, similarity }
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

/// A keyword hit's row: chunk id, document id, title, text, score, and the embedding and
/// its model when a query vector will score it.
type KeywordRow = (
    String,
    String,
    String,
    String,
    f64,
    Option<Vec<u8>>,
    Option<String>,
);

/// The embedding columns, only when there is a query vector to score against.
fn embedding_columns(scored_by: Option<QueryEmbedding<'_>>) -> &'static str {
    if scored_by.is_some() {
        "c.embedding, c.model"
    } else {
        "NULL, NULL"
    }
}

/// A filtered keyword search stays in FTS5, where the filter joins the matches: the same
/// BM25 as the in-memory index, over the chunks the filter keeps.
async fn filtered_keyword_rows(
    pool: &sqlx::SqlitePool,
    terms: &[String],
    k: i64,
    filter: &SearchFilter,
    scored_by: Option<QueryEmbedding<'_>>,
) -> Result<Vec<KeywordRow>, StoreError> {
    let expression = terms
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(" OR ");
    let sql = format!(
        "SELECT c.id, c.document_id, d.title, c.text, -bm25(chunks_fts, 0.0, 2.0, 1.0) AS score, {} \
         FROM chunks_fts JOIN chunks c ON c.id = chunks_fts.chunk_id JOIN documents d ON d.id = c.document_id \
         WHERE chunks_fts MATCH ? AND json_extract(d.metadata, ?) = ? \
         ORDER BY score DESC, c.id LIMIT ?",
        embedding_columns(scored_by)
    );
    Ok(sqlx::query_as(&sql)
        .bind(expression)
        .bind(format!("$.{}", filter.key))
        .bind(filter.value.as_str())
        .bind(k)
        .fetch_all(pool)
        .await?)
}

/// The rows of the chunks the in-memory index ranked, in its order; a chunk deleted
/// since is left out.
async fn chunk_rows(
    pool: &sqlx::SqlitePool,
    best: Vec<(f32, String)>,
    scored_by: Option<QueryEmbedding<'_>>,
) -> Result<Vec<KeywordRow>, StoreError> {
    if best.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT c.id, c.document_id, d.title, c.text, {} FROM chunks c \
         JOIN documents d ON d.id = c.document_id WHERE c.id IN ({})",
        embedding_columns(scored_by),
        vec!["?"; best.len()].join(", ")
    );
    type Row = (
        String,
        String,
        String,
        String,
        Option<Vec<u8>>,
        Option<String>,
    );
    let mut read = sqlx::query_as::<_, Row>(&sql);
    for (_, id) in &best {
        read = read.bind(id);
    }
    let mut found: std::collections::HashMap<String, Row> = read
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|row| (row.0.clone(), row))
        .collect();
    Ok(best
        .into_iter()
        .filter_map(|(score, id)| {
            let (id, document_id, title, text, blob, model) = found.remove(&id)?;
            Some((id, document_id, title, text, f64::from(score), blob, model))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dot_product_reads_the_stored_bytes_as_little_endian_floats() {
        let stored = [0.5f32, -1.0, 2.0];
        assert_eq!(dot_with_blob(&[1.0, 2.0, 0.25], &to_blob(&stored)), -1.0);
    }
}
