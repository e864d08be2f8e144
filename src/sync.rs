//! Lock helpers shared by every module.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, recovering the data from a poisoned lock: the state guarded in this crate stays
/// consistent across a panic (maps and caches written in one step), and a proxy that stopped
/// serving because one request panicked would be worse than the stale entry.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
