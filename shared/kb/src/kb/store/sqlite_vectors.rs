//! The embedded store's vector index (issue 16, item 3): the current model's embeddings
//! in one matrix in memory, kept in step with the `chunks` table through the event log.
//!
//! Why a matrix and not a SQLite vector extension or a graph: the extensions that build
//! from crates.io (sqlite-vec) scan exactly too, from pages rather than memory, and an
//! HNSW graph costs far more to keep in step with row-level writes from several processes
//! than an exact scan costs at the embedded mode's sizes. A scan of 100k chunks of 384
//! int8 values is ~38 M multiply-adds, a few milliseconds on one core, and exact up to
//! the quantisation, which the top candidates' full-precision rescoring removes (see
//! `vector_search`). 1 byte a value: 38 MB at 100k chunks of 384-d, a quarter of the
//! float vectors.
//!
//! In step: every write and delete of a document appends to `events` in its own
//! transaction (SQLite commits one writer at a time, so `seq` follows commit order).
//! Before a search the index reads `max(seq)`; when it moved on, the chunks of the
//! documents named by the new events are read again (another process may have written
//! them); when it went back (a restore), or the model changed, everything is.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use futures_util::TryStreamExt;
use sqlx::{Row, SqlitePool};

use super::StoreError;

/// The k best (score, id) pairs of a scan; ties go to the smaller id, so results do not
/// depend on row order.
pub(super) struct TopK {
    k: usize,
    /// Min-heap on (score, reversed id): the root is the worst kept pair.
    heap: std::collections::BinaryHeap<std::cmp::Reverse<(OrdScore, std::cmp::Reverse<String>)>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct OrdScore(f32);
impl Eq for OrdScore {}
impl PartialOrd for OrdScore {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdScore {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl TopK {
    pub(super) fn new(k: usize) -> Self {
        Self {
            k,
            heap: std::collections::BinaryHeap::with_capacity(k + 1),
        }
    }

    /// Whether a pair with this score could be kept (cheap check before allocating an id).
    pub(super) fn admits(&self, score: f32) -> bool {
        self.heap.len() < self.k || self.heap.peek().is_some_and(|worst| score >= worst.0 .0 .0)
    }

    pub(super) fn push(&mut self, score: f32, id: &str) {
        self.heap.push(std::cmp::Reverse((
            OrdScore(score),
            std::cmp::Reverse(id.to_string()),
        )));
        if self.heap.len() > self.k {
            self.heap.pop();
        }
    }

    /// Best first; equal scores by id.
    pub(super) fn into_sorted(self) -> Vec<(f32, String)> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|std::cmp::Reverse((score, std::cmp::Reverse(id)))| (score.0, id))
            .collect()
    }
}

/// One vector as int8 with its scale: value ~ q * scale.
fn quantise(v: &[f32], into: &mut Vec<i8>) -> f32 {
    let largest = v.iter().fold(0.0_f32, |m, x| m.max(x.abs()));
    let scale = if largest > 0.0 { largest / 127.0 } else { 1.0 };
    into.extend(v.iter().map(|x| (x / scale).round() as i8));
    scale
}

/// The little-endian f32 blob as floats.
fn floats(blob: &[u8]) -> Vec<f32> {
    blob.chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[inline]
fn dot(a: &[i8], b: &[i8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| i32::from(*x) * i32::from(*y))
        .sum()
}

/// The same loop compiled for AVX2 (16 products per instruction instead of 4 with the
/// baseline's SSE2), which every x86-64 server of the last decade has.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2(a: &[i8], b: &[i8]) -> i32 {
    dot(a, b)
}

/// `dot` of the query with every row of `values` (`dims` a row), into `scores`.
fn dots(values: &[i8], dims: usize, query: &[i8], scores: &mut Vec<i32>) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        scores.extend(
            values
                .chunks_exact(dims)
                .map(|row| unsafe { dot_avx2(row, query) }),
        );
        return;
    }
    scores.extend(values.chunks_exact(dims).map(|row| dot(row, query)));
}

/// The chunks of one model, row by row.
#[derive(Default)]
struct Matrix {
    /// (model, dimensions) the rows hold; `None` before the first load.
    key: Option<(String, usize)>,
    /// The last event applied.
    seq: i64,
    values: Vec<i8>,
    scales: Vec<f32>,
    /// Each row's chunk id; `None` once removed (compacted away later).
    chunks: Vec<Option<Arc<str>>>,
    rows_of_document: HashMap<Arc<str>, Vec<usize>>,
    removed: usize,
}

impl Matrix {
    fn add(&mut self, chunk: &str, document: &str, embedding: &[u8]) {
        let row = self.chunks.len();
        let scale = quantise(&floats(embedding), &mut self.values);
        self.scales.push(scale);
        self.chunks.push(Some(Arc::from(chunk)));
        self.rows_of_document
            .entry(Arc::from(document))
            .or_default()
            .push(row);
    }

