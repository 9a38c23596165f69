//! Hybrid ranking (I3): reciprocal rank fusion of the vector and keyword lists, the
//! same on every store so SQLite and PostgreSQL rank alike.

use std::collections::HashMap;

/// The usual RRF constant: dampens the weight of top ranks so neither list dominates.
pub(crate) const RRF_K: f64 = 60.0;

/// Fuses ranked lists of ids (best first): score = sum over lists of 1 / (k + rank).
/// Ties keep the order of first appearance, so results are deterministic.
pub(crate) fn reciprocal_rank_fusion(lists: &[Vec<String>], k: f64) -> Vec<(String, f64)> {
    let mut scores: HashMap<&str, (f64, usize)> = HashMap::new();
    let mut order = 0;
    for list in lists {
        for (rank, id) in list.iter().enumerate() {
            let entry = scores.entry(id.as_str()).or_insert_with(|| {
                order += 1;
                (0.0, order)
            });
            entry.0 += 1.0 / (k + rank as f64 + 1.0);
        }
    }
    let mut fused: Vec<(String, f64, usize)> = scores
        .into_iter()
        .map(|(id, (s, o))| (id.to_string(), s, o))
        .collect();
    fused.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.2.cmp(&b.2)));
    fused.into_iter().map(|(id, s, _)| (id, s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn documents_in_both_lists_rise() {
        let vector = ids(&["a", "b", "c"]);
        let keyword = ids(&["c", "d", "b"]);
        let fused = reciprocal_rank_fusion(&[vector, keyword], RRF_K);
        let order: Vec<_> = fused.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(order, vec!["c", "b", "a", "d"]);
        assert!((fused[0].1 - (1.0 / 63.0 + 1.0 / 61.0)).abs() < 1e-12);
    }

    #[test]
    fn one_list_keeps_its_order_and_empty_is_empty() {
        let fused = reciprocal_rank_fusion(&[ids(&["x", "y"]), vec![]], RRF_K);
        assert_eq!(
            fused.iter().map(|(i, _)| i.as_str()).collect::<Vec<_>>(),
            vec!["x", "y"]
        );
        assert!(reciprocal_rank_fusion(&[], RRF_K).is_empty());
    }
}
