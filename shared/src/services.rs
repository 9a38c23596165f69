//! The composition root: the one place that reads the settings and chooses each adapter
//! (SQL or DynamoDB stores, an OpenAI-compatible or offline embedder and provider). The
//! capabilities below it are built from parts and never look at `Settings` themselves.

#[cfg(feature = "kb")]
use std::sync::Arc;

#[cfg(feature = "kb")]
use crate::app::AppContext;
#[cfg(feature = "chat")]
use crate::chat::{
    idempotency::{self, DynamoIdempotencyStore, IdempotencyStore},
    provider::{ChatProvider, OpenAiProvider},
    session::{self, DynamoSessionStore, SessionStore},
    usage::{self, UsageRecorder},
    ChatGateway, GatewayParts,
};
#[cfg(feature = "kb")]
use crate::kb::{
    embed::{Embedder, GuardedEmbedder, OfflineEmbedder},
    openai::OpenAiEmbedder,
    store,
    text::ChunkConfig,
    IngestLimits, KbSettings, KnowledgeBase,
};
#[cfg(feature = "kb")]
use crate::resilience::retry::RetryPolicy;
#[cfg(feature = "chat")]
use crate::store::dynamo::LazyDynamo;

/// What the chat function serves requests with.
#[cfg(feature = "chat")]
pub struct ChatServices {
    pub gateway: Arc<ChatGateway>,
    pub idempotency: Arc<dyn IdempotencyStore>,
}

/// The chat function's gateway and idempotency store; both DynamoDB stores (when
/// configured) share one client.
#[cfg(feature = "chat")]
pub fn chat(ctx: &AppContext) -> ChatServices {
    let dynamo = LazyDynamo::default();
    ChatServices {
        gateway: Arc::new(chat_gateway(ctx, &dynamo)),
        idempotency: idempotency_store(ctx, &dynamo),
    }
}

/// The gateway the configuration describes: an OpenAI-compatible provider when
/// `LLM_BASE_URL` is set, the retrieval-only answer otherwise.
#[cfg(feature = "chat")]
fn chat_gateway(ctx: &AppContext, dynamo: &LazyDynamo) -> ChatGateway {
    let chat = ctx.settings.chat.clone();
    let provider = chat.llm_base_url.as_deref().map(|url| {
        Arc::new(OpenAiProvider::new(
            url,
            chat.llm_api_key.as_ref(),
            chat.llm_timeout,
        )) as Arc<dyn ChatProvider>
    });
    let sessions: Arc<dyn SessionStore> = match &chat.sessions_table {
        Some(table) => Arc::new(DynamoSessionStore::with_client(
            dynamo.clone(),
            table,
            chat.session_ttl,
        )),
        None => session::sql_session_store(ctx.database.clone(), chat.session_ttl),
    };
    // Standalone: buffered and flushed in the background, off the response path.
    // Lambda: written before the answer is returned (nothing runs between invocations).
    let rows = match (chat.usage_recording, crate::runtime::in_lambda()) {
        (false, _) => {
            tracing::warn!("USAGE_RECORDING=false: no usage rows; /v1/usage answers 404");
            usage::UsageRows::Off
        }
        (true, true) => usage::UsageRows::Immediate,
        (true, false) => usage::UsageRows::Buffered,
    };
    let usage = UsageRecorder::new(
        usage::sql_usage_store(ctx.database.clone()),
        chat.prices.clone(),
        usage::BudgetPolicy {
            daily_usd: ctx.settings.budget.daily_usd,
            refresh_every: chat.budget_refresh,
            ledger: ctx
                .redis
                .clone()
                .map(|redis| usage::BudgetLedger::new(redis, &ctx.settings.cache.prefix)),
            instances: ctx.settings.budget.instances,
        },
        rows,
    );
    if rows == usage::UsageRows::Buffered && tokio::runtime::Handle::try_current().is_ok() {
        usage.spawn_flusher(chat.usage_flush);
    }
    ChatGateway::new(GatewayParts {
        settings: chat,
        provider,
        breakers: ctx.breakers.clone(),
        retry: ctx.settings.retry.clone(),
        cache: ctx.cache.clone(),
        knowledge_base: Some(ctx.knowledge_base()),
        sessions,
        usage,
    })
}

