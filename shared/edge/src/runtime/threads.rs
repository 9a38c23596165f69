//! The tokio runtime a function runs on: one thread where requests come one at a time,
//! a thread per core, each with its own runtime, where they come together.
//!
//! On a multi-thread runtime a proxied request hops between the workers twice (the
//! upstream connection is its own task, and a parked worker is woken to take it): two
//! futex wake-ups and thread switches per request, about a fifth of the gateway's CPU
//! (docs/benchmarks.md, "One thread where requests come one at a time", "A runtime per
//! core"). Under Lambda an environment handles one event at a time, so it gets a
//! current-thread runtime and pays none of that; the standalone server runs one such
//! runtime per core and gives each connection to one of them (`crate::server`).

use tokio::runtime::{Builder, Runtime};

use crate::observability::logging::{
    hold_lines_on_this_thread, write_all_held_lines, write_held_lines,
};

/// How many threads run the function's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// A current-thread runtime: everything on the main thread.
    One,
    /// A current-thread runtime on the main thread, and as many threads in all, each with
    /// its own, for the standalone server's connections (`crate::server`).
    PerCore(usize),
    /// A multi-thread runtime with this many workers (`None`: one per core).
    Workers(Option<usize>),
}

impl Threads {
    /// One thread under Lambda, unless the environment takes several invocations at once
    /// (`AWS_LAMBDA_MAX_CONCURRENCY` above 1, Lambda Managed Instances: a work-stealing
    /// runtime, as the Lambda runtime spreads them over tasks). Elsewhere, with
    /// `per_core` (a function whose requests are short, such as the chat gateway), a
    /// runtime per core; otherwise tokio's work-stealing runtime, which lets an idle core
    /// take over tasks queued behind a long one (an ingest's chunking, a backup). One
    /// core: one thread. `TOKIO_WORKER_THREADS` chooses the work-stealing runtime with
    /// that many workers (1 means the single thread).
    pub fn choose(
        in_lambda: bool,
        max_concurrency: Option<&str>,
        worker_threads: Option<&str>,
        cores: usize,
        per_core: bool,
    ) -> Result<Self, String> {
        let workers = match worker_threads.map(str::trim) {
            None | Some("") => None,
            Some(value) => match value.parse::<usize>() {
                Ok(n) if n >= 1 => Some(n),
                _ => {
                    return Err(format!(
                        "TOKIO_WORKER_THREADS must be a whole number of at least 1, not `{value}`"
                    ))
                }
            },
        };
        let concurrent_invocations = max_concurrency
            .and_then(|v| v.trim().parse::<u32>().ok())
            .is_some_and(|n| n > 1);
        Ok(match workers {
            Some(1) => Threads::One,
            Some(n) => Threads::Workers(Some(n)),
            None if in_lambda && !concurrent_invocations => Threads::One,
            None if cores <= 1 => Threads::One,
            None if per_core && !in_lambda => Threads::PerCore(cores),
            None => Threads::Workers(None),
        })
    }

    /// The choice for this process's environment.
    pub fn from_env(per_core: bool) -> Result<Self, String> {
        let var = |name| std::env::var(name).ok();
        Self::choose(
            super::in_lambda(),
            var("AWS_LAMBDA_MAX_CONCURRENCY").as_deref(),
            var("TOKIO_WORKER_THREADS").as_deref(),
            std::thread::available_parallelism().map_or(1, usize::from),
            per_core,
        )
    }

    /// A runtime with this many threads, every driver on.
    pub fn runtime(self) -> std::io::Result<Runtime> {
        let mut builder = match self {
            Threads::One => Builder::new_current_thread(),
            Threads::PerCore(_) => server_thread_builder(),
            Threads::Workers(workers) => {
                let mut builder = Builder::new_multi_thread();
                if let Some(workers) = workers {
                    builder.worker_threads(workers);
                }
                builder
            }
        };
        builder.enable_all().build()
    }
}

/// The runtime of each of the standalone server's threads (`Threads::PerCore`): one
/// thread, whose held log lines are written whenever it waits for work (`stdout_lines`).
pub(crate) fn server_thread_builder() -> Builder {
    let mut builder = Builder::new_current_thread();
    builder.on_thread_park(write_held_lines);
    builder
}

