//! Metrics through the `metrics` facade (X3): Prometheus text for `/health/metrics`,
//! plus CloudWatch Embedded Metric Format lines on AWS.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::{json, Map, Value};

/// Where metrics go besides `/health/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsExport {
    /// Prometheus text only (local, containers).
    Prometheus,
    /// Prometheus text plus a CloudWatch EMF log line per request (AWS Lambda).
    Emf,
}

/// Metric names, in one place so dashboards, alarms and code agree.
pub mod names {
    pub const HTTP_REQUESTS_TOTAL: &str = "http_requests_total";
    pub const HTTP_REQUEST_DURATION_SECONDS: &str = "http_request_duration_seconds";
    pub const HTTP_SERVER_ERRORS_TOTAL: &str = "http_server_errors_total";
    pub const COLD_STARTS_TOTAL: &str = "cold_starts_total";
    pub const BUILD_INFO: &str = "build_info";
    pub const DEPENDENCY_UP: &str = "health_dependency_up";
    pub const DEPENDENCY_LATENCY_SECONDS: &str = "health_dependency_latency_seconds";
    pub const DEEP_CHECKS_TOTAL: &str = "health_deep_checks_total";
    pub const DEEP_CHECK_LAST_TIMESTAMP: &str = "health_deep_check_last_timestamp_seconds";
    pub const BREAKER_STATE: &str = "circuit_breaker_state";
    pub const BREAKER_TRANSITIONS_TOTAL: &str = "circuit_breaker_transitions_total";
    pub const BREAKER_REJECTIONS_TOTAL: &str = "circuit_breaker_rejections_total";
    pub const RETRIES_TOTAL: &str = "retries_total";
    pub const RATE_LIMITED_TOTAL: &str = "rate_limited_total";
    pub const RATE_LIMIT_FALLBACKS_TOTAL: &str = "rate_limit_fallbacks_total";
    pub const CONCURRENT_SESSIONS: &str = "chat_concurrent_sessions";
    pub const CONCURRENCY_REJECTIONS_TOTAL: &str = "concurrency_rejections_total";
    pub const CACHE_HITS_TOTAL: &str = "cache_hits_total";
    pub const CACHE_MISSES_TOTAL: &str = "cache_misses_total";
    pub const CACHE_LOADS_TOTAL: &str = "cache_loads_total";
    pub const CACHE_L2_ERRORS_TOTAL: &str = "cache_l2_errors_total";
    pub const CACHE_ENTRIES: &str = "cache_entries";
    pub const CACHE_INVALIDATIONS_TOTAL: &str = "cache_invalidations_total";
    pub const LLM_REQUESTS_TOTAL: &str = "llm_requests_total";
    pub const LLM_TOKENS_TOTAL: &str = "llm_tokens_total";
    pub const LLM_COST_USD_TOTAL: &str = "llm_cost_usd_total";
    pub const LLM_FALLBACKS_TOTAL: &str = "llm_fallbacks_total";
    pub const LLM_TIME_TO_FIRST_TOKEN_SECONDS: &str = "llm_time_to_first_token_seconds";
    pub const GATEWAY_OVERHEAD_SECONDS: &str = "gateway_overhead_seconds";
    pub const BUDGET_LEDGER_FALLBACKS_TOTAL: &str = "budget_ledger_fallbacks_total";
    pub const LLM_STREAM_MALFORMED_CHUNKS_TOTAL: &str = "llm_stream_malformed_chunks_total";
    pub const BUDGET_REJECTIONS_TOTAL: &str = "budget_rejections_total";
    pub const BACKUP_LAST_SUCCESS_TIMESTAMP_SECONDS: &str = "backup_last_success_timestamp_seconds";
    pub const BACKUP_BYTES: &str = "backup_bytes";
    pub const BACKUP_DURATION_SECONDS: &str = "backup_duration_seconds";
    pub const BACKUP_FAILURES_TOTAL: &str = "backup_failures_total";
}

/// Latency buckets (seconds) from 1 ms to 30 s, covering cache hits up to slow LLM calls.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The gateway's own time is sub-millisecond: buckets from 50 µs to 100 ms.
const OVERHEAD_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Where business metrics go as EMF besides Prometheus: (namespace, function), set once
/// at cold start when `METRICS_EXPORT=emf` (AWS). Unset, [`emf`] does nothing.
static EMF: OnceLock<(String, String)> = OnceLock::new();

