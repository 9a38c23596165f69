//! The capabilities' own sections of the settings: the knowledge base's and the chat
//! gateway's, read only by the functions that link them.

use super::*;

/// `RETRIEVAL_MIN_SIMILARITY` and `RETRIEVAL_MIN_SIMILARITY_SHARED_WORD`; `None` when
/// neither is set (the embedder's default then applies, see `KbSettings::relevance_floor`).
#[cfg(feature = "kb")]
fn read_relevance_floor(r: &mut Reader<'_>) -> Option<crate::kb::RelevanceFloor> {
    const MIN: &str = "RETRIEVAL_MIN_SIMILARITY";
    const SHARED_WORD: &str = "RETRIEVAL_MIN_SIMILARITY_SHARED_WORD";
    let (min_set, shared_set) = (r.get(MIN).is_some(), r.get(SHARED_WORD).is_some());
    if !min_set {
        if shared_set {
            r.fail(SHARED_WORD, format!("needs {MIN} as well"));
        }
        return None;
    }
    let problems = r.problems.len();
    let min_similarity = r.number(MIN, 0.0, -1.0, 1.0);
    let min_is_valid = r.problems.len() == problems;
    let with_shared_word = r.number(SHARED_WORD, min_similarity, -1.0, 1.0);
    if min_is_valid && with_shared_word > min_similarity {
        r.fail(
            SHARED_WORD,
            format!("must be at most {MIN} ({min_similarity}): a shared word lowers the bar"),
        );
    }
    Some(crate::kb::RelevanceFloor {
        min_similarity,
        with_shared_word,
    })
}

/// `EMBEDDINGS_MODEL=local:<dir>`: the folder, checked now (files, architecture,
/// pooling) so a wrong path stops the function at start, and its vectors' dimensions.
#[cfg(feature = "kb")]
fn read_local_model(
    r: &mut Reader<'_>,
    model: &str,
    base_url: &Option<String>,
) -> Option<(std::path::PathBuf, usize)> {
    const MODEL: &str = "EMBEDDINGS_MODEL";
    let dir = std::path::PathBuf::from(model.strip_prefix("local:")?);
    if base_url.is_some() {
        r.fail(
            MODEL,
            "local:<dir> runs the model in process; unset EMBEDDINGS_BASE_URL, or name the endpoint's model",
        );
        return None;
    }
    #[cfg(feature = "local-embedder")]
    match chatkb_local_embedder::ModelFiles::inspect(&dir) {
        Ok(files) => Some((dir, files.hidden_size)),
        Err(error) => {
            r.fail(MODEL, error.to_string());
            None
        }
    }
    #[cfg(not(feature = "local-embedder"))]
    {
        r.fail(
            MODEL,
            format!("local:{} needs a build with the local-embedder feature (make run-semantic, or cargo build --features local-embedder; README, Semantic search without an API)", dir.display()),
        );
        None
    }
}

