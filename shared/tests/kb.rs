//! The knowledge base on both stores (SQLite and PostgreSQL with pgvector): idempotent
//! ingest, atomic replacement, deletes, the event log, hybrid search quality, embedder
//! outages and cache invalidation.

mod support;

use std::sync::Arc;

use chatkb_testing::TestDatabase;
use serde_json::{json, Value};
use shared::cache::{CacheConfig, TieredCache};
use shared::kb::embed::{EmbedFuture, Embedder, OfflineEmbedder};
use shared::kb::store::NewDocument;
use shared::kb::store::{knowledge_store, SearchFilter};
use shared::kb::text::ChunkConfig;
use shared::kb::{IngestRequest, KbError, KnowledgeBase, Prepared};
use support::{doc, DownEmbedder};

fn kb_with(db: &TestDatabase, embedder: Arc<dyn Embedder>) -> KnowledgeBase {
    let store = knowledge_store(&db.database());
    KnowledgeBase::new(
        store,
        embedder,
        TieredCache::new(CacheConfig::default(), None),
        ChunkConfig {
            size: 400,
            overlap: 60,
        },
    )
}

fn kb(db: &TestDatabase) -> KnowledgeBase {
    kb_with(db, Arc::new(OfflineEmbedder::new(256)))
}

#[tokio::test]
async fn ingest_is_idempotent_replaces_atomically_and_logs_events_on_both_backends() {
    for db in TestDatabase::both().await {
        let kb = kb(&db);
        let first = kb
            .ingest(
                doc(
                    "refunds",
                    "Refund policy",
                    "Refunds are paid within 14 days to the original card.",
                ),
                "req-1",
            )
            .await
            .unwrap();
        assert_eq!(
            (first.status, first.version, first.chunks),
            ("created", 1, 1),
            "{:?}",
            db.kind
        );

        let again = kb
            .ingest(
                doc(
                    "refunds",
                    "Refund policy",
                    "Refunds  are paid within 14 days to the original card.\n",
                ),
                "req-2",
            )
            .await
            .unwrap();
        assert_eq!(
            (again.status, again.version),
            ("unchanged", 1),
            "normalised identical text is unchanged"
        );
        let events = kb.store().events_after(0, 100).await.unwrap();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            vec![
                "document.uploaded",
                "document.processed",
                "document.indexed"
            ],
            "no event for unchanged"
        );
        assert!(events.iter().all(|e| e.aggregate_id == "refunds"
            && e.aggregate_version == 1
            && e.correlation_id == "req-1"));
        assert_eq!(
            events[1].causation_id.as_deref(),
            Some(events[0].id.as_str())
        );
        assert_eq!(
            events[2].causation_id.as_deref(),
            Some(events[1].id.as_str())
        );

        let edited = kb
            .ingest(
                doc(
                    "refunds",
                    "Refund policy",
                    "Store credit is offered instead of cash for sale items.",
                ),
                "req-3",
            )
            .await
            .unwrap();
        assert_eq!((edited.status, edited.version), ("updated", 2));
        let old = kb.search("original card", 5, None).await.unwrap();
        assert!(
            old.results
                .iter()
                .all(|r| !r.snippet.contains("original card")),
            "old chunks are gone: {old:?}"
        );
        let new = kb
            .search("store credit for sale items", 5, None)
            .await
            .unwrap();
        assert_eq!(new.results[0].document_id, "refunds");
        assert_eq!(new.mode, "hybrid");

        assert_eq!(kb.delete("refunds", "req-4").await.unwrap(), 3);
        assert!(matches!(
            kb.document("refunds").await,
            Err(KbError::NotFound(_))
        ));
        assert!(matches!(
            kb.delete("refunds", "req-5").await,
            Err(KbError::NotFound(_))
        ));
        assert!(kb
            .search("store credit", 5, None)
            .await
            .unwrap()
            .results
            .is_empty());
        let events = kb.store().events_after(3, 100).await.unwrap();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            vec![
                "document.uploaded",
                "document.processed",
                "document.indexed",
                "document.deleted"
            ]
        );
        assert_eq!(events[3].aggregate_version, 3);
        let paged = kb.store().events_after(events[1].seq, 2).await.unwrap();
        assert_eq!(paged.len(), 2, "paging by seq");
        assert_eq!(paged[0].id, events[2].id);
    }
}

