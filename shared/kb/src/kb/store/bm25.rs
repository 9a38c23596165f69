//! BM25 for PostgreSQL's keyword list (issue 16, item 4).
//!
//! `ts_rank_cd` has no inverse document frequency: a query's rare, telling words weigh
//! no more than its common ones, and on long questions (Cranfield) the keyword list
//! scored nDCG@10 0.11 against a plain BM25's 0.36. PostgreSQL has no BM25, so the
//! statement computes it from what the GIN-indexed `tsvector` holds:
//! - **tf**: `ts_rank` of a one-word query with equal weights is H(tf) / H(inf), where
//!   H(n) = 1 + 1/4 + ... + 1/n^2, one float per (row, word) read by a binary search in
//!   the row's tsvector; `round(1 / (H(inf) * (1 - rank)) - 0.5)` gives tf back exactly
//!   (checked for 0-12 and 255 occurrences in a test);
//! - **document length**: `length(tsv)`, its distinct words;
//! - **df and N**: counted once per word (up to `DF_COUNT_CAP` matches through the GIN
//!   index; PostgreSQL's own statistics of the column for the commoner words), cached
//!   for `STATISTICS_TTL` and dropped when this process writes.
//!
//! Candidates stay bounded: the chunks with every word (ranked first), and when fewer
//! than k have them, the chunks with any of the rarest words up to `FILL_BUDGET`
//! matches: a word's chunks are all candidates when its df fits the budget, so the most
//! telling words' chunks are never cut off in index order.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;

/// BM25's usual parameters (Lucene's defaults), as the plain BM25 it is compared with.
const K1: f64 = 1.2;
const B: f64 = 0.75;
/// sum(1/n^2) over n >= 1: `ts_rank`'s normaliser of one word's occurrences.
const H_INFINITY: &str = "1.64493406685";
/// Matches counted per word for its df (a count reads each match's row: ~10 µs apiece
/// at 100k chunks). Commoner words take their df from ANALYZE's sample of the column.
const DF_COUNT_CAP: i64 = 100;
/// Most chunks the any-word pass brings: the rarest words' chunks first. Each is scored
/// word by word (~10 µs at 100k chunks): 1,000 took the 100k-chunk benchmark's search p95
/// to 17-20 ms, 300 keeps it at 11-13 ms; on Cranfield, 1,000 scored nDCG@10 0.368 and
/// 300 0.362 (the plain BM25: 0.360).
pub(super) const FILL_BUDGET: i64 = 300;
/// How long counts are reused by searches (this process's writes drop them at once).
const STATISTICS_TTL: Duration = Duration::from_secs(300);

/// One word of the query as the statement scores it.
#[derive(Debug, Clone)]
pub(super) struct QueryTerm {
    /// The lexeme quoted as a tsquery (`'aerodynam'`).
    pub quoted: String,
    /// Chunks holding it.
    pub df: f64,
    /// idf times its count in the query times (k1 + 1).
    pub weight: f64,
}

/// The corpus' size and mean chunk length.
#[derive(Debug, Clone, Copy)]
pub(super) struct Totals {
    pub chunks: f64,
    pub average_length: f64,
}

/// One lexeme of a word, with the chunks holding it.
#[derive(Debug)]
struct Lexeme {
    lexeme: String,
    /// Quoted as a tsquery.
    quoted: String,
    df: f64,
}

/// A query word's lexemes (none for a stopword, usually one).
type WordLexemes = Arc<Vec<Lexeme>>;

/// Per-word and whole-corpus counts, cached.
pub(super) struct CorpusStatistics {
    /// By query word as typed (lower-cased): its lexemes and their df.
    words: Cache<String, WordLexemes>,
    totals: Cache<(), Totals>,
    /// PostgreSQL's sampled share of chunks per common lexeme (`pg_stats`).
    common: Cache<(), Arc<HashMap<String, f64>>>,
    /// The cached statistics are empty (no chunks, or no ANALYZE yet): a write drops them.
    common_is_empty: std::sync::atomic::AtomicBool,
}

impl Default for CorpusStatistics {
    fn default() -> Self {
        Self {
            words: Cache::builder()
                .time_to_live(STATISTICS_TTL)
                .max_capacity(100_000)
                .build(),
            totals: Cache::builder().time_to_live(STATISTICS_TTL).build(),
            common: Cache::builder().time_to_live(STATISTICS_TTL).build(),
            common_is_empty: Default::default(),
        }
    }
}

