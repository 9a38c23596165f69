//! The chat gateway over HTTP against the project's fake OpenAI server: the API shape,
//! retrieval, the response cache, breakers, the fallback chain, streaming and bad input
//! (C1-C7, X4, X5). The fake is the only stand-in; the databases are real.

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use chatkb_testing::fake_openai::{Behaviour, FakeOpenAi};
use chatkb_testing::{call, load_event, TestDatabase, TestResponse};
use serde_json::{json, Value};
use shared::auth::hash_key;
use shared::observability::metrics::series_value as series;
use support::*;

#[tokio::test]
async fn sample_events_get_an_openai_shaped_answer_and_the_model_list() {
    let fake = FakeOpenAi::start().await;
    let db = TestDatabase::sqlite();
    let (router, _) = chat_router(&db, Some(&fake), &[]);
    let answered = r#"llm_requests_total{model="gpt-4o-mini",outcome="ok"}"#;
    let prompt_tokens = r#"llm_tokens_total{model="gpt-4o-mini",kind="prompt"}"#;
    let before = shared::observability::metrics::render();

    let res = call(&router, load_event("chat-completions.json")).await;
    assert_eq!(res.status, 200, "{}", res.text);
    // Counted through the kept handles (other tests may count too, never less).
    let after = shared::observability::metrics::render();
    assert!(
        series(&after, answered) >= series(&before, answered) + 1.0,
        "{after}"
    );
    let tokens = res.json["usage"]["prompt_tokens"].as_f64().unwrap();
    assert!(series(&after, prompt_tokens) >= series(&before, prompt_tokens) + tokens);
    assert_eq!(res.json["object"], "chat.completion");
    assert_eq!(res.json["model"], "gpt-4o-mini");
    let content = res.json["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    assert!(content.contains("What is our refund policy?"), "{content}");
    assert!(res.json["usage"]["total_tokens"].as_u64().unwrap() > 0);
    assert!(res.json["sources"].is_array());
    assert!(res.json.get("degraded").is_none());
    assert!(header(&res, "x-degraded").is_none());
    let overhead: f64 = header(&res, "x-overhead-ms").unwrap().parse().unwrap();
    assert!(overhead >= 0.0);
    // The overhead histogram has sub-millisecond buckets (the gateway's own time).
    let metrics = shared::observability::metrics::render();
    assert!(
        metrics.contains("gateway_overhead_seconds_bucket{le=\"0.00005\"}"),
        "{metrics}"
    );
    assert_eq!(fake.chat_completions(), 1);

    let res = call(&router, load_event("chat-models.json")).await;
    assert_eq!(res.status, 200, "{}", res.text);
    let ids: Vec<&str> = res.json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["gpt-4o-mini", "gpt-4o-backup"]);
}

