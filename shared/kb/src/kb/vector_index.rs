//! The PostgreSQL HNSW vector index, built in bulk (I3, issue 4's ingest target).
//!
//! pgvector inserts into an HNSW graph row by row at 3-6 ms per 384-d vector once the
//! index holds 100k chunks, but builds the same index in memory at ~1 ms per vector. So,
//! as pgvector advises (load, then index), a bulk write skips the index and a maintainer
//! indexes it afterwards, while small writes are indexed as they come:
//!
//! - every chunk carries a `segment`; the live index of a dimension is a partial HNSW
//!   index over `segment <= generation` (table `vector_indexes`);
//! - small writes get `segment = generation` and are indexed by PostgreSQL at once;
//!   bulk writes (many chunks, no index yet, or an import already under way) get a newer
//!   segment: the *delta*, which searches scan exactly, so nothing written is ever
//!   invisible;
//! - the maintainer folds a small delta into the index row by row, or builds a new index
//!   with `CREATE INDEX CONCURRENTLY` over everything and swaps it in when the delta is
//!   large relative to the index. It runs in a background task in standalone mode and on
//!   the ingest function's scheduled event under Lambda; an advisory lock keeps it to
//!   one builder per dimension across instances.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use serde::Serialize;
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::Notify;

use crate::store::StoreError;

/// How the maintainer treats bulk writes (`VECTOR_INDEX_*` settings).
#[derive(Debug, Clone)]
pub struct VectorIndexConfig {
    /// Writes of at least this many chunks skip row-by-row indexing.
    pub bulk_chunks: usize,
    /// The delta is indexed once bulk writes have paused this long...
    pub quiet: Duration,
    /// ...or as soon as it holds this many chunks (or as many as the index), which
    /// bounds the exact scan searches make during a long import.
    pub delta_rows: i64,
    /// `maintenance_work_mem` of a build: the graph must fit to be built in memory.
    pub build_memory_mb: u32,
    /// Maintain in a background task of this process (standalone server); under Lambda
    /// the scheduled event does it.
    pub background: bool,
}

impl Default for VectorIndexConfig {
    fn default() -> Self {
        Self {
            bulk_chunks: 100,
            quiet: Duration::from_secs(2),
            delta_rows: 50_000,
            build_memory_mb: 512,
            background: false,
        }
    }
}

/// The index of one dimension, as searches and writes see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IndexState {
    /// Chunks with `segment <= generation` are in the index (when `indexed`).
    pub generation: i64,
    pub indexed: bool,
    pub building: bool,
    pub indexed_rows: i64,
}

/// What one maintenance pass did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Maintenance {
    /// Nothing outside the index.
    Idle,
    /// Another instance holds the maintenance lock.
    Busy,
    /// A delta below the thresholds, left for a later pass.
    Waiting { delta: i64 },
    /// A small delta inserted into the live index row by row.
    Folded { rows: i64 },
    /// A new index built over everything and swapped in.
    Built {
        generation: i64,
        index: String,
        rows: i64,
        seconds: f64,
    },
}

/// How long searches reuse a read of `vector_indexes`. A stale read stays correct (the
/// delta branch covers everything above the generation it names); it can only be slower
/// until the next read, and an old index is dropped only after twice this long.
const STATE_TTL: Duration = Duration::from_secs(1);
/// Rows per statement when folding a delta, so no transaction holds many row locks.
const FOLD_BATCH: i64 = 500;

/// How often the background maintainer looks at pending dimensions...
const PASS_INTERVAL: Duration = Duration::from_secs(1);
/// ...and the longest it waits after passes that keep failing.
const FAILED_PASS_MAX_DELAY: Duration = Duration::from_secs(60);
/// Row-by-row insertion costs four to six times a bulk build per vector (measured at 100k
/// chunks, docs/benchmarks.md), so a delta under a quarter of the index is folded in and
/// a larger one triggers a rebuild.
const FOLD_RATIO: i64 = 4;

pub(crate) struct VectorIndexer {
    config: VectorIndexConfig,
    /// Index states for searches, per dimension, for `STATE_TTL`.
    states: moka::future::Cache<usize, IndexState>,
    /// Dimensions with a bulk write since their last maintenance, and when it happened.
    pending: Mutex<HashMap<usize, Instant>>,
    wake: Notify,
    worker: std::sync::Once,
}

fn lock_key(dims: usize) -> String {
    format!("vector_index:{dims}")
}