impl CorpusStatistics {
    /// This process changed the corpus: count again.
    /// ANALYZE's statistics stay while they have something: they only change when the
    /// table is analysed again. Empty ones (a search before the first import) are dropped,
    /// or words found in more than `DF_COUNT_CAP` chunks would count as found in that many.
    pub fn invalidate(&self) {
        self.words.invalidate_all();
        self.totals.invalidate_all();
        if self.common_is_empty.swap(false, Ordering::Relaxed) {
            self.common.invalidate_all();
        }
    }

    async fn totals(&self, pool: &sqlx::PgPool) -> Result<Totals, sqlx::Error> {
        self.totals
            .try_get_with((), async {
                let (chunks, average_length): (f64, f64) = sqlx::query_as(
                    "SELECT count(*)::float8, coalesce(avg(length(tsv)), 0)::float8 FROM chunks",
                )
                .fetch_one(pool)
                .await?;
                Ok(Totals {
                    chunks,
                    average_length,
                })
            })
            .await
            .map_err(|e: Arc<sqlx::Error>| sqlx::Error::Protocol(e.to_string()))
    }

    /// The most common lexemes' share of chunks, from ANALYZE's sample. A table never
    /// analysed yet (a fresh import, before autovacuum gets to it) is analysed here, once
    /// per `STATISTICS_TTL`; without permission to, or with no chunks, it stays empty.
    async fn common(&self, pool: &sqlx::PgPool) -> Arc<HashMap<String, f64>> {
        self.common
            .get_with((), async {
                let read = || async {
                    sqlx::query_as::<_, (String, f32)>(
                        "SELECT e.lexeme, s.most_common_elem_freqs[e.n] FROM pg_stats s, \
                         unnest(s.most_common_elems::text::text[]) WITH ORDINALITY AS e(lexeme, n) \
                         WHERE s.schemaname = current_schema() AND s.tablename = 'chunks' AND s.attname = 'tsv'",
                    )
                    .fetch_all(pool)
                    .await
                    .unwrap_or_default()
                };
                let mut rows = read().await;
                if rows.is_empty() && sqlx::query("ANALYZE chunks (tsv)").execute(pool).await.is_ok() {
                    rows = read().await;
                }
                self.common_is_empty.store(rows.is_empty(), Ordering::Relaxed);
                Arc::new(rows.into_iter().map(|(l, f)| (l, f64::from(f))).collect())
            })
            .await
    }

    /// The query's lexemes (PostgreSQL's `english` configuration stems each word) with
    /// their BM25 weights, and the corpus totals. Words seen in the last
    /// `STATISTICS_TTL` are not stemmed or counted again; the others are, in one
    /// statement.
    pub async fn terms(
        &self,
        pool: &sqlx::PgPool,
        words: &[String],
    ) -> Result<(Vec<QueryTerm>, Totals), sqlx::Error> {
        let totals = self.totals(pool).await?;
        let mut known: HashMap<&str, WordLexemes> = HashMap::new();
        let mut missing: Vec<&str> = Vec::new();
        for word in words {
            if known.contains_key(word.as_str()) || missing.contains(&word.as_str()) {
                continue;
            }
            match self.words.get(word).await {
                Some(lexemes) => {
                    known.insert(word, lexemes);
                }
                None => missing.push(word),
            }
        }
        if !missing.is_empty() {
            let common = self.common(pool).await;
            let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
                "SELECT w.word, t.lexeme, quote_literal(t.lexeme), \
                 (SELECT count(*) FROM (SELECT 1 FROM chunks c \
                     WHERE c.tsv @@ quote_literal(t.lexeme)::tsquery LIMIT $2) s) \
                 FROM unnest($1::text[]) AS w(word), unnest(to_tsvector('english', w.word)) t",
            )
            .bind(&missing)
            .bind(DF_COUNT_CAP)
            .fetch_all(pool)
            .await?;
            let mut found: HashMap<&str, Vec<Lexeme>> =
                missing.iter().map(|w| (*w, Vec::new())).collect();
            for (word, lexeme, quoted, counted) in rows {
                // Counted up to the cap; ANALYZE's sample knows the most common ones.
                let sampled = common.get(&lexeme).map_or(0.0, |f| f * totals.chunks);
                let df = (counted as f64).max(sampled);
                if let Some(lexemes) = found.get_mut(word.as_str()) {
                    lexemes.push(Lexeme { lexeme, quoted, df });
                }
            }
            for (word, lexemes) in found {
                let lexemes = Arc::new(lexemes);
                self.words.insert(word.to_string(), lexemes.clone()).await;
                known.insert(word, lexemes);
            }
        }
        // Each lexeme once, weighted by how many of the query's words stem to it.
        let mut merged: std::collections::BTreeMap<&str, (&Lexeme, f64)> = Default::default();
        for word in words {
            for lexeme in known[word.as_str()].iter() {
                merged.entry(&lexeme.lexeme).or_insert((lexeme, 0.0)).1 += 1.0;
            }
        }
        // Counts read at different times may disagree (df above N): bounded, never NaN.
        let chunks = totals.chunks.max(1.0);
        let terms = merged
            .into_values()
            .map(|(lexeme, count)| {
                let df = lexeme.df.clamp(0.0, chunks);
                let idf = (1.0 + (chunks - df + 0.5) / (df + 0.5)).ln();
                QueryTerm {
                    quoted: lexeme.quoted.clone(),
                    df,
                    weight: idf * count * (K1 + 1.0),
                }
            })
            .collect();
        Ok((terms, totals))
    }
}