#[tokio::test]
async fn an_embedder_outage_stores_nothing_and_search_falls_back_to_keywords() {
    for db in TestDatabase::both().await {
        let working = kb(&db);
        working
            .ingest(
                doc(
                    "wifi",
                    "Office Wi-Fi",
                    "Visitors use the Guest network; the password is at reception.",
                ),
                "r1",
            )
            .await
            .unwrap();
        let down = kb_with(&db, Arc::new(DownEmbedder(256)));
        let err = down
            .ingest(
                doc(
                    "coffee",
                    "Coffee machine",
                    "Descale the espresso machine every two weeks.",
                ),
                "r2",
            )
            .await
            .unwrap_err();
        assert!(matches!(err, KbError::Embedder(_)));
        assert!(
            matches!(down.document("coffee").await, Err(KbError::NotFound(_))),
            "nothing half-written"
        );
        assert_eq!(
            down.store().events_after(0, 100).await.unwrap().len(),
            3,
            "no event for the failed ingest"
        );

        let found = down.search("guest password", 5, None).await.unwrap();
        assert_eq!(found.mode, "keyword");
        assert_eq!(found.results[0].document_id, "wifi");
    }
}

#[tokio::test]
async fn bad_input_is_refused_before_anything_is_written() {
    let db = TestDatabase::sqlite();
    let kb = kb(&db);
    assert!(matches!(
        kb.ingest(doc("empty", "Empty", " \n\t "), "r").await,
        Err(KbError::Invalid(_))
    ));
    assert!(matches!(
        kb.ingest(doc("bad id!", "T", "text"), "r").await,
        Err(KbError::Invalid(_))
    ));
    assert!(matches!(
        kb.search("  ", 5, None).await,
        Err(KbError::Invalid(_))
    ));
    assert!(kb.store().events_after(0, 10).await.unwrap().is_empty());
    // Without an id, the id comes from the text (never the title, which other documents
    // may share), so posting it again is "unchanged".
    let mut untitled = doc("x", "Readme of Project X", "Project X does things.");
    untitled.id = None;
    let id = kb.ingest(untitled.clone(), "r").await.unwrap().id;
    assert!(id.starts_with("doc-") && id.len() == 20, "{id}");
    assert_eq!(kb.ingest(untitled, "r").await.unwrap().status, "unchanged");
}

