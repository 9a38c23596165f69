//! Code shared by integration tests (and `make eval`, which includes `relevance.rs`).

use shared::kb::embed::{EmbedError, EmbedFuture, Embedder};
use shared::kb::IngestRequest;

// `make eval` uses parts of it that the tests do not.
#[allow(dead_code)]
pub mod ranking;
#[allow(dead_code)]
pub mod relevance;

/// An embedder whose service is down: ingest fails, search falls back to keywords. Its
/// model is the offline embedder's of that size, so it searches what that one stored.
pub struct DownEmbedder(pub usize);

impl Embedder for DownEmbedder {
    fn model(&self) -> &str {
        match self.0 {
            256 => "offline-hash-v1-256",
            384 => "offline-hash-v1-384",
            other => panic!("no offline model name written for {other} dimensions"),
        }
    }
    fn dimensions(&self) -> usize {
        self.0
    }
    fn embed<'a>(&'a self, _texts: &'a [String]) -> EmbedFuture<'a> {
        Box::pin(async { Err(EmbedError::Unavailable("connection refused".into())) })
    }
}

/// A plain-text document with an id and title (metadata `team: support`, which the
/// filter tests select by).
pub fn doc(id: &str, title: &str, text: &str) -> IngestRequest {
    IngestRequest {
        id: Some(id.into()),
        title: Some(title.into()),
        text: text.into(),
        content_type: "text/plain".into(),
        source: "test".into(),
        metadata: serde_json::json!({"team": "support"}),
    }
}

/// A knowledge base as the functions build one by default (offline embedder of the
/// default size, default chunking, an in-process cache), with its own store: what
/// another process on the same database would have.
// Not every test crate that includes this module uses it.
#[allow(dead_code)]
pub fn offline_kb(db: &chatkb_testing::TestDatabase) -> shared::kb::KnowledgeBase {
    shared::kb::KnowledgeBase::new(
        shared::kb::store::knowledge_store(&db.database()),
        std::sync::Arc::new(shared::kb::embed::OfflineEmbedder::new(384)),
        shared::cache::TieredCache::new(shared::cache::CacheConfig::default(), None),
        shared::kb::text::ChunkConfig {
            size: 1000,
            overlap: 150,
        },
    )
}
