//! Usage, cost and daily budgets (C10): every answer's tokens and cost per API key and
//! model, recorded in the database without a round trip on the response path (buffered
//! and flushed in the background in standalone mode; written before the invocation ends
//! on Lambda), totals for `GET /v1/usage`, and a daily budget per key.
//!
//! A budget is shared by every instance: each one checks against the stored total for
//! today, re-read every `BUDGET_REFRESH_MS` in the background, plus its own spend since,
//! and requests reserve their worst-case cost before the model is called (`budget`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{NaiveDate, Utc};
use serde::Serialize;

use super::error::ChatError;
use crate::observability::metrics::names;
use crate::store::{Database, DatabaseKind, StoreError};

mod budget;
mod hourly;
mod postgres;
mod sqlite;

pub use budget::{BudgetLedger, Reservation};
pub use hourly::{per_hour, HourlyUsage};

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

/// Where usage is kept: one adapter per SQL dialect.
#[async_trait::async_trait]
pub trait UsageStore: Send + Sync {
    /// Adds a batch of answers to their hours' rows, in one transaction.
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

/// How daily budgets are enforced.
#[derive(Debug, Default)]
pub struct BudgetPolicy {
    /// `DAILY_BUDGET_USD` per API key; `None`: no budget.
    pub daily_usd: Option<f64>,
    /// How old the stored total may get before it is read again (`BUDGET_REFRESH_MS`).
    pub refresh_every: Duration,
    /// The reservation ledger every instance shares (Redis); `None`: this instance's own.
    pub ledger: Option<BudgetLedger>,
    /// While the shared ledger is unreachable, each instance admits against this share
    /// of what is left of a budget (`BUDGET_INSTANCES`).
    pub instances: u32,
}

/// Where each answer's usage row goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageRows {
    /// Buffered and flushed in the background, off the response path (standalone).
    Buffered,
    /// Written before the answer is returned (Lambda: nothing runs between invocations).
    Immediate,
    /// Not kept (`USAGE_RECORDING=false`): only the metrics count tokens and cost, for a
    /// deployment that accounts elsewhere and wants no database write per answer.
    Off,
}

/// Records usage, enforces budgets and sums totals.
pub struct UsageRecorder {
    store: Arc<dyn UsageStore>,
    prices: HashMap<String, Price>,
    daily_budget: Option<f64>,
    ledger: Option<BudgetLedger>,
    instances: u32,
    rows: UsageRows,
    buffer: Mutex<Vec<UsageRecord>>,
    /// Held while a batch is written: a flush waits for one in progress, so what was
    /// recorded before it is stored when it returns (totals read after it see it).
    writing: tokio::sync::Mutex<()>,
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
    /// This instance's reservations in flight, and their sum.
    reserved: f64,
    in_flight: u32,
}

