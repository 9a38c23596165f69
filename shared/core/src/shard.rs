//! Which of the standalone server's threads the caller runs on.
//!
//! The standalone server runs a current-thread runtime per core and hands each connection
//! to one of them (`chatkb_edge::server`): a request then stays on one thread from its
//! first byte to its last, with no wake-up of another worker in between. A pooled client
//! keeps one pool per thread (`shard::index`), so an upstream connection's task runs on
//! the thread that uses it. Anywhere else (Lambda, tests, a multi-thread runtime) every
//! thread reads index 0 and count 1, and one pool serves all.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNT: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// How many threads share the connections: set once, before the clients are built.
pub fn set_count(count: usize) {
    COUNT.store(count.max(1), Ordering::Relaxed);
}

/// The number of threads serving connections (1 unless the server runs several).
pub fn count() -> usize {
    COUNT.load(Ordering::Relaxed)
}

/// Marks the calling thread as the one serving shard `index`.
pub fn enter(index: usize) {
    INDEX.with(|cell| cell.set(index));
}

/// The shard the calling thread serves, always below `count()` (0 outside the server's
/// threads).
pub fn index() -> usize {
    INDEX.with(Cell::get) % count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_thread_reads_its_own_index_within_the_count() {
        set_count(2);
        assert_eq!(index(), 0, "a thread never entered is shard 0");
        let other = std::thread::spawn(|| {
            enter(1);
            index()
        });
        assert_eq!(other.join().unwrap(), 1);
        assert_eq!(index(), 0, "another thread's index is its own");
        let beyond = std::thread::spawn(|| {
            enter(5);
            index()
        });
        assert_eq!(beyond.join().unwrap(), 1, "5 of 2 wraps to a valid shard");
        set_count(0);
        assert_eq!(count(), 1, "at least one");
    }
}
