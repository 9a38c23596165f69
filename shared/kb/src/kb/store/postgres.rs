//! The knowledge store on PostgreSQL: pgvector HNSW for vectors, a tsvector GIN index
//! for keywords.

use super::*;

pub(crate) struct PgKnowledgeStore {
    pub(super) db: Database,
    pub(super) indexer: Arc<VectorIndexer>,
    pub(super) statistics: bm25::CorpusStatistics,
}

/// The similarity of a keyword hit to the query's embedding, from the chunk's own (of
/// that model), as SQL (parameters $6 and $7), and the first parameter after it.
fn similarity_sql(scored_by: Option<QueryEmbedding<'_>>) -> (String, usize) {
    match scored_by {
        Some(q) => {
            let dims = q.vector.len();
            let similarity = format!(
                "CASE WHEN c.model = $6 AND c.dims = {dims} \
                 THEN 1 - ((c.embedding::vector({dims})) <=> $7::vector({dims})) END"
            );
            (similarity, 8)
        }
        None => ("NULL::float8".to_string(), 6),
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
        self.db.postgres().await
    }
}

#[async_trait::async_trait]
impl KnowledgeStore for PgKnowledgeStore {
    fn db_system(&self) -> &'static str {
        "postgresql"
    }

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
        insert_documents(&mut tx, documents, &written, now).await?;
        let rows: Vec<(&NewDocument, &EmbeddedChunk)> = written
            .iter()
            .flat_map(|&(i, _)| {
                let write = &documents[i];
                write.chunks.iter().map(move |c| (&write.document, c))
            })
            .collect();
        insert_chunks(&mut tx, &rows, model, segment).await?;
        insert_events(&mut tx, &events, correlation_id, now).await?;
        tx.commit().await?;
        self.statistics.invalidate();
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
        self.statistics.invalidate();
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
        let rows: Vec<HitRow<f64>> = sqlx::query_as(&sql)
            .persistent(false)
            .bind(vector_literal(query))
            .bind(model)
            .bind(&key)
            .bind(&value)
            .bind(k)
            .fetch_all(pool)
            .await?;
        Ok(rows.into_iter().map(ChunkHit::from).collect())
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
        let (key, value) = filter.map_or((String::new(), String::new()), |f| {
            (f.key.clone(), f.value.clone())
        });
        let pool = self.pool().await?;
        let (words, totals) = self.statistics.terms(pool, &terms).await?;
        if words.is_empty() {
            return Ok(Vec::new());
        }
        // Chunks with every word first: the GIN index intersects posting lists cheaply,
        // and a phrase of common words has hundreds of them. Only when fewer than k have
        // every word does the search widen to the chunks with any of the query's rarest
        // words (the any-word pass is gated by a one-time filter on the every-word pass's
        // count, so it never runs when it cannot add anything). Each pass is ranked by
        // BM25 (see `bm25`) in tiers: the chunks holding the words as a phrase, then
        // those with every word, then the rest. BM25 knows nothing of word order, and
        // ranked by it alone a remembered phrase's chunk came behind chunks holding its
        // words apart or repeating some of them (its document in the top 5 for 64 % of
        // the benchmark's phrases, against 93 % with ts_rank_cd's cover density).
        //
        // Ranking is bounded: at most KEYWORD_CANDIDATES (every word) and FILL_BUDGET
        // (any word) matches, found through the GIN index, are ranked, so a very common
        // word cannot make a search scan the corpus; chunk texts are read only for the
        // top k.
        // `|| ''` detoasts each row's tsvector once: the score reads it once per word,
        // and a TOASTed value passed as it is would be fetched and decompressed each time.
        let matching = |query: &str, limit: i64| {
            format!(
                "SELECT c.id, c.document_id, c.tsv || ''::tsvector AS tsv FROM chunks c, q WHERE {query} \
                 AND ($2 = '' OR EXISTS (SELECT 1 FROM documents d WHERE d.id = c.document_id AND d.metadata ->> $2 = $3)) \
                 LIMIT {limit}"
            )
        };
        let (similarity, first_term) = similarity_sql(scored_by);
        let score = bm25::score_sql("m.tsv", &words, first_term);
        // The query as a phrase (its words in order, stopwords as gaps): the parameter
        // after the average length.
        let phrase = first_term + 2 * words.len() + 1;
        let sql = format!(
            "WITH q AS (SELECT $1::tsquery AS every, nullif($5, '')::tsquery AS some, \
                 phraseto_tsquery('english', ${phrase}) AS phrase), \
             every_hits AS (SELECT m.id, m.document_id, {score} AS score, \
                 CASE WHEN m.tsv @@ q.phrase THEN 0 ELSE 1 END AS tier FROM ({}) m, q \
                 ORDER BY tier, score DESC, m.id LIMIT $4), \
             some_hits AS (SELECT m.id, m.document_id, {score} AS score FROM ({}) m \
                 ORDER BY score DESC, m.id LIMIT $4), \
             ranked AS (SELECT id, document_id, score, tier FROM every_hits \
                 UNION ALL SELECT id, document_id, score, 2 FROM some_hits WHERE id NOT IN (SELECT id FROM every_hits) \
                 ORDER BY tier, score DESC, id LIMIT $4) \
             SELECT r.id, r.document_id, d.title, c.text, r.score, r.tier, {similarity} FROM ranked r \
             JOIN chunks c ON c.id = r.id JOIN documents d ON d.id = r.document_id \
             ORDER BY r.tier, r.score DESC, r.id",
            matching("c.tsv @@ q.every", KEYWORD_CANDIDATES),
            matching(
                "(SELECT count(*) FROM every_hits) < $4 AND c.tsv @@ q.some",
                bm25::FILL_BUDGET
            ),
        );
        let fill = if words.len() > 1 {
            bm25::fill_query(&words)
        } else {
            String::new()
        };
        type Row = (String, String, String, String, f64, i32, Option<f64>);
        let mut statement = sqlx::query_as::<_, Row>(&sql)
            .persistent(false)
            .bind(bm25::every_query(&words))
            .bind(&key)
            .bind(&value)
            .bind(k)
            .bind(fill);
        if let Some(q) = scored_by {
            statement = statement.bind(q.model).bind(vector_literal(q.vector));
        }
        for word in &words {
            statement = statement.bind(&word.quoted).bind(word.weight);
        }
        let rows = statement
            .bind(totals.average_length.max(1.0))
            .bind(query)
            .fetch_all(pool)
            .await?;
        let raise = bm25::tier_offsets(rows.iter().map(|r| (r.5, r.4)));
        Ok(rows
            .into_iter()
            .map(
                |(chunk_id, document_id, title, text, score, tier, similarity)| ScoredHit {
                    hit: ChunkHit::from((
                        chunk_id,
                        document_id,
                        title,
                        text,
                        score + raise[tier.clamp(0, 2) as usize],
                    )),
                    similarity,
                },
            )
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

/// An event row of a batch: id, type, causation, payload, aggregate id and version.
type EventRow<'a> = (String, &'static str, Option<String>, Value, &'a str, i64);

/// Upserts the documents a batch writes (the last write of each id, with its version).
async fn insert_documents(
    tx: &mut sqlx::PgConnection,
    documents: &[DocumentWrite],
    written: &[(usize, i64)],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
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
    Ok(())
}

/// Inserts a batch's chunks with their embeddings, in the given vector index segment.
async fn insert_chunks(
    tx: &mut sqlx::PgConnection,
    rows: &[(&NewDocument, &EmbeddedChunk)],
    model: &str,
    segment: i64,
) -> Result<(), StoreError> {
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
    Ok(())
}

/// Appends a batch's events, all under one correlation id.
async fn insert_events(
    tx: &mut sqlx::PgConnection,
    events: &[EventRow<'_>],
    correlation_id: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
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
    Ok(())
}
