//! L1: the entries this process holds (quick_cache: sharded, CLOCK-PRO eviction by
//! weight, no background work), each with its expiry, and the loads in flight, so
//! concurrent misses of one key share one load and its outcome, an error included.
//!
//! moka did both (its `try_get_with`), but its housekeeping, epoch-based reclamation and
//! concurrent map's rehashing took 12 % of a proxied request's CPU for the two entries
//! each answer writes (docs/benchmarks.md, fifteenth session).

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use quick_cache::sync::{Cache, DefaultLifecycle};
use quick_cache::{OptionsBuilder, Weighter};

use super::Entry;

type Hasher = foldhash::fast::RandomState;

/// What a load in flight ends with: the entry it stored, or its error, type-erased so
/// one map holds loads of every value and error type (each caller downcasts its own).
pub(super) type Outcome = Result<Entry, Arc<dyn Any + Send + Sync>>;

/// One load in flight. Every caller that misses the key meanwhile awaits the same cell
/// with its own loader: the first runs; if its caller is dropped mid-load, the next
/// caller's runs instead (no one waits on a load nobody is running).
#[derive(Default)]
pub(super) struct Flight {
    pub(super) outcome: tokio::sync::OnceCell<Outcome>,
}

/// What a caller that missed finds under the flights' lock.
pub(super) enum Joined {
    /// An entry stored by a load that landed between the caller's lookup and the lock.
    Held(Entry),
    /// The load in flight to wait for, or run.
    Flight(Arc<Flight>),
}

/// An entry's weight: its JSON, its key and `overhead` bytes of bookkeeping, at least
/// `floor` (so the byte bound also bounds the number of entries).
#[derive(Clone)]
struct Weigh {
    overhead: u64,
    floor: u64,
}

impl Weighter<String, Entry> for Weigh {
    fn weight(&self, key: &String, entry: &Entry) -> u64 {
        (entry.weight as u64 + key.len() as u64 + self.overhead).max(self.floor)
    }
}

pub(super) struct L1 {
    entries: Cache<String, Entry, Weigh, Hasher, DefaultLifecycle<String, Entry>>,
    flights: Mutex<HashMap<String, Arc<Flight>, Hasher>>,
}

impl L1 {
    /// At most `max_bytes` of weight, each entry weighing at least `max_bytes /
    /// max_entries`, in [`shards`] shards.
    pub(super) fn new(max_bytes: u64, max_entries: u64, overhead: u64) -> Self {
        let floor = (max_bytes / max_entries.max(1)).max(1);
        let estimated_items = (max_bytes / (overhead + 512).max(floor)).clamp(16, 1 << 20);
        let options = OptionsBuilder::new()
            .shards(shards(max_bytes))
            .estimated_items_capacity(estimated_items as usize)
            .weight_capacity(max_bytes)
            .build()
            .expect("estimated items and weight capacity are set");
        Self {
            entries: Cache::with_options(
                options,
                Weigh { overhead, floor },
                Hasher::default(),
                DefaultLifecycle::default(),
            ),
            flights: Mutex::new(HashMap::with_hasher(Hasher::default())),
        }
    }

    /// The entry under `key` unless it has expired (then it is removed: an idle
    /// instance does not keep expired answers and sessions for the next insert to evict).
    pub(super) fn get(&self, key: &str) -> Option<Entry> {
        let entry = self.entries.get(key)?;
        self.unexpired(key, entry)
    }

    /// As [`Self::get`], without counting as a use: for the gateway's own reads (the
    /// copy of a fresh answer under its question's key, the re-check of a miss), which
    /// would otherwise make every new entry look asked for again and move it out of
    /// the cold part, where one-off prompts are evicted first.
    pub(super) fn peek(&self, key: &str) -> Option<Entry> {
        let entry = self.entries.peek(key)?;
        self.unexpired(key, entry)
    }

    fn unexpired(&self, key: &str, entry: Entry) -> Option<Entry> {
        let now = Instant::now();
        if entry.expires > now {
            return Some(entry);
        }
        self.entries.remove_if(key, |held| held.expires <= now);
        None
    }

    pub(super) fn insert(&self, key: String, entry: Entry) {
        self.entries.insert(key, entry);
    }

    pub(super) fn remove(&self, key: &str) {
        self.entries.remove(key);
    }

