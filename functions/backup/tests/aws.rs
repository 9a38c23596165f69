//! Backups on AWS services, against moto's server: the S3 destination (multipart for
//! large files), the DynamoDB session and idempotency tables exported and put back,
//! and ElastiCache snapshots created, recorded and deleted by retention. One test per
//! binary: moto's endpoint is set in the process environment.

mod support;

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use chatkb_testing::{context, ServerProcess, TestDatabase};
use shared::backup::Quiet;
use shared::store::blobs::{BlobStore, S3Blobs};

async fn create_table(
    client: &aws_sdk_dynamodb::Client,
    name: &str,
    keys: &[(&str, KeyType, ScalarAttributeType)],
) {
    let mut request = client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest);
    for (key, kind, scalar) in keys {
        request = request
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(*key)
                    .key_type(kind.clone())
                    .build()
                    .unwrap(),
            )
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(*key)
                    .attribute_type(scalar.clone())
                    .build()
                    .unwrap(),
            );
    }
    request.send().await.expect("create table");
}

async fn scan_all(client: &aws_sdk_dynamodb::Client, table: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let page = client
            .scan()
            .table_name(table)
            .set_exclusive_start_key(start)
            .send()
            .await
            .unwrap();
        items.extend(page.items().iter().map(|i| {
            format!(
                "{:?}",
                i.iter().collect::<std::collections::BTreeMap<_, _>>()
            )
        }));
        match page.last_evaluated_key {
            Some(key) if !key.is_empty() => start = Some(key),
            _ => break,
        }
    }
    items.sort();
    items
}

