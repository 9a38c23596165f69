//! Usage, cost and daily budgets (C10): every answer's tokens and cost per API key and
//! model, recorded in the database without a round trip on the response path (buffered
//! and flushed in the background in standalone mode; written before the invocation ends
//! on Lambda), totals for `GET /v1/usage`, and a daily budget per key.
//!
//! A budget is shared by every instance: each one checks against the stored total for
//! today, re-read every `BUDGET_REFRESH_MS` in the background, plus its own spend since.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{NaiveDate, Utc};
use serde::Serialize;

use super::error::ChatError;
use crate::observability::metrics::names;
use crate::store::{Database, DatabaseKind, StoreError};

mod postgres;
mod sqlite;

pub use postgres::PostgresUsageStore;
pub use sqlite::SqliteUsageStore;

/// Prices per million tokens: input (prompt) and output (completion).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input: f64,
    pub output: f64,
}

/// `LLM_PRICES`: `model=input/output,...` in US dollars per million tokens.
pub fn parse_prices(text: &str) -> Result<HashMap<String, Price>, String> {
    let mut prices = HashMap::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (model, pair) = entry
            .split_once('=')
            .ok_or_else(|| format!("`{entry}` is not model=input/output"))?;
        let (input, output) = pair
            .split_once('/')
            .ok_or_else(|| format!("`{entry}` is not model=input/output"))?;
        let parse = |v: &str| {
            v.trim()
                .parse::<f64>()
                .ok()
                .filter(|p| p.is_finite() && *p >= 0.0)
                .ok_or_else(|| format!("`{v}` in `{entry}` is not a price"))
        };
        prices.insert(
            model.trim().to_string(),
            Price {
                input: parse(input)?,
                output: parse(output)?,
            },
        );
    }
    Ok(prices)
}

/// One answer's usage.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRecord {
    pub key: String,
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Served from the response cache: original token counts, cost 0.
    pub cached: bool,
    pub cost_usd: f64,
    pub at: chrono::DateTime<Utc>,
}

/// Totals for a key over a period.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct UsageTotals {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_requests: u64,
    pub cost_usd: f64,
}

/// Where usage records are kept: one adapter per SQL dialect.
#[async_trait::async_trait]
pub trait UsageStore: Send + Sync {
    /// Writes a batch in one statement.
    async fn insert(&self, batch: &[UsageRecord]) -> Result<(), StoreError>;
    /// Sums a key's records from `from` to `to` (UTC days, inclusive).
    async fn totals(
        &self,
        key: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<UsageTotals, StoreError>;
}

/// The usage store on the function's SQL database, in its dialect.
pub fn sql_usage_store(db: Database) -> Arc<dyn UsageStore> {
    match db.kind() {
        DatabaseKind::Sqlite => Arc::new(SqliteUsageStore::new(db)),
        DatabaseKind::Postgres => Arc::new(PostgresUsageStore::new(db)),
    }
}

/// The row of a totals query: requests, prompt and completion tokens, cached requests, cost.
type TotalsRow = (i64, i64, i64, i64, f64);

fn totals_from_row(row: TotalsRow) -> UsageTotals {
    UsageTotals {
        requests: row.0 as u64,
        prompt_tokens: row.1 as u64,
        completion_tokens: row.2 as u64,
        cached_requests: row.3 as u64,
        cost_usd: row.4,
    }
}

/// Records usage, enforces budgets and sums totals.
pub struct UsageRecorder {
    store: Arc<dyn UsageStore>,
    prices: HashMap<String, Price>,
    daily_budget: Option<f64>,
    /// Buffer and flush in the background (standalone) or write at once (Lambda).
    buffered: bool,
    buffer: Mutex<Vec<UsageRecord>>,
    /// Today's spend per key as this instance knows it.
    spend: Mutex<HashMap<String, Spend>>,
    /// How old the stored total may get before it is read again.
    refresh_every: Duration,
}

/// One key's spend today: the stored total (all instances) when last read, plus what
/// this instance spent after that read began.
#[derive(Debug, Clone, Copy)]
struct Spend {
    day: NaiveDate,
    stored: f64,
    since: f64,
    /// When the stored total was last read; never, for a key only recorded so far.
    read_at: Option<Instant>,
    reading: bool,
}

impl Spend {
    fn new(day: NaiveDate) -> Self {
        Self {
            day,
            stored: 0.0,
            since: 0.0,
            read_at: None,
            reading: false,
        }
    }

    fn total(&self) -> f64 {
        self.stored + self.since
    }

    /// The key's entry for `day`, started afresh when it holds an earlier day.
    fn of_day<'a>(
        spend: &'a mut HashMap<String, Spend>,
        key: &str,
        day: NaiveDate,
    ) -> &'a mut Spend {
        let entry = spend
            .entry(key.to_string())
            .or_insert_with(|| Spend::new(day));
        if entry.day != day {
            *entry = Spend::new(day);
        }
        entry
    }
}