/// Runs a function's `main` future on the runtime its environment calls for: the entry
/// point of the function binaries whose requests may be long (work-stealing standalone).
pub fn block_on<F: std::future::Future>(main: F) -> Result<F::Output, super::BoxError> {
    run(Threads::from_env(false)?, main)
}

/// [`block_on`] for a function whose requests are short (the chat gateway): standalone,
/// a runtime per core, each serving its share of the connections.
pub fn block_on_per_core<F: std::future::Future>(main: F) -> Result<F::Output, super::BoxError> {
    run(Threads::from_env(true)?, main)
}

fn run<F: std::future::Future>(threads: Threads, main: F) -> Result<F::Output, super::BoxError> {
    // Declared before the runtime, so dropped after it (its tasks may log as they go),
    // on a normal return and on unwinding alike.
    let _written_at_exit = WriteHeldLinesAtExit;
    let runtime = threads.runtime()?;
    if let Threads::PerCore(count) = threads {
        crate::shard::set_count(count);
        // Its lines are written together when the thread waits (`stdout_lines`).
        hold_lines_on_this_thread();
    }
    Ok(runtime.block_on(main))
}

/// Writes every thread's held log lines when dropped: the process is about to exit.
struct WriteHeldLinesAtExit;

impl Drop for WriteHeldLinesAtExit {
    fn drop(&mut self) {
        write_all_held_lines();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lambda_gets_one_thread_unless_it_takes_invocations_together() {
        assert_eq!(Threads::choose(true, None, None, 2, true), Ok(Threads::One));
        assert_eq!(
            Threads::choose(true, Some("1"), None, 2, true),
            Ok(Threads::One)
        );
        assert_eq!(
            Threads::choose(true, Some("8"), None, 2, true),
            Ok(Threads::Workers(None))
        );
        // The operator's setting wins either way.
        assert_eq!(
            Threads::choose(true, None, Some("4"), 2, true),
            Ok(Threads::Workers(Some(4)))
        );
    }

    #[test]
    fn standalone_gets_a_runtime_per_core_where_asked_or_what_the_operator_sets() {
        assert_eq!(
            Threads::choose(false, None, None, 2, true),
            Ok(Threads::PerCore(2))
        );
        assert_eq!(
            Threads::choose(false, None, None, 4, true),
            Ok(Threads::PerCore(4))
        );
        assert_eq!(
            Threads::choose(false, None, Some("1"), 2, true),
            Ok(Threads::One)
        );
        assert_eq!(
            Threads::choose(false, None, Some(" 1 "), 2, true),
            Ok(Threads::One)
        );
        assert_eq!(
            Threads::choose(false, None, Some("3"), 2, true),
            Ok(Threads::Workers(Some(3)))
        );
        // A function with long requests: the work-stealing runtime.
        assert_eq!(
            Threads::choose(false, None, None, 2, false),
            Ok(Threads::Workers(None))
        );
        assert_eq!(
            Threads::choose(true, None, None, 2, false),
            Ok(Threads::One)
        );
        // One core (a container's CPU quota counts): the single thread.
        assert_eq!(
            Threads::choose(false, None, None, 1, true),
            Ok(Threads::One)
        );
        assert_eq!(
            Threads::choose(false, None, Some("2"), 1, true),
            Ok(Threads::Workers(Some(2)))
        );
    }

    #[test]
    fn a_bad_thread_count_is_named_not_a_panic() {
        for bad in ["0", "-1", "two", "1.5"] {
            let error = Threads::choose(false, None, Some(bad), 2, true).unwrap_err();
            assert!(error.contains("TOKIO_WORKER_THREADS"), "{error}");
            assert!(error.contains(bad), "{error}");
        }
    }

    #[test]
    fn each_choice_builds_a_runtime_that_runs() {
        for threads in [
            Threads::One,
            Threads::PerCore(2),
            Threads::Workers(Some(2)),
            Threads::Workers(None),
        ] {
            let runtime = threads.runtime().unwrap();
            let answer = runtime.block_on(async { tokio::spawn(async { 41 + 1 }).await.unwrap() });
            assert_eq!(answer, 42);
            let flavor = runtime.handle().runtime_flavor();
            let expected = match threads {
                Threads::One | Threads::PerCore(_) => tokio::runtime::RuntimeFlavor::CurrentThread,
                Threads::Workers(_) => tokio::runtime::RuntimeFlavor::MultiThread,
            };
            assert_eq!(flavor, expected);
        }
    }
}