#[tokio::test]
async fn s3_dynamodb_and_elasticache_backups_against_the_aws_emulator() {
    let (_moto, _endpoint) = ServerProcess::moto().await;
    let config = shared::store::aws::load_config().await;
    let s3 = aws_sdk_s3::Client::new(&config);
    let dynamo = aws_sdk_dynamodb::Client::new(&config);
    let elasticache = aws_sdk_elasticache::Client::new(&config);
    s3.create_bucket()
        .bucket("chatkb-backups")
        .send()
        .await
        .unwrap();

    // Multipart: 12 MiB in 1 MiB writes, 5 MiB parts; an aborted upload leaves nothing.
    let blobs = S3Blobs::new("chatkb-backups", "multipart").with_part_bytes(5 * 1024 * 1024);
    let chunk: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let mut writer = blobs.writer("big/file.bin").await.unwrap();
    for _ in 0..12 {
        writer.write(&chunk).await.unwrap();
    }
    assert_eq!(writer.finish().await.unwrap(), 12 * 1024 * 1024);
    let back = blobs.get("big/file.bin").await.unwrap();
    assert_eq!(back.len(), 12 * 1024 * 1024);
    assert!(back.chunks(chunk.len()).all(|c| c == chunk.as_slice()));
    let mut aborted = blobs.writer("big/aborted.bin").await.unwrap();
    for _ in 0..6 {
        aborted.write(&chunk).await.unwrap();
    }
    let pending = s3
        .list_multipart_uploads()
        .bucket("chatkb-backups")
        .send()
        .await
        .unwrap();
    assert_eq!(
        pending.uploads().len(),
        1,
        "the aborted upload had started its parts"
    );
    aborted.abort().await;
    let pending = s3
        .list_multipart_uploads()
        .bucket("chatkb-backups")
        .send()
        .await
        .unwrap();
    assert!(
        pending.uploads().is_empty(),
        "abort left parts behind: {:?}",
        pending.uploads()
    );
    let listed = blobs.list().await.unwrap();
    assert_eq!(
        listed.iter().map(|b| b.key.as_str()).collect::<Vec<_>>(),
        ["big/file.bin"]
    );

    // The stores: sessions (two keys, 1.5 MB so the scan pages) and idempotency records.
    create_table(
        &dynamo,
        "chatkb-sessions",
        &[
            ("pk", KeyType::Hash, ScalarAttributeType::S),
            ("sk", KeyType::Range, ScalarAttributeType::N),
        ],
    )
    .await;
    create_table(
        &dynamo,
        "chatkb-idempotency",
        &[("key", KeyType::Hash, ScalarAttributeType::S)],
    )
    .await;
    for i in 0..300 {
        dynamo
            .put_item()
            .table_name("chatkb-sessions")
            .item(
                "pk",
                AttributeValue::S(format!("key-{}#session-{}", i % 3, i % 17)),
            )
            .item("sk", AttributeValue::N(i.to_string()))
            .item(
                "message",
                AttributeValue::S(format!("{} {}", support::AWKWARD, "x".repeat(5000))),
            )
            .item("expires_at", AttributeValue::N("1900000000".into()))
            .item("tags", AttributeValue::Ss(vec!["a".into(), "é".into()]))
            .item("raw", AttributeValue::B(vec![0u8, 1, 254, 255].into()))
            .item(
                "meta",
                AttributeValue::M(HashMap::from([(
                    "n".to_string(),
                    AttributeValue::Null(true),
                )])),
            )
            .send()
            .await
            .unwrap();
    }
    for i in 0..40 {
        dynamo
            .put_item()
            .table_name("chatkb-idempotency")
            .item("key", AttributeValue::S(format!("idem-{i}")))
            .item("status", AttributeValue::S("COMPLETED".into()))
            .send()
            .await
            .unwrap();
    }
    let sessions_before = scan_all(&dynamo, "chatkb-sessions").await;
    elasticache
        .create_replication_group()
        .replication_group_id("chatkb-redis")
        .replication_group_description("test")
        .send()
        .await
        .unwrap();
    // A snapshot of ours from long ago, and someone else's.
    for name in ["chatkb-backup-20200101-000000-abcdef", "manual-keep-me"] {
        elasticache
            .create_snapshot()
            .replication_group_id("chatkb-redis")
            .snapshot_name(name)
            .send()
            .await
            .unwrap();
    }

    let db = TestDatabase::sqlite();
    support::seed(&db.database(), 10).await;
    let vars = [
        ("DATABASE_URL", db.url.as_str()),
        ("BACKUP_URL", "s3://chatkb-backups/prod/chatkb"),
        ("SESSIONS_TABLE", "chatkb-sessions"),
        ("IDEMPOTENCY_TABLE", "chatkb-idempotency"),
        ("ELASTICACHE_REPLICATION_GROUP_ID", "chatkb-redis"),
    ];
    let backups = context("backup", &vars).backups();
    let manifest = backups.run("test", &Quiet).await.unwrap();
    assert_eq!(manifest.dynamodb.len(), 2);
    assert_eq!(manifest.dynamodb[0].rows, 300);
    assert_eq!(
        manifest.dynamodb[0].table.as_deref(),
        Some("chatkb-sessions")
    );
    assert_eq!(manifest.dynamodb[1].rows, 40);
    let snapshot = manifest.elasticache_snapshot.clone().unwrap();
    assert_eq!(snapshot.name, manifest.id.snapshot_name());
    assert_eq!(snapshot.status, "available");
    assert_eq!(snapshot.source, "elasticache:chatkb-redis");
    let objects = s3
        .list_objects_v2()
        .bucket("chatkb-backups")
        .prefix("prod/chatkb/")
        .send()
        .await
        .unwrap();
    let keys: Vec<&str> = objects.contents().iter().filter_map(|o| o.key()).collect();
    assert!(
        keys.contains(&format!("prod/chatkb/{}/manifest.json", manifest.id).as_str()),
        "{keys:?}"
    );
    assert_eq!(keys.len(), 8 + 2 + 1, "{keys:?}");
    backups.verify("latest", &Quiet).await.unwrap();

    // Retention deletes our old snapshot, keeps the new one and anyone else's.
    let report = backups.prune().await.unwrap();
    assert_eq!(
        report.snapshots_deleted,
        ["chatkb-backup-20200101-000000-abcdef"]
    );
    let left = elasticache
        .describe_snapshots()
        .replication_group_id("chatkb-redis")
        .send()
        .await
        .unwrap();
    let mut names: Vec<&str> = left
        .snapshots()
        .iter()
        .filter_map(|s| s.snapshot_name())
        .collect();
    names.sort();
    assert_eq!(names, [snapshot.name.as_str(), "manual-keep-me"]);

    // Lost: the items and the database. Restored into a new database and the same tables.
    let idempotency_before = scan_all(&dynamo, "chatkb-idempotency").await;
    for item in dynamo
        .scan()
        .table_name("chatkb-idempotency")
        .send()
        .await
        .unwrap()
        .items()
    {
        dynamo
            .delete_item()
            .table_name("chatkb-idempotency")
            .set_key(Some(HashMap::from([(
                "key".to_string(),
                item["key"].clone(),
            )])))
            .send()
            .await
            .unwrap();
    }
    let refused = backups.restore("latest", false, &Quiet).await.unwrap_err();
    assert!(
        refused.to_string().contains("dynamodb:chatkb-sessions"),
        "{refused}"
    );
    let fresh = TestDatabase::sqlite();
    let fresh_vars: Vec<(&str, &str)> = vars
        .iter()
        .map(|&(k, v)| {
            if k == "DATABASE_URL" {
                (k, fresh.url.as_str())
            } else {
                (k, v)
            }
        })
        .collect();
    let restorer = context("backup", &fresh_vars).backups();
    let mut start = None;
    loop {
        let page = dynamo
            .scan()
            .table_name("chatkb-sessions")
            .set_exclusive_start_key(start)
            .send()
            .await
            .unwrap();
        for item in page.items() {
            let key = HashMap::from([
                ("pk".to_string(), item["pk"].clone()),
                ("sk".to_string(), item["sk"].clone()),
            ]);
            dynamo
                .delete_item()
                .table_name("chatkb-sessions")
                .set_key(Some(key))
                .send()
                .await
                .unwrap();
        }
        match page.last_evaluated_key {
            Some(key) if !key.is_empty() => start = Some(key),
            _ => break,
        }
    }
    assert!(scan_all(&dynamo, "chatkb-sessions").await.is_empty());
    let report = restorer.restore("latest", true, &Quiet).await.unwrap();
    assert_eq!(
        report.dynamodb.iter().map(|t| t.rows).collect::<Vec<_>>(),
        [300, 40]
    );
    assert_eq!(scan_all(&dynamo, "chatkb-sessions").await, sessions_before);
    assert_eq!(
        scan_all(&dynamo, "chatkb-idempotency").await,
        idempotency_before
    );
    assert_eq!(
        support::fingerprint(&fresh.database()).await,
        support::fingerprint(&db.database()).await
    );
}
