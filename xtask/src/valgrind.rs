//! `cargo xtask valgrind`: the test suite under valgrind (not yet
//! implemented).

use std::process::ExitCode;

/// Runs the task.
pub(crate) fn run() -> ExitCode {
    crate::not_implemented("valgrind")
}
