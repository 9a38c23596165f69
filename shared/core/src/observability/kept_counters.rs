//! Counters recorded on every request, kept per label values. `counter!` with owned
//! labels builds its key, looks it up in the registry and returns a new handle on every
//! call (three to five allocations); a kept counter costs two lookups in small maps,
//! by borrowed strings. For counters with one label whose values come and go with the configuration
//! (a model) and one from a fixed set (an outcome).

use std::sync::{PoisonError, RwLock};

use metrics::Counter;

/// One counter metric by a free label and a fixed one.
pub struct KeptCounters {
    name: &'static str,
    free_label: &'static str,
    fixed_label: &'static str,
    /// foldhash, seeded per process: SipHash took a fifth of each increment.
    kept: RwLock<foldhash::HashMap<String, foldhash::HashMap<&'static str, Counter>>>,
}

impl KeptCounters {
    pub fn new(name: &'static str, free_label: &'static str, fixed_label: &'static str) -> Self {
        Self {
            name,
            free_label,
            fixed_label,
            kept: RwLock::new(foldhash::HashMap::default()),
        }
    }

    /// Adds `by` to the series `{free_label=free, fixed_label=fixed}`.
    pub fn increment(&self, free: &str, fixed: &'static str, by: u64) {
        let kept = self.kept.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(counter) = kept.get(free).and_then(|by_fixed| by_fixed.get(fixed)) {
            counter.increment(by);
            return;
        }
        drop(kept);
        // A handle taken before the recorder is installed would count nowhere.
        super::metrics::install();
        let counter = metrics::counter!(self.name, self.free_label => free.to_string(), self.fixed_label => fixed);
        counter.increment(by);
        self.kept
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(free.to_string())
            .or_default()
            .insert(fixed, counter);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn increments_reach_the_registry_through_the_kept_handles() {
        let counters = KeptCounters::new("kept_counters_test_total", "model", "outcome");
        for _ in 0..3 {
            counters.increment("m-1", "ok", 1);
        }
        counters.increment("m-1", "error", 2);
        counters.increment("m-2", "ok", 5);
        counters.increment("m-2", "ok", 5);
        let rendered = super::super::metrics::install().render();
        let series = |model: &str, outcome: &str| {
            super::super::metrics::series_value(
                &rendered,
                &format!("kept_counters_test_total{{model=\"{model}\",outcome=\"{outcome}\"}}"),
            )
        };
        assert_eq!(series("m-1", "ok"), 3.0, "{rendered}");
        assert_eq!(series("m-1", "error"), 2.0);
        assert_eq!(series("m-2", "ok"), 10.0);
    }
}