async fn read_state(conn: &mut sqlx::PgConnection, dims: usize) -> Result<IndexState, StoreError> {
    let row: Option<(i64, bool, bool, i64)> = sqlx::query_as(
        "SELECT generation, index_name IS NOT NULL, building, indexed_rows FROM vector_indexes WHERE dims = $1",
    )
    .bind(dims as i32)
    .fetch_optional(conn)
    .await?;
    Ok(row.map_or(
        IndexState {
            generation: 0,
            indexed: false,
            building: false,
            indexed_rows: 0,
        },
        |(generation, indexed, building, indexed_rows)| IndexState {
            generation,
            indexed,
            building,
            indexed_rows,
        },
    ))
}

impl VectorIndexer {
    pub(crate) fn new(config: VectorIndexConfig) -> Self {
        Self {
            config,
            states: moka::future::Cache::builder()
                .time_to_live(STATE_TTL)
                .build(),
            pending: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            worker: std::sync::Once::new(),
        }
    }

    /// The index state for searches (cached for `STATE_TTL`).
    pub(crate) async fn state(&self, pool: &PgPool, dims: usize) -> Result<IndexState, StoreError> {
        if let Some(state) = self.states.get(&dims).await {
            return Ok(state);
        }
        let state = read_state(&mut *pool.acquire().await?, dims).await?;
        self.states.insert(dims, state).await;
        Ok(state)
    }

    /// The index state as stored now (no cache).
    pub(crate) async fn fresh_state(
        &self,
        pool: &PgPool,
        dims: usize,
    ) -> Result<IndexState, StoreError> {
        read_state(&mut *pool.acquire().await?, dims).await
    }

    async fn forget_state(&self, dims: usize) {
        self.states.invalidate(&dims).await;
    }

