//! Dependency checks behind the health endpoints (H1) and the scheduled deep check (H2).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cache::{read_service_counts, CacheCounts};
use crate::history::history;
use crate::observability::metrics::{names, EmfRecord};
use crate::observability::redact::redact;
use crate::observability::VERSION;
use crate::resilience::limits::ConcurrencyLimiter;
use crate::resilience::Breakers;
use crate::store::{Database, RedisHandle, StoreError};

/// What the checks read, lent by whoever owns the clients (the function's context).
pub struct HealthView<'a> {
    pub function: &'a str,
    pub database: &'a Database,
    /// `None` when no Redis is configured.
    pub redis: Option<&'a RedisHandle>,
    /// Whether readiness fails while Redis is down (`REDIS_REQUIRED`).
    pub redis_required: bool,
    /// Each dependency's answer is awaited this long.
    pub timeout: Duration,
    /// `Some(namespace)` when metrics also go to CloudWatch as EMF.
    pub emf_namespace: Option<&'a str>,
    pub started_at: DateTime<Utc>,
    pub uptime: Duration,
    pub breakers: &'a Breakers,
    /// Prefix of the Redis keys, where every instance adds its cache counts.
    pub cache_prefix: &'a str,
    pub sessions: &'a ConcurrencyLimiter,
    pub sessions_limit: usize,
    /// `DAILY_BUDGET_USD`, and the share each instance admits on while the shared
    /// ledger (Redis) is down (`BUDGET_INSTANCES`).
    pub daily_budget_usd: Option<f64>,
    pub budget_instances: u32,
}

/// Anything the health checks can look at.
pub trait Monitored {
    fn view(&self) -> HealthView<'_>;
}

impl<T: Monitored + ?Sized> Monitored for std::sync::Arc<T> {
    fn view(&self) -> HealthView<'_> {
        (**self).view()
    }
}

/// State of one dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DependencyState {
    Up,
    Down,
    /// Not configured (e.g. no `REDIS_URL`): neither up nor a failure.
    Disabled,
}

/// Result of checking one dependency.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DependencyCheck {
    pub name: String,
    pub status: DependencyState,
    pub latency_ms: f64,
    /// Which backend, e.g. `sqlite` or `postgres`; never a URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Overall status, worst dependency first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverallStatus {
    Ok,
    /// The database answers but an optional dependency (Redis) does not: service goes on (X4).
    Degraded,
    Down,
}

impl OverallStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OverallStatus::Ok => "ok",
            OverallStatus::Degraded => "degraded",
            OverallStatus::Down => "down",
        }
    }
}

async fn timed<F>(name: &str, backend: &str, timeout: Duration, check: F) -> DependencyCheck
where
    F: std::future::Future<Output = Result<(), StoreError>>,
{
    let started = Instant::now();
    let outcome = tokio::time::timeout(timeout, check).await;
    let latency = started.elapsed();
    let error = match outcome {
        Ok(Ok(())) => None,
        // Dependency errors can quote hosts or users; redact before they leave the process.
        Ok(Err(err)) => Some(redact(&err.to_string()).into_owned()),
        Err(_) => Some(format!("no answer within {} ms", timeout.as_millis())),
    };
    let status = if error.is_none() {
        DependencyState::Up
    } else {
        DependencyState::Down
    };
    metrics::gauge!(names::DEPENDENCY_UP, "dependency" => name.to_string())
        .set(if error.is_none() { 1.0 } else { 0.0 });
    metrics::histogram!(names::DEPENDENCY_LATENCY_SECONDS, "dependency" => name.to_string())
        .record(latency.as_secs_f64());
    DependencyCheck {
        name: name.to_string(),
        status,
        latency_ms: (latency.as_secs_f64() * 1000.0 * 100.0).round() / 100.0,
        backend: Some(backend.to_string()),
        error,
    }
}

