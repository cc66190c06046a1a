//! [`SignThreads`]: dedicated threads for custodies whose signs block (an
//! HSM).
//!
//! Why not tokio's blocking pool: `spawn_blocking` starts or wakes a
//! thread per call, and with more concurrent calls than token sessions
//! those threads queue on the session pool, waking one another at every
//! hand-over. Measured against SoftHSM2 on 2 cores, that ran at under half
//! the rate of a plain loop on one session. Here there is one long-lived
//! thread per session, all taking jobs from one bounded queue: under load
//! a thread finishes a sign and takes the next without sleeping, and each
//! thread always finds a session free.

use std::panic::AssertUnwindSafe;

use enos_custody::CustodyError;
use tokio::sync::oneshot;

use crate::error::{Result, SignerError};

/// One call to run on a sign thread.
type Job = Box<dyn FnOnce() + Send>;

/// Jobs queued beyond the running ones before callers wait for room.
/// Enough for every request of a busy server to wait its turn; bounded so
/// that a stalled token cannot grow memory without limit.
const QUEUE_PER_THREAD: usize = 256;

/// A fixed set of threads running blocking custody calls.
///
/// Dropping it closes the queue; the threads finish the jobs queued and
/// exit (they are not joined, so that a drop never waits on a token).
pub struct SignThreads {
    /// Where callers put jobs; the threads hold the receiving end.
    jobs: flume::Sender<Job>,
    /// How many threads take jobs.
    count: usize,
}

impl SignThreads {
    /// Starts `count` threads (at least one) named `enos-sign-N`.
    pub fn spawn(count: usize) -> Result<Self> {
        let count = count.max(1);
        let (jobs, queue) = flume::bounded::<Job>(count * QUEUE_PER_THREAD);
        for n in 0..count {
            let queue = queue.clone();
            // Not joined: a drop never waits on a token.
            let _detached = std::thread::Builder::new()
                .name(format!("enos-sign-{n}"))
                .spawn(move || {
                    // Ends when the sender is dropped and the queue is
                    // drained. A panicking call (a bug) drops its result
                    // sender, so its caller gets an error, and the thread
                    // goes on serving the others.
                    while let Ok(job) = queue.recv() {
                        if std::panic::catch_unwind(AssertUnwindSafe(job)).is_err() {
                            tracing::error!("a custody call panicked on a sign thread");
                        }
                    }
                })
                .map_err(|e| {
                    SignerError::Custody(CustodyError::Config(format!(
                        "starting a sign thread: {e}"
                    )))
                })?;
        }
        Ok(SignThreads { jobs, count })
    }

    /// How many threads run jobs.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Runs `call` on a sign thread and waits (asynchronously) for its
    /// result. Waits for room when the queue is full.
    pub async fn run<T, F>(&self, call: F) -> Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            // The caller may have gone (its request cancelled): nothing to
            // tell then.
            let _ = done.send(call());
        });
        self.jobs
            .send_async(job)
            .await
            .map_err(|_| unavailable("the sign threads have stopped"))?;
        result
            .await
            .map_err(|_| unavailable("a sign thread dropped its call"))
    }

    /// Runs `call` on a sign thread and blocks this thread until it is
    /// done: for a caller that cannot await (a registry transaction).
    /// Never call it from a sign thread.
    pub fn run_blocking<T, F>(&self, call: F) -> Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        // flume's blocking calls are safe on any thread, async or not.
        let (done, result) = flume::bounded(1);
        let job: Job = Box::new(move || {
            let _ = done.send(call());
        });
        self.jobs
            .send(job)
            .map_err(|_| unavailable("the sign threads have stopped"))?;
        result
            .recv()
            .map_err(|_| unavailable("a sign thread dropped its call"))
    }
}

fn unavailable(reason: &str) -> SignerError {
    SignerError::Custody(CustodyError::Unavailable(reason.to_owned()))
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    #[tokio::test]
    async fn runs_calls_on_the_named_threads_and_returns_their_results() {
        let threads = SignThreads::spawn(2).expect("spawn");
        assert_eq!(threads.count(), 2);
        let names = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
        let mut calls = Vec::new();
        for i in 0..64u32 {
            let names = Arc::clone(&names);
            calls.push(threads.run(move || {
                let name = std::thread::current().name().map(str::to_owned);
                names.lock().expect("lock").insert(name.expect("named"));
                // Long enough that both threads get work.
                std::thread::sleep(std::time::Duration::from_millis(1));
                i * 2
            }));
        }
        let results = futures::future::join_all(calls).await;
        for (i, result) in results.into_iter().enumerate() {
            assert_eq!(result.expect("ran"), i as u32 * 2);
        }
        let names = names.lock().expect("lock").clone();
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            ["enos-sign-0", "enos-sign-1"]
        );
    }

    #[tokio::test]
    async fn a_panicking_call_is_an_error_and_the_thread_goes_on() {
        let threads = SignThreads::spawn(1).expect("spawn");
        let failed = threads
            .run(|| -> u32 { panic!("custody bug") })
            .await
            .expect_err("the call panicked");
        assert!(failed.to_string().contains("sign thread"), "{failed}");
        // The only thread survived: the next call runs.
        let ran = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&ran);
        let value = threads
            .run(move || counter.fetch_add(1, Ordering::SeqCst) + 7)
            .await
            .expect("ran after the panic");
        assert_eq!((value, ran.load(Ordering::SeqCst)), (7, 1));
    }

    #[tokio::test]
    async fn a_blocking_caller_inside_the_runtime_gets_the_result_from_a_sign_thread() {
        let threads = SignThreads::spawn(1).expect("spawn");
        // As a registry transaction does: a synchronous call on a runtime thread.
        let name = threads
            .run_blocking(|| std::thread::current().name().map(str::to_owned))
            .expect("ran");
        assert_eq!(name.as_deref(), Some("enos-sign-0"));
        let failed = threads
            .run_blocking(|| -> u32 { panic!("custody bug") })
            .expect_err("the call panicked");
        assert!(failed.to_string().contains("sign thread"), "{failed}");
    }
}
