//! The embedded store's keyword ranking (issue 16, item 3): BM25 over postings kept in
//! memory, in step with the `chunks` table through the event log as the vector matrix is
//! (`sqlite_vectors`).
//!
//! Why not FTS5's `bm25()`: it is called once per matching row and reads that row's
//! sizes and positions from the index. A long question's any-word match holds most of
//! the corpus (60,000 of 100,000 chunks for Cranfield's questions), and scoring it took
//! 48 of the 54 ms a search spent in FTS5, where finding the matches took 6. Here a
//! search adds each term's contribution along its posting list into one array: a few
//! nanoseconds a posting. Why not a search-engine crate (tantivy): it keeps its own
//! index files with one writer, while several processes write this SQLite file, and the
//! index must follow their commits.
//!
//! The score is FTS5's `bm25(chunks_fts, 0.0, 2.0, 1.0)` (k1 1.2, b 0.75, the title
//! counted twice, idf `ln((N - n + 0.5) / (n + 0.5))` floored at 1e-6), so filtered
//! searches, which stay in FTS5, rank alike. Words are cut as FTS5's `unicode61` cuts them
//! (letters and digits, lower case, accents removed); stems come from the Snowball
//! English stemmer where FTS5 uses the first Porter stemmer, which differ on a few words.
//! Memory: 6 bytes a (chunk, distinct word) pair, about 80 MB at 100k chunks of prose.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use futures_util::TryStreamExt;
use rust_stemmers::{Algorithm, Stemmer};
use sqlx::{Row, SqlitePool};
use unicode_normalization::UnicodeNormalization;

use super::sqlite_vectors::{changed_documents, TopK};
use super::StoreError;

const K1: f64 = 1.2;
const B: f64 = 0.75;
/// FTS5's column weights: the title counts twice, the text once.
const TITLE_WEIGHT: u16 = 2;

/// Words as FTS5's `unicode61` tokenizer cuts them: runs of letters and digits, lower
/// case, accents removed.
fn words(text: &str) -> impl Iterator<Item = std::borrow::Cow<'_, str>> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            if w.is_ascii() {
                if w.bytes().any(|b| b.is_ascii_uppercase()) {
                    w.to_ascii_lowercase().into()
                } else {
                    w.into()
                }
            } else {
                w.nfd()
                    .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
                    .flat_map(char::to_lowercase)
                    .collect::<String>()
                    .into()
            }
        })
}

/// A stop word's entry in `Index::words`: never searched, so never indexed.
const STOP: u32 = u32::MAX;

/// One term's chunks, as two arrays (6 bytes a posting).
#[derive(Default)]
struct Postings {
    rows: Vec<u32>,
    /// The term's count in the chunk, the title's counted twice.
    weighted: Vec<u16>,
}

/// Every chunk's terms; rows are never reused, removed ones are skipped until compaction.
#[derive(Default)]
struct Index {
    /// The last event applied; `None` before the first load.
    seq: Option<i64>,
    /// Stems, each with its posting list's index.
    terms: HashMap<Box<str>, u32>,
    /// Words as written (folded), each with its stem's term or `STOP`: a word is stemmed
    /// once, not at every occurrence (stemming was most of the time of a full load).
    words: HashMap<Box<str>, u32>,
    postings: Vec<Postings>,
    chunks: Vec<Option<Arc<str>>>,
    lengths: Vec<u32>,
    rows_of_document: HashMap<Arc<str>, Vec<u32>>,
    live: usize,
    live_length: u64,
    removed: usize,
}

impl Index {
    /// The term of a stem, created on first sight.
    fn term(&mut self, stem: &str) -> u32 {
        if let Some(term) = self.terms.get(stem) {
            return *term;
        }
        let term = self.postings.len() as u32;
        self.postings.push(Postings::default());
        self.terms.insert(stem.into(), term);
        term
    }

    /// Adds a text's terms to `counts` (`weight` each) and returns its length in words,
    /// stop words included, as FTS5 counts it.
    fn analyse(
        &mut self,
        stemmer: &Stemmer,
        text: &str,
        weight: u16,
        counts: &mut Vec<(u32, u16)>,
    ) -> u32 {
        let mut length = 0;
        for word in words(text) {
            length += 1;
            let term = match self.words.get(word.as_ref()) {
                Some(term) => *term,
                None => {
                    let term = if crate::kb::text::is_stopword(&word) {
                        STOP
                    } else {
                        self.term(&stemmer.stem(&word))
                    };
                    self.words.insert(word.as_ref().into(), term);
                    term
                }
            };
            if term != STOP {
                counts.push((term, weight));
            }
        }
        length
    }

