//! One test at a time, for tests that count descriptors or mappings of the
//! whole process.

use std::sync::{Mutex, MutexGuard};

/// Holds the test binary's one lock until dropped, so that tests that
/// take it run one at a time and descriptor counts are exact. A test that
/// panicked while holding it does not poison it for the others.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
