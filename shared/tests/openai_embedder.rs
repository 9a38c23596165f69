//! The OpenAI-compatible embedder against the project's fake server: success, the
//! embedding cache, outages (500 and a hanging server) and the resulting 503 path.

use std::sync::Arc;
use std::time::Duration;

use chatkb_testing::fake_openai::{FakeOpenAi, Mode};
use chatkb_testing::TestDatabase;
use shared::cache::{CacheConfig, TieredCache};
use shared::config::Secret;
use shared::kb::embed::{EmbedError, Embedder, GuardedEmbedder, OfflineEmbedder};
use shared::kb::openai::OpenAiEmbedder;
use shared::kb::store::knowledge_store;
use shared::kb::text::ChunkConfig;
use shared::kb::{IngestRequest, KbError, KnowledgeBase};
use shared::resilience::breaker::{BreakerConfig, BreakerState, CircuitBreaker, SystemClock};
use shared::resilience::retry::RetryPolicy;

fn embedder(fake: &FakeOpenAi) -> OpenAiEmbedder {
    let policy = RetryPolicy {
        max_attempts: 2,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(20),
        budget: Duration::from_secs(2),
    };
    OpenAiEmbedder::new(
        &fake.base_url,
        Some(&Secret::new("sk-test")),
        "text-embedding-3-small",
        128,
        Duration::from_millis(300),
        policy,
    )
}

#[tokio::test]
async fn embeds_in_order_with_the_requested_dimensions() {
    let fake = FakeOpenAi::start().await;
    let e = embedder(&fake);
    let texts = vec!["refund policy".to_string(), "shipping times".to_string()];
    let vectors = e.embed(&texts).await.unwrap();
    assert_eq!(vectors.len(), 2);
    assert_eq!(vectors[0].len(), 128);
    let expected = OfflineEmbedder::new(128).vector("refund policy");
    let similarity: f32 = vectors[0].iter().zip(&expected).map(|(a, b)| a * b).sum();
    assert!(
        similarity > 0.9999,
        "order and values preserved: {similarity}"
    );
}

#[tokio::test]
async fn failures_and_timeouts_are_unavailable_errors() {
    let fake = FakeOpenAi::start().await;
    let e = embedder(&fake);
    fake.set_mode(Mode::Fail);
    let err = e.embed(&["x".to_string()]).await.unwrap_err();
    assert!(matches!(err, EmbedError::Unavailable(_)), "{err:?}");
    let after_500 = fake.embedding_requests();
    assert_eq!(
        after_500, 2,
        "a 500 is retried by our policy alone (2 attempts), not also by async-openai"
    );
    fake.set_mode(Mode::Hang);
    let err = e.embed(&["x".to_string()]).await.unwrap_err();
    assert!(
        matches!(err, EmbedError::Unavailable(ref m) if m.contains("no answer")),
        "{err:?}"
    );
    assert_eq!(
        fake.embedding_requests() - after_500,
        2,
        "a timeout is retried once by our policy (2 attempts)"
    );
}

#[tokio::test]
async fn ingest_through_the_endpoint_caches_embeddings_and_fails_cleanly() {
    let fake = FakeOpenAi::start().await;
    let db = TestDatabase::sqlite();
    let cache = TieredCache::new(CacheConfig::default(), None);
    let kb = KnowledgeBase::new(
        knowledge_store(&db.database()),
        Arc::new(embedder(&fake)),
        cache,
        ChunkConfig::default(),
    );
    let doc = |id: &str, text: &str| IngestRequest {
        id: Some(id.into()),
        title: Some("Handbook".into()),
        text: text.into(),
        content_type: "text/plain".into(),
        source: "test".into(),
        metadata: serde_json::json!({}),
    };
    kb.ingest(doc("a", "Same paragraph in two documents."), "r")
        .await
        .unwrap();
    let texts_after_first = fake.embedded_texts();
    kb.ingest(doc("b", "Same paragraph in two documents."), "r")
        .await
        .unwrap();
    assert_eq!(
        fake.embedded_texts(),
        texts_after_first,
        "identical chunk text is embedded once (cache by content hash)"
    );
    assert_eq!(
        kb.search("paragraph", 5, None).await.unwrap().mode,
        "hybrid"
    );

    fake.set_mode(Mode::Fail);
    let err = kb
        .ingest(doc("c", "Brand new text that needs embedding."), "r")
        .await
        .unwrap_err();
    assert!(matches!(err, KbError::Embedder(_)));
    assert!(matches!(kb.document("c").await, Err(KbError::NotFound(_))));
    let degraded = kb.search("brand new paragraph", 5, None).await.unwrap();
    assert_eq!(degraded.mode, "keyword");
}

/// An embeddings endpoint that refuses connections: one attempt per retry, no hidden
/// retries inside the client (async-openai's own made each call about 0.7 s), and after
/// a few failures the breaker answers at once: search is keyword-only, ingest a clean
/// error, and the endpoint is not called until the breaker's cool-down is over.
#[tokio::test]
async fn a_failing_endpoint_opens_the_breaker_and_search_turns_keyword_only_at_once() {
    let fake = FakeOpenAi::start().await;
    let db = TestDatabase::sqlite();
    let breaker = CircuitBreaker::new(
        "embeddings",
        BreakerConfig {
            failure_threshold: 2,
            ..BreakerConfig::default()
        },
        Arc::new(SystemClock),
    );
    let guarded = GuardedEmbedder::new(Arc::new(embedder(&fake)), breaker.clone());
    let kb = KnowledgeBase::new(
        knowledge_store(&db.database()),
        Arc::new(guarded),
        TieredCache::new(CacheConfig::default(), None),
        ChunkConfig::default(),
    );
    let doc = IngestRequest {
        id: Some("wing".into()),
        title: Some("Wings".into()),
        text: "Boundary layer transition on a swept wing.".into(),
        content_type: "text/plain".into(),
        source: "test".into(),
        metadata: serde_json::json!({}),
    };
    kb.ingest(doc.clone(), "r").await.unwrap();

    fake.set_mode(Mode::Fail);
    for query in ["swept wing", "boundary layer"] {
        assert_eq!(kb.search(query, 5, None).await.unwrap().mode, "keyword");
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    let calls = fake.embedding_requests();
    let open = kb.search("transition", 5, None).await.unwrap();
    assert_eq!(open.mode, "keyword");
    assert_eq!(
        open.results[0].document_id, "wing",
        "keywords still find it"
    );
    let err = kb
        .ingest(
            IngestRequest {
                id: Some("new".into()),
                text: "Another text to embed.".into(),
                ..doc
            },
            "r",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, KbError::Embedder(EmbedError::Unavailable(m)) if m.contains("circuit breaker `embeddings` is open")),
        "{err:?}"
    );
    assert!(matches!(
        kb.document("new").await,
        Err(KbError::NotFound(_))
    ));
    assert_eq!(
        fake.embedding_requests(),
        calls,
        "nothing reaches the endpoint while the breaker is open"
    );
}
