//! Retrieval quality of the offline embedder on the project's fixture corpus
//! (30 documents on distinct topics, 30 plain queries).

use shared::kb::embed::{cosine, OfflineEmbedder};
use shared::kb::text::{chunk, normalise, ChunkConfig};

#[derive(serde::Deserialize)]
struct Corpus {
    documents: Vec<Doc>,
    queries: Vec<Query>,
}

#[derive(serde::Deserialize)]
struct Doc {
    id: String,
    title: String,
    text: String,
}

#[derive(serde::Deserialize)]
struct Query {
    query: String,
    expected: String,
}

fn corpus() -> Corpus {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kb_corpus.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_offline_embedder_ranks_the_relevant_document_first_for_plain_queries() {
    let corpus = corpus();
    assert!(corpus.documents.len() >= 30 && corpus.queries.len() >= 30);
    let embedder = OfflineEmbedder::new(512);
    let mut chunks = Vec::new();
    for doc in &corpus.documents {
        let text = normalise(&format!("{}\n\n{}", doc.title, doc.text));
        for c in chunk(
            &doc.id,
            &text,
            ChunkConfig {
                size: 400,
                overlap: 60,
            },
        ) {
            chunks.push((doc.id.clone(), embedder.vector(&c.text)));
        }
    }
    let mut first = 0;
    let mut misses = Vec::new();
    for q in &corpus.queries {
        let qv = embedder.vector(&q.query);
        let mut scored: Vec<(f32, &str)> = chunks
            .iter()
            .map(|(id, v)| (cosine(&qv, v), id.as_str()))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut ranked: Vec<&str> = Vec::new();
        for (_, id) in scored {
            if !ranked.contains(&id) {
                ranked.push(id);
            }
        }
        let position = ranked.iter().position(|id| *id == q.expected).unwrap();
        if position == 0 {
            first += 1;
        }
        if position >= 3 {
            misses.push(format!(
                "{:?} -> {} at {}",
                q.query,
                q.expected,
                position + 1
            ));
        }
    }
    println!("vector-only: {first}/{} first", corpus.queries.len());
    assert!(misses.is_empty(), "not in the top 3: {misses:#?}");
    assert!(
        first * 10 >= corpus.queries.len() * 8,
        "only {first}/{} first",
        corpus.queries.len()
    );
}
