//! Search (I3): hybrid retrieval with a relevance floor, for `GET /search` and for chat
//! prompts alike.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::embed::tokens;
use super::rank::Evidence;
use super::store::{ChunkHit, QueryEmbedding, SearchFilter};
use super::text::snippet;
use super::{KbError, KnowledgeBase};
use crate::cache::Namespace;
use crate::observability::traces::db_span;
use tracing::Instrument;

/// One search result.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct SearchResult {
    pub document_id: String,
    pub chunk_id: String,
    pub title: String,
    /// The fused rank score: orders results, means nothing on its own.
    pub score: f64,
    /// Cosine similarity of the passage to the query, what the relevance floor
    /// ([`RelevanceFloor`]) is compared with; `None` in keyword-only mode.
    #[serde(default)]
    pub similarity: Option<f64>,
    pub snippet: String,
}

/// A fused hit and its similarity to the query (`None` when only keywords could search).
struct RankedHit {
    hit: ChunkHit,
    similarity: Option<f64>,
}

impl RankedHit {
    /// The result as returned, its snippet made from the chunk's text.
    fn into_result(self, snippet: impl FnOnce(String) -> String) -> SearchResult {
        let round = |x: f64| (x * 1e6).round() / 1e6;
        SearchResult {
            document_id: self.hit.document_id,
            chunk_id: self.hit.chunk_id,
            title: self.hit.title,
            score: round(self.hit.score),
            similarity: self.similarity.map(round),
            snippet: snippet(self.hit.text),
        }
    }
}

/// Which passages are relevant enough to use (issue 12, finding 6): similar enough to
/// the question, or a little less similar when they share a word with it. The offline
/// embedder's similarity alone cannot tell a short plain question from an unrelated one
/// ("how long does delivery take" scores below "how many bones are in the human body"
/// against aeronautics abstracts), so a shared word, the keyword side's evidence,
/// lowers the bar.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RelevanceFloor {
    /// Any passage at least this similar to the question (`RETRIEVAL_MIN_SIMILARITY`).
    pub min_similarity: f64,
    /// A passage sharing a word (not a stopword) with the question, from this
    /// similarity up (`RETRIEVAL_MIN_SIMILARITY_SHARED_WORD`, at most `min_similarity`).
    pub with_shared_word: f64,
}

impl RelevanceFloor {
    /// Every passage, however unrelated (one without an embedding of the current model
    /// still needs a word in common with the question, having no similarity).
    pub const NONE: Self = Self {
        min_similarity: -1.0,
        with_shared_word: -1.0,
    };

    /// The offline embedder's floor when none is set, measured by `make eval` on the
    /// Cranfield collection and the support fixture corpus: the floors that keep 99 % of
    /// Cranfield's judged-relevant passages in a chat prompt and every support question's
    /// document in its top three, and turn away the most off-topic questions. A test
    /// re-measures them, so a change that moves them cannot go unnoticed.
    pub const OFFLINE_DEFAULT: Self = Self {
        min_similarity: 0.27,
        with_shared_word: 0.13,
    };

    /// Whether a passage this similar, sharing a word with the question or not, is used.
    pub fn admits(&self, similarity: f64, shares_a_word: bool) -> bool {
        similarity >= self.min_similarity || (shares_a_word && similarity >= self.with_shared_word)
    }
}

/// A question's words as "shares a word" compares them: stemmed, without stopwords, and
/// without what apostrophes leave: "what's" is "what", "the zebra's" is "zebra", and a
/// negated auxiliary ("don't", "isn't") is dropped whole. Split at the apostrophe, they
/// would leave `s`, `t` or `don`, which nearly every passage shares.
pub fn question_words(question: &str) -> HashSet<String> {
    let without_contractions: Vec<&str> = question
        .split_whitespace()
        .filter_map(|word| match word.find(['\'', '\u{2019}']) {
            None => Some(word),
            Some(at) => {
                let ending = word[at..].trim_start_matches(['\'', '\u{2019}']);
                let negated = ending.starts_with(['t', 'T']) && word[..at].ends_with(['n', 'N']);
                (!negated).then_some(&word[..at])
            }
        })
        .collect();
    tokens(&without_contractions.join(" "))
        .into_iter()
        .collect()
}

/// Whether `text` has one of the question's words.
pub fn shares_a_word(question_words: &HashSet<String>, text: &str) -> bool {
    !question_words.is_empty() && tokens(text).iter().any(|t| question_words.contains(t))
}

/// `GET /search`'s answer: `mode` is `keyword` when the embedder was unavailable.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct SearchResponse {
    pub results: Vec<SearchResult>,
    pub mode: String,
}

