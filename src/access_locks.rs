//! One adapter call per access at a time: grant, revoke and extend calls (and
//! reconciliation's revokes) for the same access (adapter, user, resource, role) never
//! overlap, so a revoke cannot race a grant that re-applies it. Within a process a mutex
//! per access does it; replicas sharing a PostgreSQL database also take an advisory lock
//! per access, held in a transaction of its own for as long as the guard lives.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::store::{GrantRow, Pool};

/// The first key of the two-key advisory locks of accesses ("jg"); the second is a hash of
/// the access. Two accesses whose hashes collide merely wait for each other.
const ADVISORY_SPACE: i32 = 0x6a67;

/// Holds an access: the process's mutex and, on PostgreSQL, the replicas' advisory lock
/// (released when the transaction holding it ends, as the guard is dropped).
pub struct AccessGuard {
    _local: Vec<tokio::sync::OwnedMutexGuard<()>>,
    _shared: Option<sqlx::Transaction<'static, sqlx::Any>>,
}

/// The advisory lock's second key for an access key.
fn advisory_key(key: &str) -> i32 {
    let digest = Sha256::digest(key.as_bytes());
    i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// What identifies the access `g` concerns.
pub fn key(g: &GrantRow) -> String {
    format!("{}\u{1f}{}\u{1f}{}\u{1f}{}", g.adapter, g.user_id, g.resource, g.role)
}

/// The locks, one per access in use. Shared through the app state.
#[derive(Default)]
pub struct AccessLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// On PostgreSQL: connections for the advisory locks, apart from the store's pools
    /// (a lock is held for the length of an adapter call).
    shared: Option<Pool>,
}

impl AccessLocks {
    /// Locks shared with the other replicas through the PostgreSQL database of `shared`.
    pub fn shared_through(shared: Pool) -> Self {
        Self {
            locks: Mutex::default(),
            shared: Some(shared),
        }
    }

    /// Waits for the access `g` concerns, in this process and across replicas.
    pub async fn lock_access(&self, g: &GrantRow) -> anyhow::Result<AccessGuard> {
        let local = self.lock_key(key(g)).await;
        let shared = match &self.shared {
            None => None,
            Some(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT 1 FROM pg_advisory_xact_lock($1, $2)")
                    .bind(ADVISORY_SPACE)
                    .bind(advisory_key(&key(g)))
                    .execute(&mut *tx)
                    .await?;
                Some(tx)
            }
        };
        Ok(AccessGuard {
            _local: vec![local],
            _shared: shared,
        })
    }

    /// Takes as many of the accesses `keys` (distinct) as it can without waiting, in this
    /// process and across replicas, under one guard (one transaction on PostgreSQL, so a
    /// batch of revokes costs one connection). Returns which were taken.
    pub async fn try_lock_accesses(&self, keys: &[String]) -> anyhow::Result<(AccessGuard, Vec<bool>)> {
        let mut local = Vec::with_capacity(keys.len());
        let mut taken: Vec<bool> = Vec::with_capacity(keys.len());
        for k in keys {
            match self.try_lock_key(k.clone()) {
                Some(g) => {
                    local.push(g);
                    taken.push(true);
                }
                None => taken.push(false),
            }
        }
        let shared = match &self.shared {
            Some(pool) if taken.iter().any(|t| *t) => {
                let mut tx = pool.begin().await?;
                for (k, t) in keys.iter().zip(taken.iter_mut()).filter(|(_, t)| **t) {
                    let (got,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_xact_lock($1, $2)")
                        .bind(ADVISORY_SPACE)
                        .bind(advisory_key(k))
                        .fetch_one(&mut *tx)
                        .await?;
                    *t = got;
                }
                Some(tx)
            }
            _ => None,
        };
        Ok((
            AccessGuard {
                _local: local,
                _shared: shared,
            },
            taken,
        ))
    }

    fn mutex(&self, key: String) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 1024 {
            map.retain(|_, l| Arc::strong_count(l) > 1);
        }
        map.entry(key).or_default().clone()
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