    fn remove_document(&mut self, document: &str) {
        for row in self.rows_of_document.remove(document).unwrap_or_default() {
            if self.chunks[row].take().is_some() {
                self.removed += 1;
            }
        }
    }

    /// Rebuilds without removed rows once they are a quarter of the matrix.
    fn compact(&mut self, dims: usize) {
        if self.removed * 4 < self.chunks.len().max(1) {
            return;
        }
        let mut kept = Matrix {
            key: self.key.take(),
            seq: self.seq,
            ..Matrix::default()
        };
        let mut documents: HashMap<usize, Arc<str>> = HashMap::new();
        for (document, rows) in &self.rows_of_document {
            for row in rows {
                documents.insert(*row, document.clone());
            }
        }
        for (row, chunk) in self.chunks.iter().enumerate() {
            let (Some(chunk), Some(document)) = (chunk, documents.get(&row)) else {
                continue;
            };
            let new_row = kept.chunks.len();
            kept.values
                .extend_from_slice(&self.values[row * dims..(row + 1) * dims]);
            kept.scales.push(self.scales[row]);
            kept.chunks.push(Some(chunk.clone()));
            kept.rows_of_document
                .entry(document.clone())
                .or_default()
                .push(new_row);
        }
        *self = kept;
    }

    fn nearest(&self, query: &[f32], k: usize) -> Vec<(f32, String)> {
        let Some((_, dims)) = self.key else {
            return Vec::new();
        };
        let mut q = Vec::with_capacity(dims);
        let q_scale = quantise(query, &mut q);
        let mut dot_products = Vec::with_capacity(self.chunks.len());
        dots(&self.values, dims, &q, &mut dot_products);
        let mut best = TopK::new(k);
        for (row, dot) in dot_products.into_iter().enumerate() {
            let score = dot as f32 * self.scales[row] * q_scale;
            if best.admits(score) {
                if let Some(chunk) = &self.chunks[row] {
                    best.push(score, chunk);
                }
            }
        }
        best.into_sorted()
    }
}

/// The matrix, shared by searches, and the lock that keeps one refresh at a time.
#[derive(Default)]
pub(super) struct SqliteVectors {
    matrix: Arc<RwLock<Matrix>>,
    refresh: tokio::sync::Mutex<()>,
}

/// Documents re-read per statement when catching up.
pub(super) const DOCUMENTS_PER_READ: usize = 500;

impl SqliteVectors {
    /// The `k` chunks of this model nearest the query by the int8 scan, best first, with
    /// their approximate scores (callers rescore them exactly).
    pub async fn nearest(
        &self,
        pool: &SqlitePool,
        query: &[f32],
        model: &str,
        k: usize,
    ) -> Result<Vec<(f32, String)>, StoreError> {
        self.catch_up(pool, model, query.len()).await?;
        let matrix = self.matrix.clone();
        let query = query.to_vec();
        // A scan of 100k rows takes milliseconds: off the async workers.
        tokio::task::spawn_blocking(move || {
            let matrix = matrix.read().unwrap_or_else(|e| e.into_inner());
            matrix.nearest(&query, k)
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(format!("vector scan: {e}"))))
    }

