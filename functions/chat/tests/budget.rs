//! Daily budgets under concurrency (issue 14, finding 7): requests reserve their worst
//! case before the model is called, in process and, with Redis, in one ledger shared by
//! every instance. Before, 20 concurrent requests all read "nothing spent yet" and all
//! reached the provider (36 times the budget).

mod support;

use std::sync::Arc;

use chatkb_testing::fake_openai::{Behaviour, FakeOpenAi};
use chatkb_testing::{call, TestDatabase, TestResponse};
use futures_util::future::join_all;
use serde_json::json;
use shared::AppContext;
use support::*;

/// Dollars per million tokens, large so that one answer costs cents: a request with
/// `max_tokens: 1000` may cost up to $0.20 (plus a little for its prompt).
const PRICES: &str = "gpt-4o-mini=100/200";
/// `max_tokens` of every request here.
const MAX_TOKENS: u64 = 1000;

/// The provider answers slowly, so the requests sent together are all in flight at once.
async fn slow_provider() -> FakeOpenAi {
    let fake = FakeOpenAi::start().await;
    fake.set_behaviour(Behaviour {
        latency_ms: 300,
        ..Behaviour::default()
    });
    fake
}

fn question(label: &str, i: usize) -> http::Request<axum::body::Body> {
    let mut body = ask(&format!("{label}: concurrent question number {i}"));
    body["max_tokens"] = json!(MAX_TOKENS);
    body["cache"] = json!(false);
    post(body)
}

/// Sends `count` requests to each router at once; returns every response.
async fn burst(routers: &[axum::Router], count: usize, label: &str) -> Vec<TestResponse> {
    let calls = routers.iter().enumerate().flat_map(|(r, router)| {
        (0..count).map(move |i| call(router, question(&format!("{label} {r}"), i)))
    });
    join_all(calls).await
}

fn admitted(responses: &[TestResponse]) -> usize {
    for res in responses {
        assert!(
            res.status == 200 || res.status == 429,
            "{}: {}",
            res.status,
            res.text
        );
    }
    responses.iter().filter(|r| r.status == 200).count()
}

fn vars<'a>(budget: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut vars = vec![
        ("LLM_PRICES", PRICES),
        ("DAILY_BUDGET_USD", budget),
        ("RETRIEVAL_ENABLED", "false"),
        ("MAX_CONCURRENT_SESSIONS", "100"),
    ];
    vars.extend_from_slice(extra);
    vars
}

#[tokio::test]
async fn twenty_concurrent_requests_on_a_budget_that_fits_one_admit_exactly_one() {
    // $0.30 fits one worst case ($0.20) and not two; $0.01 fits none, and a request
    // alone is still admitted while the budget is not spent (as before), but only one.
    for budget in ["0.30", "0.01"] {
        let db = TestDatabase::sqlite();
        let fake = slow_provider().await;
        let (router, _) = chat_router(&db, Some(&fake), &vars(budget, &[]));
        let responses = burst(std::slice::from_ref(&router), 20, "one instance").await;
        assert_eq!(admitted(&responses), 1, "budget ${budget}");
        assert_eq!(fake.chat_completions(), 1, "budget ${budget}");
        let refused = responses.iter().find(|r| r.status == 429).unwrap();
        let message = refused.json["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("reserved by requests in progress"),
            "{message}"
        );
        assert!(refused.headers.contains_key("retry-after"));
        // What the "key over budget" alarms watch.
        let exposition = shared::observability::metrics::render();
        assert!(
            exposition.contains("budget_rejections_total{reason=\"reserved\"}"),
            "{exposition}"
        );
        if budget == "0.30" {
            // Settled with its actual cost (cents), the first answer leaves room for
            // another: the reservation did not stay behind.
            let res = call(&router, question("afterwards", 0)).await;
            assert_eq!(res.status, 200, "{}", res.text);
        }
    }
}

/// A request that fails releases its reservation: the budget is whole again.
#[tokio::test]
async fn a_failed_request_releases_its_reservation() {
    let db = TestDatabase::sqlite();
    let fake = FakeOpenAi::start().await;
    let (router, _) = chat_router(&db, Some(&fake), &vars("0.30", &[]));
    let mut bad = ask("A request the model refuses");
    bad["max_tokens"] = json!(MAX_TOKENS);
    fake.set_behaviour(Behaviour {
        failure_rate: 1.0,
        failure_status: Some(400),
        ..Behaviour::default()
    });
    let res = call(&router, post(bad)).await;
    assert_eq!(res.status, 400, "{}", res.text);
    fake.set_behaviour(Behaviour::default());
    let res = call(&router, question("after a failure", 0)).await;
    assert_eq!(res.status, 200, "{}", res.text);
}

