//! `cargo xtask fuzz [--cases N]`: long property/fuzz runs (not yet
//! implemented).

use std::process::ExitCode;

/// Options of the fuzz task.
#[derive(Debug, Default)]
struct Options {
    /// Number of cases per property; `None` keeps the test's own default.
    cases: Option<u64>,
}

/// Parses the fuzz arguments and runs the task.
pub(crate) fn run(args: &[String]) -> ExitCode {
    let mut opts = Options::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--cases" => match args.next().map(|n| n.parse::<u64>()) {
                Some(Ok(n)) => opts.cases = Some(n),
                _ => return crate::usage_error("fuzz", "`--cases` needs a whole number"),
            },
            other => return crate::usage_error("fuzz", &format!("unexpected argument `{other}`")),
        }
    }
    let _ = opts.cases;
    crate::not_implemented("fuzz")
}