impl UsageRecorder {
    pub fn new(
        store: Arc<dyn UsageStore>,
        prices: HashMap<String, Price>,
        daily_budget: Option<f64>,
        buffered: bool,
        refresh_every: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            prices,
            daily_budget,
            buffered,
            buffer: Mutex::new(Vec::new()),
            spend: Mutex::new(HashMap::new()),
            refresh_every,
        })
    }

    /// Flushes the buffer every `every` until the process ends (standalone mode).
    pub fn spawn_flusher(self: &Arc<Self>, every: Duration) {
        let recorder = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            loop {
                ticker.tick().await;
                let Some(recorder) = recorder.upgrade() else {
                    return;
                };
                if let Err(err) = recorder.flush().await {
                    tracing::warn!(error = %err, "usage not flushed; kept for the next try");
                }
            }
        });
    }

    pub fn cost(&self, model: &str, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        self.prices.get(model).map_or(0.0, |p| {
            (prompt_tokens as f64 * p.input + completion_tokens as f64 * p.output) / 1e6
        })
    }

    /// Refuses a key whose daily budget is spent (429 with a clear message).
    ///
    /// The first check of a key each day waits for the stored total; later checks use
    /// what this instance knows and, once that is older than the refresh interval,
    /// re-read the stored total in the background, so other instances' spend counts too.
    pub async fn check_budget(self: &Arc<Self>, key: &str) -> Result<(), ChatError> {
        let Some(budget) = self.daily_budget else {
            return Ok(());
        };
        let today = Utc::now().date_naive();
        let (known, stale) = {
            let mut spend = self.spend.lock().expect("spend lock");
            match spend
                .get_mut(key)
                .filter(|s| s.day == today && s.read_at.is_some())
            {
                Some(s) => {
                    let stale = !s.reading
                        && s.read_at
                            .is_some_and(|at| at.elapsed() >= self.refresh_every);
                    if stale {
                        s.reading = true;
                    }
                    (Some(s.total()), stale)
                }
                None => (None, false),
            }
        };
        let spent = match known {
            Some(usd) => {
                if stale {
                    let recorder = Arc::clone(self);
                    let key = key.to_string();
                    tokio::spawn(async move { recorder.read_stored_spend(&key, today).await });
                }
                usd
            }
            None => self.read_stored_spend(key, today).await,
        };
        if spent >= budget {
            let retry_after = (today.succ_opt().unwrap_or(today))
                .and_hms_opt(0, 0, 0)
                .map(|midnight| (midnight.and_utc() - Utc::now()).num_seconds().max(1) as u64)
                .unwrap_or(3600);
            return Err(ChatError::OverBudget {
                message: format!(
                    "the daily budget of ${budget:.2} for this API key is spent (${spent:.4} today); it resets at 00:00 UTC"
                ),
                retry_after: Duration::from_secs(retry_after),
            });
        }
        Ok(())
    }

    /// Reads the key's stored total for `day` (after writing this instance's buffer) and
    /// returns the spend it now knows. Spend recorded while the read runs stays counted
    /// on top, so a record can be counted twice until the next read, never missed. If
    /// the database cannot answer, what is known stays (budgets fail open, logged).
    async fn read_stored_spend(&self, key: &str, day: NaiveDate) -> f64 {
        let since_before = {
            let mut spend = self.spend.lock().expect("spend lock");
            let entry = Spend::of_day(&mut spend, key, day);
            entry.reading = true;
            entry.since
        };
        let stored = self.totals(key, day, day).await.map(|t| t.cost_usd);
        let mut spend = self.spend.lock().expect("spend lock");
        let entry = spend
            .entry(key.to_string())
            .or_insert_with(|| Spend::new(day));
        // A read that outlived its day says nothing about the new one.
        if entry.day == day {
            entry.reading = false;
            entry.read_at = Some(Instant::now());
            match stored {
                Ok(stored) => {
                    entry.stored = stored;
                    entry.since = (entry.since - since_before).max(0.0);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "stored spend not read; the budget check uses this instance's own");
                }
            }
        }
        entry.total()
    }

    /// Records one answer: metrics now, the row buffered or written.
    pub async fn record(&self, record: UsageRecord) {
        if record.cost_usd > 0.0 {
            metrics::gauge!(names::LLM_COST_USD_TOTAL, "model" => record.model.clone())
                .increment(record.cost_usd);
        }
        {
            let day = record.at.date_naive();
            let mut spend = self.spend.lock().expect("spend lock");
            Spend::of_day(&mut spend, &record.key, day).since += record.cost_usd;
        }
        self.buffer.lock().expect("usage buffer").push(record);
        if !self.buffered {
            if let Err(err) = self.flush().await {
                tracing::warn!(error = %err, "usage not written; kept for the next try");
            }
        }
    }

    /// Writes buffered records in one transaction; on failure they stay buffered
    /// (bounded: the oldest are dropped past 10,000).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let batch: Vec<UsageRecord> =
            std::mem::take(&mut *self.buffer.lock().expect("usage buffer"));
        if batch.is_empty() {
            return Ok(());
        }
        let result = self.write(&batch).await;
        if result.is_err() {
            let mut buffer = self.buffer.lock().expect("usage buffer");
            let mut kept = batch;
            kept.append(&mut buffer);
            let excess = kept.len().saturating_sub(10_000);
            kept.drain(..excess);
            *buffer = kept;
        }
        result
    }

    async fn write(&self, batch: &[UsageRecord]) -> Result<(), StoreError> {
        self.store.insert(batch).await
    }

    /// Totals of a key from `from` to `to` (UTC days, inclusive), after flushing.
    pub async fn totals(
        &self,
        key: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<UsageTotals, StoreError> {
        self.flush().await?;
        let totals = self.store.totals(key, from, to).await?;
        Ok(UsageTotals {
            cost_usd: (totals.cost_usd * 1e6).round() / 1e6,
            ..totals
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_parse_and_bad_entries_are_named() {
        let prices = parse_prices("gpt-4o-mini=0.15/0.60, gpt-4o = 2.5/10").unwrap();
        assert_eq!(
            prices["gpt-4o-mini"],
            Price {
                input: 0.15,
                output: 0.6
            }
        );
        assert_eq!(prices["gpt-4o"].output, 10.0);
        assert!(parse_prices("gpt=1").unwrap_err().contains("gpt=1"));
        assert!(parse_prices("gpt=a/1").unwrap_err().contains("not a price"));
        assert!(parse_prices("").unwrap().is_empty());
    }
}