    async fn catch_up(
        &self,
        pool: &SqlitePool,
        model: &str,
        dims: usize,
    ) -> Result<(), StoreError> {
        let _one_at_a_time = self.refresh.lock().await;
        let latest: i64 = sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM events")
            .fetch_one(pool)
            .await?;
        let (reload, applied) = {
            let m = self.matrix.read().unwrap_or_else(|e| e.into_inner());
            let same_model = m
                .key
                .as_ref()
                .is_some_and(|(m, d)| m == model && *d == dims);
            (!same_model || latest < m.seq, m.seq)
        };
        if reload {
            let mut fresh = Matrix {
                key: Some((model.to_string(), dims)),
                seq: latest,
                ..Matrix::default()
            };
            let mut rows = sqlx::query(
                "SELECT id, document_id, embedding FROM chunks WHERE model = ? AND dims = ?",
            )
            .bind(model)
            .bind(dims as i64)
            .fetch(pool);
            while let Some(row) = rows.try_next().await? {
                fresh.add(row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            }
            // The write lock waits for scans in progress: off the async thread.
            return self.off_the_runtime(move |m| *m = fresh).await;
        }
        if latest == applied {
            return Ok(());
        }
        let documents = changed_documents(pool, applied, latest).await?;
        let mut chunks: Vec<(String, String, Vec<u8>)> = Vec::new();
        for group in documents.chunks(DOCUMENTS_PER_READ) {
            let sql = format!(
                "SELECT id, document_id, embedding FROM chunks WHERE model = ? AND dims = ? AND document_id IN ({})",
                vec!["?"; group.len()].join(", ")
            );
            let mut read = sqlx::query_as(&sql).bind(model).bind(dims as i64);
            for document in group {
                read = read.bind(document);
            }
            chunks.extend(read.fetch_all(pool).await?);
        }
        // Waiting for the scans in progress, applying and compacting take milliseconds
        // at 100k chunks: off the async thread, whose other connections would wait.
        self.off_the_runtime(move |m| {
            for document in &documents {
                m.remove_document(document);
            }
            for (chunk, document, embedding) in &chunks {
                m.add(chunk, document, embedding);
            }
            m.seq = latest;
            m.compact(dims);
        })
        .await
    }

    /// Runs `change` on the matrix under its write lock, on a blocking thread.
    async fn off_the_runtime(
        &self,
        change: impl FnOnce(&mut Matrix) + Send + 'static,
    ) -> Result<(), StoreError> {
        let matrix = self.matrix.clone();
        tokio::task::spawn_blocking(move || {
            change(&mut matrix.write().unwrap_or_else(|e| e.into_inner()));
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(format!("vector index update: {e}"))))
    }
}

/// The documents written or deleted by the events after `applied`, up to `latest`.
pub(super) async fn changed_documents(
    pool: &SqlitePool,
    applied: i64,
    latest: i64,
) -> Result<Vec<String>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT DISTINCT aggregate_id FROM events WHERE seq > ? AND seq <= ?")
            .bind(applied)
            .bind(latest)
            .fetch_all(pool)
            .await?,
    )
}

#[cfg(test)]
mod tests {
    use super::super::sqlite::to_blob as blob;
    use super::*;

    #[test]
    fn the_int8_scan_ranks_like_the_floats_and_forgets_removed_documents() {
        let mut m = Matrix {
            key: Some(("m".into(), 3)),
            ..Matrix::default()
        };
        m.add("a#0", "a", &blob(&[1.0, 0.0, 0.0]));
        m.add("b#0", "b", &blob(&[0.6, 0.8, 0.0]));
        m.add("b#1", "b", &blob(&[0.0, 0.0, 1.0]));
        let nearest = m.nearest(&[0.8, 0.6, 0.0], 2);
        let ids: Vec<&str> = nearest.iter().map(|(_, id)| id.as_str()).collect();
        assert_eq!(ids, ["b#0", "a#0"]);
        assert!((nearest[0].0 - 0.96).abs() < 0.02, "{nearest:?}");
        m.remove_document("b");
        assert_eq!(m.nearest(&[0.8, 0.6, 0.0], 2).len(), 1);
        // Two of three rows removed: compacted, and what is left still answers.
        m.compact(3);
        assert_eq!((m.chunks.len(), m.removed, m.values.len()), (1, 0, 3));
        assert_eq!(m.nearest(&[1.0, 0.0, 0.0], 5)[0].1, "a#0");
        m.add("c#0", "c", &blob(&[0.0, 1.0, 0.0]));
        assert_eq!(m.nearest(&[0.0, 1.0, 0.0], 1)[0].1, "c#0");
    }

    #[test]
    fn every_dot_product_path_gives_the_same_sums() {
        let values: Vec<i8> = (0..384 * 3)
            .map(|i: i32| (i * 37 % 255 - 127) as i8)
            .collect();
        let query: Vec<i8> = (0..384).map(|i: i32| (i * 91 % 255 - 127) as i8).collect();
        let mut fast = Vec::new();
        dots(&values, 384, &query, &mut fast);
        let plain: Vec<i32> = values.chunks_exact(384).map(|r| dot(r, &query)).collect();
        assert_eq!(fast, plain);
        assert_eq!(dot(&[127, -128], &[127, -128]), 127 * 127 + 128 * 128);
    }

    #[test]
    fn top_k_keeps_the_best_scores_and_breaks_ties_by_id_whatever_the_order() {
        let pairs = [
            (0.2, "e"),
            (0.9, "b"),
            (0.5, "d"),
            (0.9, "a"),
            (0.1, "f"),
            (0.5, "c"),
        ];
        let mut forward = TopK::new(3);
        let mut backward = TopK::new(3);
        for (score, id) in pairs {
            if forward.admits(score) {
                forward.push(score, id);
            }
        }
        for (score, id) in pairs.iter().rev() {
            if backward.admits(*score) {
                backward.push(*score, id);
            }
        }
        let expected = vec![(0.9, "a".to_string()), (0.9, "b".into()), (0.5, "c".into())];
        assert_eq!(forward.into_sorted(), expected);
        assert_eq!(backward.into_sorted(), expected);
        assert!(TopK::new(0).into_sorted().is_empty());
    }
}