/// The knowledge base's variables (`EMBEDDINGS_*`, `CHUNK_*`, `RETRIEVAL_MIN_SIMILARITY*`,
/// ingest limits, `VECTOR_INDEX_*`).
#[cfg(feature = "kb")]
pub(super) fn read_kb(r: &mut Reader<'_>) -> KbSettings {
    let embeddings_base_url = r.get("EMBEDDINGS_BASE_URL").map(str::to_string);
    if let Some(url) = &embeddings_base_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            r.fail("EMBEDDINGS_BASE_URL", "expected an http:// or https:// URL");
        }
    }
    let embeddings_api_key = r.get("EMBEDDINGS_API_KEY").map(Secret::new);
    let embeddings_model = r
        .get("EMBEDDINGS_MODEL")
        .unwrap_or(if embeddings_base_url.is_some() {
            "text-embedding-3-small"
        } else {
            "offline"
        })
        .to_string();
    let embeddings_local_model = read_local_model(r, &embeddings_model, &embeddings_base_url);
    let embeddings_local_precision = match r.get("EMBEDDINGS_LOCAL_PRECISION") {
        None | Some("auto") => "auto",
        Some("int8") => "int8",
        Some("f32") => "f32",
        Some(other) => {
            let problem = format!("expected auto, int8 or f32, got `{other}`");
            r.fail("EMBEDDINGS_LOCAL_PRECISION", problem);
            "auto"
        }
    };
    let mut embeddings_dimensions = r.int("EMBEDDINGS_DIMENSIONS", 384usize, 8, 8192);
    if let Some((_, model_dimensions)) = &embeddings_local_model {
        if r.get("EMBEDDINGS_DIMENSIONS").is_some() && embeddings_dimensions != *model_dimensions {
            r.fail(
                "EMBEDDINGS_DIMENSIONS",
                format!("the local model's vectors have {model_dimensions} dimensions; unset it or set {model_dimensions}"),
            );
        }
        embeddings_dimensions = *model_dimensions;
    }
    let embeddings_timeout = r.millis("EMBEDDINGS_TIMEOUT_MS", 10_000, 100, 300_000);
    let chunk_size = r.int("CHUNK_SIZE", 1000usize, 100, 20_000);
    let chunk_overlap = r.int("CHUNK_OVERLAP", 150usize, 0, 10_000);
    if chunk_overlap * 2 > chunk_size {
        r.fail(
            "CHUNK_OVERLAP",
            format!("must be at most half of CHUNK_SIZE ({chunk_size})"),
        );
    }
    let relevance = read_relevance_floor(r);
    let vector_weight = r
        .get("RETRIEVAL_VECTOR_WEIGHT")
        .is_some()
        .then(|| r.number("RETRIEVAL_VECTOR_WEIGHT", 0.0, 0.0, 1.0));
    let documents_bucket = r.get("DOCUMENTS_BUCKET").map(str::to_string);
    let documents_dir = r.get("DOCUMENTS_DIR").map(std::path::PathBuf::from);
    let max_document_bytes = r.int("MAX_DOCUMENT_BYTES", 1_048_576usize, 1, 64 * 1_048_576);
    let max_batch_documents = r.int("MAX_BATCH_DOCUMENTS", 100usize, 1, 10_000);
    let vector_index = crate::kb::vector_index::VectorIndexConfig {
        bulk_chunks: r.int("VECTOR_INDEX_BULK_CHUNKS", 100usize, 1, 1_000_000),
        quiet: r.millis("VECTOR_INDEX_QUIET_MS", 2_000, 0, 3_600_000),
        delta_rows: r.int("VECTOR_INDEX_DELTA_ROWS", 50_000i64, 1, 100_000_000),
        build_memory_mb: r.int("VECTOR_INDEX_BUILD_MEMORY_MB", 512u32, 16, 1_048_576),
        // Under Lambda the instance is frozen between requests: the schedule maintains.
        background: r.flag("VECTOR_INDEX_BACKGROUND", true) && !crate::runtime::in_lambda(),
    };
    KbSettings {
        embeddings_base_url,
        embeddings_api_key,
        embeddings_model,
        embeddings_local_model: embeddings_local_model.map(|(dir, _)| dir),
        embeddings_local_precision,
        embeddings_dimensions,
        embeddings_timeout,
        chunk_size,
        chunk_overlap,
        relevance,
        vector_weight,
        documents_bucket,
        documents_dir,
        max_document_bytes,
        max_batch_documents,
        vector_index,
    }
}

