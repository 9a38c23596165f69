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
    /// Readiness fails while Redis is down (`REDIS_REQUIRED`); by default Redis down is
    /// `degraded`, since every route keeps answering through its in-process fallback.
    pub redis_required: bool,
    /// After a failed Redis call, every user skips Redis this long (`REDIS_RETRY_MS`).
    pub redis_retry: Duration,
    pub api_keys: ApiKeys,
    /// Failed authentications per client address per minute before 429.
    pub auth_failures_per_minute: u32,
    /// The standalone server's timeouts and connection cap.
    pub server: crate::runtime::ServerLimits,
    /// How often the standalone server runs the function's scheduled work (deep check,
    /// index upkeep, backup) itself (`SCHEDULE_EVERY_SECS`); `None`: never.
    pub schedule_every: Option<Duration>,
    pub cors_origins: Vec<String>,
    pub log_level: String,
    /// OTLP trace export (the standard `OTEL_*` variables); off without an endpoint.
    pub traces: crate::observability::traces::TraceSettings,
    pub max_body_bytes: usize,
    pub health_timeout: Duration,
    pub metrics_export: MetricsExport,
    pub metrics_namespace: String,
    pub cache: CacheConfig,
    pub breaker: BreakerConfig,
    /// Share breaker state through Redis (when `REDIS_URL` is set).
    pub breaker_shared: bool,
    pub retry: RetryPolicy,
    /// Whether each API key is rate limited (`RATE_LIMIT_ENABLED`, on by default). Off
    /// only where something in front limits callers (an API Gateway usage plan).
    pub rate_limit_enabled: bool,
    /// Requests per API key per window.
    pub rate_limit_requests: u32,
    pub rate_limit_window: Duration,
    pub max_concurrent_sessions: usize,
    pub budget: BudgetSettings,
    /// The knowledge base's section (ingest and chat's retrieval).
    #[cfg(feature = "kb")]
    pub kb: KbSettings,
    /// The chat gateway's section.
    #[cfg(feature = "chat")]
    pub chat: ChatSettings,
    #[cfg(feature = "backup")]
    pub backup: crate::backup::BackupSettings,
}

/// Daily budgets per API key.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetSettings {
    /// Daily spend per API key after which requests get 429 (`DAILY_BUDGET_USD`).
    pub daily_usd: Option<f64>,
    /// While the shared budget ledger (Redis) is down, each instance admits requests on
    /// this share of what is left of a budget (`BUDGET_INSTANCES`).
    pub instances: u32,
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
        let redis_required = r.flag("REDIS_REQUIRED", false);
        let redis_retry = r.millis("REDIS_RETRY_MS", 1000, 10, 600_000);
        let auth_failures_per_minute = r.int("AUTH_FAILURES_PER_MINUTE", 20u32, 1, 1_000_000);
        let server = read_server(&mut r);
        let schedule_every = read_schedule(&mut r, function);
        let api_keys = read_api_keys(&mut r);
        let cors_origins = read_cors_origins(&mut r);

        let log_level = read_log_level(&mut r);

        let traces = read_traces(&mut r, function);

        let max_body_bytes = r.int("MAX_BODY_BYTES", 1_048_576usize, 1024, 64 * 1_048_576);
        let health_timeout = r.millis("HEALTH_TIMEOUT_MS", 1000, 10, 30_000);

        let (metrics_export, metrics_namespace) = read_metrics(&mut r);

        let cache = read_cache(&mut r);

        let breaker = read_breaker(&mut r);
        let breaker_shared = r.flag("BREAKER_SHARED", true);

        let retry = RetryPolicy {
            max_attempts: r.int("RETRY_MAX_ATTEMPTS", 3usize, 1, 10),
            base_delay: r.millis("RETRY_BASE_DELAY_MS", 200, 1, 60_000),
            max_delay: r.millis("RETRY_MAX_DELAY_MS", 5000, 1, 300_000),
            budget: r.millis("RETRY_BUDGET_MS", 20_000, 1, 900_000),
        };

        let (rate_limit_enabled, rate_limit_requests, rate_limit_window) = read_rate_limit(&mut r);
        let max_concurrent_sessions = r.int("MAX_CONCURRENT_SESSIONS", 100usize, 1, 100_000);

        let budget = read_budget(&mut r);
        #[cfg(feature = "kb")]
        let kb = read_kb(&mut r);
        #[cfg(feature = "chat")]
        let chat = read_chat(&mut r);
        #[cfg(feature = "chat")]
        check_budget_has_usage(&mut r, &chat, &budget);
        #[cfg(feature = "backup")]
        let backup = read_backup(&mut r);

        match (r.problems.is_empty(), database_url) {
            (true, Some(database_url)) => Ok(Settings {
                function: function.to_string(),
                port,
                database_url,
                database_max_connections,
                database_timeout,
                redis_url,
                redis_timeout,
                redis_required,
                redis_retry,
                api_keys,
                auth_failures_per_minute,
                server,
                schedule_every,
                cors_origins,
                log_level,
                traces,
                max_body_bytes,
                health_timeout,
                metrics_export,
                metrics_namespace,
                cache,
                breaker,
                breaker_shared,
                retry,
                rate_limit_enabled,
                rate_limit_requests,
                rate_limit_window,
                max_concurrent_sessions,
                budget,
                #[cfg(feature = "kb")]
                kb,
                #[cfg(feature = "chat")]
                chat,
                #[cfg(feature = "backup")]
                backup,
            }),
            _ => Err(ConfigError {
                problems: r.problems,
            }),
        }
    }
}

