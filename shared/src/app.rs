//! What a function builds once per cold start and shares with every invocation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use chrono::{DateTime, Utc};

#[cfg(feature = "cache")]
use crate::cache::TieredCache;
use crate::config::{ConfigError, Settings};
#[cfg(feature = "kb")]
use crate::kb::KnowledgeBase;
use crate::observability::{logging, metrics as obs_metrics};
use crate::resilience::limits::ConcurrencyLimiter;
#[cfg(feature = "protected")]
use crate::resilience::limits::RateLimiter;
use crate::resilience::{Breakers, SystemClock};
use crate::store::{Database, RedisHandle, StoreError};

pub use crate::observability::VERSION;

/// Shared state of one function instance.
#[derive(Debug)]
pub struct AppContext {
    pub settings: Settings,
    pub database: Database,
    pub redis: Option<RedisHandle>,
    /// L1 in-process + L2 Redis (when configured) cache (C5).
    #[cfg(feature = "cache")]
    pub cache: TieredCache,
    /// Circuit breakers by dependency (C6), shared through Redis when configured.
    pub breakers: Breakers,
    /// Per-key rate limit (C9).
    #[cfg(feature = "protected")]
    pub rate_limiter: Arc<RateLimiter>,
    /// Failed authentications per client address (`AUTH_FAILURES_PER_MINUTE`).
    #[cfg(feature = "protected")]
    pub auth_failures: Arc<RateLimiter>,
    /// Cap on concurrent sessions (C9).
    pub sessions: ConcurrencyLimiter,
    /// The knowledge base (ingest, and chat's retrieval), built on first use and shared.
    #[cfg(feature = "kb")]
    knowledge_base: std::sync::OnceLock<Arc<KnowledgeBase>>,
    /// The backup capability, built on first use and shared by routes and events.
    #[cfg(feature = "backup")]
    backups: std::sync::OnceLock<Arc<crate::backup::Backups>>,
    pub started: Instant,
    pub started_at: DateTime<Utc>,
}

/// Why a function could not start: only configuration can stop it (X1, X4).
#[derive(thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// `main` prints errors with `Debug`: show the same one-line message as the log.
impl std::fmt::Debug for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl AppContext {
    /// Builds clients without touching the network, so a dependency that is down
    /// cannot stop the function from starting.
    pub fn new(settings: Settings) -> Result<Arc<Self>, StoreError> {
        // Metrics recorded before the recorder exists are lost, so install it first.
        obs_metrics::install();
        if settings.metrics_export == obs_metrics::MetricsExport::Emf {
            obs_metrics::enable_emf(&settings.metrics_namespace, &settings.function);
        }
        crate::store::tls::install_crypto_provider();
        let database = Database::connect_lazy_with(
            settings.database_url.expose(),
            settings.database_url.kind(),
            settings.database_max_connections,
            settings.database_timeout,
        )?;
        let redis = match &settings.redis_url {
            Some(url) => Some(RedisHandle::with_pause(
                url,
                settings.redis_timeout,
                settings.redis_retry,
            )?),
            None => None,
        };
        #[cfg(feature = "cache")]
        let cache = TieredCache::new(settings.cache.clone(), redis.clone());
        let shared_breakers = if settings.breaker_shared {
            redis.clone()
        } else {
            None
        };
        let breakers = Breakers::new(
            settings.breaker.clone(),
            Arc::new(SystemClock),
            shared_breakers,
            &settings.cache.prefix,
        );
        #[cfg(feature = "protected")]
        let rate_limiter = Arc::new(RateLimiter::new(
            settings.rate_limit_requests,
            settings.rate_limit_window,
            redis.clone(),
            &settings.cache.prefix,
        ));
        #[cfg(feature = "protected")]
        let auth_failures = Arc::new(RateLimiter::new(
            settings.auth_failures_per_minute,
            Duration::from_secs(60),
            redis.clone(),
            &settings.cache.prefix,
        ));
        let sessions = ConcurrencyLimiter::new(
            "sessions",
            settings.max_concurrent_sessions,
            Duration::from_secs(1),
        );
        Ok(Arc::new(Self {
            settings,
            database,
            redis,
            #[cfg(feature = "cache")]
            cache,
            breakers,
            #[cfg(feature = "protected")]
            rate_limiter,
            #[cfg(feature = "protected")]
            auth_failures,
            sessions,
            #[cfg(feature = "kb")]
            knowledge_base: std::sync::OnceLock::new(),
            #[cfg(feature = "backup")]
            backups: std::sync::OnceLock::new(),
            started: Instant::now(),
            started_at: Utc::now(),
        }))
    }

