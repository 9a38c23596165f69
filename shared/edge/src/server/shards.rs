//! The standalone server's threads: each runs its own current-thread runtime, and a
//! connection lives on one of them from its first request to its close.
//!
//! On tokio's work-stealing runtime a proxied request hops between workers: the upstream
//! connection is its own task, and a parked worker is woken to steal it, about one futex
//! wake-up and thread switch per request, and a third of the gateway's CPU in the kernel
//! (docs/benchmarks.md, "A runtime per core"). Here the accept loop hands each new
//! connection to the thread with the fewest open, and the connection's requests run on
//! that thread, their calls to the model endpoint included (one pool per thread:
//! `chatkb_core::shard`). Clients shared by the whole process still hop: the Redis
//! connection's task runs on the thread that opened it first, a PostgreSQL connection's
//! socket on the runtime that opened it, and the proxied (reqwest) endpoint client keeps
//! one pool. The cost: one busy connection cannot use two cores (an HTTP/2 client
//! multiplexing everything over one connection gets one); `TOKIO_WORKER_THREADS`
//! chooses the work-stealing runtime instead.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::Serving;
use crate::observability::logging::{hold_lines_on_this_thread, write_held_lines_when_due};

/// The open count of a thread that has ended: never the fewest.
const GONE: usize = usize::MAX / 2;

/// A connection on its way to another thread.
struct Handoff {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    slot: OwnedSemaphorePermit,
}

/// The threads serving connections; index 0 is the accept loop's own.
pub(super) struct Shards {
    serving: Serving,
    /// Threads 1 and up.
    others: Vec<mpsc::UnboundedSender<Handoff>>,
    /// Open connections per thread, index 0 included.
    open: Arc<[AtomicUsize]>,
}

/// Counts a connection open on its thread until it ends.
pub(super) struct Open {
    open: Arc<[AtomicUsize]>,
    index: usize,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.open[self.index].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shards {
    /// Starts `threads - 1` threads beside the caller's (none for 1).
    pub(super) fn start(threads: usize, serving: Serving) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let open: Arc<[AtomicUsize]> = (0..threads).map(|_| AtomicUsize::new(0)).collect();
        let mut others = Vec::with_capacity(threads - 1);
        for index in 1..threads {
            let (sender, receiver) = mpsc::unbounded_channel();
            let runtime = crate::runtime::server_thread_builder()
                .enable_all()
                .build()?;
            let serving = serving.clone();
            let open = open.clone();
            std::thread::Builder::new()
                .name(format!("http-{index}"))
                .spawn(move || {
                    crate::shard::enter(index);
                    hold_lines_on_this_thread();
                    runtime.block_on(receive(receiver, serving, open, index));
                })?;
            others.push(sender);
        }
        Ok(Self {
            serving,
            others,
            open,
        })
    }

    /// Serves `stream` on the thread with the fewest open connections.
    pub(super) fn serve(&self, stream: TcpStream, peer: SocketAddr, slot: OwnedSemaphorePermit) {
        let index = self.least_busy();
        if index == 0 {
            self.serve_here(stream, peer, slot);
            return;
        }
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(err) => {
                tracing::warn!(error = %err, "a connection could not be handed over; closed");
                return;
            }
        };
        // Counted open from here; `Open`, on the thread that serves it, uncounts it.
        self.open[index].fetch_add(1, Ordering::Relaxed);
        let Err(returned) = self.others[index - 1].send(Handoff { stream, peer, slot }) else {
            return;
        };
        // That thread has ended (it never does on its own): out of the rotation for good,
        // and this connection served here.
        self.open[index].store(GONE, Ordering::Relaxed);
        tracing::error!(
            thread = index,
            "a server thread has ended; its share moves to the others"
        );
        let Handoff { stream, peer, slot } = returned.0;
        match TcpStream::from_std(stream) {
            Ok(stream) => self.serve_here(stream, peer, slot),
            Err(err) => tracing::warn!(error = %err, "a connection could not be served; closed"),
        }
    }

    /// Serves a connection on the accept loop's own thread.
    fn serve_here(&self, stream: TcpStream, peer: SocketAddr, slot: OwnedSemaphorePermit) {
        self.open[0].fetch_add(1, Ordering::Relaxed);
        let open = Open {
            open: self.open.clone(),
            index: 0,
        };
        tokio::spawn(self.serving.clone().connection(stream, peer, slot, open));
    }

    fn least_busy(&self) -> usize {
        let mut best = 0;
        let mut fewest = usize::MAX;
        for (index, open) in self.open.iter().enumerate() {
            let open = open.load(Ordering::Relaxed);
            if open < fewest {
                best = index;
                fewest = open;
            }
        }
        best
    }
}

/// How soon each server thread always has a timer due ([`anchor_timers`]).
const TIMER_ANCHOR: Duration = Duration::from_secs(1);

/// Keeps a timer due within [`TIMER_ANCHOR`] on this thread's runtime, for as long as
/// it runs. tokio's time driver wakes its runtime (an `eventfd` write, then a turn of the
/// loop that finds nothing to do) for every new timer due before the driver's next
/// planned wake, even while that runtime is busy running tasks (tokio-rs/tokio#5207). On
/// a thread with no other timer that was every request: hyper's header-read timeout
/// (10 s) is set anew for each request on a kept-alive connection. With this timer due
/// sooner, a request's timers of a second or more are never the earliest: one wake a
/// second per thread instead of one per request (docs/benchmarks.md, "A timer that saves
/// a wake per request"). Shorter timers (`HTTP_HEADER_TIMEOUT_MS` under 1000, the
/// cache's 20 ms lock waits) still wake it. The same task writes the log lines the
/// thread holds: each tick, and a few milliseconds after the thread ran out of work with
/// lines held (`stdout_lines::write_held_lines_when_due`).
pub(super) async fn anchor_timers() {
    write_held_lines_when_due(TIMER_ANCHOR).await;
}

/// A thread's loop: serves each connection handed to it on its own runtime. After the
/// accept loop stops, the connections in progress finish here; the thread ends with the
/// process.
async fn receive(
    mut connections: mpsc::UnboundedReceiver<Handoff>,
    serving: Serving,
    open: Arc<[AtomicUsize]>,
    index: usize,
) {
    tokio::spawn(anchor_timers());
    while let Some(Handoff { stream, peer, slot }) = connections.recv().await {
        let open = Open {
            open: open.clone(),
            index,
        };
        let stream = match TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(err) => {
                tracing::warn!(error = %err, "a handed-over connection could not be served");
                continue;
            }
        };
        tokio::spawn(serving.clone().connection(stream, peer, slot, open));
    }
    std::future::pending::<()>().await;
}
