//! `cargo xtask valgrind`: the integration tests (the `fdlink-tests` test
//! binaries, built in debug) under valgrind's memcheck, each reported on
//! one line. A binary fails on any memory error or definite leak
//! (`--error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite`).
//!
//! Tests that need root and kernel peers (TUN/TAP, veth, namespaces) are
//! skipped unless `FDLINK_VALGRIND_ALL=1`; fuzz targets run a short pass
//! (`PROPTEST_CASES=16`). valgrind is installed with apt when missing.

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

use crate::cmd::{self, Steps, cargo};

/// Set for the tests run under memcheck (see `fdlink_tests::faults`).
const UNDER_VALGRIND: &str = "FDLINK_UNDER_VALGRIND";

/// Test binaries that need root, namespaces and kernel devices: slow under
/// valgrind, run only with `FDLINK_VALGRIND_ALL=1`.
const NEEDS_ROOT: &[&str] = &[
    "device_packet",
    "device_tun",
    "smoltcp_echo",
    "sys_packet",
    "sys_tun",
    "hostile_frames",
];

/// Runs every selected test binary under valgrind.
pub(crate) fn run() -> ExitCode {
    let mut steps = Steps::new("valgrind");
    if !cmd::succeeds(Command::new("valgrind").arg("--version")) {
        steps.step("install", || {
            cmd::run(Command::new("apt-get").args(["install", "-y", "valgrind"]))
        });
    }
    let all = std::env::var("FDLINK_VALGRIND_ALL").is_ok_and(|v| v == "1");
    let binaries = match build() {
        Ok(b) => b,
        Err(why) => {
            steps.step("build", || Err(why));
            steps.finish();
            return ExitCode::FAILURE;
        }
    };
    for (name, path) in binaries {
        if !all && NEEDS_ROOT.contains(&name.as_str()) {
            steps.note(&format!(
                "{name}: skipped (needs root; FDLINK_VALGRIND_ALL=1 runs it)"
            ));
            continue;
        }
        steps.step(&name, || {
            let mut vg = Command::new("valgrind");
            vg.args([
                "--error-exitcode=1",
                "--leak-check=full",
                "--errors-for-leak-kinds=definite",
                "--quiet",
            ])
            .arg(&path)
            .args(["--test-threads=2"])
            .env("PROPTEST_CASES", "16")
            // Resident memory means nothing under memcheck (its leak check
            // stands in): tests skip their VmRSS bounds when this is set.
            .env(UNDER_VALGRIND, "1")
            .current_dir(cmd::workspace_root().join("tests"));
            cmd::run(&mut vg)
        });
    }
    if steps.finish() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Builds the `fdlink-tests` test binaries and returns (target, path) for
/// each, from cargo's JSON messages (read without a JSON parser: the
/// fields are plain strings).
fn build() -> Result<Vec<(String, PathBuf)>, String> {
    let out = cargo([
        "test",
        "-p",
        "fdlink-tests",
        "--tests",
        "--no-run",
        "--message-format=json",
    ])
    .stderr(Stdio::inherit())
    .output()
    .map_err(|e| format!("cargo could not start: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo test --no-run {}", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut found = Vec::new();
    for line in text.lines() {
        if !line.contains("\"reason\":\"compiler-artifact\"") || !line.contains("\"test\":true") {
            continue;
        }
        let (Some(name), Some(exe)) =
            (field(line, "\"name\":\""), field(line, "\"executable\":\""))
        else {
            continue;
        };
        if line.contains("\"kind\":[\"test\"]") {
            found.push((name, PathBuf::from(exe)));
        }
    }
    found.sort();
    found.dedup();
    Ok(found)
}

/// The string value after `key` (which includes the opening quote), up to
/// the next unescaped quote.
fn field(line: &str, key: &str) -> Option<String> {
    let start = line.find(key)? + key.len();
    let rest = &line[start..];
    let end = rest.find('"')?;
    Some(rest[..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::field;

    #[test]
    fn fields_are_read_from_cargo_json() {
        let line = r#"{"reason":"compiler-artifact","target":{"kind":["test"],"name":"core_leaks","test":true},"executable":"/t/debug/deps/core_leaks-1"}"#;
        assert_eq!(field(line, "\"name\":\"").as_deref(), Some("core_leaks"));
        assert_eq!(
            field(line, "\"executable\":\"").as_deref(),
            Some("/t/debug/deps/core_leaks-1")
        );
    }
}