    fn add(&mut self, stemmer: &Stemmer, chunk: &str, document: &str, title: &str, text: &str) {
        let mut counts = Vec::new();
        let length = self.analyse(stemmer, title, TITLE_WEIGHT, &mut counts)
            + self.analyse(stemmer, text, 1, &mut counts);
        counts.sort_unstable_by_key(|(term, _)| *term);
        let row = self.chunks.len() as u32;
        for group in counts.chunk_by(|a, b| a.0 == b.0) {
            let weighted = group
                .iter()
                .fold(0u16, |sum, (_, w)| sum.saturating_add(*w));
            let list = &mut self.postings[group[0].0 as usize];
            list.rows.push(row);
            list.weighted.push(weighted);
        }
        self.chunks.push(Some(Arc::from(chunk)));
        self.lengths.push(length);
        self.rows_of_document
            .entry(Arc::from(document))
            .or_default()
            .push(row);
        self.live += 1;
        self.live_length += u64::from(length);
    }

    fn remove_document(&mut self, document: &str) {
        for row in self.rows_of_document.remove(document).unwrap_or_default() {
            if self.chunks[row as usize].take().is_some() {
                self.removed += 1;
                self.live -= 1;
                self.live_length -= u64::from(self.lengths[row as usize]);
            }
        }
    }

    /// Gives back the lists' spare capacity (grown by doubling, up to half of a list).
    fn shrink(&mut self) {
        for list in &mut self.postings {
            list.rows.shrink_to_fit();
            list.weighted.shrink_to_fit();
        }
    }

    /// Drops removed rows from every list once they are a quarter of the rows.
    fn compact(&mut self) {
        if self.removed * 4 < self.chunks.len().max(1) {
            return;
        }
        let mut new_row = vec![u32::MAX; self.chunks.len()];
        let mut next = 0u32;
        for (row, chunk) in self.chunks.iter().enumerate() {
            if chunk.is_some() {
                new_row[row] = next;
                next += 1;
            }
        }
        for list in &mut self.postings {
            let mut kept = Postings::default();
            for (row, weighted) in list.rows.iter().zip(&list.weighted) {
                let row = new_row[*row as usize];
                if row != u32::MAX {
                    kept.rows.push(row);
                    kept.weighted.push(*weighted);
                }
            }
            *list = kept;
        }
        let keep = |row: usize| new_row[row] != u32::MAX;
        self.lengths = (0..self.chunks.len())
            .filter(|r| keep(*r))
            .map(|r| self.lengths[r])
            .collect();
        self.chunks.retain(Option::is_some);
        for rows in self.rows_of_document.values_mut() {
            rows.retain(|r| keep(*r as usize));
            for row in rows.iter_mut() {
                *row = new_row[*row as usize];
            }
        }
        self.removed = 0;
        self.shrink();
    }

    /// The `k` best chunks for these (stemmed) terms by BM25, best first; a term given
    /// twice counts twice, as in FTS5.
    fn best(&self, terms: &[String], k: usize) -> Vec<(f32, String)> {
        if self.live == 0 || k == 0 {
            return Vec::new();
        }
        let n = self.live as f64;
        let average = (self.live_length as f64 / n).max(1.0);
        let mut scores = vec![0f64; self.chunks.len()];
        let mut hit = false;
        for term in terms {
            let Some(list) = self
                .terms
                .get(term.as_str())
                .map(|t| &self.postings[*t as usize])
            else {
                continue;
            };
            let all_live = self.removed == 0;
            let live = |row: &u32| all_live || self.chunks[*row as usize].is_some();
            let matches = list.rows.iter().filter(|r| live(r)).count() as f64;
            if matches == 0.0 {
                continue;
            }
            hit = true;
            let idf = ((n - matches + 0.5) / (matches + 0.5)).ln();
            let idf = if idf <= 0.0 { 1e-6 } else { idf };
            for (row, weighted) in list.rows.iter().zip(&list.weighted) {
                if !live(row) {
                    continue;
                }
                let f = f64::from(*weighted);
                let length = f64::from(self.lengths[*row as usize]);
                scores[*row as usize] +=
                    idf * f * (K1 + 1.0) / (f + K1 * (1.0 - B + B * length / average));
            }
        }
        if !hit {
            return Vec::new();
        }
        let mut best = TopK::new(k);
        for (row, score) in scores.into_iter().enumerate() {
            if score > 0.0 && best.admits(score as f32) {
                if let Some(chunk) = &self.chunks[row] {
                    best.push(score as f32, chunk);
                }
            }
        }
        best.into_sorted()
    }
}