/// Idempotency records in DynamoDB when `IDEMPOTENCY_TABLE` is set, else the SQL database.
#[cfg(feature = "chat")]
fn idempotency_store(ctx: &AppContext, dynamo: &LazyDynamo) -> Arc<dyn IdempotencyStore> {
    let chat = &ctx.settings.chat;
    match &chat.idempotency_table {
        Some(table) => Arc::new(DynamoIdempotencyStore::with_client(
            dynamo.clone(),
            table,
            chat.idempotency_ttl,
            chat.idempotency_in_progress,
        )),
        None => idempotency::sql_idempotency_store(
            ctx.database.clone(),
            chat.idempotency_ttl,
            chat.idempotency_in_progress,
        ),
    }
}

/// The knowledge base of a function instance: its database, configured embedder and cache.
#[cfg(feature = "kb")]
pub fn knowledge_base(ctx: &AppContext) -> KnowledgeBase {
    KnowledgeBase::new(
        Arc::new(store::GuardedStore::new(
            store::knowledge_store_with(&ctx.database, ctx.settings.kb.vector_index.clone()),
            ctx.breakers.get(store::KNOWLEDGE_BASE_BREAKER),
        )),
        guarded_embedder(ctx),
        ctx.cache.clone(),
        ChunkConfig {
            size: ctx.settings.kb.chunk_size,
            overlap: ctx.settings.kb.chunk_overlap,
        },
    )
    .with_limits(IngestLimits {
        max_document_bytes: ctx.settings.kb.max_document_bytes,
        max_batch_documents: ctx.settings.kb.max_batch_documents,
    })
    .with_relevance_floor(ctx.settings.kb.relevance_floor())
    .with_fusion(ctx.settings.kb.fusion())
}

/// The configured embedder; a remote one behind the `embeddings` circuit breaker (the
/// offline one cannot fail).
#[cfg(feature = "kb")]
fn guarded_embedder(ctx: &AppContext) -> Arc<dyn Embedder> {
    let embedder = embedder(&ctx.settings.kb, &ctx.settings.retry);
    if ctx.settings.kb.embeddings_base_url.is_none() {
        return embedder;
    }
    Arc::new(GuardedEmbedder::new(
        embedder,
        ctx.breakers.get(EMBEDDINGS_BREAKER),
    ))
}

/// The embeddings endpoint's breaker, as `/health/detailed` names it.
pub const EMBEDDINGS_BREAKER: &str = "embeddings";

/// The model of `EMBEDDINGS_MODEL=local:<dir>` run in process, an OpenAI-compatible
/// embedder when `EMBEDDINGS_BASE_URL` is set, the offline one otherwise.
#[cfg(feature = "kb")]
pub fn embedder(settings: &KbSettings, retry: &RetryPolicy) -> Arc<dyn Embedder> {
    #[cfg(feature = "local-embedder")]
    if let Some(dir) = &settings.embeddings_local_model {
        let precision =
            chatkb_local_embedder::Precision::parse(settings.embeddings_local_precision)
                .unwrap_or_default();
        return Arc::new(chatkb_local_embedder::LocalEmbedder::open(
            dir,
            settings.embeddings_dimensions,
            precision,
        ));
    }
    match &settings.embeddings_base_url {
        Some(url) => Arc::new(OpenAiEmbedder::new(
            url,
            settings.embeddings_api_key.as_ref(),
            &settings.embeddings_model,
            settings.embeddings_dimensions,
            settings.embeddings_timeout,
            retry.clone(),
        )),
        None => Arc::new(OfflineEmbedder::new(settings.embeddings_dimensions)),
    }
}

/// The backup function's capability: the database, the store `BACKUP_URL` names, the
/// DynamoDB stores to export and the ElastiCache group to snapshot.
#[cfg(feature = "backup")]
pub fn backups(ctx: &crate::app::AppContext) -> crate::backup::Backups {
    use crate::backup::{BackupParts, Backups};
    use crate::store::elasticache::{CacheSnapshots, ElastiCacheSnapshots};
    let settings = ctx.settings.backup.clone();
    let snapshots = settings.replication_group.as_deref().map(|group| {
        std::sync::Arc::new(ElastiCacheSnapshots::new(group)) as std::sync::Arc<dyn CacheSnapshots>
    });
    Backups::new(BackupParts {
        database: ctx.database.clone(),
        database_label: ctx.settings.database_url.to_string(),
        blobs: settings.url.open(),
        dynamo: crate::store::dynamo::LazyDynamo::default(),
        snapshots,
        clock: std::sync::Arc::new(chrono::Utc::now),
        settings,
    })
}
