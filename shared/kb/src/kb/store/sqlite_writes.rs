//! The embedded store's batch write (issue 16, item 3): a batch of documents in a
//! handful of set-based statements instead of a few per document and two per chunk.
//!
//! sqlx runs each SQLite connection on a thread of its own and hands every statement to
//! it and its result back, two thread switches per statement: at two statements a chunk
//! and eight a document, a profile of a 10k-chunk import spent over 40 % of its time
//! switching threads. As on PostgreSQL, the last write of an id in a batch is the one
//! stored, and every write keeps its outcome and events.

use std::collections::HashMap;

use chrono::Utc;
use serde_json::Value;
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use super::sqlite::to_blob;
use super::{write_events, DocumentWrite, StoreError, WriteOutcome};

/// Rows per multi-row statement: at most 9 parameters a row, well under SQLite's 32,766.
const ROWS_PER_STATEMENT: usize = 1_000;
/// Ids per `IN (...)` list.
const IDS_PER_STATEMENT: usize = 1_000;

/// An event row: id, type, causation, payload, document id, version.
type EventRow<'a> = (String, &'static str, Option<String>, Value, &'a str, i64);

/// Writes the batch inside the caller's `BEGIN IMMEDIATE` transaction.
pub(super) async fn write_batch(
    conn: &mut SqliteConnection,
    documents: &[DocumentWrite],
    model: &str,
    correlation_id: &str,
) -> Result<Vec<WriteOutcome>, StoreError> {
    let ids: Vec<&str> = documents.iter().map(|d| d.document.id.as_str()).collect();
    // What is stored now: id -> (content hash, version, created_at).
    let mut stored: HashMap<String, (String, i64, String)> = HashMap::new();
    for group in ids.chunks(IDS_PER_STATEMENT) {
        let mut read = QueryBuilder::<Sqlite>::new(
            "SELECT id, content_hash, version, created_at FROM documents WHERE id IN (",
        );
        let mut list = read.separated(", ");
        for id in group {
            list.push_bind(*id);
        }
        read.push(")");
        let rows: Vec<(String, String, i64, String)> =
            read.build_query_as().fetch_all(&mut *conn).await?;
        for (id, hash, version, created_at) in rows {
            stored.insert(id, (hash, version, created_at));
        }
    }
    let now = Utc::now().to_rfc3339();
    let mut outcomes = Vec::with_capacity(documents.len());
    // The last write of each id (with its version and creation time) is what gets stored.
    let mut last: HashMap<&str, (usize, i64, String)> = HashMap::new();
    let mut replaced: Vec<&str> = Vec::new();
    let mut events: Vec<EventRow<'_>> = Vec::new();
    for (
        i,
        DocumentWrite {
            document: doc,
            chunks,
        },
    ) in documents.iter().enumerate()
    {
        let previous = stored.get(doc.id.as_str()).cloned();
        if let Some((hash, version, _)) = &previous {
            if *hash == doc.content_hash {
                outcomes.push(WriteOutcome::Unchanged { version: *version });
                continue;
            }
            replaced.push(doc.id.as_str());
        }
        let version = previous.as_ref().map_or(1, |p| p.1 + 1);
        let created_at = previous.as_ref().map_or(now.clone(), |p| p.2.clone());
        stored.insert(
            doc.id.clone(),
            (doc.content_hash.clone(), version, created_at.clone()),
        );
        last.insert(doc.id.as_str(), (i, version, created_at));
        for (id, kind, causation, payload) in write_events(doc, version, chunks.len(), model) {
            events.push((id, kind, causation, payload, doc.id.as_str(), version));
        }
        outcomes.push(if previous.is_some() {
            WriteOutcome::Updated { version }
        } else {
            WriteOutcome::Created { version }
        });
    }
    delete_chunks(conn, &replaced).await?;
    let mut written: Vec<(usize, i64, String)> = last.into_values().collect();
    written.sort_unstable_by_key(|w| w.0);
    insert_documents(conn, documents, &written, &now).await?;
    insert_chunks(conn, documents, &written, model).await?;
    insert_events(conn, &events, correlation_id, &now).await?;
    Ok(outcomes)
}

