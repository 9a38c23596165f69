use super::*;

fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_give_the_embedded_mode() {
    let s = Settings::from_vars("health", &vars(&[])).unwrap();
    assert_eq!(s.function, "health");
    assert_eq!(s.port, 8080);
    assert_eq!(s.database_url.kind(), DatabaseKind::Sqlite);
    assert_eq!(s.database_url.expose(), DEFAULT_DATABASE_URL);
    assert!(s.redis_url.is_none());
    assert!(s.api_keys.is_empty());
    assert!(s.cors_origins.is_empty());
    assert_eq!(s.max_body_bytes, 1_048_576);
    assert_eq!(s.metrics_export, MetricsExport::Prometheus);
    assert_eq!(
        s.cache.ttl(crate::cache::Namespace::Search),
        Duration::from_secs(300)
    );
    assert_eq!(s.breaker.failure_threshold, 5);
    assert_eq!(s.breaker.open_for, Duration::from_secs(60));
    assert_eq!(s.breaker.open_min, Duration::from_secs(5));
    assert!(s.breaker_shared);
    assert_eq!(s.retry.max_attempts, 3);
    assert_eq!(s.max_concurrent_sessions, 100);
}

#[test]
fn the_first_breaker_cool_down_is_at_most_the_longest() {
    let short = Settings::from_vars("chat", &vars(&[("BREAKER_OPEN_SECS", "2")])).unwrap();
    assert_eq!(short.breaker.open_min, Duration::from_secs(2));
    let set = Settings::from_vars(
        "chat",
        &vars(&[
            ("BREAKER_OPEN_MIN_SECS", "10"),
            ("BREAKER_OPEN_SECS", "120"),
        ]),
    )
    .unwrap();
    assert_eq!(set.breaker.open_min, Duration::from_secs(10));
    let err = Settings::from_vars(
        "chat",
        &vars(&[("BREAKER_OPEN_MIN_SECS", "90"), ("BREAKER_OPEN_SECS", "60")]),
    )
    .unwrap_err();
    assert!(err.to_string().contains("BREAKER_OPEN_MIN_SECS"), "{err}");
}

#[test]
fn resilience_settings_are_read() {
    let s = Settings::from_vars(
        "chat",
        &vars(&[
            ("CACHE_TTL_CHAT_SECS", "90"),
            ("BREAKER_FAILURE_RATE_PERCENT", "25"),
            ("BREAKER_SHARED", "off"),
            ("RATE_LIMIT_REQUESTS", "5"),
            ("RATE_LIMIT_WINDOW_SECS", "10"),
        ]),
    )
    .unwrap();
    assert_eq!(
        s.cache.ttl(crate::cache::Namespace::Chat),
        Duration::from_secs(90)
    );
    assert_eq!(s.breaker.failure_rate, 0.25);
    assert!(!s.breaker_shared);
    assert_eq!(s.rate_limit_requests, 5);
    assert_eq!(s.rate_limit_window, Duration::from_secs(10));
}

/// Issue 14's settings: defaults that are safe, values that are read, bad ones refused.
#[test]
fn hardening_settings_have_safe_defaults_and_are_read() {
    let s = Settings::from_vars("chat", &vars(&[])).unwrap();
    assert_eq!(s.server, crate::runtime::ServerLimits::default());
    assert_eq!(s.server.header_timeout, Duration::from_secs(10));
    assert_eq!(s.auth_failures_per_minute, 20);
    assert_eq!(s.redis_retry, Duration::from_secs(1));
    assert!(!s.redis_required);
    assert_eq!(s.chat.llm_stream_idle, Duration::from_secs(30));
    assert_eq!(s.chat.budget_default_max_tokens, 4096);
    assert_eq!(s.budget.instances, 1);

    let s = Settings::from_vars(
        "chat",
        &vars(&[
            ("HTTP_HEADER_TIMEOUT_MS", "2000"),
            ("HTTP_BODY_TIMEOUT_MS", "3000"),
            ("HTTP_MAX_CONNECTIONS", "64"),
            ("AUTH_FAILURES_PER_MINUTE", "5"),
            ("REDIS_RETRY_MS", "250"),
            ("REDIS_REQUIRED", "true"),
            ("LLM_STREAM_IDLE_MS", "1500"),
            ("BUDGET_DEFAULT_MAX_TOKENS", "1000"),
            ("BUDGET_INSTANCES", "4"),
        ]),
    )
    .unwrap();
    assert_eq!(s.chat.budget_default_max_tokens, 1000);
    assert_eq!(s.budget.instances, 4);
    assert_eq!(
        s.server,
        crate::runtime::ServerLimits {
            header_timeout: Duration::from_secs(2),
            body_timeout: Duration::from_secs(3),
            max_connections: 64,
        }
    );
    assert_eq!(s.auth_failures_per_minute, 5);
    assert_eq!(s.redis_retry, Duration::from_millis(250));
    assert!(s.redis_required);
    assert_eq!(s.chat.llm_stream_idle, Duration::from_millis(1500));

    let err = Settings::from_vars(
        "chat",
        &vars(&[("HTTP_MAX_CONNECTIONS", "0"), ("LLM_STREAM_IDLE_MS", "x")]),
    )
    .unwrap_err();
    assert_eq!(
        err.variables(),
        vec!["HTTP_MAX_CONNECTIONS", "LLM_STREAM_IDLE_MS"]
    );
}

