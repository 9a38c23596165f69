//! Ranking quality (issue 16, item 4), shared by the test that guards the fusion and by
//! `make eval`: nDCG@10 and Recall@10 of the keyword list alone, the vector list alone
//! and their fusion at any weight, each read off the same candidates of every judged
//! question, so the three compare on exactly what the service fuses. A plain BM25 over
//! the same texts is the reference.

use std::collections::{HashMap, HashSet};

use shared::kb::rank::Evidence;
use shared::kb::{Fusion, KnowledgeBase};

use super::relevance::{ndcg_at_10, Collection};

/// Chunks each list brings per question: what a search for ten results asks for.
pub const DEPTH: usize = 40;

/// Mean figures over a collection's judged questions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quality {
    pub ndcg_at_10: f64,
    pub recall_at_10: f64,
}

/// One question's candidates: each one's document, the two lists' orders and evidence.
struct Judged {
    documents: Vec<String>,
    evidence: Vec<Evidence>,
    keyword: Vec<usize>,
    vector: Vec<usize>,
    gains: HashMap<String, f64>,
}

/// The candidates of every judged question of one collection.
pub struct RankingRuns {
    judged: Vec<Judged>,
}

/// Searches every judged question once, keeping both lists before fusion.
pub async fn ranking_runs(collection: &Collection, kb: &KnowledgeBase) -> RankingRuns {
    let mut judged = Vec::new();
    for (question, gains) in collection.judged() {
        let candidates = kb
            .candidates(question, DEPTH, None)
            .await
            .expect("candidates");
        assert_eq!(candidates.mode, "hybrid", "the embedder answers");
        judged.push(Judged {
            keyword: candidates.keyword_order(),
            vector: candidates.vector_order(),
            documents: candidates.hits.into_iter().map(|h| h.document_id).collect(),
            evidence: candidates.evidence,
            gains: gains.clone(),
        });
    }
    RankingRuns { judged }
}

/// The first ten distinct documents of passages in this order.
fn top_documents(documents: &[String], order: impl Iterator<Item = usize>) -> Vec<&str> {
    let mut top: Vec<&str> = Vec::new();
    for i in order {
        if !top.contains(&documents[i].as_str()) {
            top.push(&documents[i]);
            if top.len() == 10 {
                break;
            }
        }
    }
    top
}

fn recall_at_10(ranked: &[&str], gains: &HashMap<String, f64>) -> f64 {
    let found = ranked.iter().filter(|d| gains.contains_key(**d)).count();
    found as f64 / gains.len() as f64
}

/// Mean nDCG@10 and Recall@10 of ranked documents against their judgments.
pub fn quality<'a>(
    ranked: impl Iterator<Item = (Vec<&'a str>, &'a HashMap<String, f64>)>,
) -> Quality {
    let (mut ndcg, mut recall, mut questions) = (0.0, 0.0, 0);
    for (documents, gains) in ranked {
        ndcg += ndcg_at_10(&documents, gains);
        recall += recall_at_10(&documents, gains);
        questions += 1;
    }
    Quality {
        ndcg_at_10: ndcg / questions as f64,
        recall_at_10: recall / questions as f64,
    }
}

impl RankingRuns {
    fn measure(&self, order: impl Fn(&Judged) -> Vec<usize>) -> Quality {
        quality(self.judged.iter().map(|j| {
            let documents = top_documents(&j.documents, order(j).into_iter());
            (documents, &j.gains)
        }))
    }

    /// The store's keyword list alone.
    pub fn keyword(&self) -> Quality {
        self.measure(|j| j.keyword.clone())
    }

    /// The vector list alone.
    pub fn vector(&self) -> Quality {
        self.measure(|j| j.vector.clone())
    }

    /// Both lists fused as the service fuses them.
    pub fn hybrid(&self, fusion: Fusion) -> Quality {
        self.measure(|j| {
            fusion
                .order(&j.evidence)
                .into_iter()
                .map(|(i, _)| i)
                .collect()
        })
    }
}

/// Lower-cased runs of ASCII letters and digits without stop words: the plain BM25's
/// words, split as the dataset's reference script splits them (no stemming).
fn words(text: &str, stop: &HashSet<&str>) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty() && !stop.contains(w))
        .map(str::to_string)
        .collect()
}

/// The reference script's stop words (`eval/cranfield/bm25_baseline.py`).
const STOP_WORDS: &str = "\
a about above after again against all also am an and any are as at be because been \
before being below between both but by can could did do does doing done down during \
each either etc few for from further had has have having he her here hers herself him \
himself his how however i if in into is it its itself just may me might more most must \
my myself no nor not now of off on once only or other others our ours ourselves out \
over own same shall she should so some such than that the their theirs them themselves \
then there therefore these they this those through thus to too under until up upon us \
very was we were what when where whether which while who whom whose why will with \
within without would yet you your yours yourself yourselves ";

/// A plain BM25 (k1 1.2, b 0.75) over whole documents, title and text, as
/// `eval/cranfield/bm25_baseline.py` computes it: the reference the stores' keyword
/// ranking is compared with.
pub fn plain_bm25(collection: &Collection) -> Quality {
    let (k1, b) = (1.2, 0.75);
    let stop: HashSet<&str> = STOP_WORDS.split_whitespace().collect();
    let words = |text: &str| words(text, &stop);
    let documents: Vec<(&str, HashMap<String, f64>, f64)> = collection
        .texts()
        .map(|(id, text)| {
            let words = words(&text);
            let mut tf: HashMap<String, f64> = HashMap::new();
            for w in &words {
                *tf.entry(w.clone()).or_default() += 1.0;
            }
            (id, tf, words.len() as f64)
        })
        .collect();
    let n = documents.len() as f64;
    let average = documents.iter().map(|d| d.2).sum::<f64>() / n;
    let mut df: HashMap<&str, f64> = HashMap::new();
    for (_, tf, _) in &documents {
        for w in tf.keys() {
            *df.entry(w.as_str()).or_default() += 1.0;
        }
    }
    let ranked: Vec<(Vec<&str>, &HashMap<String, f64>)> = collection
        .judged()
        .map(|(question, gains)| {
            let mut terms: HashMap<String, f64> = HashMap::new();
            for w in words(question) {
                *terms.entry(w).or_default() += 1.0;
            }
            let mut scored: Vec<(f64, &str)> = documents
                .iter()
                .map(|(id, tf, length)| {
                    let score = terms
                        .iter()
                        .filter_map(|(t, count)| Some((count, tf.get(t)?, df[t.as_str()])))
                        .map(|(count, f, df)| {
                            let idf = ((n - df + 0.5) / (df + 0.5) + 1.0).ln();
                            count * idf * f * (k1 + 1.0)
                                / (f + k1 * (1.0 - b + b * length / average))
                        })
                        .sum::<f64>();
                    (score, *id)
                })
                .filter(|(score, _)| *score > 0.0)
                .collect();
            // Ties by the id's number, as the script breaks them.
            let number = |id: &str| {
                id.trim_start_matches(|c: char| !c.is_ascii_digit())
                    .parse::<u64>()
                    .ok()
            };
            scored.sort_by(|a, b| {
                b.0.total_cmp(&a.0)
                    .then(number(a.1).cmp(&number(b.1)))
                    .then(a.1.cmp(b.1))
            });
            (
                scored.into_iter().take(10).map(|(_, id)| id).collect(),
                gains,
            )
        })
        .collect();
    quality(ranked.into_iter())
}