/// The chat gateway's variables (`LLM_*`, `CHAT_*`, `RETRIEVAL_*`, sessions, idempotency, usage).
#[cfg(feature = "chat")]
pub(super) fn read_chat(r: &mut Reader<'_>) -> ChatSettings {
    let llm_base_url = r.get("LLM_BASE_URL").map(str::to_string);
    if let Some(url) = &llm_base_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            r.fail("LLM_BASE_URL", "expected an http:// or https:// URL");
        }
    }
    let llm_model = r
        .get("LLM_MODEL")
        .unwrap_or(if llm_base_url.is_some() {
            "gpt-4o-mini"
        } else {
            OFFLINE_MODEL
        })
        .to_string();
    ChatSettings {
        llm_api_key: r.get("LLM_API_KEY").map(Secret::new),
        llm_fallback_models: r
            .get("LLM_FALLBACK_MODELS")
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty() && *m != llm_model)
            .map(str::to_string)
            .collect(),
        llm_model,
        llm_base_url,
        llm_timeout: r.millis("LLM_TIMEOUT_MS", 30_000, 100, 900_000),
        llm_first_token: r.millis("LLM_FIRST_TOKEN_MS", 15_000, 100, 900_000),
        llm_stream_idle: r.millis("LLM_STREAM_IDLE_MS", 30_000, 100, 900_000),
        llm_stream_max_bad_chunks: r.int("LLM_STREAM_MAX_BAD_CHUNKS", 3u32, 1, 1000),
        llm_stream_continuation: r.flag("LLM_STREAM_CONTINUATION", true),
        chat_deadline: r.millis("CHAT_DEADLINE_MS", 30_000, 100, 900_000),
        max_messages: r.int("CHAT_MAX_MESSAGES", 256usize, 1, 10_000),
        cache_max_temperature: r.int("CHAT_CACHE_MAX_TEMPERATURE_PERCENT", 0u32, 0, 200) as f64
            / 100.0,
        retrieval_enabled: r.flag("RETRIEVAL_ENABLED", true),
        retrieval_top_k: r.int("RETRIEVAL_TOP_K", 4usize, 1, 50),
        retrieval_token_budget: r.int("RETRIEVAL_TOKEN_BUDGET", 1200usize, 50, 100_000),
        sessions_table: r.get("SESSIONS_TABLE").map(str::to_string),
        session_ttl: r.secs("SESSION_TTL_SECS", 7 * 86_400, 60, 365 * 86_400),
        history_messages: r.int("CHAT_HISTORY_MESSAGES", 20usize, 0, 1000),
        history_tokens: r.int("CHAT_HISTORY_TOKENS", 4000usize, 0, 1_000_000),
        idempotency_table: r.get("IDEMPOTENCY_TABLE").map(str::to_string),
        idempotency_ttl: r.secs("IDEMPOTENCY_TTL_SECS", 86_400, 1, 30 * 86_400),
        idempotency_in_progress: r.secs("IDEMPOTENCY_IN_PROGRESS_SECS", 300, 1, 86_400),
        context_windows: match crate::chat::parse_context_windows(
            r.get("LLM_CONTEXT_WINDOWS").unwrap_or(""),
        ) {
            Ok(windows) => windows,
            Err(problem) => {
                r.fail("LLM_CONTEXT_WINDOWS", problem);
                Default::default()
            }
        },
        prices: match crate::chat::usage::parse_prices(r.get("LLM_PRICES").unwrap_or("")) {
            Ok(prices) => prices,
            Err(problem) => {
                r.fail("LLM_PRICES", problem);
                Default::default()
            }
        },
        usage_flush: r.millis("USAGE_FLUSH_MS", 1000, 10, 60_000),
        usage_recording: r.flag("USAGE_RECORDING", true),
        budget_refresh: r.millis("BUDGET_REFRESH_MS", 5000, 0, 3_600_000),
        budget_default_max_tokens: r.int("BUDGET_DEFAULT_MAX_TOKENS", 4096u64, 1, 10_000_000),
    }
}

/// The backup function's variables (`BACKUP_URL`, `BACKUP_RETENTION_DAYS`,
/// `BACKUP_BATCH_ROWS`, `BACKUP_OPERATOR_KEYS`, `ELASTICACHE_REPLICATION_GROUP_ID`, and the DynamoDB tables it
/// exports: `SESSIONS_TABLE`, `IDEMPOTENCY_TABLE`).
#[cfg(feature = "backup")]
pub(super) fn read_backup(r: &mut Reader<'_>) -> crate::backup::BackupSettings {
    use crate::backup::{BackupSettings, BackupUrl, DynamoTable};
    let url = match BackupUrl::parse(r.get("BACKUP_URL").unwrap_or(BackupUrl::DEFAULT)) {
        Ok(url) => url,
        Err(problem) => {
            r.fail("BACKUP_URL", problem);
            BackupUrl::Folder(".data/backups".into())
        }
    };
    let days = r.int(
        "BACKUP_RETENTION_DAYS",
        BackupSettings::DEFAULT_RETENTION_DAYS,
        1,
        3650,
    );
    let batch_rows = r.int(
        "BACKUP_BATCH_ROWS",
        BackupSettings::DEFAULT_BATCH_ROWS,
        10,
        100_000,
    );
    let replication_group = r
        .get("ELASTICACHE_REPLICATION_GROUP_ID")
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    let dynamo_tables = [
        ("sessions", "SESSIONS_TABLE"),
        ("idempotency", "IDEMPOTENCY_TABLE"),
    ]
    .into_iter()
    .filter_map(|(store, variable)| {
        r.get(variable)
            .filter(|v| !v.is_empty())
            .map(|table| DynamoTable {
                store: store.to_string(),
                table: table.to_string(),
            })
    })
    .collect();
    let operator_keys = r
        .get("BACKUP_OPERATOR_KEYS")
        .map(|names| {
            names
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    BackupSettings {
        url,
        retention: Duration::from_secs(days * 86_400),
        batch_rows,
        replication_group,
        dynamo_tables,
        operator_keys,
    }
}
