//! Traces (issue 17, item 7): the chat function exports its spans over OTLP/HTTP to a
//! receiver on loopback (protobuf, decoded here with the OTLP types). One chat request's
//! spans are checked: the server span continuing the caller's `traceparent` (or the
//! Lambda invocation's X-Ray header), the model call with its GenAI attributes, the
//! database calls, the parent links, and the `traceparent` the provider received.
//!
//! The subscriber is process-wide, so this file is its own test binary and its tests
//! run one at a time (they share the receiver and the content-capture switch).

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use chatkb_testing::fake_openai::{Behaviour, FakeOpenAi};
use chatkb_testing::{call, TestDatabase};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use serde_json::json;
use shared::observability::{logging, traces};
use support::{ask, chat_router, post_with, KEY};

/// One exported span, flattened for assertions.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    status_error: bool,
    /// Nanoseconds from start to end.
    duration_ns: u64,
    attributes: HashMap<String, String>,
}

#[derive(Default)]
struct Receiver {
    spans: Mutex<Vec<Exported>>,
    /// Answers 503 while set: the collector is down.
    down: std::sync::atomic::AtomicBool,
    /// Answers after 3 s while set: the collector hangs.
    slow: std::sync::atomic::AtomicBool,
}

fn text(value: Option<AnyValue>) -> String {
    match value {
        Some(AnyValue::StringValue(s)) => s,
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    }
}

async fn receive(State(receiver): State<Arc<Receiver>>, body: Bytes) -> axum::http::StatusCode {
    if receiver.down.load(std::sync::atomic::Ordering::SeqCst) {
        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
    }
    if receiver.slow.load(std::sync::atomic::Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
    let mut spans = receiver.spans.lock().unwrap();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(kv.value.clone().and_then(|v| v.value)))
            .unwrap_or_default();
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            spans.push(Exported {
                service: service.clone(),
                name: span.name,
                kind: span.kind,
                trace_id: hex::encode(&span.trace_id),
                span_id: hex::encode(&span.span_id),
                parent_span_id: hex::encode(&span.parent_span_id),
                status_error: span.status.is_some_and(|s| s.code == 2),
                duration_ns: span
                    .end_time_unix_nano
                    .saturating_sub(span.start_time_unix_nano),
                attributes: span
                    .attributes
                    .into_iter()
                    .map(|kv| (kv.key, text(kv.value.and_then(|v| v.value))))
                    .collect(),
            });
        }
    }
    axum::http::StatusCode::OK
}

/// The receiver (on its own thread and runtime, shared by every test) and the process's
/// subscriber exporting to it.
fn receiver() -> Arc<Receiver> {
    static RECEIVER: OnceLock<Arc<Receiver>> = OnceLock::new();
    RECEIVER
        .get_or_init(|| {
            let receiver = Arc::new(Receiver::default());
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let address = listener.local_addr().unwrap();
            let app = axum::Router::new()
                .route("/v1/traces", post(receive))
                .with_state(receiver.clone());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    axum::serve(listener, app).await.unwrap();
                });
            });
            let endpoint = format!("http://{address}");
            let settings =
                chatkb_testing::settings("chat", &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)])
                    .traces;
            // As the functions' start does: the exporter's HTTPS client needs it.
            shared::store::tls::install_crypto_provider();
            logging::init("warn", &settings);
            assert!(traces::enabled(), "the exporter is installed");
            receiver
        })
        .clone()
}

