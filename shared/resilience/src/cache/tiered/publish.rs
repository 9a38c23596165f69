//! This instance's hit and miss counts, added to the service-wide ones in Redis at most
//! every few seconds, off the request path.

use super::*;
use crate::cache::stats::{service_counts_key, COUNT_FIELDS};

/// At most one publication per this many milliseconds: one Redis round trip every few
/// seconds per busy instance, rather than one per lookup.
const PUBLISH_EVERY_MS: u64 = 5_000;

impl TieredCache {
    /// Publishes in the background once `PUBLISH_EVERY_MS` has passed since the last time.
    pub(super) fn publish_counts_when_due(&self) {
        if self.inner.l2.is_none() {
            return;
        }
        let now = self.now_ms();
        let last = self.inner.published_at.load(Ordering::Relaxed);
        if now < last + PUBLISH_EVERY_MS
            || self
                .inner
                .published_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let cache = self.clone();
        tokio::spawn(async move { cache.publish_counts().await });
    }

    /// Adds what this instance counted since its last publication to the Redis hash.
    /// Counts that fail to reach Redis are kept and sent the next time.
    pub async fn publish_counts(&self) {
        let counts = [
            self.inner.l1_hits.load(Ordering::Relaxed),
            self.inner.l2_hits.load(Ordering::Relaxed),
            self.inner.misses.load(Ordering::Relaxed),
        ];
        // Claim the increments first, so two publications at once never send one twice.
        let deltas: Vec<u64> = counts
            .iter()
            .zip(&self.inner.published)
            .map(|(count, published)| count - published.swap(*count, Ordering::Relaxed).min(*count))
            .collect();
        if deltas.iter().all(|d| *d == 0) {
            return;
        }
        let key = service_counts_key(&self.inner.config.prefix);
        let fields = deltas.clone();
        let sent = self
            .l2_call("stats", |mut conn| async move {
                let mut pipe = redis::pipe();
                for (field, delta) in COUNT_FIELDS.iter().zip(&fields) {
                    pipe.hincr(&key, *field, *delta).ignore();
                }
                pipe.query_async::<()>(&mut conn).await
            })
            .await;
        if sent.is_err() {
            for (published, delta) in self.inner.published.iter().zip(deltas) {
                published.fetch_sub(delta, Ordering::Relaxed);
            }
        }
    }
}