/// The postings, shared by searches, and the lock that keeps one refresh at a time.
pub(super) struct SqliteKeywords {
    index: Arc<RwLock<Index>>,
    refresh: tokio::sync::Mutex<()>,
    stemmer: Arc<Stemmer>,
}

impl Default for SqliteKeywords {
    fn default() -> Self {
        Self {
            index: Arc::default(),
            refresh: tokio::sync::Mutex::default(),
            stemmer: Arc::new(Stemmer::create(Algorithm::English)),
        }
    }
}

/// The chunks' text as the keyword index reads it.
const CHUNK_TEXT: &str = "SELECT c.id, c.document_id, d.title, c.text FROM chunks c \
                          JOIN documents d ON d.id = c.document_id";

impl SqliteKeywords {
    /// The `k` best chunks for the words of `terms` (as `keyword_terms` gives them),
    /// best first, with their BM25 scores.
    pub async fn best(
        &self,
        pool: &SqlitePool,
        terms: &[String],
        k: usize,
    ) -> Result<Vec<(f32, String)>, StoreError> {
        self.catch_up(pool).await?;
        let index = self.index.clone();
        let stemmer = self.stemmer.clone();
        let terms: Vec<String> = terms
            .iter()
            .flat_map(|t| {
                words(t)
                    .map(|w| stemmer.stem(&w).into_owned())
                    .collect::<Vec<_>>()
            })
            .collect();
        // Milliseconds at 100k chunks: off the async workers.
        tokio::task::spawn_blocking(move || {
            let index = index.read().unwrap_or_else(|e| e.into_inner());
            index.best(&terms, k)
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(format!("keyword scan: {e}"))))
    }

    async fn catch_up(&self, pool: &SqlitePool) -> Result<(), StoreError> {
        let _one_at_a_time = self.refresh.lock().await;
        let latest: i64 = sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM events")
            .fetch_one(pool)
            .await?;
        let applied = self.index.read().unwrap_or_else(|e| e.into_inner()).seq;
        match applied {
            Some(applied) if applied == latest => Ok(()),
            // Moved on: the documents named since are read again.
            Some(applied) if applied < latest => {
                let documents = changed_documents(pool, applied, latest).await?;
                let rows = read_documents(pool, &documents).await?;
                let stemmer = self.stemmer.clone();
                let index = self.index.clone();
                tokio::task::spawn_blocking(move || {
                    let mut index = index.write().unwrap_or_else(|e| e.into_inner());
                    for document in &documents {
                        index.remove_document(document);
                    }
                    for (chunk, document, title, text) in &rows {
                        index.add(&stemmer, chunk, document, title, text);
                    }
                    index.seq = Some(latest);
                    index.compact();
                })
                .await
                .map_err(|e| StoreError::Io(std::io::Error::other(format!("keyword index: {e}"))))
            }
            // First use, or the log went back (a restore): everything.
            _ => self.reload(pool, latest).await,
        }
    }

    /// Builds the index afresh. Rows go to the builder as they are read, so analysing
    /// overlaps reading and the texts are never all in memory at once.
    async fn reload(&self, pool: &SqlitePool, latest: i64) -> Result<(), StoreError> {
        let (send, mut receive) = tokio::sync::mpsc::channel::<ChunkText>(1024);
        let stemmer = self.stemmer.clone();
        let builder = tokio::task::spawn_blocking(move || {
            let mut fresh = Index {
                seq: Some(latest),
                ..Index::default()
            };
            while let Some((chunk, document, title, text)) = receive.blocking_recv() {
                fresh.add(&stemmer, &chunk, &document, &title, &text);
            }
            fresh.shrink();
            fresh
        });
        let read = async {
            let mut rows = sqlx::query_as::<_, ChunkText>(CHUNK_TEXT).fetch(pool);
            while let Some(row) = rows.try_next().await? {
                if send.send(row).await.is_err() {
                    break;
                }
            }
            Ok::<_, StoreError>(())
        }
        .await;
        drop(send);
        let fresh = builder
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(format!("keyword index: {e}"))))?;
        read?;
        *self.index.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }
}

/// A chunk's id, document id, title and text.
type ChunkText = (String, String, String, String);

