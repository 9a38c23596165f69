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
//!   index; PostgreSQL's own statistics of the column for the most common words), cached
//!   for `STATISTICS_TTL` and dropped when this process writes.
//!
//! Candidates stay bounded: the chunks with every word, and when fewer than k have them,
//! the chunks with any of the rarest words up to `FILL_BUDGET` matches: a word's chunks
//! are all candidates when its df fits the budget, so the most telling words' chunks are
//! never cut off in index order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;

/// BM25's usual parameters (Lucene's defaults), as the plain BM25 it is compared with.
const K1: f64 = 1.2;
const B: f64 = 0.75;
/// sum(1/n^2) over n >= 1: `ts_rank`'s normaliser of one word's occurrences.
const H_INFINITY: &str = "1.64493406685";
/// Matches counted per word for its df; a word this common weighs almost nothing.
const DF_COUNT_CAP: i64 = 5_000;
/// Most chunks the any-word pass brings: the rarest words' chunks first.
pub(super) const FILL_BUDGET: i64 = 2_000;
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

/// Per-word and whole-corpus counts, cached.
pub(super) struct CorpusStatistics {
    df: Cache<String, f64>,
    totals: Cache<(), Totals>,
    /// PostgreSQL's sampled share of chunks per common lexeme (`pg_stats`).
    common: Cache<(), Arc<HashMap<String, f64>>>,
}

impl Default for CorpusStatistics {
    fn default() -> Self {
        Self {
            df: Cache::builder()
                .time_to_live(STATISTICS_TTL)
                .max_capacity(100_000)
                .build(),
            totals: Cache::builder().time_to_live(STATISTICS_TTL).build(),
            common: Cache::builder().time_to_live(STATISTICS_TTL).build(),
        }
    }
}

impl CorpusStatistics {
    /// This process changed the corpus: count again.
    pub fn invalidate(&self) {
        self.df.invalidate_all();
        self.totals.invalidate_all();
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

    /// The most common lexemes' share of chunks, from ANALYZE's sample (none yet, or no
    /// permission to read them: empty).
    async fn common(&self, pool: &sqlx::PgPool) -> Arc<HashMap<String, f64>> {
        self.common
            .get_with((), async {
                let rows: Vec<(String, f32)> = sqlx::query_as(
                    "SELECT e.lexeme, s.most_common_elem_freqs[e.n] FROM pg_stats s, \
                     unnest(s.most_common_elems::text::text[]) WITH ORDINALITY AS e(lexeme, n) \
                     WHERE s.schemaname = current_schema() AND s.tablename = 'chunks' AND s.attname = 'tsv'",
                )
                .fetch_all(pool)
                .await
                .unwrap_or_default();
                Arc::new(rows.into_iter().map(|(l, f)| (l, f64::from(f))).collect())
            })
            .await
    }

    /// The query's lexemes (PostgreSQL's `english` configuration) with their BM25
    /// weights, and the corpus totals.
    pub async fn terms(
        &self,
        pool: &sqlx::PgPool,
        query: &str,
    ) -> Result<(Vec<QueryTerm>, Totals), sqlx::Error> {
        let totals = self.totals(pool).await?;
        let common = self.common(pool).await;
        let cached: Vec<String> = self.df.iter().map(|(k, _)| (*k).clone()).collect();
        // One round trip: the lexemes, and the df of those not cached.
        let rows: Vec<(String, String, f64, Option<i64>)> = sqlx::query_as(
            "SELECT t.lexeme, quote_literal(t.lexeme), cardinality(t.positions)::float8, \
             CASE WHEN t.lexeme = ANY($2::text[]) THEN NULL ELSE \
                 (SELECT count(*) FROM (SELECT 1 FROM chunks c \
                     WHERE c.tsv @@ quote_literal(t.lexeme)::tsquery LIMIT $3) s) END \
             FROM unnest(to_tsvector('english', $1)) t ORDER BY t.lexeme",
        )
        .bind(query)
        .bind(&cached)
        .bind(DF_COUNT_CAP)
        .fetch_all(pool)
        .await?;
        let mut terms = Vec::with_capacity(rows.len());
        for (lexeme, quoted, count, counted) in rows {
            let df = match counted {
                Some(n) => {
                    let sampled = common.get(&lexeme).map_or(0.0, |f| f * totals.chunks);
                    let df = (n as f64).max(sampled);
                    self.df.insert(lexeme, df).await;
                    df
                }
                // Expired between the two reads: as rare as can be.
                None => self.df.get(&lexeme).await.unwrap_or(1.0),
            };
            let idf = (1.0 + (totals.chunks - df + 0.5) / (df + 0.5)).ln();
            terms.push(QueryTerm {
                quoted,
                df,
                weight: idf * count * (K1 + 1.0),
            });
        }
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
