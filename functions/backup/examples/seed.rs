//! Fills a database with the backup tests' data at a chosen size, for the backup
//! benchmark (scripts/backup-bench.sh): `seed <DATABASE_URL> <documents> [dims]`.

#[path = "../tests/support/mod.rs"]
mod support;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(url), Some(documents)) = (args.get(1), args.get(2).and_then(|n| n.parse().ok()))
    else {
        eprintln!("usage: seed <DATABASE_URL> <documents> [dims]");
        std::process::exit(2);
    };
    let dims = args.get(3).and_then(|n| n.parse().ok()).unwrap_or(384);
    let url = shared::store::DatabaseUrl::parse(url).expect("a sqlite:// or postgres:// URL");
    let db = shared::store::Database::connect_lazy_with(
        url.expose(),
        url.kind(),
        2,
        std::time::Duration::from_secs(30),
    )
    .expect("database");
    support::seed_sized(&db, documents, dims).await;
    println!("seeded {documents} documents ({} chunks of {dims} dimensions) and about 5,020 rows in the other tables", documents * 4);
}