    /// The segment for a write of `chunks` chunks of `dims` dimensions, inside the
    /// write's transaction, and whether the write is bulk (skips the index).
    pub(crate) async fn segment_for_write(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        dims: usize,
        chunks: usize,
    ) -> Result<(i64, bool), StoreError> {
        let state = read_state(tx, dims).await?;
        let bulk = !state.indexed
            || chunks >= self.config.bulk_chunks
            || sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM chunks WHERE dims = $1 AND segment > $2)",
            )
            .bind(dims as i32)
            .bind(state.generation)
            .fetch_one(&mut **tx)
            .await?;
        if !bulk {
            return Ok((state.generation, false));
        }
        // A running build covers generation + 1; what is written meanwhile waits for the next.
        let ahead = if state.building { 2 } else { 1 };
        Ok((state.generation + ahead, true))
    }

    /// After a committed bulk write: wake the background maintainer.
    pub(crate) fn bulk_written(self: &Arc<Self>, pool: &PgPool, dims: usize) {
        self.pending.lock().unwrap().insert(dims, Instant::now());
        if !self.config.background {
            return;
        }
        self.worker.call_once(|| {
            let indexer = Arc::clone(self);
            let pool = pool.clone();
            tokio::spawn(async move { indexer.run(pool).await });
        });
        self.wake.notify_one();
    }

    /// The background maintainer: checks pending dimensions when woken (at most once a
    /// second) and once their bulk writes have paused for `quiet`.
    async fn run(self: Arc<Self>, pool: PgPool) {
        // A pass that keeps failing (no right to create indexes, database down) is
        // retried 1 s, 2 s, 4 s... up to a minute apart, not every second.
        let failure_backoff = || {
            ExponentialBuilder::default()
                .with_min_delay(PASS_INTERVAL)
                .with_max_delay(FAILED_PASS_MAX_DELAY)
                .without_max_times()
                .build()
        };
        let mut backoff = failure_backoff();
        loop {
            let _ = tokio::time::timeout(self.config.quiet, self.wake.notified()).await;
            let mut failed = false;
            let pending: Vec<(usize, Instant)> = self
                .pending
                .lock()
                .unwrap()
                .iter()
                .map(|(d, t)| (*d, *t))
                .collect();
            for (dims, last_write) in pending {
                let quiet = last_write.elapsed() >= self.config.quiet;
                match self.maintain(&pool, dims, quiet).await {
                    Ok(Maintenance::Idle) => {
                        let mut pending = self.pending.lock().unwrap();
                        if pending.get(&dims) == Some(&last_write) {
                            pending.remove(&dims);
                        }
                    }
                    Ok(outcome) => tracing::debug!(dims, ?outcome, "vector index maintenance"),
                    Err(error) => {
                        failed = true;
                        tracing::warn!(dims, %error, "vector index maintenance failed");
                    }
                }
            }
            let pause = if failed {
                backoff.next().unwrap_or(FAILED_PASS_MAX_DELAY)
            } else {
                backoff = failure_backoff();
                PASS_INTERVAL
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// Every dimension with chunks outside its index (or whose index has gone), for the
    /// scheduled maintenance.
    pub(crate) async fn dimensions_with_delta(
        &self,
        pool: &PgPool,
    ) -> Result<BTreeSet<usize>, StoreError> {
        let dims: Vec<i32> = sqlx::query_scalar(
            "SELECT DISTINCT c.dims FROM chunks c LEFT JOIN vector_indexes v ON v.dims = c.dims \
             WHERE v.index_name IS NULL OR c.segment > v.generation \
             UNION SELECT dims FROM vector_indexes WHERE to_regclass(index_name) IS NULL AND index_name IS NOT NULL",
        )
        .fetch_all(pool)
        .await?;
        Ok(dims.into_iter().map(|d| d as usize).collect())
    }

    /// One maintenance pass for `dims`. `due` indexes any delta (bulk writes have paused,
    /// or a scheduled or explicit call); otherwise only a delta above the thresholds.
    pub(crate) async fn maintain(
        &self,
        pool: &PgPool,
        dims: usize,
        due: bool,
    ) -> Result<Maintenance, StoreError> {
        let mut conn = pool.acquire().await?;
        let locked: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                .bind(lock_key(dims))
                .fetch_one(&mut *conn)
                .await?;
        if !locked {
            return Ok(Maintenance::Busy);
        }
        let result = self.maintain_locked(&mut conn, dims, due).await;
        let unlocked = sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
            .bind(lock_key(dims))
            .execute(&mut *conn)
            .await;
        if unlocked.is_err() {
            // The lock lives as long as the session: do not return it to the pool.
            conn.detach();
        }
        self.forget_state(dims).await;
        result
    }

    async fn maintain_locked(
        &self,
        conn: &mut sqlx::PgConnection,
        dims: usize,
        due: bool,
    ) -> Result<Maintenance, StoreError> {
        sqlx::query("INSERT INTO vector_indexes (dims) VALUES ($1) ON CONFLICT (dims) DO NOTHING")
            .bind(dims as i32)
            .execute(&mut *conn)
            .await?;
        let mut state = read_state(&mut *conn, dims).await?;
        if state.building {
            // We hold the lock, so the builder that set this died: clear its leftovers.
            self.drop_invalid_indexes(conn, dims).await?;
            sqlx::query("UPDATE vector_indexes SET building = false WHERE dims = $1")
                .bind(dims as i32)
                .execute(&mut *conn)
                .await?;
            state.building = false;
        }
        if state.indexed {
            // An index dropped by hand, or a table restored without it: build it again.
            let exists: bool = sqlx::query_scalar(
                "SELECT to_regclass(index_name) IS NOT NULL FROM vector_indexes WHERE dims = $1",
            )
            .bind(dims as i32)
            .fetch_one(&mut *conn)
            .await?;
            if !exists {
                sqlx::query(
                    "UPDATE vector_indexes SET index_name = NULL, indexed_rows = 0 WHERE dims = $1",
                )
                .bind(dims as i32)
                .execute(&mut *conn)
                .await?;
                state.indexed = false;
                state.indexed_rows = 0;
            }
        }
        let delta: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM chunks WHERE dims = $1 AND (segment > $2 OR NOT $3)",
        )
        .bind(dims as i32)
        .bind(state.generation)
        .bind(state.indexed)
        .fetch_one(&mut *conn)
        .await?;
        if delta == 0 {
            return Ok(Maintenance::Idle);
        }
        if !due && delta < self.config.delta_rows.max(state.indexed_rows) {
            return Ok(Maintenance::Waiting { delta });
        }
        let done = if state.indexed && delta * FOLD_RATIO < state.indexed_rows {
            self.fold(conn, dims, state).await?
        } else {
            self.build(conn, dims, state).await?
        };
        // Bulk writes also filled the keyword index's pending list, which every keyword
        // search scans in full: merge it now rather than at the next vacuum.
        sqlx::query("SELECT gin_clean_pending_list('chunks_tsv'::regclass)")
            .execute(&mut *conn)
            .await?;
        Ok(done)
    }

    /// Moves the delta into the live index: updated rows get the index's segment, and
    /// PostgreSQL inserts them into the HNSW graph one by one.
    async fn fold(
        &self,
        conn: &mut sqlx::PgConnection,
        dims: usize,
        state: IndexState,
    ) -> Result<Maintenance, StoreError> {
        let mut rows = 0;
        loop {
            let moved = sqlx::query(
                "UPDATE chunks SET segment = $2 WHERE ctid = ANY (ARRAY(\
                 SELECT ctid FROM chunks WHERE dims = $1 AND segment > $2 LIMIT $3 FOR UPDATE SKIP LOCKED))",
            )
            .bind(dims as i32)
            .bind(state.generation)
            .bind(FOLD_BATCH)
            .execute(&mut *conn)
            .await?
            .rows_affected() as i64;
            rows += moved;
            if moved < FOLD_BATCH {
                break;
            }
        }
        sqlx::query("UPDATE vector_indexes SET indexed_rows = indexed_rows + $2 WHERE dims = $1")
            .bind(dims as i32)
            .bind(rows)
            .execute(&mut *conn)
            .await?;
        Ok(Maintenance::Folded { rows })
    }

    /// Builds an index over everything up to the next generation, swaps it in and drops
    /// the old one. Writes made meanwhile go to the generation after (see
    /// `segment_for_write`); searches use the old index until the swap.
    async fn build(
        &self,
        conn: &mut sqlx::PgConnection,
        dims: usize,
        state: IndexState,
    ) -> Result<Maintenance, StoreError> {
        let started = Instant::now();
        let generation = state.generation + 1;
        let index = format!("chunks_hnsw_{dims}_g{generation}");
        let old: Option<String> = sqlx::query_scalar(
            "UPDATE vector_indexes SET building = true WHERE dims = $1 RETURNING index_name",
        )
        .bind(dims as i32)
        .fetch_one(&mut *conn)
        .await?;
        // CREATE INDEX CONCURRENTLY cannot run in a transaction (not even a multi-statement
        // query): one plain statement at a time on this connection. m and ef_construction
        // as the row-by-row index had (recall measured in docs/benchmarks.md).
        // The build may run for minutes: lift the pool's statement limit for it; RESET
        // below gives the connection its limits back.
        sqlx::query(&format!(
            "SET maintenance_work_mem = '{}MB'",
            self.config.build_memory_mb
        ))
        .persistent(false)
        .execute(&mut *conn)
        .await?;
        // CREATE INDEX CONCURRENTLY also waits for every older transaction to end, and
        // those waits count as lock waits: give them minutes, not the pool's seconds.
        for set in ["SET statement_timeout = 0", "SET lock_timeout = '300s'"] {
            sqlx::query(set)
                .persistent(false)
                .execute(&mut *conn)
                .await?;
        }
        let create = format!(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS {index} ON chunks \
             USING hnsw ((embedding::vector({dims})) vector_cosine_ops) WITH (m = 16, ef_construction = 48) \
             WHERE dims = {dims} AND segment <= {generation}"
        );
        let created = sqlx::query(&create)
            .persistent(false)
            .execute(&mut *conn)
            .await;
        for reset in [
            "RESET maintenance_work_mem",
            "RESET statement_timeout",
            "RESET lock_timeout",
        ] {
            let _ = sqlx::query(reset)
                .persistent(false)
                .execute(&mut *conn)
                .await;
        }
        if let Err(error) = created {
            let _ = self.drop_invalid_indexes(conn, dims).await;
            sqlx::query("UPDATE vector_indexes SET building = false WHERE dims = $1")
                .bind(dims as i32)
                .execute(&mut *conn)
                .await?;
            return Err(error.into());
        }
        let rows: i64 =
            sqlx::query_scalar("SELECT count(*) FROM chunks WHERE dims = $1 AND segment <= $2")
                .bind(dims as i32)
                .bind(generation)
                .fetch_one(&mut *conn)
                .await?;
        sqlx::query(
            "UPDATE vector_indexes SET generation = $2, index_name = $3, building = false, \
             indexed_rows = $4, built_at = now() WHERE dims = $1",
        )
        .bind(dims as i32)
        .bind(generation)
        .bind(&index)
        .bind(rows)
        .execute(&mut *conn)
        .await?;
        self.forget_state(dims).await;
        if let Some(old) = old.filter(|o| *o != index) {
            // Searches that read the old state within STATE_TTL still name the old index.
            tokio::time::sleep(STATE_TTL * 2).await;
            sqlx::query(&format!("DROP INDEX CONCURRENTLY IF EXISTS {old}"))
                .persistent(false)
                .execute(&mut *conn)
                .await?;
        }
        Ok(Maintenance::Built {
            generation,
            index,
            rows,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Indexes a failed or interrupted `CREATE INDEX CONCURRENTLY` left behind.
    async fn drop_invalid_indexes(
        &self,
        conn: &mut sqlx::PgConnection,
        dims: usize,
    ) -> Result<(), StoreError> {
        let invalid: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE NOT i.indisvalid AND c.relname LIKE $1",
        )
        .bind(format!("chunks_hnsw_{dims}_g%"))
        .fetch_all(&mut *conn)
        .await?;
        for index in invalid {
            sqlx::query(&format!("DROP INDEX CONCURRENTLY IF EXISTS {index}"))
                .persistent(false)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }
}