#[test]
fn every_bad_variable_is_reported_at_once() {
    let err = Settings::from_vars(
        "chat",
        &vars(&[
            ("PORT", "http"),
            ("DATABASE_URL", "mysql://root:hunter2@db/x"),
            ("REDIS_URL", "not a url"),
            ("API_KEYS", "alice"),
            ("CORS_ORIGINS", "https://ok.example.com,ftp://bad/"),
            ("LOG_LEVEL", "loud[["),
            ("MAX_BODY_BYTES", "-1"),
            ("HEALTH_TIMEOUT_MS", "0"),
            ("METRICS_EXPORT", "statsd"),
            ("CACHE_TTL_CHAT_SECS", "0"),
            ("BREAKER_SHARED", "maybe"),
            ("CHUNK_OVERLAP", "900"),
        ]),
    )
    .unwrap_err();
    assert_eq!(
        err.variables(),
        vec![
            "PORT",
            "DATABASE_URL",
            "REDIS_URL",
            "API_KEYS",
            "CORS_ORIGINS",
            "LOG_LEVEL",
            "MAX_BODY_BYTES",
            "HEALTH_TIMEOUT_MS",
            "METRICS_EXPORT",
            "CACHE_TTL_CHAT_SECS",
            "BREAKER_SHARED",
            "CHUNK_OVERLAP",
        ]
    );
    let text = err.to_string();
    assert!(text.starts_with("invalid configuration (12 problems): PORT: "));
    assert!(text.contains("unsupported scheme `mysql`"));
    assert!(!text.contains("hunter2"), "a password leaked: {text}");
}

#[test]
fn postgres_and_redis_urls_are_accepted_and_hidden_in_display() {
    let s = Settings::from_vars(
        "health",
        &vars(&[
            ("DATABASE_URL", "postgres://app:s3cret@127.0.0.1:5432/test"),
            ("REDIS_URL", "redis://:r3dis@127.0.0.1:6379/0"),
            (
                "CORS_ORIGINS",
                "https://a.example.com, http://localhost:3000",
            ),
            ("METRICS_EXPORT", "emf"),
        ]),
    )
    .unwrap();
    assert_eq!(s.database_url.kind(), DatabaseKind::Postgres);
    assert_eq!(
        s.database_url.to_string(),
        "postgres://app:[REDACTED]@127.0.0.1:5432/test"
    );
    let redis = s.redis_url.unwrap();
    assert!(!redis.to_string().contains("r3dis"));
    assert_eq!(redis.expose(), "redis://:r3dis@127.0.0.1:6379/0");
    assert_eq!(
        s.cors_origins,
        vec!["https://a.example.com", "http://localhost:3000"]
    );
    assert_eq!(s.metrics_export, MetricsExport::Emf);
}

#[test]
fn secrets_never_show_in_debug_output() {
    let s = Settings::from_vars(
        "ingest",
        &vars(&[
            ("EMBEDDINGS_BASE_URL", "https://api.example.com/v1"),
            ("EMBEDDINGS_API_KEY", "sk-very-secret-123"),
        ]),
    )
    .unwrap();
    assert!(!format!("{s:?}").contains("sk-very-secret"));
    assert_eq!(
        s.kb.embeddings_api_key.unwrap().expose(),
        "sk-very-secret-123"
    );
    assert_eq!(s.kb.embeddings_model, "text-embedding-3-small");
}

#[test]
fn on_aws_emf_is_the_default() {
    let s = Settings::from_vars(
        "chat",
        &vars(&[("AWS_EXECUTION_ENV", "AWS_Lambda_provided.al2023")]),
    )
    .unwrap();
    assert_eq!(s.metrics_export, MetricsExport::Emf);
}

#[test]
fn blank_values_mean_unset() {
    let s = Settings::from_vars("health", &vars(&[("REDIS_URL", "  "), ("PORT", "")])).unwrap();
    assert!(s.redis_url.is_none());
    assert_eq!(s.port, 8080);
}

