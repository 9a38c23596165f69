//! The embedded store (SQLite) as issue 16 item 3 changed it: keyword rows deleted by the
//! rowid each chunk records, and keyword and vector searches answered from postings and
//! a matrix in memory that follow every write, this process's or another's.

#[allow(dead_code)]
mod support;

use chatkb_testing::TestDatabase;
use shared::kb::embed::OfflineEmbedder;
use shared::kb::store::SearchFilter;
use shared::kb::KnowledgeBase;
use shared::store::Pool;
use support::{doc, offline_kb};

async fn sqlite(db: &TestDatabase) -> sqlx::SqlitePool {
    match db.database().pool().await.unwrap() {
        Pool::Sqlite(pool) => pool.clone(),
        Pool::Postgres(_) => unreachable!("a SQLite database"),
    }
}

/// Every keyword row belongs to a stored chunk, and every chunk has exactly one.
async fn assert_keyword_rows_match_chunks(pool: &sqlx::SqlitePool) {
    let (chunks, rows, orphans): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM chunks), (SELECT count(*) FROM chunks_fts), \
         (SELECT count(*) FROM chunks_fts f WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.id = f.chunk_id))",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!((rows, orphans), (chunks, 0));
}

#[tokio::test]
async fn replacing_and_deleting_documents_leaves_no_keyword_rows_behind() {
    let db = TestDatabase::sqlite();
    let kb = offline_kb(&db);
    let batch = (0..3)
        .map(|i| doc(&format!("d{i}"), "Notes", &format!("kiwi banana note {i}")))
        .collect();
    kb.ingest_batch(batch, "t").await.unwrap();
    let pool = sqlite(&db).await;
    // A chunk stored before chunks recorded their keyword row (or by hand): no link.
    sqlx::query("UPDATE chunks SET fts_rowid = NULL WHERE document_id = 'd2'")
        .execute(&pool)
        .await
        .unwrap();
    kb.ingest(doc("d0", "Notes", "mango only now"), "t")
        .await
        .unwrap();
    kb.ingest(doc("d2", "Notes", "papaya replaces it"), "t")
        .await
        .unwrap();
    kb.delete("d1", "t").await.unwrap();
    assert_keyword_rows_match_chunks(&pool).await;
    let found = kb.search("kiwi", 5, None).await.unwrap();
    assert!(found.results.is_empty(), "{found:?}");
    let found = kb.search("papaya", 5, None).await.unwrap();
    assert_eq!(found.results[0].document_id, "d2");
}

#[tokio::test]
async fn the_vector_matrix_follows_writes_from_another_process_and_ranks_exactly() {
    let db = TestDatabase::sqlite();
    // Each with its own store and matrix: what two processes would have.
    let (writer, reader) = (offline_kb(&db), offline_kb(&db));
    let texts = [
        "The refund window is thirty days from delivery for annual plans.",
        "Reset a forgotten password from the sign-in page link.",
        "Invoices are emailed on the first day of every month.",
        "Shipping to islands takes two extra working days.",
    ];
    let batch = texts
        .iter()
        .enumerate()
        .map(|(i, t)| doc(&format!("d{i}"), "Help", t))
        .collect();
    writer.ingest_batch(batch, "t").await.unwrap();
    let query = OfflineEmbedder::new(384).vector("how do I reset my password");
    let model = reader.embedder().model().to_string();
    let nearest = |kb: &KnowledgeBase, filter: Option<SearchFilter>| {
        let (store, query, model) = (kb.store().clone(), query.clone(), model.clone());
        async move {
            store
                .vector_search(&query, &model, 3, filter.as_ref())
                .await
                .unwrap()
                .into_iter()
                .map(|h| (h.document_id, h.score))
                .collect::<Vec<_>>()
        }
    };
    let from_matrix = nearest(&reader, None).await;
    assert_eq!(from_matrix[0].0, "d1", "{from_matrix:?}");
    // The matrix's answer is the exact scan's (a filter every document matches scans in
    // SQL), scores and all.
    let every = SearchFilter {
        key: "team".into(),
        value: "support".into(),
    };
    let scanned = nearest(&reader, Some(every.clone())).await;
    assert_eq!(from_matrix.len(), scanned.len());
    for ((a, x), (b, y)) in from_matrix.iter().zip(&scanned) {
        assert_eq!(a, b);
        assert!((x - y).abs() < 1e-6, "{x} vs {y}");
    }

    // The other process rewrites the answer and deletes a document: the reader's matrix
    // (already loaded) follows.
    writer
        .ingest(
            doc("d1", "Help", "Our office plants are watered on Fridays."),
            "t",
        )
        .await
        .unwrap();
    writer.delete("d3", "t").await.unwrap();
    writer
        .ingest(
            doc(
                "d9",
                "Help",
                "To reset your password, open the sign-in page.",
            ),
            "t",
        )
        .await
        .unwrap();
    let after = nearest(&reader, None).await;
    assert_eq!(after[0].0, "d9", "{after:?}");
    assert!(after.iter().all(|(id, _)| id != "d3"), "{after:?}");
    let scanned = nearest(&reader, Some(every)).await;
    assert_eq!(
        after.iter().map(|h| &h.0).collect::<Vec<_>>(),
        scanned.iter().map(|h| &h.0).collect::<Vec<_>>()
    );
}

