//! Failover that never drops an answer it could have given (issue 15), fault by fault,
//! against the project's fake provider: what the caller got, and what the provider saw.

mod support;

use chatkb_testing::fake_openai::{Behaviour, FakeOpenAi};
use chatkb_testing::{call, TestDatabase};
use serde_json::json;
use support::*;

fn streamed(question: &str) -> serde_json::Value {
    let mut body = ask(question);
    body["stream"] = json!(true);
    body["retrieval"] = json!(false);
    body
}

/// Item 2: one event that does not parse was fatal ("EOF while parsing" at the 11th
/// chunk). Now it is skipped and counted, and the answer arrives whole; only a stream
/// that stays unreadable (`LLM_STREAM_MAX_BAD_CHUNKS` in a row) ends with the error event.
#[tokio::test]
async fn a_malformed_chunk_is_skipped_and_the_answer_arrives_whole() {
    let db = TestDatabase::sqlite();
    let fake = FakeOpenAi::start().await;
    let (router, _) = chat_router(&db, Some(&fake), &[]);
    let clean = call(&router, post(streamed("What is the boiling point?"))).await;
    let expected = streamed_text(&clean.text);
    assert!(
        expected.starts_with("Fake answer from gpt-4o-mini"),
        "{expected}"
    );

    // Broken events before the first chunk and in the middle of the answer.
    fake.set_behaviour(Behaviour {
        malformed_chunks_at: vec![0, 4, 7],
        ..Behaviour::default()
    });
    let mut body = streamed("What is the boiling point?");
    body["cache"] = json!(false);
    let res = call(&router, post(body)).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(streamed_text(&res.text), expected);
    assert!(res.text.ends_with("data: [DONE]\n\n"), "{}", res.text);
    assert!(!res.text.contains("upstream_stream_interrupted"));
    assert_eq!(fake.calls_for("gpt-4o-mini"), 2, "no retry was needed");
    assert_eq!(fake.calls_for("gpt-4o-backup"), 0);

    let metrics = shared::observability::metrics::render();
    assert!(
        metrics.contains("llm_stream_malformed_chunks_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_stream_that_stays_unreadable_ends_with_the_error_event() {
    let db = TestDatabase::sqlite();
    let fake = FakeOpenAi::start().await;
    let (router, _) = chat_router(&db, Some(&fake), &[("LLM_STREAM_MAX_BAD_CHUNKS", "2")]);
    fake.set_behaviour(Behaviour {
        malformed_chunks_at: vec![3],
        ..Behaviour::default()
    });
    // One broken event is tolerated with a limit of 2...
    let res = call(&router, post(streamed("One broken event"))).await;
    assert!(res.text.ends_with("data: [DONE]\n\n"), "{}", res.text);
    // ...two in a row are not: the stream is unreadable.
    fake.set_behaviour(Behaviour {
        malformed_chunks_at: vec![3, 3],
        ..Behaviour::default()
    });
    let res = call(&router, post(streamed("Two broken events in a row"))).await;
    assert_eq!(res.status, 200);
    assert!(
        res.text.contains("upstream_stream_interrupted")
            && res.text.contains("2 malformed stream events in a row"),
        "{}",
        res.text
    );
    assert!(!res.text.contains("[DONE]"));
}

/// Item 4: a provider slow to start held the caller for up to `LLM_TIMEOUT_MS`. Now a
/// model without content within `LLM_FIRST_TOKEN_MS` is left (not retried, counted
/// against its breaker) for the next model of the chain.
#[tokio::test]
async fn a_slow_first_token_fails_over_to_the_next_model() {
    let db = TestDatabase::sqlite();
    let fake = FakeOpenAi::start().await;
    let (router, ctx) = chat_router(
        &db,
        Some(&fake),
        &[
            ("LLM_FIRST_TOKEN_MS", "300"),
            ("RETRY_MAX_ATTEMPTS", "3"),
            ("BREAKER_FAILURE_THRESHOLD", "1"),
        ],
    );
    fake.set_behaviour(Behaviour {
        latency_ms: 3000,
        models: vec!["gpt-4o-mini".into()],
        ..Behaviour::default()
    });
    let res = call(&router, post(streamed("Who answers first?"))).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(header(&res, "x-degraded"), Some("fallback-model"));
    let text = streamed_text(&res.text);
    assert!(text.starts_with("Fake answer from gpt-4o-backup"), "{text}");
    assert!(res.text.ends_with("data: [DONE]\n\n"));
    assert_eq!(
        fake.calls_for("gpt-4o-mini"),
        1,
        "not retried on the slow model"
    );
    assert_eq!(fake.calls_for("gpt-4o-backup"), 1);
    assert_eq!(
        breaker_state(&ctx, "llm:openai:gpt-4o-mini"),
        Some("open"),
        "the expiry counts against the breaker"
    );
}

/// `GET /v1/usage` of the test key, today.
async fn usage_of(router: &axum::Router) -> chatkb_testing::TestResponse {
    let request = http::Request::get("/v1/usage")
        .header("x-api-key", KEY)
        .body(axum::body::Body::empty())
        .unwrap();
    call(router, request).await
}

fn refuse(code: &str, message: &str, model: &str) -> Behaviour {
    Behaviour {
        failure_rate: 1.0,
        failure_status: Some(400),
        failure_code: Some(code.into()),
        failure_message: Some(message.into()),
        models: vec![model.into()],
        ..Behaviour::default()
    }
}

fn breaker_state(ctx: &shared::AppContext, name: &str) -> Option<&'static str> {
    ctx.breakers
        .states()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, state)| state.as_str())
}

