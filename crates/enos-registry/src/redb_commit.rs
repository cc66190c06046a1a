//! [`Committer`]: redb write transactions run on one thread and made
//! durable in groups.
//!
//! redb makes each commit durable with its own fsyncs, so a registry that
//! commits one enrollment, renewal or revocation at a time is bound by the
//! disk (about a thousand commits a second here), whatever the CPUs could
//! do. The committer keeps every transaction's own isolation and all of
//! the durability: each write is its own transaction, committed with
//! [`Durability::None`] (visible to the next transaction, not yet on
//! disk), and after a group of them (every write waiting, at most
//! [`MAX_GROUP`]) one empty transaction commits with
//! [`Durability::Immediate`], which persists them all. A caller is answered
//! only after that: nothing a caller was told is committed can be lost to
//! a crash. A crash before it loses only writes whose callers were not
//! answered (their clients retry). A write that fails aborts its own
//! transaction and nothing else.

use std::{
    path::Path,
    sync::{Arc, mpsc},
};

use redb::{Database, Durability, WriteTransaction};
use tokio::sync::oneshot;

use crate::error::{RegistryError, Result};

/// The most writes made durable by one fsync: a bound on how long the
/// first of a group waits for the last.
const MAX_GROUP: usize = 256;

/// One write: runs its transaction, and returns how to tell its caller
/// once the group is durable (or failed to be).
type Job = Box<dyn FnOnce(&Database) -> Reply + Send>;

/// Tells a caller its outcome, given whether the group reached the disk.
type Reply = Box<dyn FnOnce(std::result::Result<(), String>) + Send>;

/// The write side of a redb registry.
pub(crate) struct Committer {
    /// Where writes wait for the thread; closing it ends the thread.
    jobs: Option<mpsc::Sender<Job>>,
    /// The thread, joined on drop: the database is closed (its file lock
    /// released) when the registry is dropped, not some time later.
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Committer {
    /// Starts the committer thread of `db` (the registry file at `path`).
    pub(crate) fn spawn(db: Arc<Database>, path: &Path) -> Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let shown = path.display().to_string();
        let thread = std::thread::Builder::new()
            .name("registry-commit".into())
            .spawn(move || run(&db, &queue, &shown))
            .map_err(|e| {
                RegistryError::Store(format!("{}: starting the committer: {e}", path.display()))
            })?;
        Ok(Committer {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Runs `work` in a write transaction of its own and commits it
    /// (unless it fails: then nothing of it is written); returns once the
    /// commit is on disk.
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&WriteTransaction) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (done, outcome) = oneshot::channel::<Result<T>>();
        let job: Job = Box::new(move |db: &Database| -> Reply {
            match transaction(db, work) {
                Ok(value) => Box::new(move |durable: std::result::Result<(), String>| {
                    let _ = done.send(durable.map(|()| value).map_err(RegistryError::Store));
                }),
                Err(e) => Box::new(move |_| {
                    let _ = done.send(Err(e));
                }),
            }
        });
        self.jobs
            .as_ref()
            .and_then(|jobs| jobs.send(job).ok())
            .ok_or_else(|| RegistryError::Store("the registry's committer has stopped".into()))?;
        outcome
            .await
            .map_err(|_| RegistryError::Store("the registry's committer dropped a write".into()))?
    }
}

/// `work` in a transaction committed without durability (the group's
/// durable commit follows); aborted if `work` fails.
fn transaction<T>(db: &Database, work: impl FnOnce(&WriteTransaction) -> Result<T>) -> Result<T> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::None);
    // On error the transaction is dropped, i.e. aborted.
    let value = work(&txn)?;
    txn.commit()?;
    Ok(value)
}

/// The thread: takes the writes waiting (at least one), runs each, makes
/// them durable with one commit, answers them; until every sender is gone.
fn run(db: &Database, queue: &mpsc::Receiver<Job>, path: &str) {
    while let Ok(first) = queue.recv() {
        let mut replies = vec![first(db)];
        while replies.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => replies.push(job(db)),
                Err(_) => break,
            }
        }
        let durable = persist(db).map_err(|e| {
            tracing::error!(path, error = %e, "the registry's commit did not reach the disk");
            format!("{path}: the commit did not reach the disk: {e}")
        });
        for reply in replies {
            reply(durable.clone());
        }
    }
}

/// An empty transaction committed with [`Durability::Immediate`]: it
/// persists every commit made without durability before it.
fn persist(db: &Database) -> Result<()> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate);
    txn.commit()?;
    Ok(())
}
