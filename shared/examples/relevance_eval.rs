//! `make eval`: what a relevance floor costs in relevant passages and what it gains in
//! off-topic questions turned away, on the Cranfield and support collections, for the
//! configured embedder (`EMBEDDINGS_*` as the functions read them; unset: the offline
//! embedder). Prints the sweep and the floor to give `RETRIEVAL_MIN_SIMILARITY` and
//! `RETRIEVAL_MIN_SIMILARITY_SHARED_WORD` for that embedder.

// Shared with the test that guards the default; some of it only the test uses.
#[allow(dead_code)]
#[path = "../tests/support/relevance.rs"]
mod relevance;

use std::collections::HashMap;

use chatkb_testing::TestDatabase;
use relevance::{Collection, Figures, Runs};
use shared::cache::{CacheConfig, TieredCache};
use shared::config::Settings;
use shared::kb::store::knowledge_store;
use shared::kb::text::ChunkConfig;
use shared::kb::{KnowledgeBase, RelevanceFloor};

async fn unfloored_runs(settings: &Settings, collection: &Collection) -> Runs {
    let db = TestDatabase::sqlite();
    let kb = KnowledgeBase::new(
        knowledge_store(&db.database()),
        shared::services::embedder(&settings.kb, &settings.retry),
        TieredCache::new(CacheConfig::default(), None),
        ChunkConfig {
            size: settings.kb.chunk_size,
            overlap: settings.kb.chunk_overlap,
        },
    )
    .with_relevance_floor(RelevanceFloor::NONE);
    let started = std::time::Instant::now();
    collection.ingest(&kb).await;
    let (documents, judged, offtopic) = collection.sizes();
    println!(
        "{}: {documents} documents ingested in {:.1} s; {judged} judged and {offtopic} off-topic questions; embedder {}",
        collection.name,
        started.elapsed().as_secs_f64(),
        kb.embedder().model()
    );
    collection.run(&kb).await
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
    let cranfield = unfloored_runs(&settings, &Collection::cranfield()).await;
    let support = unfloored_runs(&settings, &Collection::support()).await;
    let measured = relevance::measure_floor(&cranfield, &support);
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
    for (name, runs) in [("Cranfield", &cranfield), ("Support", &support)] {
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