/// Item 3: a 400 `context_length_exceeded` went straight back to the caller although a
/// larger model was in the chain. Now it moves to the next model whose window can hold
/// the request, without a retry and without counting against the breaker; when no model
/// is larger, the caller gets the provider's refusal unchanged. A content-filter 400 is
/// passed back and never tried elsewhere.
#[tokio::test]
async fn a_request_too_long_for_the_model_goes_to_a_model_that_fits() {
    let db = TestDatabase::sqlite();
    let fake = FakeOpenAi::start().await;
    let overflow = "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.";
    let windows = "gpt-4o-mini=8192,gpt-4o-backup=128000";
    let (router, ctx) = chat_router(
        &db,
        Some(&fake),
        &[
            ("LLM_CONTEXT_WINDOWS", windows),
            ("BREAKER_FAILURE_THRESHOLD", "1"),
            ("RETRY_MAX_ATTEMPTS", "3"),
        ],
    );
    fake.set_behaviour(refuse("context_length_exceeded", overflow, "gpt-4o-mini"));
    for stream in [false, true] {
        let mut body = ask(&format!("A long question (stream: {stream})"));
        body["stream"] = json!(stream);
        let res = call(&router, post(body)).await;
        assert_eq!(res.status, 200, "{}", res.text);
        assert_eq!(header(&res, "x-degraded"), Some("fallback-model"));
        let text = if stream {
            streamed_text(&res.text)
        } else {
            res.json["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert!(text.starts_with("Fake answer from gpt-4o-backup"), "{text}");
    }
    assert_eq!(
        fake.calls_for("gpt-4o-mini"),
        2,
        "one call each, not retried"
    );
    assert_eq!(fake.calls_for("gpt-4o-backup"), 2);
    assert_eq!(
        breaker_state(&ctx, "llm:openai:gpt-4o-mini"),
        Some("closed"),
        "a request too long is not the model's failure"
    );

    // No model of the chain is larger: the provider's own refusal comes back.
    let (small, _) = chat_router(
        &db,
        Some(&fake),
        &[("LLM_CONTEXT_WINDOWS", "gpt-4o-mini=8192,gpt-4o-backup=8192")],
    );
    let res = call(&small, post(ask("Too long for every model"))).await;
    assert_eq!(res.status, 400, "{}", res.text);
    let message = res.json["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("maximum context length is 8192"),
        "{message}"
    );
    assert_eq!(
        fake.calls_for("gpt-4o-backup"),
        2,
        "the smaller model is skipped"
    );

    // A content filter's refusal is the caller's answer: passed back, never retried.
    fake.set_behaviour(refuse(
        "content_filter",
        "The response was filtered due to the prompt triggering content management policy.",
        "gpt-4o-mini",
    ));
    let res = call(&router, post(ask("Something the filter refuses"))).await;
    assert_eq!(res.status, 400, "{}", res.text);
    assert!(res.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("content management policy"));
    assert_eq!(fake.calls_for("gpt-4o-backup"), 2);
}

/// Item 5: a primary down for a moment, then back. With the fixed 60 s cool-down it
/// stayed unused for the whole minute; now the first cool-down is short
/// (`BREAKER_OPEN_MIN_SECS`) and the primary answers again soon after it recovers.
#[tokio::test]
async fn a_primary_back_after_a_short_outage_is_used_again_within_seconds() {
    let db = TestDatabase::sqlite();
    let fake = FakeOpenAi::start().await;
    let (router, _) = chat_router(
        &db,
        Some(&fake),
        &[
            ("BREAKER_FAILURE_THRESHOLD", "1"),
            ("BREAKER_OPEN_MIN_SECS", "1"),
            ("BREAKER_OPEN_SECS", "60"),
            ("RETRIEVAL_ENABLED", "false"),
        ],
    );
    fake.set_behaviour(Behaviour {
        down_for_ms: Some(600),
        models: vec!["gpt-4o-mini".into()],
        ..Behaviour::default()
    });
    let answered_by = |res: &chatkb_testing::TestResponse| {
        res.json["model"].as_str().unwrap_or_default().to_string()
    };
    let mut models = Vec::new();
    for i in 0..20 {
        let mut body = ask(&format!("Question {i} during and after the outage"));
        body["cache"] = json!(false);
        let res = call(&router, post(body)).await;
        assert_eq!(res.status, 200, "{}", res.text);
        models.push(answered_by(&res));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(
        models[0], "gpt-4o-backup",
        "the outage: the fallback answers"
    );
    let back = models.iter().rposition(|m| m != "gpt-4o-mini").unwrap() + 1;
    assert!(
        back < models.len() && models[back..].iter().all(|m| m == "gpt-4o-mini"),
        "the primary answers again within seconds, not after 60 s: {models:?}"
    );
}

/// The stream of `body` from `router`, and the joined text, checked to be one complete
/// answer: no error event, `[DONE]` last.
async fn complete_stream(router: &axum::Router, body: serde_json::Value) -> (String, String) {
    let res = call(router, post(body)).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert!(
        !res.text.contains("upstream_stream_interrupted"),
        "{}",
        res.text
    );
    assert!(res.text.ends_with("data: [DONE]\n\n"), "{}", res.text);
    (streamed_text(&res.text), res.text)
}

/// Item 1: a stream cut or stalled after part of the answer had been relayed ended with
/// an error event and half an answer, although the fallback model was healthy. Now the
/// next model continues the same answer from the partial text (sent as an assistant
/// message), and the caller gets one complete answer in one stream, labelled, billed once.
#[tokio::test]
async fn a_stream_cut_or_stalled_mid_answer_is_continued_by_the_next_model() {
    for fault in ["cut", "stall"] {
        let db = TestDatabase::sqlite();
        let fake = FakeOpenAi::start().await;
        let (router, _) = chat_router(&db, Some(&fake), &[("LLM_STREAM_IDLE_MS", "300")]);
        let question = format!("Tell me about wings ({fault})");
        // What the fallback model says to it, whole: the continuation is its remainder.
        fake.set_behaviour(Behaviour::default());
        let mut whole = streamed(&question);
        whole["model"] = json!("gpt-4o-backup");
        whole["cache"] = json!(false);
        let (backup_whole, _) = complete_stream(&router, whole).await;

        fake.set_behaviour(Behaviour {
            cut_stream_after: (fault == "cut").then_some(4),
            stall_stream_after: (fault == "stall").then_some(4),
            models: vec!["gpt-4o-mini".into()],
            ..Behaviour::default()
        });
        let mut body = streamed(&question);
        body["stream_options"] = json!({"include_usage": true});
        let (joined, raw) = complete_stream(&router, body).await;
        let continuation = fake.last_request();
        assert_eq!(continuation["model"], "gpt-4o-backup");
        let messages = continuation["messages"].as_array().unwrap();
        let (instruction, prefill) = (&messages[messages.len() - 1], &messages[messages.len() - 2]);
        assert_eq!(prefill["role"], "assistant", "{fault}");
        assert_eq!(instruction["role"], "user", "{fault}");
        assert_eq!(
            instruction["content"],
            shared::chat::continuation::CONTINUE_INSTRUCTION
        );
        let partial = prefill["content"].as_str().unwrap();
        assert!(
            partial.starts_with("Fake answer from gpt-4o-mini"),
            "{partial}"
        );
        assert_eq!(
            joined,
            format!("{partial}{}", &backup_whole[partial.len()..]),
            "{fault}: the partial answer, then only the continuation"
        );
        let chunks = sse_chunks(&raw);
        let roles = chunks
            .iter()
            .filter(|c| !c["choices"][0]["delta"]["role"].is_null())
            .count();
        assert_eq!(roles, 1, "one stream: the role is said once");
        let notice = chunks
            .iter()
            .rev()
            .find(|c| !c["degraded"].is_null())
            .unwrap();
        assert_eq!(notice["degraded"], "continued:gpt-4o-backup", "{fault}");
        let usage = chunks.iter().find(|c| c["usage"].is_object()).unwrap();
        let billed = usage["usage"]["completion_tokens"].as_u64().unwrap();
        assert!(
            billed >= shared::chat::retrieval::estimate_tokens(partial) as u64,
            "the partial answer's tokens count as completion: {usage}"
        );
        let res = usage_of(&router).await;
        assert_eq!(
            res.json["requests"], 2,
            "billed once per answer: {}",
            res.text
        );
    }
}

/// A next model that refuses to continue (here: no assistant message last) does not
/// hide the real failure: the stream ends with the original error event. So does a
/// stream when continuation is off.
#[tokio::test]
async fn a_refused_continuation_or_continuation_off_ends_with_the_original_error() {
    let db = TestDatabase::sqlite();
    let fake = FakeOpenAi::start().await;
    let cut = Behaviour {
        cut_stream_after: Some(4),
        models: vec!["gpt-4o-mini".into()],
        refuse_prefill: vec!["gpt-4o-backup".into()],
        ..Behaviour::default()
    };
    let (router, _) = chat_router(&db, Some(&fake), &[]);
    fake.set_behaviour(cut.clone());
    let res = call(&router, post(streamed("Continue me if you can"))).await;
    assert!(
        res.text.contains("the model's stream was interrupted"),
        "{}",
        res.text
    );
    assert!(!res.text.contains("[DONE]"));
    assert_eq!(fake.calls_for("gpt-4o-backup"), 1, "asked, and refused");
    // What the cut model produced was paid for: recorded, estimated, not free.
    let usage = usage_of(&router).await;
    assert_eq!(usage.json["requests"], 1, "{}", usage.text);
    assert!(
        usage.json["completion_tokens"].as_u64().unwrap() > 0,
        "{}",
        usage.text
    );

    let (off, _) = chat_router(&db, Some(&fake), &[("LLM_STREAM_CONTINUATION", "false")]);
    fake.set_behaviour(Behaviour {
        refuse_prefill: Vec::new(),
        ..cut
    });
    let res = call(&off, post(streamed("Do not continue me"))).await;
    assert!(
        res.text.contains("upstream_stream_interrupted"),
        "{}",
        res.text
    );
    assert_eq!(fake.calls_for("gpt-4o-backup"), 1, "not asked");
}

/// The rest of the sixteen faults, as a proxy sees them: a 500 once and a 429 that says
/// when to come back are retried on the same model (after the `Retry-After` it gave);
/// a 429 that persists moves to the next model; a stream that finishes without `[DONE]`
/// is a complete answer.
#[tokio::test]
async fn transient_failures_are_retried_on_the_model_and_persistent_ones_fail_over() {
    let db = TestDatabase::sqlite();
    let fake = FakeOpenAi::start().await;
    let (router, _) = chat_router(
        &db,
        Some(&fake),
        &[("RETRY_MAX_ATTEMPTS", "3"), ("RETRY_BASE_DELAY_MS", "10")],
    );
    let answered = |res: &chatkb_testing::TestResponse| res.json["model"].clone();

    // A 500 once: the second attempt on the same model answers.
    fake.set_behaviour(Behaviour {
        fail_first: Some(1),
        failure_status: Some(500),
        ..Behaviour::default()
    });
    let res = call(&router, post(ask("A 500 once"))).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(answered(&res), "gpt-4o-mini");
    assert!(header(&res, "x-degraded").is_none());
    assert_eq!(fake.calls_for("gpt-4o-mini"), 2);

    // A 429 with Retry-After: 1 s: retried on the same model once that second is over.
    fake.set_behaviour(Behaviour {
        fail_first: Some(1),
        failure_status: Some(429),
        retry_after_s: Some(1),
        ..Behaviour::default()
    });
    let res = call(&router, post(ask("A 429 with Retry-After"))).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(answered(&res), "gpt-4o-mini");
    let times = fake.call_times("gpt-4o-mini");
    let gap = times[times.len() - 1] - times[times.len() - 2];
    assert!(
        gap >= std::time::Duration::from_millis(990),
        "the retry waited what Retry-After said: {gap:?}"
    );

    // A 429 that persists (no Retry-After): the model's attempts, then the next model.
    fake.set_behaviour(Behaviour {
        failure_rate: 1.0,
        failure_status: Some(429),
        models: vec!["gpt-4o-mini".into()],
        ..Behaviour::default()
    });
    let before = fake.calls_for("gpt-4o-mini");
    let res = call(&router, post(ask("A 429 that persists"))).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(answered(&res), "gpt-4o-backup");
    assert_eq!(header(&res, "x-degraded"), Some("fallback-model"));
    assert_eq!(
        fake.calls_for("gpt-4o-mini") - before,
        3,
        "RETRY_MAX_ATTEMPTS"
    );

    // A stream that finishes (finish_reason) and closes without `[DONE]`.
    fake.set_behaviour(Behaviour {
        omit_done: true,
        ..Behaviour::default()
    });
    let res = call(&router, post(streamed("No DONE from the provider"))).await;
    assert!(res.text.ends_with("data: [DONE]\n\n"), "{}", res.text);
    assert!(!res.text.contains("upstream_stream_interrupted"));
    assert!(streamed_text(&res.text).starts_with("Fake answer from gpt-4o-mini"));
}

/// A provider that resets every connection before answering: each model is tried
/// `RETRY_MAX_ATTEMPTS` times, in chain order, then the degraded answer; never a 5xx.
#[tokio::test]
async fn a_provider_that_resets_every_connection_gets_its_attempts_then_the_degraded_answer() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
    let resets = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = resets.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = socket.set_zero_linger();
            drop(socket); // RST, before any header
        }
    });
    let db = TestDatabase::sqlite();
    let (router, _) = chat_router(
        &db,
        None,
        &[
            ("LLM_BASE_URL", base_url.as_str()),
            ("RETRY_MAX_ATTEMPTS", "2"),
            ("RETRY_BASE_DELAY_MS", "10"),
        ],
    );
    let res = call(&router, post(ask("Is anyone there?"))).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(header(&res, "x-degraded"), Some("retrieval-only"));
    assert_eq!(
        resets.load(Ordering::SeqCst),
        4,
        "2 attempts on each of 2 models"
    );
}