/// The keyword index in memory scores as FTS5's `bm25()` does (a filter every document
/// matches searches FTS5), and follows another process's writes.
#[tokio::test]
async fn the_keyword_index_scores_as_fts5_and_follows_writes_from_another_process() {
    let db = TestDatabase::sqlite();
    let (writer, reader) = (offline_kb(&db), offline_kb(&db));
    let texts = [
        (
            "Refunds",
            "The refund window is thirty days from delivery for annual plans.",
        ),
        (
            "Passwords",
            "Reset a forgotten password from the sign-in page link.",
        ),
        (
            "Invoices",
            "Invoices are emailed on the first day of every month, refund or not.",
        ),
        (
            "Shipping",
            "Shipping to islands takes two extra working days.",
        ),
        (
            "Refund policy",
            "A refund of an annual plan is prorated by the day.",
        ),
    ];
    let batch = texts
        .iter()
        .enumerate()
        .map(|(i, (title, text))| doc(&format!("d{i}"), title, text))
        .collect();
    writer.ingest_batch(batch, "t").await.unwrap();
    let every = SearchFilter {
        key: "team".into(),
        value: "support".into(),
    };
    let search = |kb: &KnowledgeBase, query: &'static str, filter: Option<SearchFilter>| {
        let store = kb.store().clone();
        async move {
            store
                .keyword_search_scored(query, 10, filter.as_ref(), None)
                .await
                .unwrap()
                .into_iter()
                .map(|h| (h.hit.document_id, h.hit.score))
                .collect::<Vec<_>>()
        }
    };
    // Scores in memory are f32, FTS5's f64.
    let same = |in_memory: &[(String, f64)], fts5: &[(String, f64)]| {
        assert_eq!(in_memory.len(), fts5.len(), "{in_memory:?} vs {fts5:?}");
        for ((a, x), (b, y)) in in_memory.iter().zip(fts5) {
            assert_eq!(a, b, "{in_memory:?} vs {fts5:?}");
            assert!((x - y).abs() <= 1e-5 * y.abs().max(1e-6), "{x} vs {y}");
        }
    };
    for query in ["refund annual plan", "reset password days", "islands"] {
        let in_memory = search(&reader, query, None).await;
        assert!(!in_memory.is_empty(), "{query}");
        same(
            &in_memory,
            &search(&reader, query, Some(every.clone())).await,
        );
    }

    // The other process rewrites a document, deletes one and adds one: the reader's
    // index (already built) follows.
    writer
        .ingest(
            doc("d4", "Plants", "Office plants are watered on Fridays."),
            "t",
        )
        .await
        .unwrap();
    writer.delete("d0", "t").await.unwrap();
    writer
        .ingest(
            doc("d9", "Refund", "Refund requests go to the billing team."),
            "t",
        )
        .await
        .unwrap();
    let after = search(&reader, "refund", None).await;
    let ids: Vec<_> = after.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["d9", "d2"], "{after:?}");
    assert_eq!(search(&reader, "fridays plants", None).await[0].0, "d4");
    same(
        &after,
        &search(&reader, "refund", Some(every.clone())).await,
    );

    // The unfiltered search is the in-memory index's, not FTS5's: the one kind of word
    // where they differ shows it. FTS5's Porter stemmer cuts "news" to "new"; the
    // Snowball stemmer keeps it whole.
    writer
        .ingest(
            doc("d7", "Billing", "What is new in billing this month."),
            "t",
        )
        .await
        .unwrap();
    let fts5 = search(&reader, "news", Some(every)).await;
    assert_eq!(fts5.first().map(|h| h.0.as_str()), Some("d7"), "{fts5:?}");
    assert_eq!(search(&reader, "news", None).await, []);
    assert_eq!(search(&reader, "new billing", None).await[0].0, "d7");
}

/// One batch naming a document twice: the later write is the one stored, both writes get
/// their outcome and events, on both stores (SQLite writes a batch set-based, as
/// PostgreSQL does).
#[tokio::test]
async fn a_document_written_twice_in_one_batch_keeps_the_later_write_on_both_backends() {
    for db in TestDatabase::both().await {
        let kb = offline_kb(&db);
        let batch = vec![
            doc("twice", "First", "apricot orchards in spring"),
            doc("other", "Other", "a second document"),
            doc("twice", "Second", "quince jelly recipe"),
        ];
        let outcomes = kb.ingest_batch(batch, "t").await.unwrap();
        let versions: Vec<(&str, &str, i64)> = outcomes
            .iter()
            .map(|o| (o.id.as_str(), o.status, o.version))
            .collect();
        assert_eq!(
            versions,
            [
                ("twice", "created", 1),
                ("other", "created", 1),
                ("twice", "updated", 2)
            ],
            "{:?}",
            db.kind
        );
        let stored = kb.store().document("twice").await.unwrap().unwrap();
        assert_eq!((stored.title.as_str(), stored.version), ("Second", 2));
        assert!(kb
            .search("apricot", 5, None)
            .await
            .unwrap()
            .results
            .is_empty());
        let found = kb.search("quince", 5, None).await.unwrap();
        assert_eq!(found.results[0].document_id, "twice", "{:?}", db.kind);
        let events = kb.store().events_after(0, 100).await.unwrap();
        let of_twice = events.iter().filter(|e| e.aggregate_id == "twice").count();
        assert_eq!(of_twice, 6, "{:?}", db.kind);
    }
}