/// Deletes these documents' chunks and their keyword rows, found by the rowid each chunk
/// recorded (an indexed lookup; chunk_id is not an indexed column of the FTS5 table, and
/// matching on it scans the whole index). Chunks written before the rowid was recorded,
/// or by hand, fall back to that scan.
pub(super) async fn delete_chunks(
    conn: &mut SqliteConnection,
    documents: &[&str],
) -> Result<(), StoreError> {
    for group in documents.chunks(IDS_PER_STATEMENT) {
        let in_list = |sql: &str| {
            let mut builder = QueryBuilder::<Sqlite>::new(sql);
            let mut list = builder.separated(", ");
            for id in group {
                list.push_bind(*id);
            }
            builder.push(")");
            builder
        };
        in_list("DELETE FROM chunks_fts WHERE rowid IN (SELECT fts_rowid FROM chunks WHERE document_id IN (")
            .push(")")
            .build()
            .execute(&mut *conn)
            .await?;
        let (unlinked,): (i64,) =
            in_list("SELECT count(*) FROM chunks WHERE fts_rowid IS NULL AND document_id IN (")
                .build_query_as()
                .fetch_one(&mut *conn)
                .await?;
        if unlinked > 0 {
            in_list("DELETE FROM chunks_fts WHERE chunk_id IN (SELECT id FROM chunks WHERE document_id IN (")
                .push(")")
                .build()
                .execute(&mut *conn)
                .await?;
        }
        in_list("DELETE FROM chunks WHERE document_id IN (")
            .build()
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

async fn insert_documents(
    conn: &mut SqliteConnection,
    documents: &[DocumentWrite],
    written: &[(usize, i64, String)],
    now: &str,
) -> Result<(), StoreError> {
    for group in written.chunks(ROWS_PER_STATEMENT) {
        let mut builder = QueryBuilder::<Sqlite>::new(
            "INSERT INTO documents (id, title, content_hash, version, chunk_count, content_type, source, metadata, created_at, updated_at) ",
        );
        builder.push_values(group, |mut row, (i, version, created_at)| {
            let (doc, chunks) = (&documents[*i].document, &documents[*i].chunks);
            row.push_bind(&doc.id)
                .push_bind(&doc.title)
                .push_bind(&doc.content_hash)
                .push_bind(*version)
                .push_bind(chunks.len() as i64)
                .push_bind(&doc.content_type)
                .push_bind(&doc.source)
                .push_bind(doc.metadata.to_string())
                .push_bind(created_at)
                .push_bind(now);
        });
        builder.push(
            " ON CONFLICT (id) DO UPDATE SET title = excluded.title, content_hash = excluded.content_hash, version = excluded.version, \
             chunk_count = excluded.chunk_count, content_type = excluded.content_type, source = excluded.source, \
             metadata = excluded.metadata, updated_at = excluded.updated_at",
        );
        builder.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// The chunks and their keyword rows. Each keyword row gets the next free rowid (the
/// write lock is held, so no other writer takes it), which its chunk records.
async fn insert_chunks(
    conn: &mut SqliteConnection,
    documents: &[DocumentWrite],
    written: &[(usize, i64, String)],
    model: &str,
) -> Result<(), StoreError> {
    let (last_rowid,): (i64,) = sqlx::query_as("SELECT coalesce(max(rowid), 0) FROM chunks_fts")
        .fetch_one(&mut *conn)
        .await?;
    let rows: Vec<(i64, &DocumentWrite, usize)> = written
        .iter()
        .flat_map(|(i, _, _)| {
            let write = &documents[*i];
            (0..write.chunks.len()).map(move |c| (write, c))
        })
        .enumerate()
        .map(|(n, (write, c))| (last_rowid + 1 + n as i64, write, c))
        .collect();
    for group in rows.chunks(ROWS_PER_STATEMENT) {
        let mut keywords =
            QueryBuilder::<Sqlite>::new("INSERT INTO chunks_fts (rowid, chunk_id, title, text) ");
        keywords.push_values(group, |mut row, (rowid, write, c)| {
            let chunk = &write.chunks[*c].chunk;
            row.push_bind(*rowid)
                .push_bind(&chunk.id)
                .push_bind(&write.document.title)
                .push_bind(&chunk.text);
        });
        keywords.build().execute(&mut *conn).await?;
        let mut chunks = QueryBuilder::<Sqlite>::new(
            "INSERT INTO chunks (id, document_id, idx, text, model, dims, embedding, fts_rowid) ",
        );
        chunks.push_values(group, |mut row, (rowid, write, c)| {
            let c = &write.chunks[*c];
            row.push_bind(&c.chunk.id)
                .push_bind(&write.document.id)
                .push_bind(c.chunk.index as i64)
                .push_bind(&c.chunk.text)
                .push_bind(model)
                .push_bind(c.embedding.len() as i64)
                .push_bind(to_blob(&c.embedding))
                .push_bind(*rowid);
        });
        chunks.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Appends a batch's events, all under one correlation id, in write order.
async fn insert_events(
    conn: &mut SqliteConnection,
    events: &[EventRow<'_>],
    correlation_id: &str,
    now: &str,
) -> Result<(), StoreError> {
    for group in events.chunks(ROWS_PER_STATEMENT) {
        let mut builder = QueryBuilder::<Sqlite>::new(
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
                    .push_bind(payload.to_string())
                    .push_bind(now);
            },
        );
        builder.build().execute(&mut *conn).await?;
    }
    Ok(())
}
