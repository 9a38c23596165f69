//! The knowledge store on SQLite: FTS5 for keywords, an exact scan of the embeddings.

use super::*;

pub(crate) struct SqliteKnowledgeStore {
    pub(super) db: Database,
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

    async fn keyword_search_scored(
        &self,
        query: &str,
        k: i64,
        filter: Option<&SearchFilter>,
        scored_by: Option<QueryEmbedding<'_>>,
    ) -> Result<Vec<ScoredHit>, StoreError> {
        let terms = keyword_terms(query);
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let expression = terms
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(" OR ");
        // The embedding and its model only when there is a query vector to score against.
        let embedding = if scored_by.is_some() {
            "c.embedding, c.model"
        } else {
            "NULL, NULL"
        };
        type Row = (
            String,
            String,
            String,
            String,
            f64,
            Option<Vec<u8>>,
            Option<String>,
        );
        let filtered = format!(
            "SELECT c.id, c.document_id, d.title, c.text, -bm25(chunks_fts, 0.0, 2.0, 1.0) AS score, {embedding} \
             FROM chunks_fts JOIN chunks c ON c.id = chunks_fts.chunk_id JOIN documents d ON d.id = c.document_id \
             WHERE chunks_fts MATCH ? AND json_extract(d.metadata, ?) = ? \
             ORDER BY score DESC, c.id LIMIT ?"
        );
        // Rank inside the full-text index first and read the text of the best k
        // only, instead of joining every match to its chunk and document.
        let unfiltered = format!(
            "SELECT c.id, c.document_id, d.title, c.text, best.score, {embedding} \
             FROM (SELECT chunk_id, -bm25(chunks_fts, 0.0, 2.0, 1.0) AS score FROM chunks_fts \
                   WHERE chunks_fts MATCH ? ORDER BY score DESC LIMIT ?) best \
             JOIN chunks c ON c.id = best.chunk_id JOIN documents d ON d.id = c.document_id \
             ORDER BY best.score DESC, c.id"
        );
        let rows: Vec<Row> = match filter {
            Some(f) => sqlx::query_as(&filtered)
                .bind(expression)
                .bind(format!("$.{}", f.key))
                .bind(f.value.as_str())
                .bind(k),
            None => sqlx::query_as(&unfiltered).bind(expression).bind(k),
        }
        .fetch_all(self.pool().await?)
        .await?;
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
