//! The relevance-floor evaluation, shared by the test that guards the default floor and
//! by `make eval`, which prints the sweep. Two collections with judged questions, each
//! with questions it has no answer to:
//! - Cranfield (`eval/cranfield`): 1,400 aeronautics abstracts, 225 long technical
//!   queries with graded judgments; off-topic: `eval/offtopic-queries.txt`.
//! - Support (`shared/tests/fixtures/kb_corpus.json`): 30 short help-desk articles, 30
//!   plain questions with the one document that answers each; off-topic: the same file,
//!   minus the lines it marks as answered by a help desk.
//!
//! Every question is searched once with no floor; a floor keeps the passages it admits
//! in the same order, so each floor's figures are read off the same runs, exactly as the
//! service filters them (a test checks that).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use shared::kb::search::{question_words, shares_a_word};
use shared::kb::{IngestRequest, KnowledgeBase, RelevanceFloor};

/// Chunks asked for per query: deep enough for ten distinct documents.
const DEPTH: usize = 30;
/// Passages in a chat prompt (the default `RETRIEVAL_TOP_K`).
const CONTEXT_PASSAGES: usize = 4;
/// Marks an off-topic line that a help desk does answer (left out of the support runs).
const HELP_DESK_ANSWERS: &str = "| help desk answers this";

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[derive(Deserialize)]
struct Document {
    #[serde(rename = "_id", alias = "id")]
    id: String,
    title: String,
    text: String,
}

/// A question and its graded judgments (document id -> gain, higher is more relevant).
struct Question {
    text: String,
    gains: HashMap<String, f64>,
}

/// Documents, judged questions and off-topic questions of one collection.
pub struct Collection {
    pub name: &'static str,
    documents: Vec<Document>,
    questions: Vec<Question>,
    offtopic: Vec<String>,
}

fn jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> Vec<T> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

/// The off-topic questions; `help_desk` leaves out those a help desk answers.
fn offtopic(help_desk: bool) -> Vec<String> {
    std::fs::read_to_string(repository().join("eval/offtopic-queries.txt"))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|l| !(help_desk && l.ends_with(HELP_DESK_ANSWERS)))
        .map(|l| l.trim_end_matches(HELP_DESK_ANSWERS).trim().to_string())
        .collect()
}

impl Collection {
    pub fn cranfield() -> Self {
        let dir = repository().join("eval/cranfield");
        let mut judgments: HashMap<String, HashMap<String, f64>> = HashMap::new();
        let qrels = std::fs::read_to_string(dir.join("qrels.tsv")).unwrap();
        for line in qrels.lines().skip(1) {
            let fields: Vec<&str> = line.split('\t').collect();
            let gain: f64 = fields[2].parse().unwrap();
            if gain > 0.0 {
                judgments
                    .entry(fields[0].to_string())
                    .or_default()
                    .insert(format!("cran-{}", fields[1]), gain);
            }
        }
        #[derive(Deserialize)]
        struct Query {
            #[serde(rename = "_id")]
            id: String,
            text: String,
        }
        let questions = jsonl::<Query>(&dir.join("queries.jsonl"))
            .into_iter()
            .map(|q| Question {
                gains: judgments.remove(&q.id).expect("every query is judged"),
                text: q.text,
            })
            .collect();
        let documents = jsonl::<Document>(&dir.join("corpus.jsonl"))
            .into_iter()
            // Two documents are empty; the rest get ids that say where they come from.
            .filter(|d| !d.text.trim().is_empty())
            .map(|d| Document {
                id: format!("cran-{}", d.id),
                ..d
            })
            .collect();
        Self {
            name: "Cranfield",
            documents,
            questions,
            offtopic: offtopic(false),
        }
    }

    pub fn support() -> Self {
        let path = repository().join("shared/tests/fixtures/kb_corpus.json");
        #[derive(Deserialize)]
        struct Corpus {
            documents: Vec<Document>,
            queries: Vec<Query>,
        }
        #[derive(Deserialize)]
        struct Query {
            query: String,
            expected: String,
        }
        let corpus: Corpus = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let questions = corpus
            .queries
            .into_iter()
            .map(|q| Question {
                text: q.query,
                gains: HashMap::from([(q.expected, 1.0)]),
            })
            .collect();
        Self {
            name: "Support",
            documents: corpus.documents,
            questions,
            offtopic: offtopic(true),
        }
    }

