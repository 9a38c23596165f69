//! Typed settings, read from the environment once per cold start (X1).
//!
//! Every problem is collected and reported together, so an operator fixes a
//! broken deployment in one round instead of one variable at a time. Values
//! that may hold secrets are never echoed back in an error.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::auth::ApiKeys;
// Types that moved to the layer that owns them; re-exported where callers knew them.
use crate::cache::CacheConfig;
#[cfg(feature = "chat")]
pub use crate::chat::{ChatSettings, OFFLINE_MODEL};
#[cfg(feature = "kb")]
pub use crate::kb::KbSettings;
pub use crate::observability::metrics::MetricsExport;
use crate::resilience::retry::RetryPolicy;
use crate::resilience::BreakerConfig;
pub use crate::secret::Secret;
pub use crate::store::{DatabaseKind, DatabaseUrl, RedisUrl};

/// Default database: a SQLite file under `.data/`, so the embedded mode needs no set-up.
pub(crate) const DEFAULT_DATABASE_URL: &str = "sqlite://.data/app.db";

/// Everything a function needs to start, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Which function this process is (`chat`, `health`, ...); set by the binary, not the environment.
    pub function: String,
    pub port: u16,
    pub database_url: DatabaseUrl,
    pub database_max_connections: u32,
    pub database_timeout: Duration,
    pub redis_url: Option<RedisUrl>,
    pub redis_timeout: Duration,
    pub api_keys: ApiKeys,
    pub cors_origins: Vec<String>,
    pub log_level: String,
    pub max_body_bytes: usize,
    pub health_timeout: Duration,
    pub metrics_export: MetricsExport,
    pub metrics_namespace: String,
    pub cache: CacheConfig,
    pub breaker: BreakerConfig,
    /// Share breaker state through Redis (when `REDIS_URL` is set).
    pub breaker_shared: bool,
    pub retry: RetryPolicy,
    /// Requests per API key per window.
    pub rate_limit_requests: u32,
    pub rate_limit_window: Duration,
    pub max_concurrent_sessions: usize,
    /// The knowledge base's section (ingest and chat's retrieval).
    #[cfg(feature = "kb")]
    pub kb: KbSettings,
    /// The chat gateway's section.
    #[cfg(feature = "chat")]
    pub chat: ChatSettings,
}

/// One bad or missing variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub variable: &'static str,
    pub problem: String,
}

/// All configuration problems found at once.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<ConfigProblem>,
}

impl ConfigError {
    /// Names of the variables that are wrong, in the order they were checked.
    pub fn variables(&self) -> Vec<&'static str> {
        self.problems.iter().map(|p| p.variable).collect()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid configuration ({} problem{}): ",
            self.problems.len(),
            if self.problems.len() == 1 { "" } else { "s" }
        )?;
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", p.variable, p.problem)?;
        }
        Ok(())
    }
}

/// Reads variables and remembers every problem instead of stopping at the first.
struct Reader<'a> {
    vars: &'a HashMap<String, String>,
    problems: Vec<ConfigProblem>,
}

impl<'a> Reader<'a> {
    fn get(&self, name: &str) -> Option<&'a str> {
        self.vars
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    fn fail(&mut self, variable: &'static str, problem: impl Into<String>) {
        self.problems.push(ConfigProblem {
            variable,
            problem: problem.into(),
        });
    }

