//! Embeddings (I2) behind one trait: an OpenAI-compatible endpoint in production, and
//! an offline deterministic embedder for the embedded default and tests.

use std::future::Future;
use std::hash::Hasher;
use std::pin::Pin;
use std::sync::Arc;

use crate::resilience::breaker::CircuitBreaker;

/// Boxed future returned by [`Embedder::embed`], so embedders can be `dyn`.
pub type EmbedFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<Vec<f32>>, EmbedError>> + Send + 'a>>;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EmbedError {
    /// The embedding service failed or timed out: a 503 for ingest, keyword-only search.
    #[error("embedding service unavailable: {0}")]
    Unavailable(String),
    /// The service answered something unusable (wrong count or dimensions).
    #[error("embedding service answered unexpectedly: {0}")]
    Invalid(String),
}

/// Turns texts into unit-length vectors of a fixed dimension.
pub trait Embedder: Send + Sync {
    /// Identifies the model, so embeddings of different models are never compared.
    fn model(&self) -> &str;
    fn dimensions(&self) -> usize;
    /// One vector per text, in order.
    fn embed<'a>(&'a self, texts: &'a [String]) -> EmbedFuture<'a>;
}

/// Deterministic embedder: signed feature hashing of words, word pairs and character
/// trigrams, with sublinear term weights, L2-normalised. Same text, same vector, on any
/// machine and build (FNV-1a, not the standard library's randomised hasher).
#[derive(Debug, Clone)]
pub struct OfflineEmbedder {
    dimensions: usize,
    model: String,
}

fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    let mut hash = fnv1a_hasher(seed);
    hash.write(bytes);
    hash.finish()
}

/// FNV-1a (the `fnv` crate) from a seeded offset basis, fed piece by piece, so a feature
/// made of several strings is hashed without joining them first.
fn fnv1a_hasher(seed: u64) -> fnv::FnvHasher {
    fnv::FnvHasher::with_key(0xcbf29ce484222325u64 ^ seed)
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x3040..=0x30ff | 0x3400..=0x4dbf | 0x4e00..=0x9fff | 0xac00..=0xd7af | 0xf900..=0xfaff)
}

/// A light suffix stripper so "refunds", "refunded" and "refunding" meet "refund".
fn stem(word: &str) -> String {
    for suffix in [
        "ations", "ation", "ings", "ing", "edly", "ed", "ies", "es", "s",
    ] {
        if let Some(base) = word.strip_suffix(suffix) {
            if base.chars().count() >= 3 {
                return if suffix == "ies" {
                    format!("{base}y")
                } else {
                    base.to_string()
                };
            }
        }
    }
    word.to_string()
}

/// Lower-cased word tokens without stopwords, stemmed; CJK characters count as words.
pub fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut Vec<String>| {
        if !word.is_empty() {
            let lower = word.to_lowercase();
            if !super::text::is_stopword(&lower) {
                out.push(stem(&lower));
            }
            word.clear();
        }
    };
    for c in text.chars() {
        if is_cjk(c) {
            flush(&mut word, &mut out);
            out.push(c.to_string());
        } else if c.is_alphanumeric() {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
        }
    }
    flush(&mut word, &mut out);
    out
}

impl OfflineEmbedder {
    pub fn new(dimensions: usize) -> Self {
        Self {
            dimensions: dimensions.max(8),
            model: format!("offline-hash-v1-{}", dimensions.max(8)),
        }
    }

    /// The vector of one text (what [`Embedder::embed`] returns for it).
    pub fn vector(&self, text: &str) -> Vec<f32> {
        let words = tokens(text);
        // Every occurrence of a feature as (hash, weight), summed per feature after
        // sorting: no string is built per feature (this ran at ~10k chunks/s per core
        // when each feature was a String key), and the sums are made in the same order
        // on every run, so the vector is the same to the last bit.
        let mut features: Vec<(u64, f32)> = Vec::with_capacity(words.len() * 10);
        let mut padded: Vec<char> = Vec::new();
        let mut utf8 = [0u8; 4];
        for w in &words {
            features.push((fnv1a(w.as_bytes(), 0), 1.0));
            padded.clear();
            padded.push('^');
            padded.extend(w.chars());
            padded.push('$');
            if padded.len() > 4 {
                for tri in padded.windows(3) {
                    let mut hash = fnv1a_hasher(1);
                    for c in tri {
                        hash.write(c.encode_utf8(&mut utf8).as_bytes());
                    }
                    features.push((hash.finish(), 0.25));
                }
            }
        }
        for pair in words.windows(2) {
            let mut hash = fnv1a_hasher(2);
            hash.write(pair[0].as_bytes());
            hash.write(b" ");
            hash.write(pair[1].as_bytes());
            features.push((hash.finish(), 0.5));
        }
        features.sort_unstable_by_key(|(hash, _)| *hash);
        let mut vector = vec![0f32; self.dimensions];
        let mut add = |hash: u64, weight: f32| {
            let index = (hash % self.dimensions as u64) as usize;
            let sign = if (hash >> 63) == 0 { 1.0 } else { -1.0 };
            // Sublinear: a word repeated ten times is not ten times as relevant.
            vector[index] += sign * (1.0 + weight.ln_1p());
        };
        let mut current: Option<(u64, f32)> = None;
        for (hash, weight) in features {
            current = match current {
                Some((h, w)) if h == hash => Some((h, w + weight)),
                Some((h, w)) => {
                    add(h, w);
                    Some((hash, weight))
                }
                None => Some((hash, weight)),
            };
        }
        if let Some((h, w)) = current {
            add(h, w);
        }
        let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            vector.iter_mut().for_each(|v| *v /= norm);
        }
        vector
    }
}