    /// Each judged question with the documents judged relevant to it.
    pub fn questions(&self) -> impl Iterator<Item = (&str, Vec<&str>)> {
        self.questions.iter().map(|q| {
            (
                q.text.as_str(),
                q.gains.keys().map(String::as_str).collect(),
            )
        })
    }

    /// Each judged question with its graded judgments (document id -> gain).
    pub fn judged(&self) -> impl Iterator<Item = (&str, &HashMap<String, f64>)> {
        self.questions.iter().map(|q| (q.text.as_str(), &q.gains))
    }

    /// Each document's id and its title and text as one string.
    pub fn texts(&self) -> impl Iterator<Item = (&str, String)> {
        self.documents
            .iter()
            .map(|d| (d.id.as_str(), format!("{} {}", d.title, d.text)))
    }

    pub fn sizes(&self) -> (usize, usize, usize) {
        (
            self.documents.len(),
            self.questions.len(),
            self.offtopic.len(),
        )
    }

    /// Ingests every document, 100 per batch.
    pub async fn ingest(&self, kb: &KnowledgeBase) {
        let requests: Vec<IngestRequest> = self
            .documents
            .iter()
            .map(|d| IngestRequest {
                id: Some(d.id.clone()),
                title: Some(d.title.clone()),
                text: d.text.clone(),
                content_type: "text/plain".into(),
                source: "relevance-eval".into(),
                metadata: serde_json::json!({}),
            })
            .collect();
        for batch in requests.chunks(100) {
            kb.ingest_batch(batch.to_vec(), "relevance-eval")
                .await
                .expect("the collection ingests");
        }
    }

    /// Searches every question once with the floor of `kb` (give it `RelevanceFloor::NONE`).
    pub async fn run(&self, kb: &KnowledgeBase) -> Runs {
        let mut judged = Vec::new();
        for q in &self.questions {
            judged.push((passages(kb, &q.text).await, q.gains.clone()));
        }
        let mut offtopic = Vec::new();
        for q in &self.offtopic {
            offtopic.push((q.clone(), passages(kb, q).await));
        }
        Runs { judged, offtopic }
    }
}

/// One returned passage as the floor sees it.
struct Passage {
    document_id: String,
    similarity: f64,
    shares_a_word: bool,
}

async fn passages(kb: &KnowledgeBase, question: &str) -> Vec<Passage> {
    let words = question_words(question);
    kb.retrieve(question, DEPTH)
        .await
        .expect("search")
        .into_iter()
        .map(|r| Passage {
            shares_a_word: shares_a_word(&words, &r.snippet),
            similarity: r.similarity.expect("hybrid search reports similarities"),
            document_id: r.document_id,
        })
        .collect()
}

/// The unfloored result lists of every question of one collection.
pub struct Runs {
    judged: Vec<(Vec<Passage>, HashMap<String, f64>)>,
    offtopic: Vec<(String, Vec<Passage>)>,
}

/// What one floor does to one collection's judged and off-topic questions.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    pub floor: RelevanceFloor,
    /// Mean document nDCG@10 over the judged questions.
    pub ndcg_at_10: f64,
    /// Judged-relevant passages among the first four (a chat prompt's), summed over
    /// the judged questions: what the floor must not cost.
    pub relevant_in_context: usize,
    /// Judged questions with a relevant document among their first three.
    pub found_in_top_3: usize,
    /// Share of off-topic questions left with no passage at all.
    pub offtopic_refused: f64,
}

/// The first ten distinct documents among the admitted passages.
fn top_documents(passages: &[Passage], floor: RelevanceFloor) -> Vec<&str> {
    let mut documents: Vec<&str> = Vec::new();
    for p in admitted(passages, floor) {
        if !documents.contains(&p.document_id.as_str()) {
            documents.push(&p.document_id);
            if documents.len() == 10 {
                break;
            }
        }
    }
    documents
}