    /// An integer in `min..=max`, or the default when unset.
    fn int<T>(&mut self, name: &'static str, default: T, min: T, max: T) -> T
    where
        T: FromStr + PartialOrd + Copy + fmt::Display,
    {
        let Some(raw) = self.get(name) else {
            return default;
        };
        match raw.parse::<T>() {
            Ok(v) if v >= min && v <= max => v,
            _ => {
                self.fail(
                    name,
                    format!("expected an integer from {min} to {max}, got `{raw}`"),
                );
                default
            }
        }
    }

    /// A decimal number in `min..=max`, or the default when unset.
    #[cfg(feature = "kb")]
    fn number(&mut self, name: &'static str, default: f64, min: f64, max: f64) -> f64 {
        let Some(raw) = self.get(name) else {
            return default;
        };
        match raw.parse::<f64>() {
            Ok(v) if (min..=max).contains(&v) => v,
            _ => {
                self.fail(
                    name,
                    format!("expected a number from {min} to {max}, got `{raw}`"),
                );
                default
            }
        }
    }

    fn millis(&mut self, name: &'static str, default: u64, min: u64, max: u64) -> Duration {
        Duration::from_millis(self.int(name, default, min, max))
    }

    fn secs(&mut self, name: &'static str, default: u64, min: u64, max: u64) -> Duration {
        Duration::from_secs(self.int(name, default, min, max))
    }

    fn flag(&mut self, name: &'static str, default: bool) -> bool {
        match self.get(name).map(str::to_ascii_lowercase).as_deref() {
            None => default,
            Some("1" | "true" | "yes" | "on") => true,
            Some("0" | "false" | "no" | "off") => false,
            Some(other) => {
                let problem = format!("expected true or false, got `{other}`");
                self.fail(name, problem);
                default
            }
        }
    }
}

impl Settings {
    /// Reads the process environment. Call once per cold start.
    pub(crate) fn from_env(function: &str) -> Result<Self, ConfigError> {
        let vars: HashMap<String, String> = std::env::vars().collect();
        Self::from_vars(function, &vars)
    }