#[cfg(feature = "kb")]
#[test]
fn the_vector_weight_follows_the_embedder_unless_set() {
    use crate::kb::Fusion;
    let offline = Settings::from_vars("ingest", &vars(&[])).unwrap();
    assert_eq!(offline.kb.fusion(), Fusion::OFFLINE_DEFAULT);
    let remote = ("EMBEDDINGS_BASE_URL", "https://api.openai.com/v1");
    let s = Settings::from_vars("ingest", &vars(&[remote])).unwrap();
    assert_eq!(s.kb.fusion(), Fusion::MODEL_DEFAULT);
    let s = Settings::from_vars(
        "ingest",
        &vars(&[remote, ("RETRIEVAL_VECTOR_WEIGHT", "0.7")]),
    )
    .unwrap();
    assert_eq!(s.kb.fusion().vector_weight, 0.7);
    for bad in ["1.5", "-0.1", "NaN", "half"] {
        let err =
            Settings::from_vars("ingest", &vars(&[("RETRIEVAL_VECTOR_WEIGHT", bad)])).unwrap_err();
        assert!(
            err.to_string().contains("RETRIEVAL_VECTOR_WEIGHT"),
            "{bad}: {err}"
        );
    }
}

#[cfg(feature = "kb")]
#[test]
fn the_relevance_floor_is_measured_for_the_offline_embedder_and_set_for_others() {
    use crate::kb::RelevanceFloor;
    let offline = Settings::from_vars("ingest", &vars(&[])).unwrap();
    assert_eq!(
        offline.kb.relevance_floor(),
        RelevanceFloor::OFFLINE_DEFAULT
    );
    // A remote model's similarities have their own scale: no floor unless one is set.
    let remote = [("EMBEDDINGS_BASE_URL", "https://api.openai.com/v1")];
    let s = Settings::from_vars("ingest", &vars(&remote)).unwrap();
    assert_eq!(s.kb.relevance_floor(), RelevanceFloor::NONE);
    let s = Settings::from_vars(
        "ingest",
        &vars(&[remote[0], ("RETRIEVAL_MIN_SIMILARITY", "0.35")]),
    )
    .unwrap();
    let one_floor = RelevanceFloor {
        min_similarity: 0.35,
        with_shared_word: 0.35,
    };
    assert_eq!(s.kb.relevance_floor(), one_floor);
    let s = Settings::from_vars(
        "ingest",
        &vars(&[
            ("RETRIEVAL_MIN_SIMILARITY", "0.4"),
            ("RETRIEVAL_MIN_SIMILARITY_SHARED_WORD", "0.25"),
        ]),
    )
    .unwrap();
    assert_eq!(s.kb.relevance_floor().with_shared_word, 0.25);

    for (pairs, problem) in [
        (
            vec![("RETRIEVAL_MIN_SIMILARITY_SHARED_WORD", "0.1")],
            "needs RETRIEVAL_MIN_SIMILARITY",
        ),
        (
            vec![
                ("RETRIEVAL_MIN_SIMILARITY", "0.2"),
                ("RETRIEVAL_MIN_SIMILARITY_SHARED_WORD", "0.3"),
            ],
            "must be at most RETRIEVAL_MIN_SIMILARITY",
        ),
        (
            vec![("RETRIEVAL_MIN_SIMILARITY", "high")],
            "expected a number from -1 to 1",
        ),
        (
            vec![("RETRIEVAL_MIN_SIMILARITY", "NaN")],
            "expected a number from -1 to 1",
        ),
        (
            vec![("RETRIEVAL_MIN_SIMILARITY", "inf")],
            "expected a number from -1 to 1",
        ),
    ] {
        let err = Settings::from_vars("ingest", &vars(&pairs)).unwrap_err();
        assert!(err.to_string().contains(problem), "{err}");
    }
    // A bad floor is one problem, not also a complaint about the valid one beside it.
    let err = Settings::from_vars(
        "ingest",
        &vars(&[
            ("RETRIEVAL_MIN_SIMILARITY", "high"),
            ("RETRIEVAL_MIN_SIMILARITY_SHARED_WORD", "0.2"),
        ]),
    )
    .unwrap_err();
    assert_eq!(err.variables(), vec!["RETRIEVAL_MIN_SIMILARITY"]);
}