/// Two instances sharing Redis reserve in one ledger: together they admit one.
#[tokio::test]
async fn two_instances_sharing_redis_admit_exactly_one_between_them() {
    let db = TestDatabase::sqlite();
    let fake = slow_provider().await;
    let redis = chatkb_testing::test_redis_url();
    let prefix = format!("budget{}", chatkb_testing::free_port());
    let shared = [
        ("REDIS_URL", redis.as_str()),
        ("CACHE_PREFIX", prefix.as_str()),
    ];
    let (first, ctx) = chat_router(&db, Some(&fake), &vars("0.30", &shared));
    let (second, _) = chat_router(&db, Some(&fake), &vars("0.30", &shared));
    let responses = burst(&[first, second], 10, "two instances").await;
    assert_eq!(admitted(&responses), 1);
    assert_eq!(fake.chat_completions(), 1);
    let budget = shared::health::detailed(&ctx, false).await["budget"].clone();
    assert_eq!(budget["ledger"], "shared", "{budget}");
}

/// With Redis down, each instance decides alone on its share of the budget
/// (`BUDGET_INSTANCES`), and `/health/detailed` says so. Two instances, a budget that
/// fits two worst cases: one each, not two each.
#[tokio::test]
async fn with_redis_down_each_instance_admits_on_its_share_and_says_so() {
    let db = TestDatabase::sqlite();
    let fake = slow_provider().await;
    let closed = format!("redis://127.0.0.1:{}", chatkb_testing::free_port());
    let down = [
        ("REDIS_URL", closed.as_str()),
        ("BUDGET_INSTANCES", "2"),
        ("REDIS_TIMEOUT_MS", "200"),
    ];
    let (first, ctx): (axum::Router, Arc<AppContext>) =
        chat_router(&db, Some(&fake), &vars("0.50", &down));
    let (second, _) = chat_router(&db, Some(&fake), &vars("0.50", &down));
    let responses = burst(&[first, second], 10, "redis down").await;
    assert_eq!(admitted(&responses), 2);
    assert_eq!(fake.chat_completions(), 2);
    let budget = shared::health::detailed(&ctx, false).await["budget"].clone();
    assert_eq!(budget["ledger"], "per-instance", "{budget}");
    assert!(
        budget["fallback"].as_str().unwrap().contains("1/2"),
        "{budget}"
    );
}

/// While Redis is down, an instance's own spending counts against its share: the share
/// is taken of what was left at the last stored total, and does not grow as the instance
/// spends (it did, so one instance could spend the whole budget alone).
#[tokio::test]
async fn with_redis_down_one_instance_spends_no_more_than_its_share() {
    let db = TestDatabase::sqlite();
    let fake = FakeOpenAi::start().await;
    let closed = format!("redis://127.0.0.1:{}", chatkb_testing::free_port());
    let down = [
        ("REDIS_URL", closed.as_str()),
        ("BUDGET_INSTANCES", "2"),
        ("REDIS_TIMEOUT_MS", "200"),
        ("BUDGET_REFRESH_MS", "600000"),
    ];
    let (router, _) = chat_router(&db, Some(&fake), &vars("0.50", &down));
    let mut spent = 0.0;
    for i in 0..200 {
        let mut body = ask(&format!("Sequential question {i}"));
        body["cache"] = json!(false);
        let res = call(&router, post(body)).await;
        if res.status == 429 {
            break;
        }
        assert_eq!(res.status, 200, "{}", res.text);
        spent += (res.json["usage"]["prompt_tokens"].as_u64().unwrap() as f64 * 100.0
            + res.json["usage"]["completion_tokens"].as_u64().unwrap() as f64 * 200.0)
            / 1e6;
    }
    assert!(
        (0.2..0.3).contains(&spent),
        "half of $0.50, plus at most one answer: spent ${spent:.4}"
    );
}