/// An upstream whose answer never ends (a broken provider or proxy streaming bytes
/// without end) is read only up to the limit (32 MiB whole, 4 MiB per stream event), not
/// into the gateway's memory: a malformed answer, not retried, and the next model answers,
/// plain and streamed alike.
#[tokio::test]
async fn an_answer_that_never_ends_fails_over_to_the_next_model() {
    let db = TestDatabase::sqlite();
    let fake = FakeOpenAi::start().await;
    let (router, _) = chat_router(&db, Some(&fake), &[("RETRY_MAX_ATTEMPTS", "3")]);
    fake.set_behaviour(Behaviour {
        endless_answer: true,
        models: vec!["gpt-4o-mini".into()],
        ..Behaviour::default()
    });
    let mut plain = ask("Does it ever end?");
    plain["retrieval"] = json!(false);
    let res = call(&router, post(plain)).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(header(&res, "x-degraded"), Some("fallback-model"));
    let answer: serde_json::Value = serde_json::from_str(&res.text).unwrap();
    let text = answer["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.starts_with("Fake answer from gpt-4o-backup"), "{text}");
    assert_eq!(
        fake.calls_for("gpt-4o-mini"),
        1,
        "a malformed answer is not retried"
    );

    let res = call(&router, post(streamed("Does the stream ever end?"))).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(header(&res, "x-degraded"), Some("fallback-model"));
    let text = streamed_text(&res.text);
    assert!(text.starts_with("Fake answer from gpt-4o-backup"), "{text}");
    assert!(res.text.ends_with("data: [DONE]\n\n"));
    assert_eq!(
        fake.calls_for("gpt-4o-mini"),
        2,
        "a cut stream is not retried"
    );
}
