//! `make eval`, for the configured embedder (`EMBEDDINGS_*` as the functions read them;
//! unset: the offline embedder), on the Cranfield and support collections:
//! - ranking quality on both stores: nDCG@10 and Recall@10 of the keyword list, the
//!   vector list and their fusion (by vector weight), beside a plain BM25;
//! - what a relevance floor costs in relevant passages and what it gains in off-topic
//!   questions turned away, and the floor to give `RETRIEVAL_MIN_SIMILARITY` and
//!   `RETRIEVAL_MIN_SIMILARITY_SHARED_WORD` for that embedder.

// Shared with the tests that guard the defaults; some of it only the tests use.
#[allow(dead_code)]
#[path = "../tests/support/ranking.rs"]
mod ranking;
#[allow(dead_code)]
#[path = "../tests/support/relevance.rs"]
mod relevance;

use std::collections::HashMap;

use chatkb_testing::TestDatabase;
use ranking::{Quality, RankingRuns};
use relevance::{Collection, Figures};
use shared::cache::{CacheConfig, TieredCache};
use shared::config::Settings;
use shared::kb::store::knowledge_store;
use shared::kb::text::ChunkConfig;
use shared::kb::{Fusion, KnowledgeBase, RelevanceFloor};
use shared::store::DatabaseKind;

/// A knowledge base with no floor on `db`, the collection ingested.
async fn loaded(settings: &Settings, collection: &Collection, db: &TestDatabase) -> KnowledgeBase {
    let kb = KnowledgeBase::new(
        knowledge_store(&db.database()),
        shared::services::embedder(&settings.kb, &settings.retry),
        TieredCache::new(CacheConfig::default(), None),
        ChunkConfig {
            size: settings.kb.chunk_size,
            overlap: settings.kb.chunk_overlap,
        },
    )
    .with_relevance_floor(RelevanceFloor::NONE)
    .with_fusion(settings.kb.fusion());
    let started = std::time::Instant::now();
    collection.ingest(&kb).await;
    let (documents, judged, offtopic) = collection.sizes();
    println!(
        "{} on {:?}: {documents} documents ingested in {:.1} s; {judged} judged and {offtopic} off-topic questions; embedder {}",
        collection.name,
        db.kind,
        started.elapsed().as_secs_f64(),
        kb.embedder().model()
    );
    kb
}

fn figures(q: Quality) -> String {
    format!("{:.4} / {:.4}", q.ndcg_at_10, q.recall_at_10)
}

/// The ranking tables: each list alone and fused, per collection and store.
fn print_ranking(runs: &[(String, RankingRuns, Quality)], fusion: Fusion) {
    println!();
    println!(
        "Ranking, nDCG@10 / Recall@10 ({} chunks per list; hybrid at vector weight {:.2}):",
        ranking::DEPTH,
        fusion.vector_weight
    );
    println!(
        "{:<24} {:<17} {:<17} {:<17} {:<17}",
        "collection, store", "keyword", "vector", "hybrid", "plain BM25"
    );
    for (name, r, bm25) in runs {
        println!(
            "{name:<24} {:<17} {:<17} {:<17} {:<17}",
            figures(r.keyword()),
            figures(r.vector()),
            figures(r.hybrid(fusion)),
            figures(*bm25)
        );
    }
    println!();
    println!(
        "Hybrid nDCG@10 by vector weight (0: keyword order, vector hits after; 1: vector order):"
    );
    print!("{:<8}", "weight");
    for (name, _, _) in runs {
        print!(" {name:<24}");
    }
    println!();
    for step in [0, 5, 10, 15, 20, 25, 30, 40, 50, 60, 70, 80, 90, 100] {
        let weight = Fusion {
            vector_weight: f64::from(step) / 100.0,
        };
        print!("{:<8.2}", weight.vector_weight);
        for (_, r, _) in runs {
            print!(" {:<24.4}", r.hybrid(weight).ndcg_at_10);
        }
        println!();
    }
}

fn row(label: &str, c: Figures, s: Figures) {
    println!(
        "{label:<14} {:.4}   {:>4}        {:>5.1} %     {:>3}/30       {:>5.1} %",
        c.ndcg_at_10,
        c.relevant_in_context,
        c.offtopic_refused * 100.0,
        s.found_in_top_3,
        s.offtopic_refused * 100.0
    );
}

fn floor_label(f: RelevanceFloor) -> String {
    if f == RelevanceFloor::NONE {
        "none".into()
    } else {
        format!("{:.2} / {:.2}", f.min_similarity, f.with_shared_word)
    }
}

#[tokio::main]
async fn main() {
    let vars: HashMap<String, String> = std::env::vars().collect();
    let settings = Settings::from_vars("ingest", &vars).unwrap_or_else(|err| {
        eprintln!("{err}");
        std::process::exit(2);
    });
    let collections = [Collection::cranfield(), Collection::support()];
    let mut ranked = Vec::new();
    let mut floor_runs = Vec::new();
    for collection in &collections {
        let bm25 = ranking::plain_bm25(collection);
        for db in [TestDatabase::sqlite(), TestDatabase::postgres().await] {
            let kb = loaded(&settings, collection, &db).await;
            let name = format!("{}, {:?}", collection.name, db.kind);
            ranked.push((name, ranking::ranking_runs(collection, &kb).await, bm25));
            if db.kind == DatabaseKind::Sqlite {
                floor_runs.push(collection.run(&kb).await);
            }
        }
    }
    print_ranking(&ranked, settings.kb.fusion());
    let (cranfield, support) = (&floor_runs[0], &floor_runs[1]);
    let measured = relevance::measure_floor(cranfield, support);
    println!();
    println!("                 Cranfield                           Support");
    println!("floor          nDCG@10  relevant in  off-topic    found in   off-topic");
    println!("min / shared            top 4        refused      top 3      refused");
    let mut floors = vec![RelevanceFloor::NONE];
    for step in 0..=8 {
        let min_similarity = f64::from(step) * 0.05;
        floors.push(RelevanceFloor {
            min_similarity,
            with_shared_word: min_similarity,
        });
        if min_similarity > measured.with_shared_word {
            floors.push(RelevanceFloor {
                min_similarity,
                with_shared_word: measured.with_shared_word,
            });
        }
    }
    for floor in floors {
        row(&floor_label(floor), cranfield.at(floor), support.at(floor));
    }
    println!();
    row(
        &floor_label(measured),
        cranfield.at(measured),
        support.at(measured),
    );
    println!("  ^ measured: keeps 99 % of Cranfield's relevant passages in the top 4 and every support question's document in its top 3, and turns away the most off-topic questions");
    for (name, runs) in [("Cranfield", cranfield), ("Support", support)] {
        println!("off-topic questions {name} still answers at the measured floor:");
        for (question, best) in runs.offtopic_answered(measured) {
            println!("  {best:.3}  {question}");
        }
    }
    println!(
        "RETRIEVAL_MIN_SIMILARITY={:.2} RETRIEVAL_MIN_SIMILARITY_SHARED_WORD={:.2}",
        measured.min_similarity, measured.with_shared_word
    );
    let default = RelevanceFloor::OFFLINE_DEFAULT;
    println!(
        "(the offline embedder's built-in default: {:.2} / {:.2})",
        default.min_similarity, default.with_shared_word
    );
}
