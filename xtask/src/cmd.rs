//! Shared helpers: running commands from the workspace root, and timed steps
//! that print one summary line each.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The workspace root (the parent of this crate's directory). Taken from
/// `$CARGO_MANIFEST_DIR`, which `cargo run` sets, so a binary built from
/// another checkout sharing the target directory still works here; the
/// build-time value is the fallback when xtask is run directly.
pub(crate) fn workspace_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    match manifest_dir.parent() {
        Some(root) => root.to_path_buf(),
        None => manifest_dir,
    }
}

/// Whether this process runs as root (effective uid 0): it may then create
/// namespaces and devices, and install what CI needs.
pub(crate) fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}

/// Whether `CI=true` is set: then a missing capability (root, a device, a
/// tool) is a failure, never a skip, as in the tests (`fdlink_tests::netns`).
pub(crate) fn on_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A `cargo` command run from the workspace root. Uses the same cargo that
/// runs xtask (`$CARGO`, set by `cargo run`), so the toolchain matches.
pub(crate) fn cargo<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let cargo = std::env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from);
    let mut cmd = Command::new(cargo);
    cmd.args(args).current_dir(workspace_root());
    cmd
}

/// Runs `cmd` with inherited stdio, echoing it first. Errors say why it
/// failed: it could not start, or its exit status.
pub(crate) fn run(cmd: &mut Command) -> Result<(), String> {
    println!("$ {}", display(cmd));
    match cmd.status() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("`{}` {status}", display(cmd))),
        Err(err) => Err(format!("`{}` could not start: {err}", display(cmd))),
    }
}

/// Like [`run`], but also returns what the command wrote to stderr (which
/// is still shown as it comes), for checks that look for cargo warnings.
pub(crate) fn run_tee_stderr(cmd: &mut Command) -> Result<String, String> {
    println!("$ {}", display(cmd));
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("`{}` could not start: {err}", display(cmd)))?;
    let mut captured = String::new();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("{line}");
            captured.push_str(&line);
            captured.push('\n');
        }
    }
    match child.wait() {
        Ok(status) if status.success() => Ok(captured),
        Ok(status) => Err(format!("`{}` {status}", display(cmd))),
        Err(err) => Err(format!("`{}` could not be waited for: {err}", display(cmd))),
    }
}

/// Whether `cmd` runs and exits successfully; its output is discarded.
pub(crate) fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The command line as a shell would show it: set variables, program, args.
fn display(cmd: &Command) -> String {
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter_map(|(key, value)| Some(format!("{}={:?}", key.to_string_lossy(), value?)))
        .collect();
    let program = Path::new(cmd.get_program());
    // Show `cargo`, not the toolchain path that `$CARGO` points to.
    parts.push(
        program
            .file_name()
            .unwrap_or(program.as_os_str())
            .to_string_lossy()
            .into_owned(),
    );
    parts.extend(cmd.get_args().map(|arg| arg.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// A sequence of timed steps of one task, each reported on one line as
/// `<task>: <step> ... ok (<secs>s)` or `... FAILED (<secs>s)`.
#[derive(Debug)]
pub(crate) struct Steps {
    task: &'static str,
    passed: usize,
    failed: usize,
}

impl Steps {
    /// No steps run yet for `task`.
    pub(crate) fn new(task: &'static str) -> Self {
        Self {
            task,
            passed: 0,
            failed: 0,
        }
    }

    /// Runs one step, prints its summary line and counts the outcome.
    pub(crate) fn step(&mut self, name: &str, body: impl FnOnce() -> Result<(), String>) {
        let start = Instant::now();
        let result = body();
        let secs = start.elapsed().as_secs_f64();
        match result {
            Ok(()) => {
                self.passed += 1;
                println!("{}: {name} ... ok ({secs:.1}s)", self.task);
            }
            Err(why) => {
                self.failed += 1;
                println!("{}: {name} ... FAILED ({secs:.1}s): {why}", self.task);
            }
        }
    }

    /// Prints a note that belongs to the task, in the same line format.
    pub(crate) fn note(&self, msg: &str) {
        println!("{}: {msg}", self.task);
    }

    /// Prints `<task>: N passed, M failed` and says whether all passed.
    pub(crate) fn finish(self) -> bool {
        println!(
            "{}: {} passed, {} failed",
            self.task, self.passed, self.failed
        );
        self.failed == 0
    }
}