    /// Reads settings from any variable map (tests use this instead of mutating the environment).
    pub fn from_vars(function: &str, vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut r = Reader {
            vars,
            problems: Vec::new(),
        };

        let port = r.int("PORT", 8080u16, 1, u16::MAX);

        let database_url =
            match DatabaseUrl::parse(r.get("DATABASE_URL").unwrap_or(DEFAULT_DATABASE_URL)) {
                Ok(url) => Some(url),
                Err(problem) => {
                    r.fail("DATABASE_URL", problem);
                    None
                }
            };
        let database_max_connections = r.int("DATABASE_MAX_CONNECTIONS", 5u32, 1, 1000);
        let database_timeout = r.millis("DATABASE_TIMEOUT_MS", 2000, 50, 60_000);

        let redis_url = match r.get("REDIS_URL").map(RedisUrl::parse) {
            None => None,
            Some(Ok(url)) => Some(url),
            Some(Err(problem)) => {
                r.fail("REDIS_URL", problem);
                None
            }
        };
        let redis_timeout = r.millis("REDIS_TIMEOUT_MS", 250, 10, 60_000);

        let api_keys = read_api_keys(&mut r);

        let cors_origins = read_cors_origins(&mut r);

        let log_level = r.get("LOG_LEVEL").unwrap_or("info").to_string();
        if crate::observability::logging::parse_filter(&log_level).is_err() {
            r.fail(
                "LOG_LEVEL",
                format!("`{log_level}` is not a level (error, warn, info, debug, trace) or filter directive"),
            );
        }

        let max_body_bytes = r.int("MAX_BODY_BYTES", 1_048_576usize, 1024, 64 * 1_048_576);
        let health_timeout = r.millis("HEALTH_TIMEOUT_MS", 1000, 10, 30_000);

        let (metrics_export, metrics_namespace) = read_metrics(&mut r);

        let cache = read_cache(&mut r);

        let breaker = BreakerConfig {
            failure_threshold: r.int("BREAKER_FAILURE_THRESHOLD", 5u32, 1, 1000),
            failure_rate: r.int("BREAKER_FAILURE_RATE_PERCENT", 50u32, 1, 100) as f64 / 100.0,
            window_size: r.int("BREAKER_WINDOW", 20usize, 1, 10_000),
            min_calls: r.int("BREAKER_MIN_CALLS", 10usize, 1, 10_000),
            open_for: r.secs("BREAKER_OPEN_SECS", 60, 1, 86_400),
            half_open_calls: r.int("BREAKER_HALF_OPEN_CALLS", 1u32, 1, 100),
            shared_sync: r.millis("BREAKER_SHARED_SYNC_MS", 1000, 0, 60_000),
        };
        let breaker_shared = r.flag("BREAKER_SHARED", true);

        let retry = RetryPolicy {
            max_attempts: r.int("RETRY_MAX_ATTEMPTS", 3usize, 1, 10),
            base_delay: r.millis("RETRY_BASE_DELAY_MS", 200, 1, 60_000),
            max_delay: r.millis("RETRY_MAX_DELAY_MS", 5000, 1, 300_000),
            budget: r.millis("RETRY_BUDGET_MS", 20_000, 1, 900_000),
        };

        let rate_limit_requests = r.int("RATE_LIMIT_REQUESTS", 60u32, 1, 1_000_000);
        let mut rate_limit_window = r.secs("RATE_LIMIT_WINDOW_SECS", 60, 1, 86_400);
        // The name for the common case: requests per key per minute.
        let rate_limit_requests = match r.get("RATE_LIMIT_PER_MINUTE") {
            Some(_) => {
                rate_limit_window = Duration::from_secs(60);
                r.int("RATE_LIMIT_PER_MINUTE", rate_limit_requests, 1, 1_000_000)
            }
            None => rate_limit_requests,
        };
        let max_concurrent_sessions = r.int("MAX_CONCURRENT_SESSIONS", 100usize, 1, 100_000);

        #[cfg(feature = "kb")]
        let kb = read_kb(&mut r);
        #[cfg(feature = "chat")]
        let chat = read_chat(&mut r);

        match (r.problems.is_empty(), database_url) {
            (true, Some(database_url)) => Ok(Settings {
                function: function.to_string(),
                port,
                database_url,
                database_max_connections,
                database_timeout,
                redis_url,
                redis_timeout,
                api_keys,
                cors_origins,
                log_level,
                max_body_bytes,
                health_timeout,
                metrics_export,
                metrics_namespace,
                cache,
                breaker,
                breaker_shared,
                retry,
                rate_limit_requests,
                rate_limit_window,
                max_concurrent_sessions,
                #[cfg(feature = "kb")]
                kb,
                #[cfg(feature = "chat")]
                chat,
            }),
            _ => Err(ConfigError {
                problems: r.problems,
            }),
        }
    }
}

/// `API_KEYS`: `name:sha256hex` entries; a bad entry is named, never echoed.
fn read_api_keys(r: &mut Reader<'_>) -> ApiKeys {
    match ApiKeys::parse(r.get("API_KEYS").unwrap_or("")) {
        Ok(keys) => keys,
        Err(problem) => {
            r.fail("API_KEYS", problem);
            ApiKeys::default()
        }
    }
}

/// `CORS_ORIGINS`: a comma-separated list of origins, or `*`.
fn read_cors_origins(r: &mut Reader<'_>) -> Vec<String> {
    let mut cors_origins = Vec::new();
    for origin in r
        .get("CORS_ORIGINS")
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
    {
        let valid = origin == "*"
            || ((origin.starts_with("https://") || origin.starts_with("http://"))
                && !origin.ends_with('/')
                && http::HeaderValue::from_str(origin).is_ok());
        if valid {
            cors_origins.push(origin.to_string());
        } else {
            r.fail(
                "CORS_ORIGINS",
                format!("`{origin}` is not an origin like https://app.example.com (no path, no trailing slash) or *"),
            );
        }
    }
    cors_origins
}

/// `METRICS_EXPORT` (EMF by default on AWS) and `METRICS_NAMESPACE`.
fn read_metrics(r: &mut Reader<'_>) -> (MetricsExport, String) {
    // Real Lambda sets AWS_EXECUTION_ENV; `cargo lambda watch` does not, so local runs keep Prometheus only.
    let on_aws = r.get("AWS_EXECUTION_ENV").is_some();
    let metrics_export = match r.get("METRICS_EXPORT") {
        None => {
            if on_aws {
                MetricsExport::Emf
            } else {
                MetricsExport::Prometheus
            }
        }
        Some("prometheus") => MetricsExport::Prometheus,
        Some("emf") => MetricsExport::Emf,
        Some(other) => {
            r.fail(
                "METRICS_EXPORT",
                format!("expected `prometheus` or `emf`, got `{other}`"),
            );
            MetricsExport::Prometheus
        }
    };
    let metrics_namespace = r.get("METRICS_NAMESPACE").unwrap_or("ChatKb").to_string();
    if metrics_namespace.len() > 255 || metrics_namespace.contains(':') {
        r.fail(
            "METRICS_NAMESPACE",
            "must be at most 255 characters and contain no `:`",
        );
    }
    (metrics_export, metrics_namespace)
}

/// The cache's variables (`CACHE_*`): prefix, L1 bounds, TTL per namespace, Redis timings.
fn read_cache(r: &mut Reader<'_>) -> CacheConfig {
    let cache_prefix = r.get("CACHE_PREFIX").unwrap_or("chatkb").to_string();
    if cache_prefix.is_empty()
        || cache_prefix.len() > 32
        || !cache_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
    {
        r.fail("CACHE_PREFIX", "1-32 of A-Z a-z 0-9 - _");
    }
    let defaults = CacheConfig::default();
    let year = 365 * 86_400;
    CacheConfig {
        prefix: cache_prefix,
        l1_max_entries: r.int(
            "CACHE_L1_MAX_ENTRIES",
            defaults.l1_max_entries,
            1,
            10_000_000,
        ),
        l1_max_bytes: r.int(
            "CACHE_L1_MAX_BYTES",
            defaults.l1_max_bytes,
            1 << 20,
            8 << 30,
        ),
        ttls: [
            r.secs("CACHE_TTL_CHAT_SECS", defaults.ttls[0].as_secs(), 1, year),
            r.secs("CACHE_TTL_SEARCH_SECS", defaults.ttls[1].as_secs(), 1, year),
            r.secs(
                "CACHE_TTL_EMBEDDING_SECS",
                defaults.ttls[2].as_secs(),
                1,
                year,
            ),
            r.secs(
                "CACHE_TTL_SESSION_SECS",
                defaults.ttls[3].as_secs(),
                1,
                year,
            ),
            r.secs("CACHE_TTL_CONFIG_SECS", defaults.ttls[4].as_secs(), 1, year),
        ],
        lock_ttl: defaults.lock_ttl,
        lock_wait: r.millis("CACHE_LOCK_WAIT_MS", 2000, 0, 60_000),
        generation_refresh: r.millis("CACHE_GENERATION_REFRESH_MS", 1000, 0, 60_000),
        l2_retry_after: r.millis("CACHE_L2_RETRY_MS", 1000, 10, 600_000),
    }
}

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

/// The knowledge base's variables (`EMBEDDINGS_*`, `CHUNK_*`, `RETRIEVAL_MIN_SIMILARITY*`,
/// ingest limits, `VECTOR_INDEX_*`).
#[cfg(feature = "kb")]
fn read_kb(r: &mut Reader<'_>) -> KbSettings {
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
    let embeddings_dimensions = r.int("EMBEDDINGS_DIMENSIONS", 384usize, 8, 8192);
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
        embeddings_dimensions,
        embeddings_timeout,
        chunk_size,
        chunk_overlap,
        relevance,
        documents_bucket,
        documents_dir,
        max_document_bytes,
        max_batch_documents,
        vector_index,
    }
}

