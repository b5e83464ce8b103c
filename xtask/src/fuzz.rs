//! `cargo xtask fuzz [--cases N] [--soak] [--soak-secs S]`: the fuzz
//! targets (proptest properties in `tests/tests/fuzz_*.rs`) in release
//! mode with `PROPTEST_CASES=N`, then a summary per target: cases run and
//! failures (a panic or a broken invariant; the shrunk input is printed
//! above the summary and saved in `tests/tests/<file>.proptest-regressions`,
//! to be committed with the fix). `--cases 1000000` is the long run.
//!
//! `--soak` also runs the soak tests (`tests/tests/soak_*.rs`, ignored in
//! CI) with `FDLINK_SOAK_SECS` (default 60): the 10,000 attach/detach
//! cycles and the full-rate flood, printing their figures.

use std::io::{BufRead, BufReader};
use std::process::{ExitCode, Stdio};

use crate::cmd::{Steps, cargo, workspace_root};

/// Options of the fuzz task.
#[derive(Debug, Default)]
struct Options {
    /// Number of cases per property; `None` keeps the test's own default.
    cases: Option<u64>,
    /// Run the soak tests too.
    soak: bool,
    /// Seconds for the flood soak.
    soak_secs: Option<u64>,
}

/// Parses the fuzz arguments and runs the task.
pub(crate) fn run(args: &[String]) -> ExitCode {
    let mut opts = Options::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--cases" => match args.next().map(|n| n.parse::<u64>()) {
                Some(Ok(n)) if n > 0 && n <= u64::from(u32::MAX) => opts.cases = Some(n),
                _ => return crate::usage_error("fuzz", "`--cases` needs a whole number ≥ 1"),
            },
            "--soak" => opts.soak = true,
            "--soak-secs" => match args.next().map(|n| n.parse::<u64>()) {
                Some(Ok(n)) => {
                    opts.soak = true;
                    opts.soak_secs = Some(n);
                }
                _ => return crate::usage_error("fuzz", "`--soak-secs` needs a whole number"),
            },
            other => return crate::usage_error("fuzz", &format!("unexpected argument `{other}`")),
        }
    }
    let mut steps = Steps::new("fuzz");
    let mut summary = Vec::new();
    for target in test_files("fuzz_") {
        steps.step(&target, || {
            let mut cmd = cargo([
                "test",
                "--release",
                "-p",
                "fdlink-tests",
                "--test",
                &target,
                "--",
                "--nocapture",
            ]);
            if let Some(n) = opts.cases {
                cmd.env("PROPTEST_CASES", n.to_string());
            }
            let (ok, stderr) = run_capturing(&mut cmd)?;
            let reports = parse_reports(&stderr);
            if reports.is_empty() {
                summary.push(format!("{target}: no fuzz-report lines (build failed?)"));
            }
            for r in &reports {
                summary.push(format!(
                    "{target}/{}: {} cases, {} panics/failures",
                    r.name, r.cases, r.failures
                ));
            }
            if ok && reports.iter().all(|r| r.failures == 0) {
                Ok(())
            } else {
                Err("failures found (see the shrunk inputs above)".to_owned())
            }
        });
    }
    if opts.soak {
        for target in test_files("soak_") {
            steps.step(&target, || {
                let mut cmd = cargo([
                    "test",
                    "--release",
                    "-p",
                    "fdlink-tests",
                    "--test",
                    &target,
                    "--",
                    "--include-ignored",
                    "--nocapture",
                    "--test-threads=1",
                ]);
                cmd.env("FDLINK_SOAK_SECS", opts.soak_secs.unwrap_or(60).to_string());
                let (ok, stderr) = run_capturing(&mut cmd)?;
                for line in stderr.lines().filter(|l| l.starts_with("soak-report")) {
                    summary.push(format!("{target}: {line}"));
                }
                if ok {
                    Ok(())
                } else {
                    Err("soak test failed".to_owned())
                }
            });
        }
    }
    for line in &summary {
        steps.note(line);
    }
    if steps.finish() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One `fuzz-report target=<name> cases=<n> failures=<k>` line.
#[derive(Debug, PartialEq, Eq)]
struct Report {
    name: String,
    cases: u64,
    failures: u64,
}

fn parse_reports(stderr: &str) -> Vec<Report> {
    stderr
        .lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("fuzz-report ")?;
            let mut r = Report {
                name: String::new(),
                cases: 0,
                failures: 0,
            };
            for field in rest.split_whitespace() {
                match field.split_once('=')? {
                    ("target", v) => r.name = v.to_owned(),
                    ("cases", v) => r.cases = v.parse().ok()?,
                    ("failures", v) => r.failures = v.parse().ok()?,
                    _ => {}
                }
            }
            (!r.name.is_empty()).then_some(r)
        })
        .collect()
}

/// The test targets `tests/tests/<prefix>*.rs`, sorted, by name.
pub(crate) fn test_files(prefix: &str) -> Vec<String> {
    let dir = workspace_root().join("tests").join("tests");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let stem = name.strip_suffix(".rs")?;
                    stem.starts_with(prefix).then(|| stem.to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Runs `cmd`, echoing its stderr as it comes; returns whether it
/// succeeded and what it wrote to stderr.
fn run_capturing(cmd: &mut std::process::Command) -> Result<(bool, String), String> {
    println!("$ {cmd:?}");
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not start: {e}"))?;
    let mut captured = String::new();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("{line}");
            captured.push_str(&line);
            captured.push('\n');
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("could not be waited for: {e}"))?;
    Ok((status.success(), captured))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_parsed() {
        let out = "noise\nfuzz-report target=gro cases=64 failures=0\n\
                   fuzz-report target=segment cases=10 failures=1\nfuzz-report broken\n";
        assert_eq!(
            parse_reports(out),
            [
                Report {
                    name: "gro".into(),
                    cases: 64,
                    failures: 0
                },
                Report {
                    name: "segment".into(),
                    cases: 10,
                    failures: 1
                }
            ]
        );
    }
}