/// The BM25 score of `tsv` as SQL: each term's tsquery and weight are parameters
/// `$first, $first+1, ...` (two per term, in `terms`' order); `average_length` is the
/// parameter after them.
pub(super) fn score_sql(tsv: &str, terms: &[QueryTerm], first: usize) -> String {
    let average = first + 2 * terms.len();
    let norm = format!("{K1} * (1 - {B} + {B} * length({tsv}) / ${average}::float8)");
    if terms.is_empty() {
        return "0::float8".into();
    }
    // tf (k1 + 1) / (tf + norm) = (k1 + 1) (1 - norm / (tf + norm)): tf appears once.
    terms
        .iter()
        .enumerate()
        .map(|(i, _)| {
            let (query, weight) = (first + 2 * i, first + 2 * i + 1);
            let tf = format!(
                "round(1 / ({H_INFINITY} * (1 - ts_rank('{{1,1,1,1}}', {tsv}, ${query}::tsquery)::float8)) - 0.5)"
            );
            format!("${weight}::float8 * (1 - ({norm}) / ({tf} + {norm}))")
        })
        .collect::<Vec<_>>()
        .join(" + ")
}

/// The any-word pass's words: the rarest first, while their chunks fit the budget (at
/// least one word), as an OR tsquery.
pub(super) fn fill_query(terms: &[QueryTerm]) -> String {
    let mut by_rarity: Vec<&QueryTerm> = terms.iter().collect();
    by_rarity.sort_by(|a, b| a.df.total_cmp(&b.df));
    let mut budget = FILL_BUDGET as f64;
    let mut chosen = Vec::new();
    for term in by_rarity {
        if !chosen.is_empty() && term.df > budget {
            break;
        }
        budget -= term.df;
        chosen.push(term.quoted.as_str());
    }
    chosen.join(" | ")
}

/// Every word, as an AND tsquery.
pub(super) fn every_query(terms: &[QueryTerm]) -> String {
    terms
        .iter()
        .map(|t| t.quoted.as_str())
        .collect::<Vec<_>>()
        .join(" & ")
}

/// What each tier's scores are raised by (tier 0: the phrase, 1: every word, 2: any
/// word): the best score of the tiers below it, so scores fall along the list, as the
/// fusion expects.
pub(super) fn tier_offsets(rows: impl Iterator<Item = (i32, f64)> + Clone) -> [f64; 3] {
    let mut raise = [0.0_f64; 3];
    let mut below = 0.0_f64;
    for tier in (0..3).rev() {
        raise[tier] = below;
        below += rows
            .clone()
            .filter(|(t, _)| *t as usize == tier)
            .map(|(_, score)| score)
            .fold(0.0, f64::max);
    }
    raise
}

#[cfg(test)]
mod tests {
    use super::*;

    fn term(quoted: &str, df: f64) -> QueryTerm {
        QueryTerm {
            quoted: quoted.into(),
            df,
            weight: 1.0,
        }
    }

    #[test]
    fn each_tier_ends_above_the_tiers_below_it() {
        let rows = [(0, 5.0), (1, 7.0), (1, 2.0), (2, 3.0)];
        let raise = tier_offsets(rows.iter().copied());
        assert_eq!(raise, [10.0, 3.0, 0.0]);
        let raised: Vec<f64> = rows.iter().map(|(t, s)| s + raise[*t as usize]).collect();
        assert!(raised.windows(2).all(|w| w[0] >= w[1]), "{raised:?}");
    }

    #[test]
    fn the_any_word_pass_takes_the_rarest_words_within_the_budget() {
        let terms = [
            term("'common'", 5_000.0),
            term("'rare'", 20.0),
            term("'mid'", 250.0),
        ];
        assert_eq!(fill_query(&terms), "'rare' | 'mid'");
        // The rarest word always, even past the budget.
        assert_eq!(fill_query(&[term("'huge'", 9_000.0)]), "'huge'");
        assert_eq!(every_query(&terms), "'common' & 'rare' & 'mid'");
    }
}