/// The chat gateway's variables (`LLM_*`, `CHAT_*`, `RETRIEVAL_*`, sessions, idempotency, usage).
#[cfg(feature = "chat")]
fn read_chat(r: &mut Reader<'_>) -> ChatSettings {
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
        prices: match crate::chat::usage::parse_prices(r.get("LLM_PRICES").unwrap_or("")) {
            Ok(prices) => prices,
            Err(problem) => {
                r.fail("LLM_PRICES", problem);
                Default::default()
            }
        },
        daily_budget_usd: match r.get("DAILY_BUDGET_USD").map(str::parse::<f64>) {
            None => None,
            Some(Ok(v)) if v.is_finite() && v >= 0.0 => Some(v),
            Some(_) => {
                r.fail(
                    "DAILY_BUDGET_USD",
                    "expected a non-negative number of dollars",
                );
                None
            }
        },
        usage_flush: r.millis("USAGE_FLUSH_MS", 1000, 10, 60_000),
        budget_refresh: r.millis("BUDGET_REFRESH_MS", 5000, 0, 3_600_000),
    }
}

/// The shared HTTP layers' section of the settings.
impl From<&Settings> for crate::http::HttpSettings {
    fn from(settings: &Settings) -> Self {
        Self {
            function: settings.function.clone(),
            emf_namespace: (settings.metrics_export == MetricsExport::Emf)
                .then(|| settings.metrics_namespace.clone()),
            max_body_bytes: settings.max_body_bytes,
            cors_origins: settings.cors_origins.clone(),
        }
    }
}

#[cfg(test)]
mod tests;