    /// Cold start: read and validate configuration, set up logs and metrics, build
    /// clients, and start migrations (bounded) beside the first requests.
    pub async fn init(function: &str) -> Result<Arc<Self>, StartError> {
        let settings = match Settings::from_env(function) {
            Ok(settings) => settings,
            Err(err) => {
                logging::init("info", &Default::default());
                tracing::error!(function, variables = ?err.variables(), "{err}");
                return Err(err.into());
            }
        };
        // Before the trace exporter's HTTP client is built (an https:// collector).
        crate::store::tls::install_crypto_provider();
        logging::init(&settings.log_level, &settings.traces);
        let ctx = Self::new(settings)?;
        metrics::counter!(obs_metrics::names::COLD_STARTS_TOTAL, "function" => function.to_string()).increment(1);
        metrics::gauge!(obs_metrics::names::BUILD_INFO, "function" => function.to_string(), "version" => VERSION).set(1.0);
        let budget = ctx.settings.database_timeout + Duration::from_millis(500);
        // Standalone, migrated beside the first requests, not before them: a request that
        // needs the database waits for the same migration (`Database::pool`), one that
        // does not (a proxied completion without budgets, sessions or idempotency) is
        // answered meanwhile. On a fresh SQLite file the schema took 29 of a cold start's
        // 45 ms (docs/benchmarks.md, "Cold start off the first answer's path"). Under
        // Lambda, tried here within the budget as before: nothing may run across the
        // freeze after an answer (a PostgreSQL migration would hold its lock, frozen),
        // and the first completion writes its usage row before its answer there anyway.
        if crate::runtime::in_lambda() {
            match tokio::time::timeout(budget, ctx.database.ensure_ready()).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => not_ready(function, &err),
                Err(_) => tracing::warn!(
                    function,
                    "database did not answer at start-up; will retry on use"
                ),
            }
        } else {
            tokio::spawn(migrate_at_start(
                ctx.database.clone(),
                function.to_string(),
                budget,
            ));
        }
        tracing::info!(
            function,
            version = VERSION,
            database = %ctx.settings.database_url,
            redis = ctx.settings.redis_url.as_ref().map(|u| u.to_string()),
            api_keys = ctx.settings.api_keys.len(),
            "function initialised"
        );
        Ok(ctx)
    }

    /// The instance's knowledge base: one store adapter, embedder and cache for every
    /// route and event handler of the function.
    #[cfg(feature = "kb")]
    pub fn knowledge_base(&self) -> Arc<KnowledgeBase> {
        self.knowledge_base
            .get_or_init(|| Arc::new(crate::services::knowledge_base(self)))
            .clone()
    }

    /// The instance's backups: one lock, so a backup and a restore never overlap in it.
    #[cfg(feature = "backup")]
    pub fn backups(&self) -> Arc<crate::backup::Backups> {
        self.backups
            .get_or_init(|| Arc::new(crate::services::backups(self)))
            .clone()
    }

    /// A function's whole router when all its routes need an API key: the protected-route
    /// stack (key, then the key's rate limit) inside the edge's common layers.
    /// `database_required`: readiness (`/health/ready`, served without a key) fails
    /// while the database is down.
    #[cfg(feature = "protected")]
    pub fn protected_app(self: &Arc<Self>, routes: Router, database_required: bool) -> Router {
        if !self.settings.rate_limit_enabled {
            tracing::warn!(
                "RATE_LIMIT_ENABLED=false: no per-key rate limit; something in front must limit callers"
            );
        }
        let routes = crate::http::protect(
            routes,
            self.settings.api_keys.clone(),
            self.settings
                .rate_limit_enabled
                .then(|| self.rate_limiter.clone()),
            self.auth_failures.clone(),
        )
        .merge(crate::probes::routes(self.clone(), database_required));
        crate::http::app(routes, &self.settings)
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

/// What the health checks look at: the instance's clients and state.
impl crate::health::Monitored for AppContext {
    fn view(&self) -> crate::health::HealthView<'_> {
        crate::health::HealthView {
            function: &self.settings.function,
            database: &self.database,
            redis: self.redis.as_ref(),
            redis_required: self.settings.redis_required,
            timeout: self.settings.health_timeout,
            emf_namespace: (self.settings.metrics_export
                == crate::observability::metrics::MetricsExport::Emf)
                .then_some(self.settings.metrics_namespace.as_str()),
            started_at: self.started_at,
            uptime: self.uptime(),
            breakers: &self.breakers,
            cache_prefix: &self.settings.cache.prefix,
            sessions: &self.sessions,
            sessions_limit: self.settings.max_concurrent_sessions,
            daily_budget_usd: self.settings.budget.daily_usd,
            budget_instances: self.settings.budget.instances,
        }
    }
}