async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// What a test holds until it ends: its turn (tests share the receiver and the
/// content-capture switch) and its database.
type Held = (tokio::sync::MutexGuard<'static, ()>, TestDatabase);

/// One test's world: the receiver, a fake provider, and a chat router in front of it on
/// a fresh database.
async fn world() -> (Arc<Receiver>, FakeOpenAi, axum::Router, Held) {
    let receiver = receiver();
    let turn = serial().await;
    let fake = FakeOpenAi::start().await;
    let db = TestDatabase::sqlite();
    let (router, _ctx) = chat_router(&db, Some(&fake), &[]);
    (receiver, fake, router, (turn, db))
}

/// Flushes the exporter and waits until the trace's server span (and `at_least` spans
/// in all) have arrived.
async fn spans_of(receiver: &Receiver, trace_id: &str, at_least: usize) -> Vec<Exported> {
    tokio::task::spawn_blocking(traces::flush).await.unwrap();
    for _ in 0..100 {
        let spans: Vec<Exported> = receiver
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect();
        if spans.len() >= at_least && spans.iter().any(|s| s.kind == SpanKind::Server as i32) {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        tokio::task::spawn_blocking(traces::flush).await.unwrap();
    }
    panic!("the spans of trace {trace_id} did not arrive");
}

fn one<'a>(spans: &'a [Exported], name: &str) -> &'a Exported {
    let found: Vec<&Exported> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one `{name}` span in {spans:#?}");
    found[0]
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn a_chat_request_continues_the_callers_trace_through_the_model_and_the_database() {
    let (receiver, fake, router, _held) = world().await;
    // Over a real connection, as callers reach it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(shared::server::serve(
        listener,
        router,
        Default::default(),
        std::future::pending(),
    ));
    let question = "What is the refund window for order 7731?";
    let response = reqwest::Client::new()
        .post(format!("http://{address}/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .header("x-session-id", "trace-session-1")
        .json(&ask(question))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let spans = spans_of(&receiver, TRACE, 4).await;
    let server = one(&spans, "POST /v1/chat/completions");
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(
        server.parent_span_id, CALLER_SPAN,
        "the caller's span is the parent"
    );
    assert_eq!(server.service, "chatkb-chat");
    assert_eq!(server.attributes["http.route"], "/v1/chat/completions");
    assert_eq!(server.attributes["http.response.status_code"], "200");
    assert_eq!(server.attributes["http.request.method"], "POST");
    assert!(!server.status_error);

    let model = one(&spans, "chat gpt-4o-mini");
    assert_eq!(model.kind, SpanKind::Client as i32);
    assert_eq!(model.parent_span_id, server.span_id);
    let attributes = &model.attributes;
    assert_eq!(attributes["gen_ai.operation.name"], "chat");
    assert_eq!(attributes["gen_ai.system"], "openai");
    assert_eq!(attributes["gen_ai.request.model"], "gpt-4o-mini");
    assert_eq!(attributes["gen_ai.response.model"], "gpt-4o-mini");
    assert_eq!(attributes["gen_ai.request.temperature"], "0");
    assert_eq!(attributes["gen_ai.response.finish_reasons"], "stop");
    assert!(attributes["gen_ai.response.id"].starts_with("chatcmpl-"));
    for tokens in ["gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"] {
        let n: u64 = attributes[tokens].parse().expect(tokens);
        assert!(n > 0, "{tokens}: {n}");
    }
    // Content stays out unless asked for: no messages, and the question nowhere.
    assert!(!attributes.contains_key("gen_ai.input.messages"));
    assert!(!attributes.contains_key("gen_ai.output.messages"));
    for span in &spans {
        for value in span.attributes.values() {
            assert!(!value.contains("refund window"), "{span:?}");
        }
    }

    // The provider was called with the model call's span as its parent.
    assert_eq!(
        fake.last_traceparent().as_deref(),
        Some(format!("00-{TRACE}-{}-01", model.span_id).as_str())
    );

    // The session's history read and write, under the request.
    for name in ["SELECT chat_messages", "INSERT chat_messages"] {
        let db_span = one(&spans, name);
        assert_eq!(db_span.kind, SpanKind::Client as i32);
        assert_eq!(db_span.parent_span_id, server.span_id, "{name}");
        assert_eq!(db_span.attributes["db.system.name"], "sqlite");
        assert_eq!(db_span.attributes["db.collection.name"], "chat_messages");
    }
    // Only trace spans: the logs' own `request` span is not exported.
    assert!(spans.iter().all(|s| s.name != "request"), "{spans:#?}");
}

#[tokio::test]
async fn a_streamed_answer_keeps_its_model_span_open_until_the_last_chunk() {
    let (receiver, fake, router, _held) = world().await;
    // A chunk every 30 ms: the model call's span must last through them.
    fake.set_behaviour(Behaviour {
        chunk_delay_ms: 30,
        ..Behaviour::default()
    });
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let mut body = ask("Stream me an answer");
    body["stream"] = json!(true);
    let traceparent = format!("00-{trace}-b7ad6b7169203331-01");
    let headers = [
        ("traceparent", traceparent.as_str()),
        ("x-session-id", "trace-stream-1"),
    ];
    let response = call(&router, post_with(body, &headers)).await;
    assert_eq!(response.status, 200, "{}", response.text);
    assert!(response.text.contains("[DONE]"));

    let spans = spans_of(&receiver, trace, 3).await;
    let server = one(&spans, "POST /v1/chat/completions");
    let model = one(&spans, "chat gpt-4o-mini");
    assert_eq!(model.parent_span_id, server.span_id);
    assert_eq!(model.attributes["gen_ai.response.finish_reasons"], "stop");
    let output: u64 = model.attributes["gen_ai.usage.output_tokens"]
        .parse()
        .unwrap();
    assert!(output > 0, "the usage chunk at the end was seen: {model:?}");
    // It ends with the last chunk, not when the stream opened (one chunk in).
    let chunks = support::sse_chunks(&response.text).len() as u64;
    assert!(chunks >= 3, "{}", response.text);
    assert!(
        model.duration_ns >= (chunks - 2) * 30_000_000,
        "{chunks} chunks, a span of {} ms",
        model.duration_ns / 1_000_000
    );
    // The session is written after the last chunk, while the body streams: still under
    // the request, not a trace of its own.
    let write = one(&spans, "INSERT chat_messages");
    assert_eq!(write.parent_span_id, server.span_id);
}

#[tokio::test]
async fn captured_content_is_redacted_and_a_malformed_traceparent_starts_a_new_trace() {
    let (receiver, _fake, router, _held) = world().await;
    traces::set_capture_content(true);
    let response = call(
        &router,
        post_with(
            ask("Mail jane.doe@example.com about card 4111 1111 1111 1111"),
            &[
                ("traceparent", "00-not-a-trace-01"),
                ("x-request-id", "req-capture-1"),
            ],
        ),
    )
    .await;
    traces::set_capture_content(false);
    assert_eq!(response.status, 200, "{}", response.text);

    tokio::task::spawn_blocking(traces::flush).await.unwrap();
    let trace_id = {
        let mut found = None;
        for _ in 0..100 {
            found = receiver
                .spans
                .lock()
                .unwrap()
                .iter()
                .find(|s| {
                    s.attributes.get("chatkb.request_id").map(String::as_str)
                        == Some("req-capture-1")
                })
                .map(|s| (s.trace_id.clone(), s.parent_span_id.clone()));
            if found.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (trace_id, parent) = found.expect("the request's server span");
        assert_eq!(
            parent, "",
            "a malformed traceparent is ignored: a new root span"
        );
        trace_id
    };
    let spans = spans_of(&receiver, &trace_id, 2).await;
    let model = one(&spans, "chat gpt-4o-mini");
    let input = &model.attributes["gen_ai.input.messages"];
    assert!(input.contains("[REDACTED_EMAIL]"), "{input}");
    assert!(input.contains("[REDACTED_CARD]"), "{input}");
    assert!(
        !input.contains("jane.doe") && !input.contains("4111"),
        "{input}"
    );
    assert!(!model.attributes["gen_ai.output.messages"].is_empty());
}

#[tokio::test]
async fn under_lambda_the_x_ray_trace_is_the_parent() {
    let (receiver, _fake, router, _held) = world().await;
    let mut context = lambda_runtime::Context::default();
    context.request_id = "8476a536-e9f4-11e8-9739-2dfe598c3fcd".into();
    context.xray_trace_id =
        Some("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1".into());
    let mut request = post_with(ask("Hello from Lambda"), &[]);
    request.extensions_mut().insert(context);
    let response = call(&router, request).await;
    assert_eq!(response.status, 200, "{}", response.text);

    let spans = spans_of(&receiver, "5759e988bd862e3fe1be46a994272793", 2).await;
    let server = one(&spans, "POST /v1/chat/completions");
    assert_eq!(server.parent_span_id, "53995c3f42cd8ad8");
    assert_eq!(
        server.attributes["faas.invocation_id"],
        "8476a536-e9f4-11e8-9739-2dfe598c3fcd"
    );
    assert_eq!(
        one(&spans, "chat gpt-4o-mini").parent_span_id,
        server.span_id
    );
}

#[tokio::test]
async fn failed_model_calls_are_marked_and_a_collector_that_is_down_costs_no_answer() {
    let (receiver, fake, router, _held) = world().await;
    fake.set_behaviour(Behaviour {
        models: vec!["gpt-4o-mini".into()],
        failure_rate: 1.0,
        ..Behaviour::default()
    });
    let trace = "11111111111111111111111111111111";
    let response = call(
        &router,
        post_with(
            ask("Who answers?"),
            &[("traceparent", &format!("00-{trace}-2222222222222222-01"))],
        ),
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.text);

    let spans = spans_of(&receiver, trace, 3).await;
    let failed = one(&spans, "chat gpt-4o-mini");
    assert!(failed.status_error, "{failed:?}");
    assert_eq!(failed.attributes["error.type"], "500");
    let fallback = one(&spans, "chat gpt-4o-backup");
    assert!(!fallback.status_error);
    assert_eq!(fallback.parent_span_id, failed.parent_span_id);

    // The collector goes down: answers are unaffected, the flush returns.
    receiver
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    fake.set_behaviour(Behaviour::default());
    let response = call(&router, post_with(ask("Still there?"), &[])).await;
    assert_eq!(response.status, 200, "{}", response.text);
    tokio::task::spawn_blocking(traces::flush).await.unwrap();
    receiver
        .down
        .store(false, std::sync::atomic::Ordering::SeqCst);
}

/// Under Lambda each invocation sends its spans before it returns, but a collector that
/// hangs does not hold the answer: the invocation waits `TRACE_FLUSH_WAIT` at most.
#[tokio::test]
async fn a_hanging_collector_delays_a_lambda_invocation_by_the_flush_bound_at_most() {
    let (receiver, _fake, router, _held) = world().await;
    receiver
        .slow
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let event = lambda_runtime::LambdaEvent::new(
        chatkb_testing::load_event_json("chat-models.json"),
        lambda_runtime::Context::default(),
    );
    let started = std::time::Instant::now();
    let answer = shared::runtime::dispatch(router, None, event)
        .await
        .unwrap();
    let took = started.elapsed();
    receiver
        .slow
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(answer["statusCode"].as_u64().is_some(), "{answer}");
    // The collector answers after 3 s; the invocation did not wait for it.
    assert!(
        took < Duration::from_secs(2),
        "the invocation waited {took:?} for the collector"
    );
    // What could not be sent then is sent later.
    tokio::time::sleep(Duration::from_secs(3)).await;
}
