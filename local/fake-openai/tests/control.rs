//! Steering the fake as the README does it: `curl -X PUT -d '{...}'`, which sends a form
//! content type (issue 12, finding 9: it used to get 415).

use fake_openai::FakeOpenAi;

#[tokio::test]
async fn the_behaviour_is_set_by_a_json_body_whatever_its_content_type() {
    let fake = FakeOpenAi::start().await;
    let control = fake.base_url.replace("/v1", "/_fake/behaviour");
    let client = reqwest::Client::new();
    let res = client
        .put(&control)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(r#"{"hang": true, "models": ["gpt-4o-mini"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let now: serde_json::Value = client
        .get(&control)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(now["hang"], true);
    assert_eq!(now["models"][0], "gpt-4o-mini");

    let bad = client.put(&control).body("hang=true").send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let error: serde_json::Value = bad.json().await.unwrap();
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not a behaviour"));
}