/// Checks the database and, when configured, Redis, concurrently, each within the health timeout.
pub async fn check_dependencies<M: Monitored + ?Sized>(source: &M) -> Vec<DependencyCheck> {
    let ctx = source.view();
    let timeout = ctx.timeout;
    let backend = match ctx.database.kind() {
        crate::store::DatabaseKind::Sqlite => "sqlite",
        crate::store::DatabaseKind::Postgres => "postgres",
    };
    let database = timed("database", backend, timeout, ctx.database.ping());
    let redis = async {
        match ctx.redis {
            Some(redis) => timed("redis", "redis", timeout, redis.ping()).await,
            None => DependencyCheck {
                name: "redis".into(),
                status: DependencyState::Disabled,
                latency_ms: 0.0,
                backend: None,
                error: None,
            },
        }
    };
    let (database, redis) = tokio::join!(database, redis);
    vec![database, redis]
}

/// `down` if the database is down, `degraded` if anything else configured is down.
pub fn overall(checks: &[DependencyCheck]) -> OverallStatus {
    let down = |name: &str| {
        checks
            .iter()
            .any(|c| c.name == name && c.status == DependencyState::Down)
    };
    if down("database") {
        OverallStatus::Down
    } else if checks.iter().any(|c| c.status == DependencyState::Down) {
        OverallStatus::Degraded
    } else {
        OverallStatus::Ok
    }
}

/// Names of configured dependencies that failed.
pub fn failing(checks: &[DependencyCheck]) -> Vec<String> {
    checks
        .iter()
        .filter(|c| c.status == DependencyState::Down)
        .map(|c| c.name.clone())
        .collect()
}

/// What `/health/ready` fails on: the failed dependencies the function cannot serve
/// without. That is the database where `required_database` (chat answers without it,
/// flagged, so it does not), and Redis only when `required_redis` (every route answers
/// through an in-process fallback while it is down, so pulling the instance would turn
/// a Redis outage into a full one).
pub fn not_ready(
    checks: &[DependencyCheck],
    required_redis: bool,
    required_database: bool,
) -> Vec<String> {
    failing(checks)
        .into_iter()
        .filter(|name| match name.as_str() {
            "redis" => required_redis,
            "database" => required_database,
            _ => true,
        })
        .collect()
}

/// A recorded scheduled deep check.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeepCheck {
    pub checked_at: DateTime<Utc>,
    pub status: OverallStatus,
    pub version: String,
    pub function: String,
    pub dependencies: Vec<DependencyCheck>,
    /// Tables present in the database, proving the schema is migrated.
    #[serde(default)]
    pub tables: Vec<String>,
}

/// How long deep-check rows are kept.
pub const DEEP_CHECK_RETENTION_DAYS: i64 = 7;

/// The scheduled deep check (H2): every dependency, the schema, recorded as metrics,
/// one log line, and a row in `health_checks` when the database is up.
pub async fn run_deep_check<M: Monitored + ?Sized>(source: &M) -> DeepCheck {
    let dependencies = check_dependencies(source).await;
    let ctx = source.view();
    let status = overall(&dependencies);
    let tables = if status == OverallStatus::Down {
        Vec::new()
    } else {
        ctx.database.table_names().await.unwrap_or_default()
    };
    let report = DeepCheck {
        checked_at: Utc::now(),
        status,
        version: VERSION.to_string(),
        function: ctx.function.to_string(),
        dependencies,
        tables,
    };
    metrics::counter!(names::DEEP_CHECKS_TOTAL, "status" => status.as_str()).increment(1);
    metrics::gauge!(names::DEEP_CHECK_LAST_TIMESTAMP).set(report.checked_at.timestamp() as f64);
    let failing = failing(&report.dependencies);
    match status {
        OverallStatus::Ok => tracing::info!(
            status = status.as_str(),
            ?failing,
            tables = report.tables.len(),
            "deep health check"
        ),
        _ => tracing::warn!(
            status = status.as_str(),
            ?failing,
            tables = report.tables.len(),
            "deep health check"
        ),
    }
    if let Some(namespace) = ctx.emf_namespace {
        emit_deep_check_emf(namespace, &report);
    }
    if status != OverallStatus::Down {
        if let Err(err) = record_deep_check(ctx.database, &report).await {
            tracing::warn!(error = %err, "could not record the deep health check");
        }
    }
    report
}

