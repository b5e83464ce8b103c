//! Waiting on a condition variable until a deadline: the one wait every
//! blocking call of the netstack's handles makes.

use std::io;
use std::sync::{Condvar, MutexGuard};
use std::time::Instant;

/// Waits on `cv` until notified or `deadline` (`None`: no limit); a
/// deadline already passed is `TimedOut`.
pub(crate) fn wait<'a, T>(
    cv: &Condvar,
    guard: MutexGuard<'a, T>,
    deadline: Option<Instant>,
) -> io::Result<MutexGuard<'a, T>> {
    match deadline {
        None => Ok(cv.wait(guard).unwrap_or_else(|e| e.into_inner())),
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            Ok(cv
                .wait_timeout(guard, left)
                .unwrap_or_else(|e| e.into_inner())
                .0)
        }
    }
}
