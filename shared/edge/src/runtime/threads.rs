//! The tokio runtime a function runs on: one thread where requests come one at a time,
//! one worker per core where they come together.
//!
//! On a multi-thread runtime a proxied request hops between the workers twice (the
//! upstream connection is its own task, and a parked worker is woken to take it): two
//! futex wake-ups and thread switches per request, about a fifth of the gateway's CPU
//! (docs/benchmarks.md, "One thread where requests come one at a time"). Under Lambda an
//! environment handles one event at a time, so it gets a current-thread runtime and pays
//! none of that.

use tokio::runtime::{Builder, Runtime};

/// How many threads run the function's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// A current-thread runtime: everything on the main thread.
    One,
    /// A multi-thread runtime with this many workers (`None`: one per core).
    Workers(Option<usize>),
}

impl Threads {
    /// One thread under Lambda, unless the environment takes several invocations at once
    /// (`AWS_LAMBDA_MAX_CONCURRENCY` above 1, Lambda Managed Instances); elsewhere one
    /// worker per core (one thread on one core: a lone worker beside the main thread
    /// would only add the hops), or `TOKIO_WORKER_THREADS` (1 means the single thread).
    pub fn choose(
        in_lambda: bool,
        max_concurrency: Option<&str>,
        worker_threads: Option<&str>,
        cores: usize,
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
            None => Threads::Workers(None),
        })
    }

    /// The choice for this process's environment.
    pub fn from_env() -> Result<Self, String> {
        let var = |name| std::env::var(name).ok();
        Self::choose(
            super::in_lambda(),
            var("AWS_LAMBDA_MAX_CONCURRENCY").as_deref(),
            var("TOKIO_WORKER_THREADS").as_deref(),
            std::thread::available_parallelism().map_or(1, usize::from),
        )
    }

    /// A runtime with this many threads, every driver on.
    pub fn runtime(self) -> std::io::Result<Runtime> {
        let mut builder = match self {
            Threads::One => Builder::new_current_thread(),
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

/// Runs a function's `main` future on the runtime its environment calls for: the one
/// entry point of every function binary.
pub fn block_on<F: std::future::Future>(main: F) -> Result<F::Output, super::BoxError> {
    let threads = Threads::from_env()?;
    Ok(threads.runtime()?.block_on(main))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lambda_gets_one_thread_unless_it_takes_invocations_together() {
        assert_eq!(Threads::choose(true, None, None, 2), Ok(Threads::One));
        assert_eq!(Threads::choose(true, Some("1"), None, 2), Ok(Threads::One));
        assert_eq!(
            Threads::choose(true, Some("8"), None, 2),
            Ok(Threads::Workers(None))
        );
        // The operator's setting wins either way.
        assert_eq!(
            Threads::choose(true, None, Some("4"), 2),
            Ok(Threads::Workers(Some(4)))
        );
    }

    #[test]
    fn standalone_gets_a_worker_per_core_or_what_is_asked() {
        assert_eq!(
            Threads::choose(false, None, None, 2),
            Ok(Threads::Workers(None))
        );
        assert_eq!(Threads::choose(false, None, Some("1"), 2), Ok(Threads::One));
        assert_eq!(
            Threads::choose(false, None, Some(" 1 "), 2),
            Ok(Threads::One)
        );
        assert_eq!(
            Threads::choose(false, None, Some("3"), 2),
            Ok(Threads::Workers(Some(3)))
        );
        // One core (a container's CPU quota counts): the single thread.
        assert_eq!(Threads::choose(false, None, None, 1), Ok(Threads::One));
        assert_eq!(
            Threads::choose(false, None, Some("2"), 1),
            Ok(Threads::Workers(Some(2)))
        );
    }

    #[test]
    fn a_bad_thread_count_is_named_not_a_panic() {
        for bad in ["0", "-1", "two", "1.5"] {
            let error = Threads::choose(false, None, Some(bad), 2).unwrap_err();
            assert!(error.contains("TOKIO_WORKER_THREADS"), "{error}");
            assert!(error.contains(bad), "{error}");
        }
    }

    #[test]
    fn each_choice_builds_a_runtime_that_runs() {
        for threads in [
            Threads::One,
            Threads::Workers(Some(2)),
            Threads::Workers(None),
        ] {
            let runtime = threads.runtime().unwrap();
            let answer = runtime.block_on(async { tokio::spawn(async { 41 + 1 }).await.unwrap() });
            assert_eq!(answer, 42);
            let flavor = runtime.handle().runtime_flavor();
            let expected = match threads {
                Threads::One => tokio::runtime::RuntimeFlavor::CurrentThread,
                Threads::Workers(_) => tokio::runtime::RuntimeFlavor::MultiThread,
            };
            assert_eq!(flavor, expected);
        }
    }
}
