//! The handle every SVID source returns: it owns the refresh task (dropping it stops the task) and the last
//! refresh error. Kept apart from the sources so each source module depends on it and none on another.

use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

/// A running source task. Dropping it stops the task; the store keeps its last SVID.
#[derive(Debug)]
pub struct SourceHandle {
    task: JoinHandle<()>,
    last_error: Arc<Mutex<Option<String>>>,
}

impl SourceHandle {
    pub(crate) fn new(task: JoinHandle<()>, last_error: Arc<Mutex<Option<String>>>) -> Self {
        Self { task, last_error }
    }

    /// The last refresh failure, cleared by the next success.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("not poisoned").clone()
    }
}

impl Drop for SourceHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) fn record(cell: &Mutex<Option<String>>, result: Result<(), String>) {
    let mut slot = cell.lock().expect("not poisoned");
    match result {
        Ok(()) => *slot = None,
        Err(e) => {
            if slot.as_deref() != Some(e.as_str()) {
                tracing::warn!(error = %e, "SVID source refresh failed; keeping the current SVID");
            }
            *slot = Some(e);
        }
    }
}
