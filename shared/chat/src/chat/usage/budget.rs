//! Budget reservations (issue 14, finding 7): a request reserves its worst-case cost
//! before the model is called and settles with its actual cost after, so requests in
//! flight count against the daily budget. Without this, 20 concurrent requests all read
//! the same "not spent yet" and all went through.
//!
//! Admission rule, the same in process and in the shared ledger: a request is admitted
//! when spend + reservations + its worst case fit in the budget, or when nothing else
//! is in flight and the budget is not spent yet (so a lone request whose worst case is
//! larger than what is left still runs, as it always did). A key therefore never spends
//! past its budget by more than one request's worst case.
//!
//! With Redis, every instance reserves through one Lua script on one ledger per key and
//! day; reservations expire (a crashed instance's do not hold the budget forever). While
//! Redis is down, each instance decides alone on `1/BUDGET_INSTANCES` of what is left.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::NaiveDate;

use crate::store::RedisHandle;

/// How long a reservation holds without being settled (a crashed instance's).
const RESERVATION_TTL: Duration = Duration::from_secs(15 * 60);
/// The ledger of a day is kept a little over a day.
const LEDGER_TTL_SECS: u64 = 2 * 24 * 3600;

/// KEYS: spent hash, reservation expiries (zset), reservation amounts (hash).
/// ARGV: now ms, expiry ms, id, amount, budget, spend known to the caller, ttl s.
/// Returns {admitted, spent, reserved} (amounts as strings).
const RESERVE: &str = r#"
local now = tonumber(ARGV[1])
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, id in ipairs(expired) do redis.call('HDEL', KEYS[3], id) end
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now) end
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local known = tonumber(ARGV[6])
if known > spent then spent = known end
local reserved = 0
for _, amount in ipairs(redis.call('HVALS', KEYS[3])) do reserved = reserved + tonumber(amount) end
local in_flight = redis.call('ZCARD', KEYS[2])
local amount = tonumber(ARGV[4])
local budget = tonumber(ARGV[5])
if spent + reserved + amount <= budget or (in_flight == 0 and spent < budget) then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
  redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
  for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[7]) end
  return {1, tostring(spent), tostring(reserved)}
end
return {0, tostring(spent), tostring(reserved)}
"#;

/// KEYS as in RESERVE. ARGV: id, actual cost, ttl s. Adds the cost and drops the
/// reservation in one step.
const SETTLE: &str = r#"
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
if tonumber(ARGV[2]) > 0 then
  redis.call('HINCRBYFLOAT', KEYS[1], 'spent', ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return 1
"#;

/// Whether a request of worst-case cost `amount` may start.
pub(crate) fn admits(spent: f64, reserved: f64, in_flight: u32, amount: f64, budget: f64) -> bool {
    spent + reserved + amount <= budget || (in_flight == 0 && spent < budget)
}

/// The reservation ledger shared by every instance through Redis.
pub struct BudgetLedger {
    redis: RedisHandle,
    prefix: String,
    reserve: redis::Script,
    settle: redis::Script,
}

impl std::fmt::Debug for BudgetLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BudgetLedger")
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// The ledger's answer to a reservation.
pub(crate) struct LedgerDecision {
    pub admitted: bool,
    pub spent: f64,
    pub reserved: f64,
}

impl BudgetLedger {
    pub fn new(redis: RedisHandle, prefix: &str) -> Self {
        Self {
            redis,
            prefix: prefix.to_string(),
            reserve: redis::Script::new(RESERVE),
            settle: redis::Script::new(SETTLE),
        }
    }

    /// One hash tag per key and day, so the three keys live in one cluster slot.
    fn keys(&self, key: &str, day: NaiveDate) -> [String; 3] {
        let tag = format!("{}:budget:{{{key}:{day}}}", self.prefix);
        [
            format!("{tag}:spent"),
            format!("{tag}:expiries"),
            format!("{tag}:amounts"),
        ]
    }

    pub(crate) async fn reserve(
        &self,
        key: &str,
        day: NaiveDate,
        id: &str,
        amount: f64,
        budget: f64,
        known_spend: f64,
    ) -> Result<LedgerDecision, String> {
        let now = unix_millis();
        let expires = now + RESERVATION_TTL.as_millis() as u64;
        let keys = self.keys(key, day);
        let script = &self.reserve;
        let (admitted, spent, reserved): (i64, String, String) = self
            .redis
            .run(|mut conn| async move {
                script
                    .key(&keys[0])
                    .key(&keys[1])
                    .key(&keys[2])
                    .arg(now)
                    .arg(expires)
                    .arg(id)
                    .arg(amount)
                    .arg(budget)
                    .arg(known_spend)
                    .arg(LEDGER_TTL_SECS)
                    .invoke_async(&mut conn)
                    .await
            })
            .await
            .map_err(|e| e.to_string())?;
        Ok(LedgerDecision {
            admitted: admitted == 1,
            spent: spent.parse().unwrap_or(known_spend),
            reserved: reserved.parse().unwrap_or(0.0),
        })
    }

    /// Replaces a reservation with the actual cost (0 releases it).
    pub(crate) async fn settle(
        &self,
        key: &str,
        day: NaiveDate,
        id: &str,
        cost: f64,
    ) -> Result<(), String> {
        let keys = self.keys(key, day);
        let script = &self.settle;
        self.redis
            .run(|mut conn| async move {
                script
                    .key(&keys[0])
                    .key(&keys[1])
                    .key(&keys[2])
                    .arg(id)
                    .arg(cost)
                    .arg(LEDGER_TTL_SECS)
                    .invoke_async::<i64>(&mut conn)
                    .await
            })
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A request's hold on part of its key's budget, from before the model is called until
/// the answer is settled. Dropped unsettled (the request failed), it is released.
pub struct Reservation {
    pub(crate) recorder: Arc<super::UsageRecorder>,
    pub(crate) key: String,
    pub(crate) day: NaiveDate,
    pub(crate) id: String,
    pub(crate) amount: f64,
    /// Held in the shared ledger too (not only in this instance).
    pub(crate) shared: bool,
    pub(crate) done: AtomicBool,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("amount", &self.amount)
            .field("shared", &self.shared)
            .finish()
    }
}

impl Reservation {
    /// Replaces the reservation with the answer's actual cost (recorded separately as
    /// usage); later calls do nothing.
    pub async fn settle(&self, cost: f64) {
        if self.done.swap(true, Ordering::SeqCst) {
            return;
        }
        self.recorder.unreserve(&self.key, self.day, self.amount);
        if self.shared {
            if let Some(ledger) = &self.recorder.ledger {
                if let Err(err) = ledger.settle(&self.key, self.day, &self.id, cost).await {
                    tracing::warn!(error = %err, "budget reservation not settled in the shared ledger; it expires on its own");
                }
            }
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.done.swap(true, Ordering::SeqCst) {
            return;
        }
        self.recorder.unreserve(&self.key, self.day, self.amount);
        if !self.shared {
            return;
        }
        let (recorder, key, day, id) = (
            self.recorder.clone(),
            self.key.clone(),
            self.day,
            self.id.clone(),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Some(ledger) = &recorder.ledger {
                    let _ = ledger.settle(&key, day, &id, 0.0).await;
                }
            });
        }
    }
}
