//! The cache's metrics through handles kept from the start: a hit, miss or load is
//! counted on every cached request, and `counter!` with a label that is not a literal
//! builds a key, hashes it and looks it up on every call.

use metrics::{Counter, Gauge};

use crate::cache::Namespace;
use crate::observability::metrics::names;

/// The tiers a hit or miss is counted under.
const TIERS: [&str; 2] = ["l1", "l2"];

pub(super) struct CacheMetrics {
    hits: [[Counter; 2]; 5],
    misses: [[Counter; 2]; 5],
    loads: [Counter; 5],
    /// `cache_entries{tier="l1"}`.
    pub(super) l1_entries: Gauge,
}

impl CacheMetrics {
    pub(super) fn new() -> Self {
        // Handles taken before the recorder is installed would count nowhere.
        crate::observability::metrics::install();
        let per_tier = |name: &'static str, namespace: Namespace| {
            TIERS.map(
                |tier| metrics::counter!(name, "namespace" => namespace.as_str(), "tier" => tier),
            )
        };
        Self {
            hits: Namespace::ALL.map(|n| per_tier(names::CACHE_HITS_TOTAL, n)),
            misses: Namespace::ALL.map(|n| per_tier(names::CACHE_MISSES_TOTAL, n)),
            loads: Namespace::ALL
                .map(|n| metrics::counter!(names::CACHE_LOADS_TOTAL, "namespace" => n.as_str())),
            l1_entries: metrics::gauge!(names::CACHE_ENTRIES, "tier" => "l1"),
        }
    }

    pub(super) fn hit(&self, namespace: Namespace, tier: &str) {
        self.hits[namespace.index()][tier_index(tier)].increment(1);
    }

    pub(super) fn miss(&self, namespace: Namespace, tier: &str) {
        self.misses[namespace.index()][tier_index(tier)].increment(1);
    }

    pub(super) fn load(&self, namespace: Namespace) {
        self.loads[namespace.index()].increment(1);
    }
}

fn tier_index(tier: &str) -> usize {
    usize::from(tier != "l1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observability::metrics::series_value;

    /// The session namespace: no other test of this crate counts in it (the counters
    /// are the process's, shared with the tests running beside this one).
    #[test]
    fn counts_go_to_the_series_of_their_namespace_and_tier() {
        let kept = CacheMetrics::new();
        let handle = crate::observability::metrics::install();
        let hits = r#"cache_hits_total{namespace="session",tier="l2"}"#;
        let misses = r#"cache_misses_total{namespace="session",tier="l1"}"#;
        let loads = r#"cache_loads_total{namespace="session"}"#;
        let start = handle.render();
        kept.hit(Namespace::Session, "l2");
        kept.hit(Namespace::Session, "l2");
        kept.miss(Namespace::Session, "l1");
        for _ in 0..3 {
            kept.load(Namespace::Session);
        }
        let end = handle.render();
        let grew = |series: &str| series_value(&end, series) - series_value(&start, series);
        assert_eq!(grew(hits), 2.0);
        assert_eq!(grew(misses), 1.0);
        assert_eq!(grew(loads), 3.0);
    }
}