/// On AWS the deep check's metrics go to CloudWatch as EMF, one record per configured
/// dependency, so alarms can watch `health_dependency_up` by dependency.
pub(crate) fn deep_check_emf_records(namespace: &str, report: &DeepCheck) -> Vec<EmfRecord> {
    report
        .dependencies
        .iter()
        .filter(|d| d.status != DependencyState::Disabled)
        .map(|dependency| {
            let up = if dependency.status == DependencyState::Up {
                1.0
            } else {
                0.0
            };
            EmfRecord::new(namespace)
                .dimension_set(&["dependency"])
                .dimension("dependency", &dependency.name)
                .property("function", report.function.as_str())
                .property("status", report.status.as_str())
                .metric(names::DEPENDENCY_UP, up, "None")
                .metric(
                    names::DEPENDENCY_LATENCY_SECONDS,
                    dependency.latency_ms / 1000.0,
                    "Seconds",
                )
        })
        .collect()
}

fn emit_deep_check_emf(namespace: &str, report: &DeepCheck) {
    for record in deep_check_emf_records(namespace, report) {
        record.emit();
    }
}

/// Stores a deep check and prunes rows older than the retention.
pub(crate) async fn record_deep_check(db: &Database, report: &DeepCheck) -> Result<(), StoreError> {
    let cutoff = report.checked_at - chrono::Duration::days(DEEP_CHECK_RETENTION_DAYS);
    history(db).record(report, cutoff).await
}

/// The most recent recorded deep check, if any.
pub async fn last_deep_check(db: &Database) -> Result<Option<DeepCheck>, StoreError> {
    history(db).last().await
}

/// Number of recorded deep checks (for tests and the detailed view).
pub async fn deep_check_count(db: &Database) -> Result<i64, StoreError> {
    history(db).count().await
}

/// The cache's hit rate over every instance of the service (the counts each instance
/// publishes to Redis): this function caches nothing itself, so its own counts would
/// always be zero. Without Redis there is no shared view, and it says so.
async fn cache_view(ctx: &HealthView<'_>) -> Value {
    let Some(redis) = ctx.redis else {
        return serde_json::json!({"scope": "service", "l2": "disabled", "hit_rate": null});
    };
    match read_service_counts(redis, ctx.cache_prefix).await {
        Ok(counts) => counts_view(&counts, "up"),
        Err(_) => serde_json::json!({"scope": "service", "l2": "down", "hit_rate": null}),
    }
}

fn counts_view(counts: &CacheCounts, l2: &str) -> Value {
    serde_json::json!({
        "scope": "service",
        "hit_rate": counts.hit_rate().map(|r| (r * 1000.0).round() / 1000.0),
        "l1_hits": counts.l1_hits,
        "l2_hits": counts.l2_hits,
        "misses": counts.misses,
        "l2": l2,
    })
}

/// How daily budgets are enforced right now: one ledger shared through Redis, or each
/// instance on its own share while Redis is down, or in process without Redis.
fn budget_view(ctx: &HealthView<'_>, dependencies: &[DependencyCheck]) -> Value {
    let Some(daily) = ctx.daily_budget_usd else {
        return serde_json::json!({"daily_usd": null});
    };
    let redis = dependencies
        .iter()
        .find(|d| d.name == "redis")
        .map(|d| d.status);
    let (ledger, share) = match redis {
        Some(DependencyState::Up) => ("shared", None),
        Some(DependencyState::Down) => ("per-instance", Some(ctx.budget_instances)),
        _ => ("in-process", None),
    };
    let mut view = serde_json::json!({"daily_usd": daily, "ledger": ledger});
    if let Some(instances) = share {
        view["fallback"] = serde_json::json!(format!(
            "the shared ledger (redis) is down: each instance admits requests on 1/{instances} of what is left of a key's budget (BUDGET_INSTANCES)"
        ));
    }
    view
}

