//! One adapter call per access at a time: grant, revoke and extend calls (and
//! reconciliation's revokes) for the same access (adapter, user, resource, role) never
//! overlap, so a revoke cannot race a grant that re-applies it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::store::GrantRow;

/// What identifies the access `g` concerns.
pub fn key(g: &GrantRow) -> String {
    format!("{}\u{1f}{}\u{1f}{}\u{1f}{}", g.adapter, g.user_id, g.resource, g.role)
}

/// The locks, one per access in use. Shared through the app state.
#[derive(Default)]
pub struct AccessLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl AccessLocks {
    fn mutex(&self, key: String) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 1024 {
            map.retain(|_, l| Arc::strong_count(l) > 1);
        }
        map.entry(key).or_default().clone()
    }

    /// Waits for the access `g` concerns.
    pub async fn lock(&self, g: &GrantRow) -> tokio::sync::OwnedMutexGuard<()> {
        self.lock_key(key(g)).await
    }

    /// Waits for the access with this `key`.
    pub async fn lock_key(&self, key: String) -> tokio::sync::OwnedMutexGuard<()> {
        self.mutex(key).lock_owned().await
    }

    /// The access with this `key`, unless someone holds it.
    pub fn try_lock_key(&self, key: String) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        self.mutex(key).try_lock_owned().ok()
    }
}