/// The chunks of these documents, read in groups.
async fn read_documents(
    pool: &SqlitePool,
    documents: &[String],
) -> Result<Vec<ChunkText>, StoreError> {
    let mut rows = Vec::new();
    for group in documents.chunks(super::sqlite_vectors::DOCUMENTS_PER_READ) {
        let sql = format!(
            "{CHUNK_TEXT} WHERE c.document_id IN ({})",
            vec!["?"; group.len()].join(", ")
        );
        let mut read = sqlx::query(&sql);
        for document in group {
            read = read.bind(document);
        }
        let mut fetched = read.fetch(pool);
        while let Some(row) = fetched.try_next().await? {
            rows.push((
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
            ));
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(chunks: &[(&str, &str, &str, &str)]) -> (Index, Stemmer) {
        let stemmer = Stemmer::create(Algorithm::English);
        let mut index = Index::default();
        for (chunk, document, title, text) in chunks {
            index.add(&stemmer, chunk, document, title, text);
        }
        (index, stemmer)
    }

    fn stems(stemmer: &Stemmer, words: &[&str]) -> Vec<String> {
        words.iter().map(|w| stemmer.stem(w).into_owned()).collect()
    }

    #[test]
    fn words_are_cut_folded_and_stemmed_as_fts5_cuts_them() {
        let cut: Vec<_> = words("Café-au-lait, NAÏVE naïve x2").collect();
        assert_eq!(cut, ["cafe", "au", "lait", "naive", "naive", "x2"]);
        let (index, stemmer) = index(&[("c1", "d1", "Flows", "The flow was flowing.")]);
        // Title counted twice, text once; "the" and "was" counted in the length only.
        let id = index.terms["flow"];
        assert_eq!(index.postings[id as usize].weighted, [4]);
        assert_eq!(index.lengths, [5]);
        assert_eq!(index.best(&stems(&stemmer, &["flowing"]), 5).len(), 1);
    }

    #[test]
    fn scores_follow_bm25_with_the_title_counted_twice() {
        let (index, stemmer) = index(&[
            ("a", "d1", "Wings", "wing flutter at high speed"),
            ("b", "d2", "Heat", "heat transfer in a boundary layer"),
            ("c", "d3", "Heat", "heat transfer and wing heat"),
        ]);
        let best = index.best(&stems(&stemmer, &["wing"]), 3);
        let ids: Vec<_> = best.iter().map(|(_, id)| id.as_str()).collect();
        assert_eq!(ids, ["a", "c"]);
        // By hand: N 3, n 2, idf ln(1.5 / 2.5) <= 0 -> 1e-6; chunk a: f = 3 (title twice,
        // text once), length 6 words; 6 + 7 + 6 words in all.
        let average = 19.0 / 3.0;
        let expected = 1e-6 * 3.0 * 2.2 / (3.0 + 1.2 * (0.25 + 0.75 * 6.0 / average));
        assert!((f64::from(best[0].0) - expected).abs() < 1e-9, "{best:?}");
        // A rarer word outranks a common one; words never seen find nothing.
        let best = index.best(&stems(&stemmer, &["boundary", "heat"]), 3);
        assert_eq!(best[0].1, "b");
        let idf = (2.5f64 / 1.5).ln();
        let expected = idf * 2.2 / (1.0 + 1.2 * (0.25 + 0.75 * 7.0 / average));
        // Plus "heat", in two of three chunks: 1e-6 times its tf part.
        let extra = f64::from(best[0].0) - expected;
        assert!((0.0..1e-5).contains(&extra), "{best:?} vs {expected}");
        assert!(index.best(&stems(&stemmer, &["zeppelin"]), 3).is_empty());
    }

    #[test]
    fn removed_documents_are_forgotten_and_compaction_keeps_the_ranking() {
        let mut rows = Vec::new();
        for i in 0..8 {
            rows.push((format!("c{i}"), format!("d{}", i % 4), format!("heat {i}")));
        }
        let (mut index, stemmer) = index(&[]);
        for (chunk, document, text) in &rows {
            index.add(&stemmer, chunk, document, "", text);
        }
        index.add(&stemmer, "w", "d9", "", "wing heat");
        let query = stems(&stemmer, &["heat", "wing"]);
        let before = index.best(&query, 3);
        assert_eq!(before[0].1, "w");
        index.remove_document("d0");
        index.remove_document("d1");
        let after_remove = index.best(&query, 20);
        assert_eq!(after_remove.len(), 5);
        assert!(!after_remove
            .iter()
            .any(|(_, id)| ["c0", "c1", "c4", "c5"].contains(&id.as_str())));
        index.compact();
        assert_eq!(index.chunks.len(), 5);
        assert_eq!(index.best(&query, 20), after_remove);
        index.remove_document("d9");
        assert_eq!(index.best(&stems(&stemmer, &["wing"]), 3), []);
    }
}
