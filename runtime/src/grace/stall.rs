//! Stall reports: who holds a grace period up.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A reader context that has not passed a quiescent state since the grace period began.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holdout {
    /// A worker that has been running the same task since the grace period began.
    Worker {
        /// Worker index.
        worker: usize,
        /// Id of the task running on it (0 if the worker was between tasks).
        task_id: u64,
        /// Name of that task, if it was spawned with one.
        task_name: Option<Arc<str>>,
    },
    /// A task switched out involuntarily that has not reached a voluntary yield point.
    Task {
        /// Task id.
        task_id: u64,
        /// Task name, if any.
        task_name: Option<Arc<str>>,
    },
    /// A registered OS thread that is online and has not reported a quiescent state.
    Thread {
        /// The thread's name, if it has one.
        name: Option<String>,
    },
}

impl fmt::Display for Holdout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |n: &Option<Arc<str>>| {
            n.as_deref()
                .map(|n| format!(" \"{n}\""))
                .unwrap_or_default()
        };
        match self {
            Holdout::Worker {
                worker,
                task_id,
                task_name,
            } => write!(
                f,
                "worker {worker} running task {task_id}{}",
                name(task_name)
            ),
            Holdout::Task { task_id, task_name } => {
                write!(
                    f,
                    "task {task_id}{} (switched out involuntarily)",
                    name(task_name)
                )
            }
            Holdout::Thread { name } => {
                write!(
                    f,
                    "registered thread {}",
                    name.as_deref().unwrap_or("<unnamed>")
                )
            }
        }
    }
}

/// Passed to the stall callback when a grace period has waited longer than the configured
/// stall timeout. The grace period keeps waiting: nothing is freed early.
#[derive(Clone, Debug)]
pub struct StallReport {
    /// Sequence number of the stalled grace period.
    pub grace_period: u64,
    /// How long it has waited so far. Every holdout has gone at least this long without a
    /// quiescent state.
    pub waited: Duration,
    /// Who has not passed a quiescent state yet.
    pub holdouts: Vec<Holdout>,
}

impl fmt::Display for StallReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "grace period {} stalled for {:?} on {} holdout(s):",
            self.grace_period,
            self.waited,
            self.holdouts.len()
        )?;
        for h in &self.holdouts {
            write!(f, " [{h}]")?;
        }
        Ok(())
    }
}