impl Embedder for OfflineEmbedder {
    fn model(&self) -> &str {
        &self.model
    }

    fn dimensions(&self) -> usize {
        self.dimensions
    }

    fn embed<'a>(&'a self, texts: &'a [String]) -> EmbedFuture<'a> {
        Box::pin(async move { Ok(texts.iter().map(|t| self.vector(t)).collect()) })
    }
}

/// An embedder behind a circuit breaker: while the endpoint keeps failing, calls fail at
/// once (search answers keyword-only at once, ingest 503 at once) instead of each one
/// waiting through its timeout and retries.
pub struct GuardedEmbedder {
    inner: Arc<dyn Embedder>,
    breaker: CircuitBreaker,
}

impl GuardedEmbedder {
    pub fn new(inner: Arc<dyn Embedder>, breaker: CircuitBreaker) -> Self {
        Self { inner, breaker }
    }
}

impl Embedder for GuardedEmbedder {
    fn model(&self) -> &str {
        self.inner.model()
    }

    fn dimensions(&self) -> usize {
        self.inner.dimensions()
    }

    fn embed<'a>(&'a self, texts: &'a [String]) -> EmbedFuture<'a> {
        Box::pin(async move {
            let failed = |r: &Result<_, EmbedError>| matches!(r, Err(EmbedError::Unavailable(_)));
            match self.breaker.call(|| self.inner.embed(texts), failed).await {
                Ok(result) => result,
                Err(open) => Err(EmbedError::Unavailable(open.to_string())),
            }
        })
    }
}

/// Cosine similarity of two unit vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_are_deterministic_unit_length_and_sized() {
        let e = OfflineEmbedder::new(256);
        let a = e.vector("Refunds are issued within 14 days.");
        assert_eq!(a.len(), 256);
        assert_eq!(a, e.vector("Refunds are issued within 14 days."));
        let norm: f32 = a.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        assert_eq!(e.vector("").iter().filter(|v| **v != 0.0).count(), 0);
    }

    /// The first version, which keyed features by strings: stored embeddings of
    /// `offline-hash-v1-*` must stay comparable with new ones.
    fn string_keyed_vector(dimensions: usize, text: &str) -> Vec<f32> {
        let words = tokens(text);
        let mut features: std::collections::HashMap<(u8, String), f32> = Default::default();
        for w in &words {
            *features.entry((0, w.clone())).or_default() += 1.0;
            let padded: Vec<char> = format!("^{w}$").chars().collect();
            if padded.len() > 4 {
                for tri in padded.windows(3) {
                    *features.entry((1, tri.iter().collect())).or_default() += 0.25;
                }
            }
        }
        for pair in words.windows(2) {
            *features
                .entry((2, format!("{} {}", pair[0], pair[1])))
                .or_default() += 0.5;
        }
        let mut vector = vec![0f32; dimensions];
        for ((kind, feature), weight) in features {
            let hash = fnv1a(feature.as_bytes(), kind as u64);
            let index = (hash % dimensions as u64) as usize;
            let sign = if (hash >> 63) == 0 { 1.0 } else { -1.0 };
            vector[index] += sign * (1.0 + weight.ln_1p());
        }
        let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
        vector.iter_mut().for_each(|v| *v /= norm);
        vector
    }

    #[test]
    fn vectors_match_the_string_keyed_features_of_the_first_version() {
        let e = OfflineEmbedder::new(384);
        for text in [
            "Refunds are issued within 14 days. Refunds, refunds and more refunds!",
            "退款 policy: 退款 within 7 days; naïve café señor",
            "ok",
            "The quick brown fox jumps over the lazy dog twice: the quick brown fox.",
        ] {
            let new = e.vector(text);
            let old = string_keyed_vector(384, text);
            let worst = new
                .iter()
                .zip(&old)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-6, "{text:?} differs by {worst}");
        }
    }

    #[test]
    fn related_text_is_closer_than_unrelated_text() {
        let e = OfflineEmbedder::new(512);
        let query = e.vector("how do I get a refund");
        let refund =
            e.vector("Refunds are issued to the original card within 14 days of a return.");
        let shipping = e.vector(
            "Parcels ship from our warehouse by courier, tracking numbers arrive by email.",
        );
        assert!(cosine(&query, &refund) > cosine(&query, &shipping) + 0.1);
    }

    #[test]
    fn tokens_drop_stopwords_stem_and_split_cjk() {
        assert_eq!(
            tokens("The refunds were processed!"),
            vec!["refund", "process"]
        );
        assert_eq!(tokens("退款 policy"), vec!["退", "款", "policy"]);
    }

    #[tokio::test]
    async fn embed_returns_one_vector_per_text() {
        let e = OfflineEmbedder::new(64);
        let texts = vec!["one".to_string(), "two".to_string()];
        let vectors = e.embed(&texts).await.unwrap();
        assert_eq!(vectors.len(), 2);
        assert_eq!(e.model(), "offline-hash-v1-64");
    }
}