/// Turns on EMF lines for the metrics the alarms and the dashboard read (tokens, cost,
/// gateway overhead, cache hits, breaker states, budget refusals, backups): CloudWatch
/// sees only what a function writes as EMF, not its Prometheus registry.
pub fn enable_emf(namespace: &str, function: &str) {
    let _ = EMF.set((namespace.to_string(), function.to_string()));
}

/// One EMF line for `metrics` (name, value, CloudWatch unit) with the dimensions
/// `function` and `function` + `dimensions`, when EMF is on; nothing otherwise.
pub fn emf(metrics: &[(&str, f64, &str)], dimensions: &[(&str, &str)]) {
    if let Some((namespace, function)) = EMF.get() {
        emf_record(namespace, function, metrics, dimensions).emit();
    }
}

/// The record [`emf`] writes: dimension sets `[function]` and `[function, ...]`.
pub fn emf_record(
    namespace: &str,
    function: &str,
    metrics: &[(&str, f64, &str)],
    dimensions: &[(&str, &str)],
) -> EmfRecord {
    let mut record = EmfRecord::new(namespace).dimension_set(&["function"]);
    if !dimensions.is_empty() {
        let mut all = vec!["function"];
        all.extend(dimensions.iter().map(|(name, _)| *name));
        record = record.dimension_set(&all);
    }
    record = record.dimension("function", function);
    for (name, value) in dimensions {
        record = record.dimension(name, value);
    }
    for (name, value, unit) in metrics {
        record = record.metric(name, *value, unit);
    }
    record
}

/// How often histogram samples are folded into their buckets. The recorder keeps every
/// sample until then, so without upkeep an instance nobody scrapes (every Lambda
/// instance) grows with each request it serves.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the process-wide recorder once and returns the handle that renders it.
///
/// If another recorder is already installed (a host application's), metrics still
/// render, just empty, rather than failing start-up.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("bucket list is not empty")
            .set_buckets_for_metric(
                Matcher::Full(names::GATEWAY_OVERHEAD_SECONDS.into()),
                OVERHEAD_BUCKETS,
            )
            .expect("bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        let upkeep = handle.clone();
        // A plain thread rather than a task: it must run whatever runtime (or none) the
        // host uses, and it costs one wake-up every few seconds.
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            });
        if let Err(err) = spawned {
            tracing::warn!(error = %err, "metrics upkeep thread not started; histograms drain only when rendered");
        }
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!(
                "a metrics recorder was already installed; /health/metrics shows only ours"
            );
        }
        describe_all();
        handle
    })
}

fn describe_all() {
    describe_http_and_health();
    describe_resilience();
    describe_cache();
    describe_gateway();
}

fn describe_http_and_health() {
    use names::*;
    describe_counter!(
        HTTP_REQUESTS_TOTAL,
        Unit::Count,
        "HTTP requests handled, by function, route and status."
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "HTTP request latency, by function and route."
    );
    describe_counter!(
        HTTP_SERVER_ERRORS_TOTAL,
        Unit::Count,
        "HTTP responses with a 5xx status, by function and route."
    );
    describe_counter!(
        COLD_STARTS_TOTAL,
        Unit::Count,
        "Cold starts of this function instance."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; labels carry the function and version."
    );
    describe_gauge!(
        DEPENDENCY_UP,
        "1 when the dependency answered the last check, 0 otherwise."
    );
    describe_histogram!(
        DEPENDENCY_LATENCY_SECONDS,
        Unit::Seconds,
        "Latency of dependency checks."
    );
    describe_counter!(
        DEEP_CHECKS_TOTAL,
        Unit::Count,
        "Scheduled deep health checks, by outcome."
    );
    describe_gauge!(
        DEEP_CHECK_LAST_TIMESTAMP,
        Unit::Seconds,
        "Unix time of the last scheduled deep check."
    );
}