/// The JSON of `/health/detailed`.
pub async fn detailed<M: Monitored + ?Sized>(source: &M, cold_start: bool) -> Value {
    let dependencies = check_dependencies(source).await;
    let ctx = source.view();
    let status = overall(&dependencies);
    let (last, backup) = if status == OverallStatus::Down {
        (None, None)
    } else {
        (
            last_deep_check(ctx.database).await.ok().flatten(),
            Some(backup_view(ctx.database).await),
        )
    };
    serde_json::json!({
        "status": status,
        "function": ctx.function,
        "version": VERSION,
        "started_at": ctx.started_at,
        "uptime_seconds": ctx.uptime.as_secs(),
        "cold_start": cold_start,
        "dependencies": dependencies,
        "breakers": ctx.breakers.states().into_iter().map(|(name, state)| serde_json::json!({
            "name": name,
            "state": state,
        })).collect::<Vec<_>>(),
        "cache": cache_view(&ctx).await,
        "budget": budget_view(&ctx, &dependencies),
        "concurrent_sessions": {
            "in_use": ctx.sessions.in_use(),
            "limit": ctx.sessions_limit,
        },
        "last_deep_check": last.map(|d| serde_json::json!({
            "checked_at": d.checked_at,
            "status": d.status,
        })),
        "backup": backup,
    })
}

/// A good backup older than this is stale (the daily schedule missed a run).
pub const BACKUP_STALE_AFTER: Duration = Duration::from_secs(26 * 3600);

/// The age of the last good backup (B1): `last_good` is null before the first one.
async fn backup_view(db: &Database) -> Value {
    match history(db).last_backup().await {
        Ok(Some((id, finished_at))) => {
            let age = (chrono::Utc::now() - finished_at).num_seconds().max(0);
            serde_json::json!({
                "last_good": id,
                "finished_at": finished_at,
                "age_seconds": age,
                "stale": age as u64 > BACKUP_STALE_AFTER.as_secs(),
            })
        }
        Ok(None) => serde_json::json!({ "last_good": null, "stale": true }),
        Err(err) => serde_json::json!({ "error": err.to_string() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, status: DependencyState) -> DependencyCheck {
        DependencyCheck {
            name: name.into(),
            status,
            latency_ms: 2.5,
            backend: None,
            error: None,
        }
    }

    #[test]
    fn overall_status_follows_the_worst_dependency() {
        use DependencyState::*;
        assert_eq!(
            overall(&[check("database", Up), check("redis", Disabled)]),
            OverallStatus::Ok
        );
        assert_eq!(
            overall(&[check("database", Up), check("redis", Down)]),
            OverallStatus::Degraded
        );
        assert_eq!(
            overall(&[check("database", Down), check("redis", Up)]),
            OverallStatus::Down
        );
        assert_eq!(
            failing(&[check("database", Down), check("redis", Down)]),
            vec!["database", "redis"]
        );
    }

    #[test]
    fn deep_check_emf_has_one_record_per_configured_dependency() {
        let report = DeepCheck {
            checked_at: Utc::now(),
            status: OverallStatus::Degraded,
            version: VERSION.into(),
            function: "health".into(),
            dependencies: vec![
                check("database", DependencyState::Up),
                check("redis", DependencyState::Down),
                check("queue", DependencyState::Disabled),
            ],
            tables: vec![],
        };
        let records: Vec<Value> = deep_check_emf_records("ChatKb", &report)
            .iter()
            .map(EmfRecord::to_json)
            .collect();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0]["dependency"], "database");
        assert_eq!(records[0][names::DEPENDENCY_UP], 1.0);
        assert_eq!(records[1]["dependency"], "redis");
        assert_eq!(records[1][names::DEPENDENCY_UP], 0.0);
        assert_eq!(records[1][names::DEPENDENCY_LATENCY_SECONDS], 0.0025);
        assert_eq!(
            records[1]["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0][0],
            "dependency"
        );
    }
}