fn admitted(passages: &[Passage], floor: RelevanceFloor) -> impl Iterator<Item = &Passage> {
    passages
        .iter()
        .filter(move |p| floor.admits(p.similarity, p.shares_a_word))
}

/// Normalised discounted cumulative gain of the first ten documents.
pub fn ndcg_at_10(ranked: &[&str], gains: &HashMap<String, f64>) -> f64 {
    let discount = |rank: usize| 1.0 / ((rank + 2) as f64).log2();
    let dcg: f64 = ranked
        .iter()
        .enumerate()
        .map(|(rank, id)| gains.get(*id).copied().unwrap_or(0.0) * discount(rank))
        .sum();
    let mut ideal: Vec<f64> = gains.values().copied().collect();
    ideal.sort_by(|a, b| b.total_cmp(a));
    let idcg: f64 = ideal
        .iter()
        .take(10)
        .enumerate()
        .map(|(rank, g)| g * discount(rank))
        .sum();
    dcg / idcg
}

impl Runs {
    pub fn at(&self, floor: RelevanceFloor) -> Figures {
        let (mut ndcg, mut relevant_in_context, mut found_in_top_3) = (0.0, 0, 0);
        for (passages, gains) in &self.judged {
            let ranked = top_documents(passages, floor);
            ndcg += ndcg_at_10(&ranked, gains);
            relevant_in_context += admitted(passages, floor)
                .take(CONTEXT_PASSAGES)
                .filter(|p| gains.contains_key(&p.document_id))
                .count();
            found_in_top_3 += usize::from(ranked.iter().take(3).any(|d| gains.contains_key(*d)));
        }
        let refused = self
            .offtopic
            .iter()
            .filter(|(_, passages)| admitted(passages, floor).next().is_none())
            .count();
        Figures {
            floor,
            ndcg_at_10: ndcg / self.judged.len() as f64,
            relevant_in_context,
            found_in_top_3,
            offtopic_refused: refused as f64 / self.offtopic.len() as f64,
        }
    }

    /// The off-topic questions that still get a passage, with their best similarity.
    pub fn offtopic_answered(&self, floor: RelevanceFloor) -> Vec<(&str, f64)> {
        let mut answered: Vec<(&str, f64)> = self
            .offtopic
            .iter()
            .filter_map(|(question, passages)| {
                let best = admitted(passages, floor)
                    .map(|p| p.similarity)
                    .reduce(f64::max)?;
                Some((question.as_str(), best))
            })
            .collect();
        answered.sort_by(|a, b| b.1.total_cmp(&a.1));
        answered
    }
}

/// The floors `make eval` measures (steps of 0.01): of those that keep 99 % of
/// Cranfield's judged-relevant passages in a chat prompt and every support question's
/// document in its top three, the one that turns away the most off-topic questions of
/// both collections (ties: the lower floors).
pub fn measure_floor(cranfield: &Runs, support: &Runs) -> RelevanceFloor {
    let cranfield_relevant = cranfield.at(RelevanceFloor::NONE).relevant_in_context as f64;
    let support_found = support.at(RelevanceFloor::NONE).found_in_top_3;
    let mut best: Option<(f64, RelevanceFloor)> = None;
    for min in 0..=50 {
        for shared in 0..=min {
            let floor = RelevanceFloor {
                min_similarity: f64::from(min) / 100.0,
                with_shared_word: f64::from(shared) / 100.0,
            };
            let (c, s) = (cranfield.at(floor), support.at(floor));
            if (c.relevant_in_context as f64) < 0.99 * cranfield_relevant
                || s.found_in_top_3 < support_found
            {
                continue;
            }
            let refused = c.offtopic_refused + s.offtopic_refused;
            if best.is_none_or(|(most, _)| refused > most + 1e-12) {
                best = Some((refused, floor));
            }
        }
    }
    best.map_or(RelevanceFloor::NONE, |(_, floor)| floor)
}