fn describe_resilience() {
    use names::*;
    describe_gauge!(
        BREAKER_STATE,
        "Circuit breaker state by breaker: 0 closed, 1 open, 2 half-open."
    );
    describe_counter!(
        BREAKER_TRANSITIONS_TOTAL,
        Unit::Count,
        "Circuit breaker state changes, by breaker, from and to."
    );
    describe_counter!(
        BREAKER_REJECTIONS_TOTAL,
        Unit::Count,
        "Calls refused by an open circuit breaker."
    );
    describe_counter!(
        RETRIES_TOTAL,
        Unit::Count,
        "Retried attempts, by operation."
    );
    describe_counter!(
        RATE_LIMITED_TOTAL,
        Unit::Count,
        "Requests refused by a rate limit, by limiter backend."
    );
    describe_counter!(
        RATE_LIMIT_FALLBACKS_TOTAL,
        Unit::Count,
        "Rate-limit decisions made in-process because Redis did not answer."
    );
    describe_gauge!(
        CONCURRENT_SESSIONS,
        "Sessions being served now, by limiter."
    );
    describe_counter!(
        CONCURRENCY_REJECTIONS_TOTAL,
        Unit::Count,
        "Requests refused because the concurrency limit was reached."
    );
}

fn describe_cache() {
    use names::*;
    describe_counter!(
        CACHE_HITS_TOTAL,
        Unit::Count,
        "Cache hits by namespace and tier (l1, l2)."
    );
    describe_counter!(
        CACHE_MISSES_TOTAL,
        Unit::Count,
        "Cache misses by namespace and tier (l1, l2)."
    );
    describe_counter!(
        CACHE_LOADS_TOTAL,
        Unit::Count,
        "Loader runs after a miss, by namespace."
    );
    describe_counter!(
        CACHE_L2_ERRORS_TOTAL,
        Unit::Count,
        "Redis cache operations that failed or timed out, by operation."
    );
    describe_gauge!(CACHE_ENTRIES, "Entries in the in-process (L1) cache.");
    describe_counter!(
        CACHE_INVALIDATIONS_TOTAL,
        Unit::Count,
        "Cache invalidations by namespace and scope (key, namespace)."
    );
}

fn describe_gateway() {
    use names::*;
    describe_counter!(
        LLM_REQUESTS_TOTAL,
        Unit::Count,
        "Chat answers by model and outcome (ok, error, breaker_open, refused, cache_hit, degraded, stream_cut)."
    );
    describe_counter!(
        LLM_TOKENS_TOTAL,
        Unit::Count,
        "Tokens reported by providers, by model and kind (prompt, completion)."
    );
    describe_counter!(
        LLM_COST_USD_TOTAL,
        "Provider cost in US dollars, by model (LLM_PRICES)."
    );
    describe_counter!(
        LLM_FALLBACKS_TOTAL,
        Unit::Count,
        "Steps down the fallback chain, from a model to the next model, cached-answer or retrieval-only."
    );
    describe_histogram!(
        LLM_TIME_TO_FIRST_TOKEN_SECONDS,
        Unit::Seconds,
        "Time from calling a model to its first streamed chunk, by model."
    );
    describe_counter!(
        LLM_STREAM_MALFORMED_CHUNKS_TOTAL,
        Unit::Count,
        "Streamed events from a model that did not parse and were skipped, by model."
    );
    describe_counter!(
        BUDGET_LEDGER_FALLBACKS_TOTAL,
        Unit::Count,
        "Budget reservations decided by one instance on its share because the shared ledger (Redis) was unreachable."
    );
    describe_counter!(
        BUDGET_REJECTIONS_TOTAL,
        Unit::Count,
        "Chat requests refused (429) by a key's daily budget, by reason (spent, or reserved by requests in flight)."
    );
    describe_gauge!(
        BACKUP_LAST_SUCCESS_TIMESTAMP_SECONDS,
        Unit::Seconds,
        "When the last good backup finished (Unix time); alarm when it is older than 26 h."
    );
    describe_gauge!(
        BACKUP_BYTES,
        Unit::Bytes,
        "Compressed size of the last good backup."
    );
    describe_histogram!(
        BACKUP_DURATION_SECONDS,
        Unit::Seconds,
        "Time to take a backup, by outcome (ok, failed)."
    );
    describe_counter!(
        BACKUP_FAILURES_TOTAL,
        Unit::Count,
        "Backup, verify, restore and snapshot failures, by operation."
    );
    describe_histogram!(
        GATEWAY_OVERHEAD_SECONDS,
        Unit::Seconds,
        "The gateway's own time per chat request: total minus time waiting on providers."
    );
}