#[test]
fn backup_settings_default_to_a_local_folder_and_bad_values_name_their_variable() {
    use crate::backup::BackupUrl;
    let s = Settings::from_vars("backup", &vars(&[])).unwrap();
    assert_eq!(s.backup.url, BackupUrl::Folder(".data/backups".into()));
    assert_eq!(s.backup.retention, Duration::from_secs(7 * 86_400));
    assert_eq!(s.backup.batch_rows, 1000);
    assert!(s.backup.replication_group.is_none());
    assert!(s.backup.dynamo_tables.is_empty());
    assert!(
        s.backup.operator_keys.is_empty(),
        "no key may restore by default"
    );

    let s = Settings::from_vars(
        "backup",
        &vars(&[
            ("BACKUP_URL", "s3://acme-backups/chatkb"),
            ("BACKUP_RETENTION_DAYS", "30"),
            ("ELASTICACHE_REPLICATION_GROUP_ID", "chatkb-redis"),
            ("SESSIONS_TABLE", "chatkb-sessions-prod"),
            ("BACKUP_OPERATOR_KEYS", "ops, oncall"),
        ]),
    )
    .unwrap();
    assert_eq!(s.backup.operator_keys, ["ops", "oncall"]);
    assert_eq!(
        s.backup.url,
        BackupUrl::S3 {
            bucket: "acme-backups".into(),
            prefix: "chatkb".into()
        }
    );
    assert_eq!(s.backup.retention, Duration::from_secs(30 * 86_400));
    assert_eq!(s.backup.replication_group.as_deref(), Some("chatkb-redis"));
    assert_eq!(s.backup.dynamo_tables.len(), 1);
    assert_eq!(s.backup.dynamo_tables[0].store, "sessions");

    let err = Settings::from_vars(
        "backup",
        &vars(&[
            ("BACKUP_URL", "ftp://x"),
            ("BACKUP_RETENTION_DAYS", "0"),
            ("BACKUP_BATCH_ROWS", "many"),
        ]),
    )
    .unwrap_err();
    assert_eq!(
        err.variables(),
        vec!["BACKUP_URL", "BACKUP_RETENTION_DAYS", "BACKUP_BATCH_ROWS"]
    );
}

fn traces(
    pairs: &[(&str, &str)],
) -> Result<crate::observability::traces::TraceSettings, Vec<&'static str>> {
    Settings::from_vars("chat", &vars(pairs))
        .map(|s| s.traces)
        .map_err(|e| e.variables())
}

#[test]
fn traces_are_off_unless_an_endpoint_is_set() {
    let settings = traces(&[]).unwrap();
    assert_eq!(settings.endpoint, None);
    assert_eq!(settings.service_name, "chatkb-chat");
    assert!(!settings.capture_content);
}

#[test]
fn the_base_traces_endpoint_gets_the_path_and_the_signal_endpoint_is_kept() {
    let base = traces(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")]).unwrap();
    assert_eq!(
        base.endpoint.as_deref(),
        Some("http://collector:4318/v1/traces")
    );
    let signal = traces(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "https://x.example/otlp/traces",
        ),
        ("OTEL_SERVICE_NAME", "gateway-eu"),
        ("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true"),
    ])
    .unwrap();
    assert_eq!(
        signal.endpoint.as_deref(),
        Some("https://x.example/otlp/traces")
    );
    assert_eq!(signal.service_name, "gateway-eu");
    assert!(signal.capture_content);
    let disabled = traces(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
        ("OTEL_SDK_DISABLED", "true"),
    ])
    .unwrap();
    assert_eq!(disabled.endpoint, None);
}

#[test]
fn bad_trace_variables_are_named() {
    for (pairs, variable) in [
        (
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")],
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
        (
            vec![("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://")],
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ),
        (
            vec![("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        (vec![("OTEL_SDK_DISABLED", "maybe")], "OTEL_SDK_DISABLED"),
    ] {
        assert_eq!(traces(&pairs).unwrap_err(), vec![variable], "{pairs:?}");
    }
}

#[test]
fn traces_are_off_by_default_and_their_variables_are_checked_with_the_rest() {
    let s = Settings::from_vars("chat", &vars(&[])).unwrap();
    assert_eq!(s.traces.endpoint, None);
    let s = Settings::from_vars(
        "chat",
        &vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_SERVICE_NAME", "gateway"),
        ]),
    )
    .unwrap();
    assert_eq!(
        s.traces.endpoint.as_deref(),
        Some("http://127.0.0.1:4318/v1/traces")
    );
    assert_eq!(s.traces.service_name, "gateway");
    let err = Settings::from_vars(
        "chat",
        &vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
            ("PORT", "nope"),
        ]),
    )
    .unwrap_err();
    assert_eq!(err.variables(), vec!["PORT", "OTEL_EXPORTER_OTLP_ENDPOINT"]);
}

#[test]
fn the_standalone_schedule_follows_the_templates_and_can_be_turned_off() {
    let every = |function: &str, pairs: &[(&str, &str)]| {
        Settings::from_vars(function, &vars(pairs))
            .unwrap()
            .schedule_every
    };
    assert_eq!(every("health", &[]), Some(Duration::from_secs(300)));
    assert_eq!(every("ingest", &[]), Some(Duration::from_secs(300)));
    assert_eq!(every("backup", &[]), Some(Duration::from_secs(86_400)));
    assert_eq!(every("chat", &[]), None);
    assert_eq!(every("health", &[("SCHEDULE_EVERY_SECS", "0")]), None);
    assert_eq!(
        every("backup", &[("SCHEDULE_EVERY_SECS", "3600")]),
        Some(Duration::from_secs(3600))
    );
}