    /// Entries held, expired ones not yet evicted included.
    pub(super) fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    /// The weight held, in bytes as [`Weigh`] counts them.
    #[cfg(test)]
    pub(super) fn weight(&self) -> u64 {
        self.entries.weight()
    }

    /// The load in flight for `key`, joined, or a new one; or the entry a load stored
    /// meanwhile (at least of `generation`, and not the one the caller `seen` and found
    /// wanting), looked up under the lock: a load stores its entry before it lands, so a
    /// caller sees one or the other. A finished flight whose entry is older than
    /// `generation` (a namespace bump adopted meanwhile) is replaced by a new one, which
    /// the callers of that generation share.
    pub(super) fn join(&self, key: &str, generation: u64, seen: Option<&Entry>) -> Joined {
        let mut flights = self.flights.lock().expect("flights lock");
        if let Some(flight) = flights.get(key) {
            let outdated = matches!(flight.outcome.get(), Some(Ok(e)) if e.generation < generation);
            if !outdated {
                return Joined::Flight(flight.clone());
            }
        }
        let stored = self.peek(key).filter(|entry| {
            entry.generation >= generation
                && seen.is_none_or(|seen| !Arc::ptr_eq(&seen.json, &entry.json))
        });
        if let Some(entry) = stored {
            return Joined::Held(entry);
        }
        let flight = Arc::new(Flight::default());
        flights.insert(key.to_string(), flight.clone());
        Joined::Flight(flight)
    }

    /// A caller is done with `flight`: it ends for new callers once it has an outcome
    /// (callers already waiting still get it; a later miss starts a new load, so errors
    /// are not kept), or once no caller is left (its only caller was dropped mid-load:
    /// with keys that are never asked for again, such flights would pile up). Every
    /// clone is made under the lock (`join`), so the count read under it is exact.
    fn land(&self, key: &str, flight: Arc<Flight>) {
        let mut flights = self.flights.lock().expect("flights lock");
        let done = flight.outcome.initialized();
        let ours = flights
            .get(key)
            .is_some_and(|held| Arc::ptr_eq(held, &flight));
        drop(flight);
        if ours
            && (done
                || flights
                    .get(key)
                    .is_some_and(|held| Arc::strong_count(held) == 1))
        {
            flights.remove(key);
        }
    }

    /// Loads in flight (tests: none is left behind).
    #[cfg(test)]
    pub(super) fn flights(&self) -> usize {
        self.flights.lock().expect("flights lock").len()
    }

    /// Callers of the load in flight for `key` (tests: all have joined).
    #[cfg(test)]
    pub(super) fn callers(&self, key: &str) -> usize {
        let flights = self.flights.lock().expect("flights lock");
        flights
            .get(key)
            .map_or(0, |flight| Arc::strong_count(flight) - 1)
    }
}

/// How many shards `max_bytes` is split into: each bounds its own share, and an entry
/// heavier than about 97 % of a shard (its hot part) is not held; quick_cache's default,
/// four per core, would make shards of 32 KiB out of a 4 MiB L1 on 64 cores. A power of
/// two (quick_cache rounds up to one), at most 16, with shards of at least 512 KiB: the
/// default 4 MiB is 8 shards.
pub(super) fn shards(max_bytes: u64) -> usize {
    let most = (max_bytes / SHARD_BYTES_AT_LEAST).clamp(1, 16);
    1 << most.ilog2()
}

const SHARD_BYTES_AT_LEAST: u64 = 512 * 1024;

/// Lands a flight when its caller is done with it, also when the caller is dropped
/// after the outcome was set (a flight left in the map would hand its outcome, an
/// error too, to every later caller).
pub(super) struct Landing<'a> {
    l1: &'a L1,
    key: &'a str,
    flight: Option<Arc<Flight>>,
}

impl<'a> Landing<'a> {
    pub(super) fn new(l1: &'a L1, key: &'a str, flight: Arc<Flight>) -> Self {
        Self {
            l1,
            key,
            flight: Some(flight),
        }
    }

    pub(super) fn flight(&self) -> &Flight {
        self.flight.as_ref().expect("held until dropped")
    }
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        if let Some(flight) = self.flight.take() {
            self.l1.land(self.key, flight);
        }
    }
}