/// The breakers' thresholds; the first cool-down may not exceed the longest (when it is
/// not set, it is the smaller of 5 s and `BREAKER_OPEN_SECS`).
fn read_breaker(r: &mut Reader<'_>) -> BreakerConfig {
    let open_for = r.secs("BREAKER_OPEN_SECS", 60, 1, 86_400);
    let open_min = match r.get("BREAKER_OPEN_MIN_SECS") {
        None => open_for.min(Duration::from_secs(5)),
        Some(_) => {
            let min = r.secs("BREAKER_OPEN_MIN_SECS", 5, 1, 86_400);
            if min > open_for {
                r.fail(
                    "BREAKER_OPEN_MIN_SECS",
                    "must be at most BREAKER_OPEN_SECS (the longest cool-down)",
                );
            }
            min
        }
    };
    BreakerConfig {
        open_for,
        open_min,
        failure_threshold: r.int("BREAKER_FAILURE_THRESHOLD", 5u32, 1, 1000),
        failure_rate: r.int("BREAKER_FAILURE_RATE_PERCENT", 50u32, 1, 100) as f64 / 100.0,
        window_size: r.int("BREAKER_WINDOW", 20usize, 1, 10_000),
        min_calls: r.int("BREAKER_MIN_CALLS", 10usize, 1, 10_000),
        half_open_calls: r.int("BREAKER_HALF_OPEN_CALLS", 1u32, 1, 100),
        shared_sync: r.millis("BREAKER_SHARED_SYNC_MS", 1000, 0, 60_000),
    }
}

/// The standalone server's limits (`HTTP_*`).
fn read_server(r: &mut Reader<'_>) -> crate::runtime::ServerLimits {
    crate::runtime::ServerLimits {
        header_timeout: r.millis("HTTP_HEADER_TIMEOUT_MS", 10_000, 100, 600_000),
        body_timeout: r.millis("HTTP_BODY_TIMEOUT_MS", 30_000, 100, 3_600_000),
        max_connections: r.int("HTTP_MAX_CONNECTIONS", 512usize, 1, 1_000_000),
    }
}

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

/// The per-key rate limit: `RATE_LIMIT_ENABLED`, and `RATE_LIMIT_REQUESTS` per
/// `RATE_LIMIT_WINDOW_SECS`, or `RATE_LIMIT_PER_MINUTE` (the common case's name).
fn read_rate_limit(r: &mut Reader<'_>) -> (bool, u32, Duration) {
    let enabled = r.flag("RATE_LIMIT_ENABLED", true);
    let requests = r.int("RATE_LIMIT_REQUESTS", 60u32, 1, 1_000_000);
    let window = r.secs("RATE_LIMIT_WINDOW_SECS", 60, 1, 86_400);
    match r.get("RATE_LIMIT_PER_MINUTE") {
        Some(_) => (
            enabled,
            r.int("RATE_LIMIT_PER_MINUTE", requests, 1, 1_000_000),
            Duration::from_secs(60),
        ),
        None => (enabled, requests, window),
    }
}

/// A daily budget is counted from the usage rows: refused without them.
#[cfg(feature = "chat")]
fn check_budget_has_usage(r: &mut Reader<'_>, chat: &ChatSettings, budget: &BudgetSettings) {
    if !chat.usage_recording && budget.daily_usd.is_some() {
        r.fail(
            "USAGE_RECORDING",
            "DAILY_BUDGET_USD needs usage recording: the budget is counted from the usage rows",
        );
    }
}

/// Daily budgets: read by every function, since the health function reports how they are
/// enforced and chat enforces them.
fn read_budget(r: &mut Reader<'_>) -> BudgetSettings {
    BudgetSettings {
        daily_usd: match r.get("DAILY_BUDGET_USD").map(str::parse::<f64>) {
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
        instances: r.int("BUDGET_INSTANCES", 1u32, 1, 10_000),
    }
}

/// `LOG_LEVEL`: a level or `target=level` directives.
fn read_log_level(r: &mut Reader<'_>) -> String {
    let log_level = r.get("LOG_LEVEL").unwrap_or("info").to_string();
    if crate::observability::logging::parse_filter(&log_level).is_err() {
        r.fail(
            "LOG_LEVEL",
            format!("`{log_level}` is not a level (error, warn, info, debug, trace) or filter directive"),
        );
    }
    log_level
}

/// `SCHEDULE_EVERY_SECS`, by default as the template's schedules: health and ingest every
/// 5 minutes, backup daily, chat never.
fn read_schedule(r: &mut Reader<'_>, function: &str) -> Option<Duration> {
    let default = match function {
        "health" | "ingest" => 300,
        "backup" => 86_400,
        _ => 0,
    };
    Some(r.secs("SCHEDULE_EVERY_SECS", default, 0, 604_800)).filter(|every| !every.is_zero())
}

mod traces;
use traces::read_traces;

#[cfg(any(feature = "kb", feature = "chat", feature = "backup"))]
mod sections;
#[cfg(any(feature = "kb", feature = "chat", feature = "backup"))]
use sections::*;

#[cfg(test)]
mod tests;