#[tokio::test]
async fn a_batch_failing_half_way_in_the_database_writes_nothing_on_both_backends() {
    for db in TestDatabase::both().await {
        let kb = kb(&db);
        let first = kb
            .prepare(doc("batch-a", "Alpha", "Alpha text about invoices."))
            .await
            .unwrap();
        let Prepared::Ready { chunks, .. } = kb
            .prepare(doc("batch-b", "Beta", "Beta text about shipping."))
            .await
            .unwrap()
        else {
            panic!("new content is ready to write")
        };
        // The second document reuses the first one's chunk ids: its insert violates the
        // chunks primary key after the first document was written in the transaction.
        let Prepared::Ready { chunks: clash, .. } = &first else {
            panic!("new content is ready to write")
        };
        let mut chunks = chunks;
        chunks[0].chunk.id = clash[0].chunk.id.clone();
        let second = Prepared::Ready {
            document: NewDocument {
                id: "batch-b".into(),
                title: "Beta".into(),
                content_hash: "beta".into(),
                content_type: "text/plain".into(),
                source: "test".into(),
                metadata: json!({}),
            },
            chunks,
        };
        let err = kb.commit_all(vec![first, second], "r").await.unwrap_err();
        assert!(matches!(err, KbError::Store(_)), "{:?}: {err:?}", db.kind);
        for id in ["batch-a", "batch-b"] {
            assert!(
                kb.store().document(id).await.unwrap().is_none(),
                "{:?}: {id} written",
                db.kind
            );
        }
        assert!(kb.store().events_after(0, 10).await.unwrap().is_empty());
        // The same batch without the clash is written whole.
        let results = kb
            .ingest_batch(
                vec![
                    doc("batch-a", "Alpha", "Alpha text about invoices."),
                    doc("batch-b", "Beta", "Beta text about shipping."),
                ],
                "r",
            )
            .await
            .unwrap();
        assert_eq!(results.len(), 2);
        assert!(results.iter().all(|r| r.status == "created"));
        assert_eq!(kb.store().events_after(0, 10).await.unwrap().len(), 6);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_ingests_of_one_id_never_mix_chunks() {
    for db in TestDatabase::both().await {
        let kb = Arc::new(kb(&db));
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let kb = kb.clone();
                tokio::spawn(async move {
                    let text = (0..12)
                        .map(|s| format!("Version {i} sentence {s} about topic {i}."))
                        .collect::<Vec<_>>()
                        .join(" ");
                    kb.ingest(doc("contested", "Contested", &text), &format!("r{i}"))
                        .await
                        .unwrap()
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let stored = kb.document("contested").await.unwrap();
        assert_eq!(stored.version, 8, "every write got its own version");
        // All chunks of the document come from one version's text.
        let hits = kb.search("Version sentence topic", 50, None).await.unwrap();
        let versions: std::collections::HashSet<String> = hits
            .results
            .iter()
            .map(|r| {
                r.snippet
                    .split_whitespace()
                    .skip_while(|w| *w != "Version")
                    .nth(1)
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        assert_eq!(
            versions.len(),
            1,
            "chunks from several versions: {versions:?}"
        );
        assert_eq!(hits.results.len() as i64, stored.chunk_count);
    }
}

#[tokio::test]
async fn search_results_are_cached_and_invalidated_by_changes() {
    let db = TestDatabase::sqlite();
    let kb = kb(&db);
    kb.ingest(
        doc("a", "Parking", "Staff parking is in the basement garage."),
        "r",
    )
    .await
    .unwrap();
    let before = kb.search("garage", 5, None).await.unwrap();
    assert_eq!(before.results.len(), 1);
    kb.ingest(
        doc("b", "Bikes", "Bike racks are next to the garage entrance."),
        "r",
    )
    .await
    .unwrap();
    let after = kb.search("garage", 5, None).await.unwrap();
    assert_eq!(
        after.results.len(),
        2,
        "the cached result did not outlive the change"
    );
}

#[tokio::test]
async fn filters_restrict_results_to_matching_metadata() {
    for db in TestDatabase::both().await {
        let kb = kb(&db);
        let mut hr = doc("leave", "Leave", "Employees get 25 vacation days.");
        hr.metadata = json!({"team": "hr"});
        kb.ingest(hr, "r").await.unwrap();
        kb.ingest(
            doc(
                "sla",
                "Uptime",
                "Paid plans get 99.9 percent uptime and vacation from outages.",
            ),
            "r",
        )
        .await
        .unwrap();
        let filter = SearchFilter {
            key: "team".into(),
            value: "hr".into(),
        };
        let found = kb.search("vacation", 5, Some(&filter)).await.unwrap();
        let ids: Vec<_> = found
            .results
            .iter()
            .map(|r| r.document_id.as_str())
            .collect();
        assert_eq!(ids, vec!["leave"]);
    }
}

#[tokio::test]
async fn keyword_lists_put_chunks_with_every_word_first_and_fill_up_with_some_words() {
    for db in TestDatabase::both().await {
        let kb = kb(&db);
        for (id, text) in [
            (
                "all",
                "Quarterly invoice reconciliation checklist for the finance team.",
            ),
            ("some-1", "The invoice template lives in the shared drive."),
            (
                "some-2",
                "Reconciliation of bank accounts happens at month end.",
            ),
            ("none", "Parking at the office is free on weekends."),
        ] {
            kb.ingest(doc(id, "Finance notes", text), "r")
                .await
                .unwrap();
        }
        let mut other_team = doc(
            "hr-all",
            "HR notes",
            "The invoice reconciliation checklist for payroll.",
        );
        other_team.metadata = json!({"team": "hr"});
        kb.ingest(other_team, "r").await.unwrap();
        let support = SearchFilter {
            key: "team".into(),
            value: "support".into(),
        };
        let store = kb.store();
        let documents = |hits: Vec<shared::kb::store::ChunkHit>| -> Vec<String> {
            hits.into_iter().map(|h| h.document_id).collect()
        };

        // Enough chunks have every word: nothing with only some of them is listed.
        let top = store
            .keyword_search("invoice reconciliation checklist", 1, Some(&support))
            .await
            .unwrap();
        assert_eq!(documents(top), vec!["all"], "{:?}", db.database().kind());

        // Too few: the list widens to any word, chunks with every word staying on top;
        // the filter holds in both passes and unrelated chunks never appear.
        let widened = documents(
            store
                .keyword_search("invoice reconciliation checklist", 5, Some(&support))
                .await
                .unwrap(),
        );
        assert_eq!(widened[0], "all", "{widened:?}");
        let mut rest = widened[1..].to_vec();
        rest.sort();
        assert_eq!(rest, vec!["some-1", "some-2"], "{widened:?}");

        // Without the filter both chunks with every word come before the others.
        let unfiltered = documents(
            store
                .keyword_search("invoice reconciliation checklist", 5, None)
                .await
                .unwrap(),
        );
        let mut first_two = unfiltered[..2].to_vec();
        first_two.sort();
        assert_eq!(first_two, vec!["all", "hr-all"], "{unfiltered:?}");
        assert_eq!(unfiltered.len(), 4, "{unfiltered:?}");

        // One word: the chunks holding it, and no widening.
        let single = documents(store.keyword_search("parking", 5, None).await.unwrap());
        assert_eq!(single, vec!["none"]);
    }
}

/// The offline embedder, counting the texts it is asked to embed.
struct CountingEmbedder {
    inner: OfflineEmbedder,
    texts: std::sync::atomic::AtomicUsize,
}

impl Embedder for CountingEmbedder {
    fn model(&self) -> &str {
        self.inner.model()
    }
    fn dimensions(&self) -> usize {
        self.inner.dimensions()
    }
    fn embed<'a>(&'a self, texts: &'a [String]) -> EmbedFuture<'a> {
        self.texts
            .fetch_add(texts.len(), std::sync::atomic::Ordering::SeqCst);
        self.inner.embed(texts)
    }
}

#[tokio::test]
async fn an_edited_document_embeds_only_its_new_chunks_through_the_shared_cache() {
    // Two instances (their own L1) sharing Redis, as two Lambda instances would.
    let db = TestDatabase::sqlite();
    let redis = chatkb_testing::test_redis(std::time::Duration::from_millis(500));
    let cache_config = CacheConfig {
        prefix: format!("test-{}", uuid::Uuid::new_v4().simple()),
        ..CacheConfig::default()
    };
    let instance = || {
        let embedder = Arc::new(CountingEmbedder {
            inner: OfflineEmbedder::new(256),
            texts: Default::default(),
        });
        let kb = KnowledgeBase::new(
            knowledge_store(&db.database()),
            embedder.clone(),
            TieredCache::new(cache_config.clone(), Some(redis.clone())),
            ChunkConfig {
                size: 200,
                overlap: 0,
            },
        );
        (kb, embedder)
    };
    let paragraphs: Vec<String> = (0..6)
        .map(|i| format!("Paragraph {i} explains step {i} of the onboarding checklist for new support engineers in detail."))
        .collect();
    let (first, first_embedder) = instance();
    let created = first
        .ingest(doc("guide", "Onboarding", &paragraphs.join("\n\n")), "r")
        .await
        .unwrap();
    let embedded = first_embedder
        .texts
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(embedded as i64, created.chunks);
    assert!(created.chunks >= 3, "{created:?}");

    let mut edited = paragraphs.clone();
    edited[5] = "Paragraph 5 now says that the checklist moved to the wiki.".into();
    let (second, second_embedder) = instance();
    let updated = second
        .ingest(doc("guide", "Onboarding", &edited.join("\n\n")), "r")
        .await
        .unwrap();
    assert_eq!(updated.status, "updated");
    let re_embedded = second_embedder
        .texts
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        re_embedded >= 1 && (re_embedded as i64) < updated.chunks,
        "{re_embedded} of {} chunks embedded again",
        updated.chunks
    );
    let found = second
        .search("checklist moved to the wiki", 1, None)
        .await
        .unwrap();
    assert_eq!(found.results[0].document_id, "guide");
}

#[derive(serde::Deserialize)]
struct Corpus {
    documents: Vec<Value>,
    queries: Vec<Value>,
}

#[tokio::test]
async fn hybrid_search_finds_the_right_document_on_the_fixture_corpus_on_both_backends() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kb_corpus.json");
    let corpus: Corpus = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for db in TestDatabase::both().await {
        let kb = kb(&db);
        for d in &corpus.documents {
            kb.ingest(
                doc(
                    d["id"].as_str().unwrap(),
                    d["title"].as_str().unwrap(),
                    d["text"].as_str().unwrap(),
                ),
                "load",
            )
            .await
            .unwrap();
        }
        let mut first = 0;
        let mut outside_top3 = Vec::new();
        for q in &corpus.queries {
            let found = kb
                .search(q["query"].as_str().unwrap(), 3, None)
                .await
                .unwrap();
            let ids: Vec<_> = found
                .results
                .iter()
                .map(|r| r.document_id.as_str())
                .collect();
            let expected = q["expected"].as_str().unwrap();
            if ids.first() == Some(&expected) {
                first += 1;
            }
            if !ids.contains(&expected) {
                outside_top3.push(format!("{} -> {ids:?}", q["query"]));
            }
        }
        println!("{:?}: {first}/{} first", db.kind, corpus.queries.len());
        assert!(outside_top3.is_empty(), "{:?}: {outside_top3:#?}", db.kind);
        assert!(
            first * 10 >= corpus.queries.len() * 9,
            "{:?}: only {first} first",
            db.kind
        );
    }
}

/// Bulk writes skip the PostgreSQL HNSW index and are searched exactly until the
/// maintainer folds them in (small delta) or builds a new index (large delta); small
/// writes go straight into the live index. Searches see every chunk throughout.
#[tokio::test]
async fn bulk_writes_are_indexed_later_and_searchable_at_once() {
    use shared::kb::store::knowledge_store_with;
    use shared::kb::vector_index::{Maintenance, VectorIndexConfig};

    let db = TestDatabase::postgres().await;
    let shared::store::Pool::Postgres(pool) = db.database().pool().await.unwrap().clone() else {
        unreachable!()
    };
    let store = knowledge_store_with(
        &db.database(),
        VectorIndexConfig {
            bulk_chunks: 4,
            ..VectorIndexConfig::default()
        },
    );
    let kb = KnowledgeBase::new(
        store.clone(),
        Arc::new(OfflineEmbedder::new(256)),
        TieredCache::new(CacheConfig::default(), None),
        ChunkConfig {
            size: 400,
            overlap: 60,
        },
    );
    let segments = |id: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT DISTINCT segment FROM chunks WHERE document_id = $1",
            )
            .bind(id)
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    let top = |query: &'static str| {
        let kb = &kb;
        async move {
            kb.search(query, 3, None).await.unwrap().results[0]
                .document_id
                .clone()
        }
    };

    // No index yet: everything is delta, searched exactly.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kb_corpus.json");
    let corpus: Corpus = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for d in &corpus.documents {
        let (id, title, text) = (
            d["id"].as_str().unwrap(),
            d["title"].as_str().unwrap(),
            d["text"].as_str().unwrap(),
        );
        kb.ingest(doc(id, title, text), "load").await.unwrap();
    }
    let state = store.vector_index_state(256).await.unwrap().unwrap();
    assert!(!state.indexed, "{state:?}");
    let expected = corpus.queries[0]["expected"].as_str().unwrap().to_string();
    let first_query = corpus.queries[0]["query"].as_str().unwrap().to_string();
    assert_eq!(
        kb.search(&first_query, 3, None).await.unwrap().results[0].document_id,
        expected
    );

    // Below the thresholds a pass waits; a due pass builds the first index.
    let waiting = store.maintain_vector_index(false).await.unwrap();
    assert!(
        matches!(waiting[..], [(256, Maintenance::Waiting { delta })] if delta > 0),
        "{waiting:?}"
    );
    let built = store.maintain_vector_index(true).await.unwrap();
    let [(
        256,
        Maintenance::Built {
            generation: 1,
            ref index,
            rows,
            ..
        },
    )] = built[..]
    else {
        panic!("{built:?}")
    };
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM chunks")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, total);
    let valid: bool = sqlx::query_scalar(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = $1",
    )
    .bind(index)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(valid);
    let state = store.vector_index_state(256).await.unwrap().unwrap();
    assert_eq!(
        (state.generation, state.indexed, state.indexed_rows),
        (1, true, total)
    );
    assert!(store.maintain_vector_index(true).await.unwrap().is_empty());

    // The planner uses the partial index for the indexed branch of a search.
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN SELECT id FROM chunks WHERE dims = 256 AND segment <= 1 \
         ORDER BY (embedding::vector(256)) <=> (SELECT embedding::vector(256) FROM chunks LIMIT 1) LIMIT 5",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(plan.iter().any(|l| l.contains(index.as_str())), "{plan:#?}");

    // A small write joins the live index at once.
    kb.ingest(
        doc(
            "small",
            "Parrot care",
            "Parrots need a varied diet of seeds and fresh fruit.",
        ),
        "small",
    )
    .await
    .unwrap();
    assert_eq!(segments("small").await, vec![1]);
    assert_eq!(top("parrot diet seeds").await, "small");

    // A bulk write (>= 4 chunks) waits outside it but is found at once...
    let long = (0..25)
        .map(|i| {
            format!("Chapter {i} of the lighthouse keeper's logbook records the fog horn schedule.")
        })
        .collect::<Vec<_>>()
        .join("\n\n");
    kb.ingest(doc("bulk", "Lighthouse logbook", &long), "bulk")
        .await
        .unwrap();
    assert_eq!(segments("bulk").await, vec![2]);
    assert_eq!(top("lighthouse keeper fog horn").await, "bulk");
    // ...and, being small next to the index, is folded into it row by row.
    let folded = store.maintain_vector_index(true).await.unwrap();
    assert!(
        matches!(folded[..], [(256, Maintenance::Folded { rows })] if rows > 0),
        "{folded:?}"
    );
    assert_eq!(segments("bulk").await, vec![1]);
    assert_eq!(top("lighthouse keeper fog horn").await, "bulk");

    // A builder that died mid-build is cleaned up by the next pass, and a delta as large
    // as the index gets a new index, swapped in for the old one.
    sqlx::query("UPDATE vector_indexes SET building = true")
        .execute(&pool)
        .await
        .unwrap();
    let big: Vec<IngestRequest> = (0..total)
        .map(|i| {
            doc(
                &format!("extra-{i}"),
                "Extra",
                &format!("Filler note number {i} about gardening tools."),
            )
        })
        .collect();
    kb.ingest_batch(big, "big").await.unwrap();
    assert_eq!(
        segments("extra-0").await,
        vec![3],
        "building: generation + 2"
    );
    let rebuilt = store.maintain_vector_index(true).await.unwrap();
    let [(256, Maintenance::Built { generation: 2, .. })] = rebuilt[..] else {
        panic!("{rebuilt:?}")
    };
    // Written while a build was believed to run, the batch is still delta for generation 2.
    assert_eq!(top("lighthouse keeper fog horn").await, "bulk");
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE tablename = 'chunks' AND indexname LIKE 'chunks_hnsw_%' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(indexes, vec!["chunks_hnsw_256_g2".to_string()]);
    let last = store.maintain_vector_index(true).await.unwrap();
    assert!(
        matches!(last[..], [(256, Maintenance::Built { generation: 3, .. })]),
        "{last:?}"
    );
    assert_eq!(segments("extra-0").await, vec![3]);
    assert!(store.maintain_vector_index(true).await.unwrap().is_empty());
    assert_eq!(top("parrot diet seeds").await, "small");

    // An index that disappeared (dropped by hand, a restore without it) is built again;
    // searches stay correct meanwhile.
    sqlx::query("DROP INDEX chunks_hnsw_256_g3")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(top("lighthouse keeper fog horn").await, "bulk");
    let again = store.maintain_vector_index(true).await.unwrap();
    assert!(
        matches!(again[..], [(256, Maintenance::Built { generation: 4, .. })]),
        "{again:?}"
    );
}

#[tokio::test]
async fn sqlite_has_no_vector_index_to_maintain() {
    let db = TestDatabase::sqlite();
    let kb = kb(&db);
    kb.ingest(doc("a", "A", "Some text about apples."), "t")
        .await
        .unwrap();
    assert!(kb
        .store()
        .maintain_vector_index(true)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(kb.store().vector_index_state(256).await.unwrap(), None);
}

/// One batch naming an id twice behaves as two writes in order: the second replaces the
/// first, both leave their events, and identical copies are unchanged.
#[tokio::test]
async fn a_batch_naming_an_id_twice_applies_the_copies_in_order_on_both_backends() {
    for db in TestDatabase::both().await {
        let kb = kb(&db);
        let results = kb
            .ingest_batch(
                vec![
                    doc("dup", "Dup", "The first wording mentions zeppelins."),
                    doc("dup", "Dup", "The second wording mentions submarines."),
                    doc("dup", "Dup", "The second wording mentions submarines."),
                    doc("other", "Other", "Unrelated text about teapots."),
                ],
                "batch",
            )
            .await
            .unwrap();
        let statuses: Vec<_> = results.iter().map(|r| (r.status, r.version)).collect();
        assert_eq!(
            statuses,
            vec![
                ("created", 1),
                ("updated", 2),
                ("unchanged", 2),
                ("created", 1)
            ],
            "{:?}",
            db.kind
        );
        let stored = kb.document("dup").await.unwrap();
        assert_eq!(stored.version, 2);
        let found = kb.search("submarines", 3, None).await.unwrap();
        assert_eq!(found.results[0].document_id, "dup");
        let zeppelins = kb.search("zeppelins", 3, None).await.unwrap();
        assert!(
            zeppelins
                .results
                .iter()
                .all(|r| !r.snippet.contains("zeppelins")),
            "{:?}: the first copy's chunks are gone",
            db.kind
        );
        let events = kb.store().events_after(0, 100).await.unwrap();
        let dup_events: Vec<_> = events
            .iter()
            .filter(|e| e.aggregate_id == "dup")
            .map(|e| (e.kind.as_str(), e.aggregate_version))
            .collect();
        assert_eq!(dup_events.len(), 6, "{:?}: {dup_events:?}", db.kind);
        assert_eq!(dup_events.last().unwrap().1, 2);
    }
}

/// Sizes and counts are checked once, by the knowledge base, for every adapter (HTTP and
/// S3 alike): too much is a `TooLarge` (413) and nothing is written.
#[tokio::test]
async fn the_knowledge_base_refuses_oversized_documents_and_batches() {
    let db = TestDatabase::sqlite();
    let kb = kb(&db).with_limits(shared::kb::IngestLimits {
        max_document_bytes: 40,
        max_batch_documents: 2,
    });
    let big = doc("big", "Big", &"x".repeat(41));
    match kb.ingest(big.clone(), "r").await {
        Err(KbError::TooLarge(m)) => assert!(m.contains("MAX_DOCUMENT_BYTES"), "{m}"),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let small = |id: &str| doc(id, "Small", "fits");
    match kb
        .ingest_batch(vec![small("a"), big, small("b")], "r")
        .await
    {
        Err(KbError::TooLarge(m)) => assert!(m.contains("MAX_BATCH_DOCUMENTS"), "{m}"),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    match kb
        .ingest_batch(vec![small("a"), doc("big", "Big", &"y".repeat(41))], "r")
        .await
    {
        Err(KbError::TooLarge(m)) => assert!(m.starts_with("document 2 is larger"), "{m}"),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(kb.store().events_after(0, 10).await.unwrap().is_empty());
    assert_eq!(kb.ingest(small("a"), "r").await.unwrap().status, "created");
}