/// A query's candidate passages from both lists before fusion, with each list's
/// evidence: what the service fuses and what `make eval` ranks each way.
#[derive(Debug, Clone)]
pub struct Candidates {
    /// The keyword list in its order, then the vector list's other hits in theirs.
    pub hits: Vec<ChunkHit>,
    /// Each hit's keyword score and similarity (`hits[i]`'s evidence is `evidence[i]`).
    pub evidence: Vec<Evidence>,
    /// Each hit's position in the vector list, if it is in it.
    pub vector_rank: Vec<Option<usize>>,
    /// `"hybrid"`, or `"keyword"` when the embedder was unavailable (no similarities).
    pub mode: &'static str,
}

impl Candidates {
    /// The keyword list alone, in its order.
    pub fn keyword_order(&self) -> Vec<usize> {
        (0..self.hits.len())
            .filter(|&i| self.evidence[i].keyword.is_some())
            .collect()
    }

    /// The vector list alone, in its order.
    pub fn vector_order(&self) -> Vec<usize> {
        let mut listed: Vec<(usize, usize)> = (0..self.hits.len())
            .filter_map(|i| self.vector_rank[i].map(|rank| (rank, i)))
            .collect();
        listed.sort_unstable();
        listed.into_iter().map(|(_, i)| i).collect()
    }
}

impl KnowledgeBase {
    /// The candidates for a query: the keyword list (each hit with its similarity to the
    /// query, read in the same statement) and the vector list, `depth` chunks each at
    /// least; keyword only when the embedder is unavailable.
    pub async fn candidates(
        &self,
        query: &str,
        depth: usize,
        filter: Option<&SearchFilter>,
    ) -> Result<Candidates, KbError> {
        self.prepare_store().await?;
        let depth = depth as i64;
        let vector = match self.embedder.embed(&[query.to_string()]).await {
            Ok(mut vectors) if vectors.len() == 1 => Some(vectors.remove(0)),
            Ok(_) => None,
            Err(err) => {
                tracing::warn!(error = %err, "embedder unavailable; keyword-only search");
                None
            }
        };
        // The two lists are independent: query them at the same time (two connections).
        let vector_list = async {
            match &vector {
                Some(v) => self
                    .store
                    .vector_search(v, self.embedder.model(), depth, filter)
                    .instrument(db_span(self.store.db_system(), "SELECT", "chunks"))
                    .await
                    .map(Some),
                None => Ok(None),
            }
        };
        let scored_by = vector.as_deref().map(|vector| QueryEmbedding {
            vector,
            model: self.embedder.model(),
        });
        let (keyword, by_vector) = tokio::join!(
            self.store
                .keyword_search_scored(query, depth, filter, scored_by)
                .instrument(db_span(self.store.db_system(), "SELECT", "chunks_fts")),
            vector_list
        );
        let (keyword, by_vector) = (keyword?, by_vector?);
        // A query of stopwords alone embeds to the zero vector: PostgreSQL's cosine
        // distance to it is NaN, SQLite's dot product 0. Both count as unrelated (0).
        let defined = |s: f64| if s.is_nan() { 0.0 } else { s };
        let mode = if by_vector.is_some() {
            "hybrid"
        } else {
            "keyword"
        };
        let mut candidates = Candidates {
            hits: Vec::new(),
            evidence: Vec::new(),
            vector_rank: Vec::new(),
            mode,
        };
        let mut position: HashMap<String, usize> = HashMap::new();
        for scored in keyword {
            position.insert(scored.hit.chunk_id.clone(), candidates.hits.len());
            candidates.evidence.push(Evidence {
                keyword: Some(scored.hit.score),
                similarity: scored.similarity.map(defined),
            });
            candidates.hits.push(scored.hit);
            candidates.vector_rank.push(None);
        }
        for (rank, hit) in by_vector.unwrap_or_default().into_iter().enumerate() {
            let similarity = Some(defined(hit.score));
            match position.get(&hit.chunk_id) {
                Some(&i) => {
                    candidates.vector_rank[i] = Some(rank);
                    candidates.evidence[i].similarity = similarity;
                }
                None => {
                    candidates.evidence.push(Evidence {
                        keyword: None,
                        similarity,
                    });
                    candidates.hits.push(hit);
                    candidates.vector_rank.push(Some(rank));
                }
            }
        }
        Ok(candidates)
    }