#[tokio::test]
async fn without_a_provider_the_answer_is_a_flagged_retrieval_only_answer_citing_the_document() {
    let db = TestDatabase::sqlite();
    let (router, ctx) = chat_router(&db, None, &[("LLM_MODEL", "")]);
    ingest_refund_policy_and_office_plants(&ctx).await;

    let res = call(
        &router,
        post(json!({"messages": [{"role": "user", "content": "How long do I have to ask for a refund?"}]})),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(header(&res, "x-degraded"), Some("retrieval-only"));
    assert_eq!(res.json["degraded"], "retrieval-only");
    assert_eq!(res.json["model"], "retrieval-only");
    assert_eq!(res.json["sources"][0], "refund-policy");
    let content = res.json["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    assert!(
        content.starts_with("No language model is available"),
        "{content}"
    );
    assert!(content.contains("within 30 days"), "{content}");

    // The model list names the offline provider.
    let res = call(
        &router,
        http::Request::get("/v1/models")
            .header("x-api-key", KEY)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(res.json["data"][0]["id"], "retrieval-only");
}

#[tokio::test]
async fn passages_go_into_the_prompt_and_sources_come_back_unless_retrieval_is_off() {
    let fake = FakeOpenAi::start().await;
    let db = TestDatabase::sqlite();
    let (router, ctx) = chat_router(&db, Some(&fake), &[]);
    ingest(
        &ctx,
        "shipping",
        "Shipping times",
        "Parcels to Norway take five working days; express takes two.",
    )
    .await;

    let res = call(&router, post(ask("How long does shipping to Norway take?"))).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["sources"], json!(["shipping"]));
    let sent = fake.last_request();
    let messages = sent["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{sent}");
    assert_eq!(messages[0]["role"], "system");
    assert!(messages[0]["content"]
        .as_str()
        .unwrap()
        .contains("five working days"));
    // Our extension fields never reach the provider.
    assert!(sent.get("retrieval").is_none() && sent.get("cache").is_none());

    let mut body = ask("How long does shipping to Norway take?");
    body["retrieval"] = json!(false);
    let res = call(&router, post(body)).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["sources"], json!([]));
    assert_eq!(fake.last_request()["messages"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn identical_requests_are_answered_from_the_cache_once_loaded() {
    let fake = FakeOpenAi::start().await;
    fake.set_behaviour(Behaviour {
        latency_ms: 200,
        ..Behaviour::default()
    });
    let db = TestDatabase::sqlite();
    let (router, _) = chat_router(&db, Some(&fake), &[]);

    // A burst of identical misses makes one upstream call (single-flight).
    let burst: Vec<_> = (0..20)
        .map(|_| {
            let router = router.clone();
            tokio::spawn(async move { call(&router, post(ask("What is RRF?"))).await })
        })
        .collect();
    for task in burst {
        let res = task.await.unwrap();
        assert_eq!(res.status, 200, "{}", res.text);
    }
    assert_eq!(fake.chat_completions(), 1);

    // Whitespace differences hit the same entry; the hit reports the original usage.
    let res = call(&router, post(ask("  What   is RRF? "))).await;
    assert_eq!(header(&res, "x-cache"), Some("hit"));
    assert_eq!(res.json["cached"], true);
    assert!(res.json["usage"]["total_tokens"].as_u64().unwrap() > 0);
    assert_eq!(fake.chat_completions(), 1);

    // Opting out, by body field or header, and a non-zero temperature, call upstream.
    let mut body = ask("What is RRF?");
    body["cache"] = json!(false);
    let res = call(&router, post(body)).await;
    assert_eq!(header(&res, "x-cache"), Some("miss"));
    let res = call(
        &router,
        post_with(ask("What is RRF?"), &[("cache-control", "no-cache")]),
    )
    .await;
    assert_eq!(header(&res, "x-cache"), Some("miss"));
    let mut body = ask("What is RRF?");
    body["temperature"] = json!(0.7);
    call(&router, post(body)).await;
    assert_eq!(fake.chat_completions(), 4);
}

/// An answer the response cache holds is also its question's last answer (the cache
/// entry is copied, not serialised again): when every model fails, a request for the
/// same question that misses the response cache gets it, flagged.
#[tokio::test]
async fn a_cached_answer_is_also_its_questions_last_answer() {
    let fake = FakeOpenAi::start().await;
    let db = TestDatabase::sqlite();
    let (router, _ctx) = chat_router(&db, Some(&fake), &[("BREAKER_FAILURE_THRESHOLD", "100")]);
    let question = "How long is the refund window?";
    let mut body = ask(question);
    body["temperature"] = json!(0);
    let res = call(&router, post(body.clone())).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(header(&res, "x-cache"), Some("miss"));
    let first = res.json["choices"][0]["message"]["content"].clone();

    fake.set_behaviour(Behaviour {
        failure_rate: 1.0,
        ..Behaviour::default()
    });
    // Another parameter: another response-cache key, the same question.
    body["max_tokens"] = json!(64);
    let res = call(&router, post(body)).await;
    assert_eq!(res.status, 200, "{}", res.text);
    let degraded = header(&res, "x-degraded").unwrap();
    assert!(degraded.ends_with("cached-answer"), "{degraded}");
    assert_eq!(res.json["choices"][0]["message"]["content"], first);
}

#[tokio::test]
async fn the_fallback_chain_goes_secondary_model_then_cached_answer_then_retrieval_only() {
    let fake = FakeOpenAi::start().await;
    let db = TestDatabase::sqlite();
    let (router, ctx) = chat_router(&db, Some(&fake), &[("BREAKER_FAILURE_THRESHOLD", "100")]);
    ingest(
        &ctx,
        "warranty",
        "Warranty",
        "Every laptop has a two year warranty covering parts and labour.",
    )
    .await;

    // A first good answer (remembered as the last answer to this question).
    let question = "What does the laptop warranty cover?";
    let mut body = ask(question);
    body["temperature"] = json!(1.0); // not served from the response cache
    let res = call(&router, post(body.clone())).await;
    assert_eq!(res.status, 200);
    assert!(header(&res, "x-degraded").is_none());

    // 1. The primary model fails: the secondary answers, flagged.
    fake.set_behaviour(Behaviour {
        failure_rate: 1.0,
        failure_status: Some(503),
        models: vec!["gpt-4o-mini".into()],
        ..Behaviour::default()
    });
    let res = call(&router, post(body.clone())).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(header(&res, "x-degraded"), Some("fallback-model"));
    assert_eq!(res.json["model"], "gpt-4o-backup");
    assert_eq!(fake.calls_for("gpt-4o-backup"), 1);

    // 2. Every model fails: the last answer to the same question, flagged.
    fake.set_behaviour(Behaviour {
        failure_rate: 1.0,
        ..Behaviour::default()
    });
    let res = call(&router, post(body.clone())).await;
    assert_eq!(res.status, 200, "{}", res.text);
    let degraded = header(&res, "x-degraded").unwrap();
    assert!(degraded.ends_with("cached-answer"), "{degraded}");
    assert!(res.json["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .starts_with("Fake answer from"));

    // 3. A question never answered before: the passages themselves, flagged.
    let mut other = ask("Is labour covered by the laptop warranty?");
    other["temperature"] = json!(1.0);
    let res = call(&router, post(other)).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(header(&res, "x-degraded"), Some("retrieval-only"));
    assert_eq!(res.json["sources"][0], "warranty");
    let content = res.json["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    assert!(content.contains("two year warranty"), "{content}");
    assert!(content.contains("the model provider failed"), "{content}");
}

#[tokio::test]
async fn an_open_breaker_makes_no_calls_to_the_failing_model_until_it_recovers() {
    let fake = FakeOpenAi::start().await;
    let db = TestDatabase::sqlite();
    let (router, _) = chat_router(
        &db,
        Some(&fake),
        &[
            ("BREAKER_FAILURE_THRESHOLD", "3"),
            ("BREAKER_OPEN_SECS", "1"),
            ("LLM_FALLBACK_MODELS", ""),
            // A model of its own: the breaker gauge is process-wide, and other tests
            // in this binary use gpt-4o-mini's.
            ("LLM_MODEL", "breaker-model"),
        ],
    );
    fake.set_behaviour(Behaviour {
        failure_rate: 1.0,
        ..Behaviour::default()
    });
    for i in 0..3 {
        let res = call(
            &router,
            post(ask_model("breaker-model", &format!("question {i}"))),
        )
        .await;
        assert_eq!(res.status, 200);
        assert_eq!(header(&res, "x-degraded"), Some("retrieval-only"));
    }
    assert_eq!(fake.calls_for("breaker-model"), 3);
    // Open: answers keep coming (degraded), the upstream count is frozen.
    for i in 3..10 {
        let res = call(
            &router,
            post(ask_model("breaker-model", &format!("question {i}"))),
        )
        .await;
        assert_eq!(res.status, 200);
        assert_eq!(header(&res, "x-degraded"), Some("retrieval-only"));
    }
    assert_eq!(fake.calls_for("breaker-model"), 3);
    let metrics = shared::observability::metrics::render();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("circuit_breaker_state{")
                && l.contains("llm:openai:breaker-model")
                && l.ends_with(" 1")),
        "{metrics}"
    );

    // The provider recovers; after the cool-down one trial call closes the breaker.
    fake.set_behaviour(Behaviour::default());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let res = call(
        &router,
        post(ask_model("breaker-model", "question after recovery")),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert!(header(&res, "x-degraded").is_none(), "{:?}", res.headers);
    assert_eq!(fake.calls_for("breaker-model"), 4);
}

#[tokio::test]
async fn streams_use_openai_chunks_end_with_done_and_report_usage_when_asked() {
    let fake = FakeOpenAi::start().await;
    let db = TestDatabase::sqlite();
    let (router, _) = chat_router(&db, Some(&fake), &[]);
    let mut body = ask("Stream me an answer");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let res = call(&router, post(body.clone())).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(header(&res, "content-type"), Some("text/event-stream"));
    let events = sse_events(&res.text);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(text.contains("Stream me an answer"), "{text}");
    assert!(
        chunks.last().unwrap()["usage"]["total_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(chunks[0]["sources"].is_array());

    // Without include_usage no usage chunk; the repeat replays the cached stream whole.
    body["stream_options"] = json!(null);
    let res = call(&router, post(body)).await;
    assert_eq!(header(&res, "x-cache"), Some("hit"));
    let events = sse_events(&res.text);
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert!(!res.text.contains("\"usage\""), "{}", res.text);
    let replayed: String = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(replayed, text);
    assert_eq!(fake.chat_completions(), 1);
}

#[tokio::test]
async fn a_stream_falls_back_before_the_first_byte_and_reports_a_cut_after_it() {
    let fake = FakeOpenAi::start().await;
    let db = TestDatabase::sqlite();
    let (router, _) = chat_router(&db, Some(&fake), &[("BREAKER_FAILURE_THRESHOLD", "100")]);
    let mut body = ask("Stream with trouble");
    body["stream"] = json!(true);
    body["cache"] = json!(false);

    // Before the first byte: the secondary model streams instead, flagged.
    fake.set_behaviour(Behaviour {
        failure_rate: 1.0,
        models: vec!["gpt-4o-mini".into()],
        ..Behaviour::default()
    });
    let res = call(&router, post(body.clone())).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(header(&res, "x-degraded"), Some("fallback-model"));
    assert!(streamed_text(&res.text).starts_with("Fake answer from gpt-4o-backup"));
    assert!(res.text.ends_with("data: [DONE]\n\n"));

    // After the first byte: the upstream cuts the stream; the caller gets an error
    // event and no [DONE], never a truncated stream that looks complete.
    fake.set_behaviour(Behaviour {
        cut_stream_after: Some(2),
        ..Behaviour::default()
    });
    let res = call(&router, post(body)).await;
    assert_eq!(res.status, 200);
    let events = sse_events(&res.text);
    let last: Value = serde_json::from_str(events.last().unwrap()).expect(&res.text);
    assert_eq!(
        last["error"]["code"], "upstream_stream_interrupted",
        "{}",
        res.text
    );
    assert!(!res.text.contains("[DONE]"));
}

#[tokio::test]
async fn bad_requests_get_clear_json_errors_and_never_reach_the_provider() {
    let fake = FakeOpenAi::start().await;
    let db = TestDatabase::sqlite();
    let (router, _) = chat_router(
        &db,
        Some(&fake),
        &[("MAX_BODY_BYTES", "4096"), ("CHAT_MAX_MESSAGES", "3")],
    );
    let raw = |body: &str| {
        http::Request::post("/v1/chat/completions")
            .header("authorization", format!("Bearer {KEY}"))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let many: Vec<Value> = (0..4)
        .map(|i| json!({"role": "user", "content": format!("m{i}")}))
        .collect();
    let cases: Vec<(http::Request<Body>, u16, &str)> = vec![
        (raw("{\"messages\": ["), 400, "not valid JSON"),
        (raw("{\"model\": \"gpt-4o-mini\"}"), 400, "`messages` is required"),
        (raw("{\"messages\": \"hello\"}"), 400, "must be an array"),
        (
            raw("{\"messages\": [{\"role\": \"user\", \"content\": 42}]}"),
            400,
            "content",
        ),
        (
            raw("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"temperature\": \"hot\"}"),
            400,
            "temperature",
        ),
        (
            post(json!({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]})),
            404,
            "gpt-9",
        ),
        (post(json!({"messages": many})), 413, "at most 3"),
        (
            post(json!({"messages": [{"role": "user", "content": "x".repeat(5000)}]})),
            413,
            "",
        ),
        (
            http::Request::post("/v1/chat/completions")
                .header("authorization", format!("Bearer {KEY}"))
                .header("content-type", "text/plain")
                .body(Body::from("hello"))
                .unwrap(),
            415,
            "application/json",
        ),
        (
            http::Request::post("/v1/chat/completions")
                .header("content-type", "application/json")
                .body(Body::from(ask("hi").to_string()))
                .unwrap(),
            401,
            "",
        ),
    ];
    for (request, status, fragment) in cases {
        let res = call(&router, request).await;
        assert_eq!(res.status, status, "{}", res.text);
        let message = res.json["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(fragment), "{status}: {message}");
        assert!(res.json["error"]["type"].is_string(), "{}", res.text);
    }
    assert_eq!(fake.chat_completions(), 0);
}

#[tokio::test]
async fn the_provider_adapter_keeps_status_and_retry_after_of_upstream_errors() {
    use shared::chat::provider::{ChatProvider, OpenAiProvider, ProviderError};
    use shared::resilience::retry::RetryClass;
    let fake = FakeOpenAi::start().await;
    fake.set_behaviour(Behaviour {
        failure_rate: 1.0,
        failure_status: Some(429),
        retry_after_s: Some(7),
        ..Behaviour::default()
    });
    let provider = OpenAiProvider::new(&fake.base_url, None, Duration::from_secs(5));
    let err = provider
        .complete(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .await
        .unwrap_err();
    match &err {
        ProviderError::Status {
            status,
            retry_after,
            ..
        } => {
            assert_eq!(*status, 429);
            assert_eq!(*retry_after, Some(Duration::from_secs(7)));
        }
        other => panic!("expected a status error, got {other:?}"),
    }
    assert!(err.is_retryable());
    // One call: async-openai's own retries are off (ours are breaker-aware).
    assert_eq!(fake.chat_completions(), 1);

    fake.set_behaviour(Behaviour {
        hang: true,
        ..Behaviour::default()
    });
    let provider = OpenAiProvider::new(&fake.base_url, None, Duration::from_millis(300));
    let err = provider
        .complete(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Timeout(_)), "{err:?}");
}

/// The adapter calls the endpoint itself (no async-openai): the configured key goes in
/// `Authorization`, a wrong one comes back as the provider's 401, and a stream's events
/// are read one by one, a broken one as an error item between good ones.
#[tokio::test]
async fn the_provider_adapter_sends_the_key_and_reads_stream_events_itself() {
    use futures_util::StreamExt;
    use shared::chat::provider::{ChatProvider, OpenAiProvider, ProviderError};
    use shared::resilience::retry::RetryClass;
    use shared::secret::Secret;
    let fake = FakeOpenAi::start().await;
    let key = "sk-provider-test-key-0123";
    fake.set_behaviour(Behaviour {
        api_key: Some(key.into()),
        malformed_chunks_at: vec![2],
        ..Behaviour::default()
    });
    let question = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let timeout = Duration::from_secs(5);
    let keyed = OpenAiProvider::new(&fake.base_url, Some(&Secret::new(key)), timeout);
    let answer = keyed.complete(&question).await.unwrap();
    assert!(
        answer["choices"][0]["message"]["content"].is_string(),
        "{}",
        *answer
    );
    assert_eq!(
        answer.prompt_tokens(),
        answer["usage"]["prompt_tokens"].as_u64()
    );
    assert!(answer.prompt_tokens().is_some(), "{}", *answer);

    let items: Vec<_> = keyed.stream(&question).await.unwrap().collect().await;
    let broken = items
        .iter()
        .position(|i| matches!(i, Err(ProviderError::Shape(_))));
    assert_eq!(
        broken,
        Some(2),
        "the broken event is the third item: {items:?}"
    );
    assert!(
        items.len() > 3 && items[3..].iter().all(Result::is_ok),
        "{items:?}"
    );
    let text: String = items
        .iter()
        .filter_map(|i| i.as_ref().ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, answer["choices"][0]["message"]["content"]);

    for provider in [
        OpenAiProvider::new(&fake.base_url, None, timeout),
        OpenAiProvider::new(
            &fake.base_url,
            Some(&Secret::new("sk-wrong-key-0000")),
            timeout,
        ),
    ] {
        let err = provider.complete(&question).await.unwrap_err();
        match &err {
            ProviderError::Status { status, code, .. } => {
                assert_eq!(*status, 401);
                assert_eq!(code.as_deref(), Some("invalid_api_key"));
            }
            other => panic!("expected the provider's 401, got {other:?}"),
        }
        assert!(!err.is_retryable());
        assert!(matches!(
            provider.stream(&question).await.err(),
            Some(ProviderError::Status { status: 401, .. })
        ));
    }
    // A base URL that does not parse fails each call, naming the setting, never panics.
    let broken = OpenAiProvider::new("http://[::1", None, timeout);
    let err = broken.complete(&question).await.unwrap_err();
    assert!(
        matches!(&err, ProviderError::Network(m) if m.contains("LLM_BASE_URL")),
        "{err:?}"
    );
}

#[tokio::test]
async fn redis_down_still_answers_and_database_down_answers_without_retrieval_flagged() {
    let fake = FakeOpenAi::start().await;
    let db = TestDatabase::sqlite();
    let closed = format!("redis://127.0.0.1:{}", chatkb_testing::free_port());
    let (router, _) = chat_router(&db, Some(&fake), &[("REDIS_URL", closed.as_str())]);
    let res = call(&router, post(ask("Redis is down, are you?"))).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert!(header(&res, "x-degraded").is_none());

    let unreachable = format!(
        "postgres://postgres@127.0.0.1:{}/none",
        chatkb_testing::free_port()
    );
    let (router, _) = chat_router(
        &db,
        Some(&fake),
        &[
            ("DATABASE_URL", unreachable.as_str()),
            ("DATABASE_TIMEOUT_MS", "300"),
        ],
    );
    let res = call(&router, post(ask("The database is down, are you?"))).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(header(&res, "x-degraded"), Some("retrieval-unavailable"));
    assert_eq!(res.json["degraded"], "retrieval-unavailable");
    assert!(res.json["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .starts_with("Fake answer from gpt-4o-mini"));
}

#[tokio::test]
async fn chat_works_against_postgres_with_pgvector_too() {
    let fake = FakeOpenAi::start().await;
    let db = TestDatabase::postgres().await;
    let (router, ctx) = chat_router(&db, Some(&fake), &[]);
    ingest(
        &ctx,
        "rotation",
        "Key rotation",
        "API keys are rotated every ninety days by the platform team.",
    )
    .await;
    let res = call(&router, post(ask("How often are API keys rotated?"))).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["sources"][0], "rotation");
}

/// A request on behalf of another key, to check that sessions are per key.
fn post_as(key: &str, body: Value, headers: &[(&str, &str)]) -> http::Request<Body> {
    let mut builder = http::Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("x-api-key", key)
        .header("content-type", "application/json");
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(Body::from(body.to_string())).unwrap()
}

/// The contents of the messages the provider last received.
fn sent_contents(fake: &FakeOpenAi) -> Vec<String> {
    fake.last_request()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn session_history_is_kept_per_key_and_bounded(extra: &[(&str, &str)]) {
    let fake = FakeOpenAi::start().await;
    let db = TestDatabase::sqlite();
    let two_keys = format!("{},other:{}", keys(), hash_key("sk-other-key"));
    let mut vars: Vec<(&str, &str)> = vec![
        ("API_KEYS", two_keys.as_str()),
        ("CHAT_HISTORY_MESSAGES", "4"),
        ("RETRIEVAL_ENABLED", "false"),
    ];
    vars.extend_from_slice(extra);
    let (router, _) = chat_router(&db, Some(&fake), &vars);

    let mut first = ask("My name is Ada.");
    first["session_id"] = json!("conv-1");
    let res = call(&router, post(first)).await;
    assert_eq!(res.status, 200, "{}", res.text);

    // The header works as well as the body field; the history comes first.
    let res = call(
        &router,
        post_with(ask("What is my name?"), &[("x-session-id", "conv-1")]),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text);
    let sent = sent_contents(&fake);
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert_eq!(sent[0], "My name is Ada.");
    assert!(sent[1].starts_with("Fake answer from"), "{sent:?}");
    assert_eq!(sent[2], "What is my name?");

    // Another key's conversation of the same id is another conversation.
    let res = call(
        &router,
        post_as(
            "sk-other-key",
            ask("Who am I?"),
            &[("x-session-id", "conv-1")],
        ),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(sent_contents(&fake), ["Who am I?"]);

    // The window: at most 4 earlier messages (two exchanges) come along.
    for i in 0..3 {
        let mut body = ask(&format!("Message {i}"));
        body["session_id"] = json!("conv-1");
        call(&router, post(body)).await;
    }
    let sent = sent_contents(&fake);
    assert_eq!(sent.len(), 5, "{sent:?}");
    assert_eq!(sent[0], "Message 0");
    assert_eq!(sent[4], "Message 2");

    let res = call(
        &router,
        post_with(ask("bad id"), &[("x-session-id", "not ok!")]),
    )
    .await;
    assert_eq!(res.status, 400, "{}", res.text);
    // Refused too when the body names a (valid) session as well.
    let mut both = ask("bad header, good body");
    both["session_id"] = json!("conv-2");
    let res = call(&router, post_with(both, &[("x-session-id", "not ok!")])).await;
    assert_eq!(res.status, 400, "{}", res.text);
}

#[tokio::test]
async fn session_history_in_sqlite() {
    session_history_is_kept_per_key_and_bounded(&[]).await;
}

#[tokio::test]
async fn sessions_and_idempotency_records_in_dynamodb_on_motos_emulator() {
    // moto's DynamoDB, started for this test and stopped when dropped.
    let (moto, endpoint) = chatkb_testing::ServerProcess::moto().await;
    let status = std::process::Command::new("python3")
        .args([
            "-c",
            &format!(
                "import boto3; c = boto3.client('dynamodb', endpoint_url='{endpoint}', region_name='us-east-1'); \
                 c.create_table(TableName='chat-sessions', BillingMode='PAY_PER_REQUEST', \
                 KeySchema=[{{'AttributeName': 'pk', 'KeyType': 'HASH'}}, {{'AttributeName': 'seq', 'KeyType': 'RANGE'}}], \
                 AttributeDefinitions=[{{'AttributeName': 'pk', 'AttributeType': 'S'}}, {{'AttributeName': 'seq', 'AttributeType': 'N'}}])"
            ),
        ])
        .status()
        .expect("python3 with boto3 (installed with moto)");
    assert!(status.success());
    session_history_is_kept_per_key_and_bounded(&[("SESSIONS_TABLE", "chat-sessions")]).await;

    // Idempotency records with conditional writes (the Powertools record design).
    let status = std::process::Command::new("python3")
        .args([
            "-c",
            &format!(
                "import boto3; c = boto3.client('dynamodb', endpoint_url='{endpoint}', region_name='us-east-1'); \
                 c.create_table(TableName='idempotency', BillingMode='PAY_PER_REQUEST', \
                 KeySchema=[{{'AttributeName': 'id', 'KeyType': 'HASH'}}], \
                 AttributeDefinitions=[{{'AttributeName': 'id', 'AttributeType': 'S'}}])"
            ),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    {
        use shared::chat::idempotency::{
            Begin, DynamoIdempotencyStore, IdempotencyStore, StoredResponse,
        };
        let store = Arc::new(DynamoIdempotencyStore::new(
            "idempotency",
            Duration::from_secs(3600),
            Duration::from_secs(60),
        ));
        let racers: Vec<_> = (0..20)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.begin("owner#race", "h1").await.unwrap() })
            })
            .collect();
        let mut started = 0;
        for r in racers {
            match r.await.unwrap() {
                Begin::Started => started += 1,
                Begin::InProgress => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(started, 1);
        assert_eq!(
            store.begin("owner#race", "h2").await.unwrap(),
            Begin::Mismatch
        );
        let response = StoredResponse {
            status: 200,
            content_type: "application/json".into(),
            headers: vec![],
            body: "{\"ok\":true}".into(),
        };
        store.complete("owner#race", &response).await.unwrap();
        assert_eq!(
            store.begin("owner#race", "h1").await.unwrap(),
            Begin::Completed(response)
        );
        // A released key can be taken again; a completed one is not released.
        assert_eq!(
            store.begin("owner#fail", "h").await.unwrap(),
            Begin::Started
        );
        store.release("owner#fail").await.unwrap();
        assert_eq!(
            store.begin("owner#fail", "h").await.unwrap(),
            Begin::Started
        );
        store.release("owner#race").await.unwrap();
        assert!(matches!(
            store.begin("owner#race", "h1").await.unwrap(),
            Begin::Completed(_)
        ));
    }
    // Through the router, with IDEMPOTENCY_TABLE.
    let fake = FakeOpenAi::start().await;
    let db = TestDatabase::sqlite();
    let (router, _) = chat_router(&db, Some(&fake), &[("IDEMPOTENCY_TABLE", "idempotency")]);
    let mut body = ask("Dynamo, remember me");
    body["temperature"] = json!(1.0);
    let first = call(&router, with_key(body.clone(), "d-1")).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let again = call(&router, with_key(body, "d-1")).await;
    assert_eq!(header(&again, "x-idempotent-replay"), Some("true"));
    assert_eq!(fake.chat_completions(), 1);

    // DynamoDB unreachable: the answer comes without history, flagged.
    let mut moto = moto;
    moto.stop();
    let fake = FakeOpenAi::start().await;
    let db = TestDatabase::sqlite();
    let (router, _) = chat_router(&db, Some(&fake), &[("SESSIONS_TABLE", "chat-sessions")]);
    let mut body = ask("Hello?");
    body["session_id"] = json!("conv-1");
    let res = call(&router, post(body)).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(header(&res, "x-degraded"), Some("session-unavailable"));
    assert_eq!(sent_contents(&fake), ["Hello?"]);
}

fn with_key(body: Value, key: &str) -> http::Request<Body> {
    post_with(body, &[("idempotency-key", key)])
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_answer_and_refuses_other_bodies() {
    for db in TestDatabase::both().await {
        let fake = FakeOpenAi::start().await;
        let (router, _) = chat_router(&db, Some(&fake), &[]);
        // Temperature 1: not from the response cache, so only idempotency can replay.
        let mut body = ask("Summarise the refund policy");
        body["temperature"] = json!(1.0);
        let first = call(&router, with_key(body.clone(), "key-1")).await;
        assert_eq!(first.status, 200, "{}", first.text);
        let again = call(&router, with_key(body.clone(), "key-1")).await;
        assert_eq!(again.status, 200);
        assert_eq!(header(&again, "x-idempotent-replay"), Some("true"));
        assert_eq!(again.json, first.json);
        assert_eq!(fake.chat_completions(), 1);

        let mut other = body.clone();
        other["messages"][0]["content"] = json!("Something else");
        let res = call(&router, with_key(other, "key-1")).await;
        assert_eq!(res.status, 422, "{}", res.text);
        assert_eq!(fake.chat_completions(), 1);

        // Streams are replayed whole.
        let mut stream = body.clone();
        stream["stream"] = json!(true);
        let first = call(&router, with_key(stream.clone(), "key-2")).await;
        assert!(first.text.ends_with("data: [DONE]\n\n"));
        let again = call(&router, with_key(stream, "key-2")).await;
        assert_eq!(header(&again, "x-idempotent-replay"), Some("true"));
        assert_eq!(header(&again, "content-type"), Some("text/event-stream"));
        assert_eq!(again.text, first.text);
        assert_eq!(fake.chat_completions(), 2);

        let res = call(&router, with_key(body, "bad key with spaces")).await;
        assert_eq!(res.status, 400);
        // Refused before anything is read or stored, as the shared JSON error of this request.
        assert_eq!(
            res.json["error"]["message"],
            "Idempotency-Key must be 1-255 visible ASCII characters"
        );
        assert_eq!(
            res.json["error"]["request_id"].as_str(),
            header(&res, "x-request-id")
        );
        assert!(header(&res, "x-request-id").is_some());
        assert_eq!(fake.chat_completions(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_get_409_and_the_provider_is_called_once() {
    let fake = FakeOpenAi::start().await;
    fake.set_behaviour(Behaviour {
        latency_ms: 300,
        ..Behaviour::default()
    });
    let db = TestDatabase::sqlite();
    let (router, _) = chat_router(
        &db,
        Some(&fake),
        &[
            ("DATABASE_MAX_CONNECTIONS", "20"),
            ("RATE_LIMIT_REQUESTS", "1000"),
        ],
    );
    let mut body = ask("One answer for a hundred callers");
    body["temperature"] = json!(1.0);
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let router = router.clone();
            let body = body.clone();
            tokio::spawn(async move { call(&router, with_key(body, "burst")).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        let res = task.await.unwrap();
        if res.status == 409 {
            assert!(res.json["error"]["message"]
                .as_str()
                .unwrap()
                .contains("in progress"));
        }
        statuses.push(res.status.as_u16());
    }
    assert_eq!(fake.chat_completions(), 1, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 409),
        "{statuses:?}"
    );
    assert!(statuses.contains(&409));
    // Once the first finished, the key replays.
    let res = call(&router, with_key(body, "burst")).await;
    assert_eq!(res.status, 200);
    assert_eq!(header(&res, "x-idempotent-replay"), Some("true"));
}

#[tokio::test]
async fn a_failed_or_degraded_first_attempt_frees_the_key() {
    let fake = FakeOpenAi::start().await;
    let db = TestDatabase::sqlite();
    let (router, _) = chat_router(
        &db,
        Some(&fake),
        &[
            ("LLM_FALLBACK_MODELS", ""),
            ("BREAKER_FAILURE_THRESHOLD", "100"),
        ],
    );
    let mut body = ask("Try me twice");
    body["temperature"] = json!(1.0);
    fake.set_mode(chatkb_testing::fake_openai::Mode::Fail);
    let res = call(&router, with_key(body.clone(), "retry-me")).await;
    assert_eq!(res.status, 200);
    assert_eq!(header(&res, "x-degraded"), Some("retrieval-only"));

    fake.set_mode(chatkb_testing::fake_openai::Mode::Normal);
    let res = call(&router, with_key(body.clone(), "retry-me")).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert!(header(&res, "x-degraded").is_none());
    assert!(header(&res, "x-idempotent-replay").is_none());

    // A stream cut after the first byte frees its key too.
    fake.set_behaviour(Behaviour {
        cut_stream_after: Some(1),
        ..Behaviour::default()
    });
    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let res = call(&router, with_key(stream.clone(), "cut-stream")).await;
    assert!(!res.text.contains("[DONE]"));
    fake.set_behaviour(Behaviour::default());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let res = call(&router, with_key(stream, "cut-stream")).await;
    assert!(header(&res, "x-idempotent-replay").is_none());
    assert!(res.text.ends_with("data: [DONE]\n\n"), "{}", res.text);
}

#[tokio::test]
async fn with_the_idempotency_store_down_a_keyed_request_gets_503_and_no_provider_call() {
    let fake = FakeOpenAi::start().await;
    let db = TestDatabase::sqlite();
    let unreachable = format!(
        "postgres://postgres@127.0.0.1:{}/none",
        chatkb_testing::free_port()
    );
    let (router, _) = chat_router(
        &db,
        Some(&fake),
        &[
            ("DATABASE_URL", unreachable.as_str()),
            ("DATABASE_TIMEOUT_MS", "300"),
        ],
    );
    let res = call(&router, with_key(ask("Is the database there?"), "k-down")).await;
    assert_eq!(res.status, 503, "{}", res.text);
    assert!(res.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("idempotency store is unavailable"));
    assert_eq!(fake.chat_completions(), 0);
    // Without a key the same request is answered (without retrieval, flagged).
    let res = call(&router, post(ask("Is the database there?"))).await;
    assert_eq!(res.status, 200, "{}", res.text);
}

#[tokio::test]
async fn instances_share_one_daily_budget_through_the_stored_totals() {
    for db in TestDatabase::both().await {
        let fake = FakeOpenAi::start().await;
        let vars = [
            ("LLM_PRICES", "gpt-4o-mini=100/200"),
            ("DAILY_BUDGET_USD", "0.05"),
            ("RETRIEVAL_ENABLED", "false"),
            ("USAGE_FLUSH_MS", "20"),
            ("BUDGET_REFRESH_MS", "50"),
        ];
        // Two instances of the function on one database, each with its own memory.
        let (first, _) = chat_router(&db, Some(&fake), &vars);
        let (second, _) = chat_router(&db, Some(&fake), &vars);
        let uncached = |i: usize| {
            let mut body = ask(&format!("Spend on instance one, question {i}"));
            body["cache"] = json!(false);
            post(body)
        };
        // The second instance has read today's total (nothing) before the first spends.
        let res = call(&second, post(ask("Anything spent yet?"))).await;
        assert_eq!(res.status, 200, "{:?} {}", db.kind, res.text);
        let mut i = 0;
        loop {
            let res = call(&first, uncached(i)).await;
            if res.status == 429 {
                break;
            }
            assert_eq!(res.status, 200, "{:?} {}", db.kind, res.text);
            i += 1;
            assert!(i < 100, "the first instance never reached the budget");
        }
        // The second instance learns the stored total within its refresh interval and
        // refuses too, without calling the provider.
        let cost = |res: &TestResponse| {
            (res.json["usage"]["prompt_tokens"].as_u64().unwrap() as f64 * 100.0
                + res.json["usage"]["completion_tokens"].as_u64().unwrap() as f64 * 200.0)
                / 1e6
        };
        let (mut refused, mut own_spend) = (None, cost(&res));
        for attempt in 0..100 {
            let mut body = ask(&format!("Spend on instance two, question {attempt}"));
            body["cache"] = json!(false);
            let res = call(&second, post(body)).await;
            if res.status == 429 {
                refused = Some(res);
                break;
            }
            assert_eq!(res.status, 200, "{:?} {}", db.kind, res.text);
            own_spend += cost(&res);
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let refused = refused.expect("the second instance never refused");
        // Refused for the first instance's spend, not its own.
        assert!(
            own_spend < 0.05,
            "refused only after spending {own_spend} itself"
        );
        assert!(refused.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("daily budget"));
        let calls = fake.chat_completions();
        let res = call(&second, post(ask("Still refused?"))).await;
        assert_eq!(res.status, 429, "{}", res.text);
        assert_eq!(fake.chat_completions(), calls);
    }
}

#[tokio::test]
async fn usage_and_cost_are_recorded_per_key_and_the_daily_budget_refuses_with_429() {
    for db in TestDatabase::both().await {
        let fake = FakeOpenAi::start().await;
        let (router, _) = chat_router(
            &db,
            Some(&fake),
            &[
                // Dollars per million tokens, large so that one answer costs cents.
                ("LLM_PRICES", "gpt-4o-mini=100/200"),
                ("DAILY_BUDGET_USD", "0.05"),
                ("RETRIEVAL_ENABLED", "false"),
            ],
        );
        let first = call(&router, post(ask("What does usage cost?"))).await;
        assert_eq!(first.status, 200, "{}", first.text);
        let prompt = first.json["usage"]["prompt_tokens"].as_u64().unwrap();
        let completion = first.json["usage"]["completion_tokens"].as_u64().unwrap();
        let cost = (prompt as f64 * 100.0 + completion as f64 * 200.0) / 1e6;

        // A cache hit reports the original token counts, marked cached, and costs 0.
        let hit = call(&router, post(ask("What does usage cost?"))).await;
        assert_eq!(hit.json["cached"], true, "{:?} {}", db.kind, hit.text);
        assert_eq!(hit.json["usage"]["prompt_tokens"].as_u64().unwrap(), prompt);

        let res = call(
            &router,
            http::Request::get("/v1/usage")
                .header("x-api-key", KEY)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(res.status, 200, "{}", res.text);
        assert_eq!(res.json["requests"], 2);
        assert_eq!(res.json["cached_requests"], 1);
        assert_eq!(res.json["prompt_tokens"].as_u64().unwrap(), 2 * prompt);
        let recorded = res.json["cost_usd"].as_f64().unwrap();
        assert!((recorded - cost).abs() < 1e-6, "{recorded} vs {cost}");

        // Over budget once more has been spent: 429 with a clear message.
        let mut spent = cost;
        let mut i = 0;
        while spent < 0.05 {
            let mut body = ask(&format!("Spend more {i}"));
            body["cache"] = json!(false);
            let res = call(&router, post(body)).await;
            assert_eq!(res.status, 200, "{}", res.text);
            spent += (res.json["usage"]["prompt_tokens"].as_u64().unwrap() as f64 * 100.0
                + res.json["usage"]["completion_tokens"].as_u64().unwrap() as f64 * 200.0)
                / 1e6;
            i += 1;
        }
        let calls = fake.chat_completions();
        let res = call(&router, post(ask("One more?"))).await;
        assert_eq!(res.status, 429, "{}", res.text);
        assert!(res.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("daily budget"));
        assert!(res.headers.contains_key("retry-after"));
        assert_eq!(fake.chat_completions(), calls);

        // Another key's usage is not visible; bad dates are refused.
        let res = call(
            &router,
            http::Request::get("/v1/usage?key=someone-else")
                .header("x-api-key", KEY)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(res.status, 404);
        let res = call(
            &router,
            http::Request::get("/v1/usage?from=yesterday")
                .header("x-api-key", KEY)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(res.status, 400);
        // `to` in the past without `from`: that day alone, not "`from` is after `to`".
        let res = call(
            &router,
            http::Request::get("/v1/usage?to=2020-01-01")
                .header("x-api-key", KEY)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(res.status, 200, "{}", res.text);
        assert_eq!(res.json["from"], "2020-01-01");
        assert_eq!(res.json["requests"], 0);
        let res = call(
            &router,
            http::Request::get("/v1/usage?from=2026-01-01&to=2099-12-31")
                .header("x-api-key", KEY)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(res.status, 200);
        assert!(res.json["requests"].as_u64().unwrap() >= 3);
    }
    let metrics = shared::observability::metrics::render();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("llm_cost_usd_total{")),
        "{metrics}"
    );
}

/// The idempotency layer wraps only the method the route serves: any other method gets the
/// plain 405, whatever its headers, and the store is not touched. A keyed body over the
/// limit is refused with the same 413 as an unkeyed one.
#[tokio::test]
async fn idempotency_keys_leave_other_methods_and_the_body_limit_as_they_are() {
    let db = TestDatabase::sqlite();
    let fake = FakeOpenAi::start().await;
    let (router, _) = chat_router(&db, Some(&fake), &[("MAX_BODY_BYTES", "2048")]);
    // A valid key, and one too long to be valid (POST would answer 400 for it).
    for key in ["key-1".to_string(), "k".repeat(300)] {
        let request = http::Request::builder()
            .method("GET")
            .uri("/v1/chat/completions")
            .header("authorization", format!("Bearer {KEY}"))
            .header("idempotency-key", key.as_str())
            .body(Body::empty())
            .unwrap();
        let res = call(&router, request).await;
        assert_eq!(res.status, 405, "{}", res.text);
        assert_eq!(res.json["error"]["code"], "method_not_allowed");
    }
    let mut large = ask("Summarise the refund policy");
    large["messages"][0]["content"] = json!("x".repeat(4096));
    let unkeyed = call(&router, post(large.clone())).await;
    let keyed = call(&router, with_key(large, "key-2")).await;
    assert_eq!(unkeyed.status, 413, "{}", unkeyed.text);
    assert_eq!(keyed.status, 413, "{}", keyed.text);
    assert_eq!(
        keyed.json["error"]["message"],
        unkeyed.json["error"]["message"]
    );
    assert_eq!(fake.chat_completions(), 0);
}

/// Issue 12, finding 7: a hung provider holds the caller only until the answer's deadline
/// (`CHAT_DEADLINE_MS`), which the models of the chain share, not `LLM_TIMEOUT_MS` per
/// model; the degraded answer says why.
#[tokio::test]
async fn a_hung_provider_holds_the_caller_only_until_the_answer_deadline() {
    let fake = FakeOpenAi::start().await;
    let db = TestDatabase::sqlite();
    let (router, ctx) = chat_router(
        &db,
        Some(&fake),
        &[("LLM_TIMEOUT_MS", "60000"), ("CHAT_DEADLINE_MS", "1500")],
    );
    ingest(
        &ctx,
        "warranty",
        "Warranty",
        "Every laptop has a two year warranty covering parts and labour.",
    )
    .await;
    fake.set_behaviour(Behaviour {
        hang: true,
        ..Behaviour::default()
    });
    let mut body = ask("What does the laptop warranty cover?");
    body["temperature"] = json!(1.0);
    let res = call(&router, post(body.clone())).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(header(&res, "x-degraded"), Some("retrieval-only"));
    let content = res.json["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    assert!(content.contains("CHAT_DEADLINE_MS"), "{content}");
    assert!(content.contains("two year warranty"), "{content}");
    assert_eq!(fake.calls_for("gpt-4o-mini"), 1);
    assert_eq!(
        fake.calls_for("gpt-4o-backup"),
        0,
        "the deadline ends the chain: no model is started after it"
    );

    body["stream"] = json!(true);
    let res = call(&router, post(body)).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert!(
        streamed_text(&res.text).contains("CHAT_DEADLINE_MS"),
        "{}",
        res.text
    );
}

/// Issue 12, finding 5: JSON passes through with its key order, byte for byte, including
/// fields the gateway does not know (a JSON schema's properties: reasoning, then answer).
#[tokio::test]
async fn request_json_reaches_the_provider_with_its_key_order() {
    let fake = FakeOpenAi::start().await;
    let db = TestDatabase::sqlite();
    let (router, _) = chat_router(&db, Some(&fake), &[]);
    let schema = r#"{"type":"json_schema","json_schema":{"name":"qa","strict":true,"schema":{"type":"object","properties":{"reasoning":{"type":"string"},"answer":{"type":"string"}},"required":["reasoning","answer"],"additionalProperties":false}}}"#;
    let unknown = r#"{"zeta":1,"alpha":{"y":2,"b":3}}"#;
    let body = format!(
        r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"Why is the sky blue?"}}],"retrieval":false,"response_format":{schema},"x_vendor":{unknown}}}"#
    );
    let request = http::Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let res = call(&router, request).await;
    assert_eq!(res.status, 200, "{}", res.text);
    let sent = fake.last_request();
    assert_eq!(
        serde_json::to_string(&sent["response_format"]).unwrap(),
        schema
    );
    assert_eq!(serde_json::to_string(&sent["x_vendor"]).unwrap(), unknown);
    // And the answer's keys come back in the provider's order.
    let keys: Vec<&String> = res.json.as_object().unwrap().keys().collect();
    assert_eq!(keys[0], "id", "{keys:?}");
}

/// Issue 12, finding 4: the response cache gives back exactly what the provider gave,
/// across stream <-> plain: tool calls (ids, names, arguments), every choice of `n > 1`,
/// finish reasons and the system fingerprint.
#[tokio::test]
async fn cached_answers_keep_tool_calls_and_every_choice_both_ways() {
    let fake = FakeOpenAi::start().await;
    let db = TestDatabase::sqlite();
    let (router, _) = chat_router(&db, Some(&fake), &[]);
    let mut body = ask("What is the weather in Oslo?");
    body["retrieval"] = json!(false);
    body["tools"] = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {}}}}]);
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);

    // Streamed first (from the provider), then asked plainly: from the cache, intact.
    let first = call(&router, post(streamed.clone())).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let plain = call(&router, post(body.clone())).await;
    assert_eq!(plain.json["cached"], true, "{}", plain.text);
    assert_eq!(fake.chat_completions(), 1);
    let choice = &plain.json["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let call0 = &choice["message"]["tool_calls"][0];
    assert_eq!(call0["id"], "call_fake_0");
    assert_eq!(call0["type"], "function");
    assert_eq!(call0["function"]["name"], "get_weather");
    let arguments: Value =
        serde_json::from_str(call0["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments["choice"], 0);
    assert_eq!(plain.json["system_fingerprint"], "fp_fake");

    // Streamed again: replayed from the cache with its tool-call deltas.
    let again = call(&router, post(streamed)).await;
    let chunks = sse_chunks(&again.text);
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(calls.len(), 1, "{}", again.text);
    assert_eq!(calls[0]["id"], "call_fake_0");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert_eq!(
        calls[0]["function"]["arguments"],
        call0["function"]["arguments"]
    );
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));
    assert_eq!(fake.chat_completions(), 1);

    // n = 2, streamed then plain: two choices, each with its own text.
    let mut two = ask("Give me two answers about tea.");
    two["retrieval"] = json!(false);
    two["n"] = json!(2);
    let mut two_streamed = two.clone();
    two_streamed["stream"] = json!(true);
    let res = call(&router, post(two_streamed.clone())).await;
    assert_eq!(res.status, 200, "{}", res.text);
    let res = call(&router, post(two.clone())).await;
    assert_eq!(res.json["cached"], true, "{}", res.text);
    let choices = res.json["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2, "{}", res.text);
    for (i, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], i);
        let text = choice["message"]["content"].as_str().unwrap();
        assert!(text.ends_with(&format!("(choice {i})")), "{text}");
    }
    // And replayed as a stream: both choices come back, each finished.
    let replay = call(&router, post(two_streamed)).await;
    let chunks = sse_chunks(&replay.text);
    for i in 0..2 {
        let text: String = chunks
            .iter()
            .filter(|c| c["choices"][0]["index"] == i)
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert!(text.ends_with(&format!("(choice {i})")), "{text}");
    }
    assert_eq!(fake.chat_completions(), 2);
}

/// Issue 12, finding 6 (in part): without a model, "the knowledge base could not be
/// reached" is not worded as "no passage matches".
#[tokio::test]
async fn without_a_model_an_unreachable_knowledge_base_is_not_called_no_match() {
    let db = TestDatabase::sqlite();
    let unreachable = format!(
        "postgres://postgres@127.0.0.1:{}/none",
        chatkb_testing::free_port()
    );
    let (router, _) = chat_router(
        &db,
        None,
        &[
            ("LLM_MODEL", ""),
            ("DATABASE_URL", unreachable.as_str()),
            ("DATABASE_TIMEOUT_MS", "300"),
        ],
    );
    let question = json!({"messages": [{"role": "user", "content": "Where is the office?"}]});
    let res = call(&router, post(question.clone())).await;
    assert_eq!(res.status, 200, "{}", res.text);
    let degraded = header(&res, "x-degraded").unwrap();
    assert!(degraded.contains("retrieval-unavailable"), "{degraded}");
    let content = res.json["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    assert!(content.contains("could not be reached"), "{content}");
    assert!(!content.contains("no passage that matches"), "{content}");

    // A reachable knowledge base with nothing relevant still says "no passage matches".
    let (router, _) = chat_router(&db, None, &[("LLM_MODEL", "")]);
    let res = call(&router, post(question)).await;
    let content = res.json["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    assert!(content.contains("no passage that matches"), "{content}");
}

/// Issue 12, finding 6: a question the knowledge base cannot answer gets no passages,
/// neither in the prompt nor in the retrieval-only answer, and cites nothing; a question
/// it can answer keeps its passage.
#[tokio::test]
async fn passages_below_the_relevance_floor_are_neither_prompted_nor_cited() {
    let fake = FakeOpenAi::start().await;
    let db = TestDatabase::sqlite();
    let (router, ctx) = chat_router(&db, Some(&fake), &[]);
    ingest_refund_policy_and_office_plants(&ctx).await;
    let (offline, _) = chat_router(&db, None, &[("LLM_MODEL", "")]);
    for question in ["What is the capital of France?", "Hi", "xyzzy plugh"] {
        let res = call(&router, post(ask(question))).await;
        assert_eq!(res.status, 200, "{}", res.text);
        assert_eq!(res.json["sources"], json!([]), "{question}");
        let sent = fake.last_request();
        assert_eq!(sent["messages"].as_array().unwrap().len(), 1, "{sent}");

        let without_model = json!({"messages": [{"role": "user", "content": question}]});
        let res = call(&offline, post(without_model)).await;
        assert_eq!(res.status, 200, "{}", res.text);
        assert_eq!(res.json["sources"], json!([]), "{question}");
        let content = res.json["choices"][0]["message"]["content"]
            .as_str()
            .unwrap();
        assert!(content.contains("no passage that matches"), "{content}");
        assert!(!content.contains("document refund-policy"), "{content}");
    }
    let res = call(
        &router,
        post(ask("How long do I have to ask for a refund?")),
    )
    .await;
    assert_eq!(res.json["sources"], json!(["refund-policy"]));
}
