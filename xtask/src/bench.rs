//! `cargo xtask bench [--quick]`: the benchmark runs (not yet implemented).

use std::process::ExitCode;

/// Options of the bench task.
#[derive(Debug, Default)]
struct Options {
    /// Short runs, for a smoke test rather than numbers worth comparing.
    quick: bool,
}

/// Parses the bench arguments and runs the task.
pub(crate) fn run(args: &[String]) -> ExitCode {
    let mut opts = Options::default();
    for arg in args {
        match arg.as_str() {
            "--quick" => opts.quick = true,
            other => return crate::usage_error("bench", &format!("unexpected argument `{other}`")),
        }
    }
    let _ = opts.quick;
    crate::not_implemented("bench")
}