impl Spend {
    fn new(day: NaiveDate) -> Self {
        Self {
            day,
            stored: 0.0,
            since: 0.0,
            read_at: None,
            reading: false,
            reserved: 0.0,
            in_flight: 0,
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
        budget: BudgetPolicy,
        rows: UsageRows,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            prices,
            daily_budget: budget.daily_usd,
            ledger: budget.ledger,
            instances: budget.instances.max(1),
            rows,
            buffer: Mutex::new(Vec::new()),
            writing: tokio::sync::Mutex::new(()),
            spend: Mutex::new(HashMap::new()),
            refresh_every: budget.refresh_every,
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

    /// Whether usage rows are kept, so `totals` has something to sum.
    pub fn is_recording(&self) -> bool {
        self.rows != UsageRows::Off
    }

    /// Whether a daily budget is enforced (`DAILY_BUDGET_USD`).
    pub fn has_budget(&self) -> bool {
        self.daily_budget.is_some()
    }

    /// Reserves up to `worst_case` dollars of the key's budget for one request, or
    /// refuses it (429 with a clear message). `None`: no budget is set. Settle the
    /// reservation with the actual cost; dropped unsettled, it is released.
    pub async fn reserve(
        self: &Arc<Self>,
        key: &str,
        worst_case: f64,
    ) -> Result<Option<Arc<Reservation>>, ChatError> {
        let Some(budget) = self.daily_budget else {
            return Ok(None);
        };
        let today = Utc::now().date_naive();
        let known = self.known_spend(key, today).await;
        let id = uuid::Uuid::new_v4().simple().to_string();
        if let Some(ledger) = &self.ledger {
            match ledger
                .reserve(key, today, &id, worst_case, budget, known)
                .await
            {
                Ok(decision) if decision.admitted => {
                    self.hold(key, today, worst_case);
                    return Ok(Some(self.reservation(key, today, id, worst_case, true)));
                }
                Ok(decision) => {
                    return Err(over_budget(
                        budget,
                        decision.spent,
                        decision.reserved,
                        worst_case,
                    ))
                }
                Err(err) => {
                    metrics::counter!(names::BUDGET_LEDGER_FALLBACKS_TOTAL).increment(1);
                    tracing::warn!(error = %err, share = self.instances, "budget ledger unreachable; this instance admits on its share of what is left");
                }
            }
        }
        {
            let mut spend = self.spend.lock().expect("spend lock");
            let entry = Spend::of_day(&mut spend, key, today);
            // This instance alone: all of the budget, or, while the shared ledger is
            // down, its share of what was left at the last stored total (its own spend
            // since then counts against that share, so the share does not grow with it).
            let share = if self.ledger.is_some() {
                entry.stored + (budget - entry.stored).max(0.0) / f64::from(self.instances)
            } else {
                budget
            };
            let spent = entry.total();
            if !budget::admits(spent, entry.reserved, entry.in_flight, worst_case, share) {
                return Err(over_budget(share, spent, entry.reserved, worst_case));
            }
            entry.reserved += worst_case;
            entry.in_flight += 1;
        }
        Ok(Some(self.reservation(key, today, id, worst_case, false)))
    }

    fn reservation(
        self: &Arc<Self>,
        key: &str,
        day: NaiveDate,
        id: String,
        amount: f64,
        shared: bool,
    ) -> Arc<Reservation> {
        Arc::new(Reservation {
            recorder: Arc::clone(self),
            key: key.to_string(),
            day,
            id,
            amount,
            shared,
            done: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Counts a reservation the shared ledger admitted in this instance's books too.
    fn hold(&self, key: &str, day: NaiveDate, amount: f64) {
        let mut spend = self.spend.lock().expect("spend lock");
        let entry = Spend::of_day(&mut spend, key, day);
        entry.reserved += amount;
        entry.in_flight += 1;
    }

    /// Takes a settled or released reservation off this instance's books.
    pub(crate) fn unreserve(&self, key: &str, day: NaiveDate, amount: f64) {
        let mut spend = self.spend.lock().expect("spend lock");
        if let Some(entry) = spend.get_mut(key).filter(|e| e.day == day) {
            entry.reserved = (entry.reserved - amount).max(0.0);
            entry.in_flight = entry.in_flight.saturating_sub(1);
            if entry.in_flight == 0 {
                entry.reserved = 0.0;
            }
        }
    }

    /// The key's spend today as this instance knows it. The first call of a key each
    /// day waits for the stored total; later ones use what is known and, once that is
    /// older than the refresh interval, re-read the stored total in the background, so
    /// other instances' spend counts too.
    async fn known_spend(self: &Arc<Self>, key: &str, today: NaiveDate) -> f64 {
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
        match known {
            Some(usd) => {
                if stale {
                    let recorder = Arc::clone(self);
                    let key = key.to_string();
                    tokio::spawn(async move { recorder.read_stored_spend(&key, today).await });
                }
                usd
            }
            None => self.read_stored_spend(key, today).await,
        }
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
            crate::observability::metrics::emf(
                &[(names::LLM_COST_USD_TOTAL, record.cost_usd, "None")],
                &[("model", &record.model)],
            );
        }
        if self.rows == UsageRows::Off {
            // No budget either: the configuration refuses one without rows.
            return;
        }
        {
            let day = record.at.date_naive();
            let mut spend = self.spend.lock().expect("spend lock");
            Spend::of_day(&mut spend, &record.key, day).since += record.cost_usd;
        }
        self.buffer.lock().expect("usage buffer").push(record);
        if self.rows == UsageRows::Immediate {
            if let Err(err) = self.flush().await {
                tracing::warn!(error = %err, "usage not written; kept for the next try");
            }
        }
    }

    /// Writes buffered records in one transaction; on failure they stay buffered
    /// (bounded: the oldest are dropped past 10,000).
    pub async fn flush(&self) -> Result<(), StoreError> {
        // Without it, a flush that found the buffer empty because the periodic flusher
        // had just taken it returned before those rows were stored.
        let _writing = self.writing.lock().await;
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

/// The 429 for a request the budget cannot take: spent, or taken by requests in flight.
fn over_budget(budget: f64, spent: f64, reserved: f64, worst_case: f64) -> ChatError {
    let today = Utc::now().date_naive();
    let until_midnight = (today.succ_opt().unwrap_or(today))
        .and_hms_opt(0, 0, 0)
        .map(|midnight| (midnight.and_utc() - Utc::now()).num_seconds().max(1) as u64)
        .unwrap_or(3600);
    let spent_out = spent >= budget;
    let reason = if spent_out { "spent" } else { "reserved" };
    metrics::counter!(names::BUDGET_REJECTIONS_TOTAL, "reason" => reason).increment(1);
    crate::observability::metrics::emf(
        &[(names::BUDGET_REJECTIONS_TOTAL, 1.0, "Count")],
        &[("reason", reason)],
    );
    if spent_out {
        return ChatError::OverBudget {
            message: format!(
                "the daily budget of ${budget:.2} for this API key is spent (${spent:.4} today); it resets at 00:00 UTC"
            ),
            retry_after: Duration::from_secs(until_midnight),
        };
    }
    ChatError::OverBudget {
        message: format!(
            "the daily budget of ${budget:.2} for this API key cannot take this request now: ${spent:.4} is spent and ${reserved:.4} is reserved by requests in progress, and this one may cost up to ${worst_case:.4}; retry when they finish, or lower max_tokens"
        ),
        retry_after: Duration::from_secs(1),
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