/// Governance a deployment may hand to something in front of it (an API Gateway usage
/// plan, the provider's own accounting): `RATE_LIMIT_ENABLED=false` lifts the per-key
/// limit and `USAGE_RECORDING=false` keeps no usage rows. Authentication stays, and a
/// daily budget, which is counted from the rows, cannot be set without them.
#[tokio::test]
async fn the_rate_limit_and_usage_rows_can_be_turned_off_but_not_authentication() {
    let fake = FakeOpenAi::start().await;
    for db in TestDatabase::both().await {
        let limited = [("RATE_LIMIT_REQUESTS", "2"), ("USAGE_FLUSH_MS", "20")];
        let (on, _) = chat_router(&db, Some(&fake), &limited);
        let (off, _) = chat_router(
            &db,
            Some(&fake),
            &[
                limited[0],
                limited[1],
                ("RATE_LIMIT_ENABLED", "false"),
                ("USAGE_RECORDING", "false"),
            ],
        );
        let statuses = |router: axum::Router, label: &'static str| async move {
            let mut statuses = Vec::new();
            for i in 0..4 {
                let res = call(&router, post(ask(&format!("{label} question {i}")))).await;
                statuses.push(res.status);
            }
            statuses
        };
        // As shipped: the third request in the window is refused.
        assert_eq!(statuses(on.clone(), "on").await, [200, 200, 429, 429]);
        // Switched off: every request is answered, and none leaves a usage row.
        assert_eq!(statuses(off.clone(), "off").await, [200; 4]);
        let usage = || {
            http::Request::get("/v1/usage")
                .header("x-api-key", KEY)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        // The limited router's two answers are the only rows, once flushed (every 20 ms).
        let store = shared::chat::usage::sql_usage_store(db.database());
        let today = chrono::Utc::now().date_naive();
        let mut kept = 0;
        for _ in 0..200 {
            kept = store
                .totals("example", today, today)
                .await
                .unwrap()
                .requests;
            if kept >= 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let after = store
            .totals("example", today, today)
            .await
            .unwrap()
            .requests;
        assert_eq!((kept, after), (2, 2), "{:?}", db.kind);
        let res = call(&off, usage()).await;
        assert_eq!(res.status, 404, "{}", res.text);
        assert!(res.text.contains("USAGE_RECORDING=false"), "{}", res.text);
        // Without a key, still 401.
        let mut anonymous = post(ask("who am I?"));
        anonymous.headers_mut().remove("authorization");
        assert_eq!(call(&off, anonymous).await.status, 401);
    }
    let vars: std::collections::HashMap<String, String> = [
        ("DATABASE_URL", "sqlite::memory:"),
        ("USAGE_RECORDING", "false"),
        ("DAILY_BUDGET_USD", "5"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let refused = shared::config::Settings::from_vars("chat", &vars).unwrap_err();
    assert!(refused.to_string().contains("USAGE_RECORDING"), "{refused}");
}

/// The real usage store, writing 200 ms late: long enough for a read to arrive while a
/// periodic flush is still writing.
struct SlowWrites(Arc<dyn shared::chat::usage::UsageStore>);

#[async_trait::async_trait]
impl shared::chat::usage::UsageStore for SlowWrites {
    async fn insert(
        &self,
        batch: &[shared::chat::usage::UsageRecord],
    ) -> Result<(), shared::store::StoreError> {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        self.0.insert(batch).await
    }

    async fn totals(
        &self,
        key: &str,
        from: chrono::NaiveDate,
        to: chrono::NaiveDate,
    ) -> Result<shared::chat::usage::UsageTotals, shared::store::StoreError> {
        self.0.totals(key, from, to).await
    }
}

/// `/v1/usage` flushes before it reads. A flush that found the buffer empty because the
/// periodic flusher had just taken it used to return at once, so an answer the caller had
/// already received was missing from the totals until that write ended.
#[tokio::test]
async fn totals_include_rows_a_flush_in_progress_is_writing() {
    use shared::chat::usage::{BudgetPolicy, UsageRecord, UsageRecorder, UsageRows};
    let db = TestDatabase::sqlite();
    let store = Arc::new(SlowWrites(shared::chat::usage::sql_usage_store(
        db.database(),
    )));
    let budget = BudgetPolicy {
        daily_usd: None,
        refresh_every: std::time::Duration::from_secs(1),
        ledger: None,
        instances: 1,
    };
    let recorder = UsageRecorder::new(store, Default::default(), budget, UsageRows::Buffered);
    recorder
        .record(UsageRecord {
            key: "example".into(),
            model: "gpt-4o-mini".into(),
            prompt_tokens: 3,
            completion_tokens: 5,
            cached: false,
            cost_usd: 0.0,
            at: chrono::Utc::now(),
        })
        .await;
    // The periodic flush takes the row and starts writing it.
    let periodic = {
        let recorder = recorder.clone();
        tokio::spawn(async move { recorder.flush().await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let today = chrono::Utc::now().date_naive();
    let totals = recorder.totals("example", today, today).await.unwrap();
    assert_eq!(totals.requests, 1, "{totals:?}");
    periodic.await.unwrap().unwrap();
}