/// Answers every request with a 503 naming the configuration problem.
pub fn misconfigured(problem: &str) -> Router {
    let message = format!("this function is not configured correctly: {problem}");
    Router::new().fallback(move || {
        let message = message.clone();
        async move {
            crate::error::ApiError::ServiceUnavailable {
                message,
                retry_after: None,
            }
        }
    })
}

/// Migrates, warning (once) if that takes longer than `budget` but never giving up on a
/// migration that requests may be waiting for: dropping it would restart it from scratch
/// (on PostgreSQL without releasing its lock first). A failure is retried on next use.
async fn migrate_at_start(database: Database, function: String, budget: Duration) {
    let migrating = database.ensure_ready();
    tokio::pin!(migrating);
    let result = tokio::select! {
        result = &mut migrating => result,
        () = tokio::time::sleep(budget) => {
            tracing::warn!(function, "database did not answer at start-up; still trying");
            migrating.await
        }
    };
    if let Err(err) = result {
        not_ready(&function, &err);
    }
}

fn not_ready(function: &str, err: &StoreError) {
    tracing::warn!(function, error = %err, "database not ready at start-up; will retry on use");
}

/// The whole `main` of a function: cold-start initialisation, then serving.
///
/// A configuration error stops the function with one log line naming every bad
/// variable (X1); an unreachable dependency does not (X4). With `--check-config` the
/// function only validates its configuration and exits (what `make run` does first).
/// Under Lambda a function whose configuration is wrong keeps running and answers every
/// request at once with a JSON 503 naming the variables (never their values): a function
/// that exits at start leaves callers of `cargo lambda watch` waiting, and on AWS gets a
/// bare 502.
pub async fn start(
    function: &str,
    routes: fn(Arc<AppContext>) -> Router,
    on_event: Option<fn(Arc<AppContext>) -> crate::runtime::EventHandler>,
) -> Result<(), crate::runtime::BoxError> {
    if std::env::args().nth(1).as_deref() == Some("--check-config") {
        Settings::from_env(function).map_err(StartError::from)?;
        println!("{function}: the configuration is valid");
        return Ok(());
    }
    crate::observability::redact::prepare_in_background();
    let ctx = match AppContext::init(function).await {
        Ok(ctx) => ctx,
        Err(StartError::Config(err)) if crate::runtime::in_lambda() => {
            let problem = err.to_string();
            let router = misconfigured(&problem);
            let on_event: crate::runtime::EventHandler = Arc::new(move |_| {
                let problem = problem.clone();
                Box::pin(async move { Err(problem.into()) })
            });
            return crate::runtime::serve(router, 0, Default::default(), Some(on_event), None)
                .await;
        }
        Err(err) => return Err(err.into()),
    };
    let router = routes(ctx.clone());
    let on_event = on_event.map(|make| make(ctx.clone()));
    let settings = &ctx.settings;
    crate::runtime::serve(
        router,
        settings.port,
        settings.server,
        on_event,
        settings.schedule_every,
    )
    .await
}
