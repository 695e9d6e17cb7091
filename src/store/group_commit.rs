//! Group commit for new requests: requests arriving together wait here and are stored in
//! one transaction by whichever task drains the queue (see `requests`).

use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

use tokio::sync::oneshot;

use super::NewRequest;

/// Most requests stored in one transaction.
pub const MAX_BATCH: usize = 512;

/// A request waiting to be stored, and who waits for its id.
pub struct Creation {
    pub new: NewRequest,
    pub on_call_check: bool,
    pub reply: oneshot::Sender<anyhow::Result<i64>>,
}

/// Requests waiting to be stored, and whether a task is storing them.
#[derive(Default)]
pub struct Creations {
    queue: Mutex<Vec<Creation>>,
    pub draining: AtomicBool,
}

impl Creations {
    pub fn push(&self, c: Creation) {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).push(c);
    }

    pub fn take(&self) -> Vec<Creation> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let n = q.len().min(MAX_BATCH);
        q.drain(..n).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }
}
