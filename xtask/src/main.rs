//! fdlink's project tasks, run as `cargo xtask <task>` (alias in
//! `.cargo/config.toml`). Std-only on purpose: it must build on a fresh
//! machine with nothing but the Rust toolchain.
//!
//! Each task lives in its own module; [`cmd`] holds the shared helpers for
//! running commands and timing steps.

mod bench;
mod ci;
mod cmd;
mod device_examples;
mod fuzz;
mod tools;
mod valgrind;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <task> [options]

tasks:
  ci                 tools, fmt, clippy, test, examples, doc, deny,
                     package; runs every step, then exits non-zero if
                     any failed (as root, tools installs what the tests
                     run when it is missing)
  bench [--quick]    benchmarks next to their baselines; writes
                     target/bench/report.md and report.svg
  fuzz [--cases N] [--soak] [--soak-secs S]
                     the fuzz targets in release with N proptest cases
                     each (and the long flood with --soak)
  valgrind           the integration tests under memcheck (root-only
                     tests too with FDLINK_VALGRIND_ALL=1)
  help               this message
";

/// Exit code for usage errors and for tasks that are not implemented yet.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((task, rest)) = args.split_first() else {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    };
    match (task.as_str(), rest) {
        ("ci", []) => ci::run(),
        ("bench", rest) => bench::run(rest),
        ("fuzz", rest) => fuzz::run(rest),
        ("valgrind", []) => valgrind::run(),
        ("help" | "-h" | "--help", _) => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        ("ci" | "valgrind", [arg, ..]) => {
            usage_error(task, &format!("unexpected argument `{arg}`"))
        }
        (other, _) => usage_error(other, "unknown task"),
    }
}

/// Prints a usage error for `task` and returns the matching exit code.
fn usage_error(task: &str, msg: &str) -> ExitCode {
    eprintln!("xtask {task}: {msg}\n");
    eprint!("{USAGE}");
    ExitCode::from(EXIT_USAGE)
}
