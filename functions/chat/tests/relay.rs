//! The stream relay against the project's fake OpenAI server: what reaches the caller of
//! each chunk the provider sent (C4).

mod support;

use chatkb_testing::call;
use chatkb_testing::fake_openai::{spaced_json, Behaviour, FakeOpenAi};
use chatkb_testing::TestDatabase;
use serde_json::{json, Value};
use support::*;

/// Chunks the gateway does not change are relayed as the provider wrote them, with no
/// second serialisation; the first, which carries `sources`, is written anew. The fake
/// writes its events spaced, as Python's `json.dumps` does, so the two are told apart.
#[tokio::test]
async fn unchanged_chunks_are_relayed_as_the_provider_wrote_them() {
    let fake = FakeOpenAi::start().await;
    fake.set_behaviour(Behaviour {
        spaced_stream: true,
        ..Behaviour::default()
    });
    let db = TestDatabase::sqlite();
    let (router, _) = chat_router(&db, Some(&fake), &[]);
    for include_usage in [false, true] {
        let mut body = ask(&format!("Relay me (usage asked: {include_usage})"));
        body["stream"] = json!(true);
        if include_usage {
            body["stream_options"] = json!({"include_usage": true});
        }
        let res = call(&router, post(body)).await;
        assert_eq!(res.status, 200, "{}", res.text);
        let events = sse_events(&res.text);
        let (done, chunks) = events.split_last().expect("events");
        assert_eq!(done, "[DONE]");
        assert!(chunks.len() > 3, "{}", res.text);

        // The first: changed (it carries the sources), written by the gateway.
        assert!(chunks[0].contains("\"sources\":["), "{}", chunks[0]);
        assert!(!chunks[0].contains("\": "), "{}", chunks[0]);
        let parsed: Vec<Value> = chunks
            .iter()
            .map(|c| serde_json::from_str(c).expect("a JSON chunk"))
            .collect();
        // The rest byte for byte as the fake wrote them, `"usage": null` included (the
        // gateway always asks for usage; a null says nothing the caller did not ask for).
        for (chunk, value) in chunks[1..].iter().zip(&parsed[1..]) {
            assert_eq!(chunk, &spaced_json(value));
            assert!(value.get("usage").is_some(), "{chunk}");
        }
        // A usage the caller did not ask for is still taken out: only a null passes.
        let with_usage = parsed.iter().filter(|c| c["usage"].is_object()).count();
        assert_eq!(with_usage, usize::from(include_usage), "{}", res.text);
        let text = streamed_text(&res.text);
        assert!(text.contains("Relay me"), "{text}");
    }
}