/// The value of one series (`name{labels}` as rendered) in Prometheus text; 0 when
/// absent. For checks that read the exposition.
pub fn series_value(rendered: &str, series: &str) -> f64 {
    rendered
        .lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

/// The Prometheus text exposition of every metric recorded in this process.
pub fn render() -> String {
    install().render()
}

/// One CloudWatch EMF record: a JSON log line that CloudWatch turns into metrics
/// without any API call from the function.
#[derive(Debug, Clone)]
pub struct EmfRecord {
    namespace: String,
    dimension_sets: Vec<Vec<String>>,
    fields: Map<String, Value>,
    metrics: Vec<Value>,
}

impl EmfRecord {
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            dimension_sets: Vec::new(),
            fields: Map::new(),
            metrics: Vec::new(),
        }
    }

    /// A set of dimension names to aggregate by; each name must be set with [`Self::dimension`].
    pub fn dimension_set(mut self, names: &[&str]) -> Self {
        self.dimension_sets
            .push(names.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Redacted here (stdout skips the logs' redaction): it can be a caller's model name.
    pub fn dimension(mut self, name: &str, value: &str) -> Self {
        let value = super::redact::redact(value).into_owned();
        self.fields.insert(name.into(), Value::String(value));
        self
    }

    /// A searchable property that is not a dimension (e.g. the request id); a text value is
    /// redacted as a dimension's is.
    pub fn property(mut self, name: &str, value: impl Into<Value>) -> Self {
        let value = match value.into() {
            Value::String(text) => Value::String(super::redact::redact(&text).into_owned()),
            other => other,
        };
        self.fields.insert(name.into(), value);
        self
    }

    /// `unit` is a CloudWatch unit name: `Count`, `Seconds`, `Milliseconds`, `None`...
    pub fn metric(mut self, name: &str, value: f64, unit: &str) -> Self {
        self.metrics.push(json!({"Name": name, "Unit": unit}));
        self.fields.insert(name.into(), json!(value));
        self
    }

    pub fn to_json(&self) -> Value {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut root = self.fields.clone();
        root.insert(
            "_aws".into(),
            json!({
                "Timestamp": timestamp,
                "CloudWatchMetrics": [{
                    "Namespace": self.namespace,
                    "Dimensions": self.dimension_sets,
                    "Metrics": self.metrics,
                }]
            }),
        );
        Value::Object(root)
    }

    /// Writes the record as one line on stdout, where the Lambda log agent picks it up.
    pub fn emit(&self) {
        let line = format!("{}\n", self.to_json());
        let _ = super::stdout_lines::write_stdout_line(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text values are redacted one by one; numbers and clean names are kept.
    #[test]
    fn emf_text_values_are_redacted() {
        let record = EmfRecord::new("ns")
            .dimension("model", "jane.doe@example.com")
            .dimension("function", "chat")
            .property("request_id", "sk-live-0123456789abcdef")
            .property("status", 200)
            .to_json();
        assert_eq!(record["model"], "[REDACTED_EMAIL]");
        assert_eq!(record["function"], "chat");
        assert_eq!(record["request_id"], "[REDACTED_KEY]");
        assert_eq!(record["status"], 200);
    }

    #[test]
    fn rendered_text_parses_as_prometheus_exposition() {
        install();
        metrics::counter!(names::HTTP_REQUESTS_TOTAL, "function" => "unit", "route" => "/x", "status" => "200").increment(3);
        metrics::histogram!(names::HTTP_REQUEST_DURATION_SECONDS, "function" => "unit", "route" => "/x").record(0.012);
        let text = render();
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition format");
        let requests = scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == names::HTTP_REQUESTS_TOTAL && s.labels.get("function") == Some("unit")
            })
            .expect("request counter present");
        assert!(matches!(requests.value, prometheus_parse::Value::Counter(v) if v == 3.0));
        assert!(text.contains("# TYPE http_request_duration_seconds histogram"));
        assert!(text.contains("# HELP http_requests_total"));
    }

    #[test]
    fn every_metric_we_record_has_help_text() {
        install();
        use names::*;
        let counters = [
            HTTP_REQUESTS_TOTAL,
            HTTP_SERVER_ERRORS_TOTAL,
            COLD_STARTS_TOTAL,
            DEEP_CHECKS_TOTAL,
            BREAKER_TRANSITIONS_TOTAL,
            BREAKER_REJECTIONS_TOTAL,
            RETRIES_TOTAL,
            RATE_LIMITED_TOTAL,
            RATE_LIMIT_FALLBACKS_TOTAL,
            CONCURRENCY_REJECTIONS_TOTAL,
            CACHE_HITS_TOTAL,
            CACHE_MISSES_TOTAL,
            CACHE_LOADS_TOTAL,
            CACHE_L2_ERRORS_TOTAL,
            CACHE_INVALIDATIONS_TOTAL,
        ];
        let gauges = [
            BUILD_INFO,
            DEPENDENCY_UP,
            DEEP_CHECK_LAST_TIMESTAMP,
            BREAKER_STATE,
            CONCURRENT_SESSIONS,
            CACHE_ENTRIES,
        ];
        let histograms = [HTTP_REQUEST_DURATION_SECONDS, DEPENDENCY_LATENCY_SECONDS];
        // Only metrics that exist are rendered, so touch each one with its own kind.
        for name in counters {
            metrics::counter!(name, "probe" => "help").increment(0);
        }
        for name in gauges {
            metrics::gauge!(name, "probe" => "help").set(0.0);
        }
        for name in histograms {
            metrics::histogram!(name, "probe" => "help").record(0.0);
        }
        let text = render();
        for name in counters.iter().chain(&gauges).chain(&histograms) {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no HELP line (promtool rejects it)"
            );
        }
    }

    #[test]
    fn business_metrics_reach_cloudwatch_per_function_and_per_dimension() {
        let record = emf_record(
            "ChatKb-prod",
            "chat",
            &[(names::LLM_TOKENS_TOTAL, 1234.0, "Count")],
            &[("model", "gpt-4o-mini")],
        )
        .to_json();
        assert_eq!(record["function"], "chat");
        assert_eq!(record["model"], "gpt-4o-mini");
        assert_eq!(record["llm_tokens_total"], 1234.0);
        let spec = &record["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(spec["Namespace"], "ChatKb-prod");
        assert_eq!(
            spec["Dimensions"],
            json!([["function"], ["function", "model"]])
        );
        assert_eq!(spec["Metrics"][0]["Name"], "llm_tokens_total");
        assert_eq!(spec["Metrics"][0]["Unit"], "Count");
        // Without extra dimensions, only the per-function set.
        let plain = emf_record(
            "ns",
            "chat",
            &[(names::GATEWAY_OVERHEAD_SECONDS, 0.0002, "Seconds")],
            &[],
        )
        .to_json();
        assert_eq!(
            plain["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["function"]])
        );
        // Off unless enabled: nothing is written (no panic, no line).
        emf(&[(names::BACKUP_BYTES, 1.0, "Bytes")], &[]);
    }

    #[test]
    fn emf_record_has_the_cloudwatch_envelope() {
        let record = EmfRecord::new("ChatKb")
            .dimension_set(&["function"])
            .dimension_set(&["function", "route"])
            .dimension("function", "health")
            .dimension("route", "/health")
            .property("request_id", "r-1")
            .metric("http_requests_total", 1.0, "Count")
            .metric("http_request_duration_seconds", 0.25, "Seconds")
            .to_json();
        assert_eq!(
            record["_aws"]["CloudWatchMetrics"][0]["Namespace"],
            "ChatKb"
        );
        assert_eq!(
            record["_aws"]["CloudWatchMetrics"][0]["Dimensions"][1][1],
            "route"
        );
        assert_eq!(
            record["_aws"]["CloudWatchMetrics"][0]["Metrics"][1]["Unit"],
            "Seconds"
        );
        assert!(record["_aws"]["Timestamp"].as_u64().unwrap() > 1_700_000_000_000);
        assert_eq!(record["function"], "health");
        assert_eq!(record["http_request_duration_seconds"], 0.25);
        assert_eq!(record["request_id"], "r-1");
    }
}