    /// The ranked chunks for a query with their similarity to it: both lists fused by
    /// the embedder's weight, then every chunk below the relevance floor dropped; or
    /// keyword only (`"keyword"`, no similarities, each hit sharing a word with the
    /// query) when the embedder is unavailable.
    async fn hybrid(
        &self,
        query: &str,
        k: usize,
        filter: Option<&SearchFilter>,
    ) -> Result<(Vec<RankedHit>, &'static str), KbError> {
        let Candidates {
            hits,
            evidence,
            mode,
            ..
        } = self.candidates(query, (k * 4).max(20), filter).await?;
        let order = self.fusion.order(&evidence);
        let mut hits: Vec<Option<ChunkHit>> = hits.into_iter().map(Some).collect();
        let words = question_words(query);
        let ranked = order
            .into_iter()
            .filter_map(|(i, score)| {
                let hit = hits[i].take()?;
                let similarity = evidence[i].similarity;
                // Tokenising the passage only when its similarity alone does not decide.
                let admitted = match similarity {
                    _ if mode == "keyword" => true,
                    Some(similarity) => {
                        similarity >= self.relevance.min_similarity
                            || self
                                .relevance
                                .admits(similarity, shares_a_word(&words, &hit.text))
                    }
                    // No embedding of this model (a model change not yet re-ingested):
                    // judged as in keyword mode, by a word shared with the question.
                    None => shares_a_word(&words, &hit.text),
                };
                admitted.then_some(RankedHit {
                    hit: ChunkHit { score, ..hit },
                    similarity,
                })
            })
            // Callers keep k: the rest of the fused list is never judged.
            .take(k)
            .collect();
        Ok((ranked, mode))
    }

    /// Passages for a chat prompt (C3): like `search`, with each chunk's whole text as
    /// the snippet, and not cached (the chat answer is).
    pub async fn retrieve(&self, query: &str, k: usize) -> Result<Vec<SearchResult>, KbError> {
        let query = query.trim();
        if query.is_empty() {
            return Ok(Vec::new());
        }
        let (hits, _) = self.hybrid(query, k, None).await?;
        Ok(hits
            .into_iter()
            .take(k)
            .map(|h| h.into_result(|text| text))
            .collect())
    }

    /// Hybrid search: vector and keyword lists fused by the embedder's weight; keyword only
    /// (and flagged) when the embedder is unavailable. Results are cached (`search`).
    pub async fn search(
        &self,
        query: &str,
        k: usize,
        filter: Option<&SearchFilter>,
    ) -> Result<SearchResponse, KbError> {
        let query = query.trim();
        if query.is_empty() {
            return Err(KbError::Invalid("the query is empty".into()));
        }
        let cache_key = format!(
            "{}|{}/{}|{}|{}|{}|{}",
            self.embedder.model(),
            self.relevance.min_similarity,
            self.relevance.with_shared_word,
            self.fusion.vector_weight,
            k,
            filter
                .map(|f| format!("{}={}", f.key, f.value))
                .unwrap_or_default(),
            query.to_lowercase()
        );
        if let Some(cached) = self
            .cache
            .get::<SearchResponse>(Namespace::Search, &cache_key)
            .await
        {
            return Ok(cached);
        }
        let (hits, mode) = self.hybrid(query, k, filter).await?;
        let response = SearchResponse {
            results: hits
                .into_iter()
                .take(k)
                .map(|h| h.into_result(|text| snippet(&text, query, 240)))
                .collect(),
            mode: mode.to_string(),
        };
        // A degraded (keyword-only) answer is not cached, so recovery is immediate.
        if mode == "hybrid" {
            self.cache
                .set(Namespace::Search, &cache_key, &response)
                .await;
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apostrophes_leave_no_word_that_every_passage_shares() {
        let words = question_words("What's the capital? I'm sure we're close, don't we'll see");
        let mut words: Vec<&str> = words.iter().map(String::as_str).collect();
        words.sort();
        assert_eq!(words, ["capital", "close", "see", "sure"]);
        assert!(!shares_a_word(
            &question_words("What's new?"),
            "The wing's lift and the body's drag."
        ));
        assert!(shares_a_word(
            &question_words("refunds"),
            "A refund within 30 days."
        ));
        // CJK characters are words of one character and count.
        assert!(shares_a_word(&question_words("退款"), "退款政策"));
    }

    #[test]
    fn a_shared_word_lowers_the_bar_and_none_admits_everything() {
        let floor = RelevanceFloor {
            min_similarity: 0.3,
            with_shared_word: 0.1,
        };
        assert!(floor.admits(0.3, false));
        assert!(!floor.admits(0.29, false));
        assert!(floor.admits(0.1, true));
        assert!(!floor.admits(0.09, true));
        assert!(RelevanceFloor::NONE.admits(-1.0, false));
    }
}
