//! Hybrid ranking (I3, issue 16 item 4): a weighted, score-aware fusion of the keyword
//! and vector lists, the same on every store so SQLite and PostgreSQL rank alike.
//!
//! Reciprocal rank fusion gave both lists the same say whatever the embedder: with the
//! offline hashing embedder, whose vector list is weak, it ranked below the keyword list
//! alone (Cranfield nDCG@10 0.328 against 0.359). A convex combination of each list's
//! normalised scores instead lets the embedder's weight follow its quality (a measured
//! default per embedder, `RETRIEVAL_VECTOR_WEIGHT` to override), and keeps the score gaps
//! that rank fusion throws away (Bruch et al., "An Analysis of Fusion Functions for
//! Hybrid Retrieval", 2023).

/// One candidate passage and the evidence each list has for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Evidence {
    /// The keyword list's score (higher is better), when the passage is in that list.
    pub keyword: Option<f64>,
    /// Cosine similarity to the query, when the passage has an embedding of the model.
    pub similarity: Option<f64>,
}

/// How much the vector list weighs in the fused score (0: keyword order, vector hits
/// after; 1: vector order).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fusion {
    pub vector_weight: f64,
}

impl Fusion {
    /// The offline hashing embedder's weight, measured by `make eval` (docs/benchmarks.md,
    /// "Keyword ranking in memory"): its vectors repeat the keyword evidence, so any weight
    /// only reorders close keyword scores, by noise (-0.002 to +0.006 nDCG@10 on
    /// Cranfield, by store). At 0 the keyword order stands and the vectors add the
    /// passages keywords miss, after them: never below the keyword list, on any corpus.
    pub const OFFLINE_DEFAULT: Self = Self { vector_weight: 0.0 };
    /// A semantic embedding model's weight when none is measured: an even mix, which the
    /// fusion paper found close to the best across collections for real models.
    pub const MODEL_DEFAULT: Self = Self { vector_weight: 0.5 };

    /// The candidates' order, best first, with their fused scores in [0, 1].
    ///
    /// Keyword scores are divided by the best one (their scale differs by store and
    /// query), and never rise along the list, so the store's order stands even where its
    /// scores are not comparable (PostgreSQL ranks chunks with every word first).
    /// Similarities are divided by the best one (negative ones count 0). Missing
    /// evidence counts 0.
    /// Ties keep the keyword list's order, then the higher similarity.
    pub fn order(&self, candidates: &[Evidence]) -> Vec<(usize, f64)> {
        let weight = self.vector_weight.clamp(0.0, 1.0);
        let keyword = normalised_keyword(candidates);
        // Similarities over the best one, from a floor of 0 (unrelated), not from the
        // least similar candidate: that one is often still related, and stretching the
        // range to it exaggerates small differences ("theoretical min-max", which the
        // paper found more robust; measured here too, docs/benchmarks.md).
        let best = candidates
            .iter()
            .filter_map(|c| c.similarity)
            .fold(0.0_f64, f64::max);
        let vector = |s: Option<f64>| match s {
            Some(s) if best > 0.0 => s.max(0.0) / best,
            _ => 0.0,
        };
        let mut fused: Vec<(usize, f64)> = candidates
            .iter()
            .zip(&keyword)
            .enumerate()
            .map(|(i, (c, k))| (i, (1.0 - weight) * k + weight * vector(c.similarity)))
            .collect();
        let similarity = |i: usize| candidates[i].similarity.unwrap_or(f64::NEG_INFINITY);
        fused.sort_by(|a, b| {
            b.1.total_cmp(&a.1)
                .then(keyword[b.0].total_cmp(&keyword[a.0]))
                .then(similarity(b.0).total_cmp(&similarity(a.0)))
                .then(a.0.cmp(&b.0))
        });
        fused
    }
}

/// Keyword scores over the best, clamped so none exceeds the one before it in the list.
fn normalised_keyword(candidates: &[Evidence]) -> Vec<f64> {
    let best = candidates
        .iter()
        .filter_map(|c| c.keyword)
        .fold(0.0_f64, f64::max);
    let mut ceiling = 1.0_f64;
    candidates
        .iter()
        .map(|c| match c.keyword {
            Some(score) if best > 0.0 => {
                ceiling = ceiling.min((score / best).max(0.0));
                ceiling
            }
            // A list with no positive score still counts its hits, in its order.
            Some(_) => {
                ceiling *= 0.999;
                ceiling
            }
            None => 0.0,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evidence(keyword: Option<f64>, similarity: Option<f64>) -> Evidence {
        Evidence {
            keyword,
            similarity,
        }
    }

    fn order(weight: f64, candidates: &[Evidence]) -> Vec<usize> {
        Fusion {
            vector_weight: weight,
        }
        .order(candidates)
        .into_iter()
        .map(|(i, _)| i)
        .collect()
    }

    #[test]
    fn the_weight_moves_the_order_from_keywords_to_vectors() {
        let candidates = [
            evidence(Some(10.0), Some(0.1)),
            evidence(Some(9.0), Some(0.5)),
            evidence(None, Some(0.9)),
        ];
        assert_eq!(order(0.0, &candidates), [0, 1, 2]);
        assert_eq!(order(1.0, &candidates), [2, 1, 0]);
        // 0.2: the second keyword hit's similarity lifts it over the first (0.72 + 0.11
        // against 0.8 + 0.02), the vector-only hit stays last (0.2).
        assert_eq!(order(0.2, &candidates), [1, 0, 2]);
        let fused = Fusion { vector_weight: 0.2 }.order(&candidates);
        assert!((fused[0].1 - (0.8 * 0.9 + 0.2 * 0.5 / 0.9)).abs() < 1e-12);
        assert!((fused[1].1 - (0.8 + 0.2 * 0.1 / 0.9)).abs() < 1e-12);
    }

    #[test]
    fn keyword_scores_never_rise_along_the_list() {
        // A store that ranks a tier first (every word) may give a later hit a higher raw
        // score: its order stands, the later hit only ties with the one before it.
        let candidates = [
            evidence(Some(2.0), Some(0.3)),
            evidence(Some(5.0), Some(0.3)),
            evidence(Some(1.0), Some(0.3)),
        ];
        assert_eq!(order(0.0, &candidates), [0, 1, 2]);
        let zero_scores = [evidence(Some(0.0), None), evidence(Some(0.0), None)];
        assert_eq!(order(0.0, &zero_scores), [0, 1]);
    }

    #[test]
    fn ties_and_missing_evidence_are_deterministic() {
        let candidates = [
            evidence(None, Some(0.2)),
            evidence(None, Some(0.4)),
            evidence(Some(1.0), None),
        ];
        assert_eq!(order(0.0, &candidates), [2, 1, 0]);
        // 0.5: the keyword hit and the most similar tie (0.5); the keyword order goes first.
        assert_eq!(order(0.5, &candidates), [2, 1, 0]);
        assert!(Fusion::OFFLINE_DEFAULT.order(&[]).is_empty());
        // Weights outside [0, 1] are clamped.
        assert_eq!(order(7.0, &candidates), order(1.0, &candidates));
    }
}
