//! `cargo xtask ci`: every check a change must pass. All steps run, each
//! reported on one line, so one run shows every problem; the task fails if
//! any step failed. The first step, `tools`, installs what the others run
//! when it is missing (as root; see [`crate::tools`]).

use std::process::ExitCode;

use crate::cmd::{self, Steps, cargo};

/// An example that CI builds and runs, so that examples never rot.
struct Example {
    /// Package that owns the example.
    package: &'static str,
    /// Example name (its file is `crates/<package>/examples/<name>.rs`).
    name: &'static str,
    /// Arguments that keep the run short.
    args: &'static [&'static str],
}

/// The examples CI runs, in release mode. An example whose file does not
/// exist yet is skipped with a note. Add new examples here.
const EXAMPLES: &[Example] = &[
    // The README's demo, over each socket type with GSO on and off: each run
    // exits non-zero unless the receiver verified every byte.
    Example {
        package: "fdlink-smoltcp",
        name: "loopback",
        args: &[
            "--bytes",
            "33554432",
            "--socket",
            "seqpacket",
            "--gso",
            "on",
        ],
    },
    Example {
        package: "fdlink-smoltcp",
        name: "loopback",
        args: &[
            "--bytes",
            "33554432",
            "--socket",
            "seqpacket",
            "--gso",
            "off",
            "--mode",
            "per-packet",
        ],
    },
    Example {
        package: "fdlink-smoltcp",
        name: "loopback",
        args: &[
            "--bytes",
            "33554432",
            "--socket",
            "dgram",
            "--gso",
            "on",
            "--mode",
            "per-packet",
        ],
    },
    Example {
        package: "fdlink-smoltcp",
        name: "loopback",
        args: &[
            "--bytes", "33554432", "--socket", "dgram", "--gso", "off", "--mtu", "9000",
        ],
    },
];

/// The packages meant for crates.io (the others have `publish = false`).
const PUBLISHED: &[&str] = &["fdlink-sys", "fdlink-core", "fdlink-gso", "fdlink-smoltcp"];

/// Runs all CI steps (tools first), then prints `ci: N passed, M failed`.
pub(crate) fn run() -> ExitCode {
    let mut steps = Steps::new("ci");
    // First, so that the steps below find what they run.
    crate::tools::ensure(&mut steps);
    steps.step("fmt", || cmd::run(&mut cargo(["fmt", "--all", "--check"])));
    steps.step("clippy", || {
        cmd::run(&mut cargo([
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ]))
    });
    // Tests that need root print SKIP lines and pass when run unprivileged.
    // `--no-fail-fast`: report every failing test target, not just the first.
    // `--all-features`: the tokio front of the netstack is tested too.
    steps.step("test", || {
        cmd::run(&mut cargo([
            "test",
            "--workspace",
            "--all-features",
            "--no-fail-fast",
        ]))
    });
    run_examples(&mut steps);
    run_device_examples(&mut steps);
    steps.step("doc", || {
        cmd::run(
            cargo(["doc", "--workspace", "--no-deps", "--all-features"])
                .env("RUSTDOCFLAGS", "-D warnings"),
        )
    });
    run_deny(&mut steps);
    steps.step("package", package);
    if steps.finish() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs each example of [`EXAMPLES`] whose file exists, as one step.
fn run_examples(steps: &mut Steps) {
    let root = cmd::workspace_root();
    let present: Vec<&Example> = EXAMPLES
        .iter()
        .filter(|ex| {
            let file = format!("crates/{}/examples/{}.rs", ex.package, ex.name);
            let exists = root.join(&file).is_file();
            if !exists {
                steps.note(&format!(
                    "examples: {} skipped ({file} does not exist yet)",
                    ex.name
                ));
            }
            exists
        })
        .collect();
    steps.step("examples", || {
        let mut failures = Vec::new();
        for ex in present {
            let mut run = cargo([
                "run",
                "--release",
                "-p",
                ex.package,
                "--example",
                ex.name,
                "--",
            ]);
            run.args(ex.args);
            if let Err(why) = cmd::run(&mut run) {
                failures.push(why);
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        }
    });
}

/// Runs `dump` and `echo` against TUN devices in a namespace (root only).
fn run_device_examples(steps: &mut Steps) {
    if !crate::device_examples::capable() && !cmd::on_ci() {
        steps.note("device examples: SKIP (need root and /dev/net/tun)");
        return;
    }
    steps.step("device examples", || {
        if !crate::device_examples::capable() {
            return Err("CI=true but no root or /dev/net/tun".into());
        }
        crate::device_examples::run()
    });
}

/// Checks dependency bans, licenses and sources with cargo-deny (installing
/// it if missing). Advisories are not checked: the advisory database cannot
/// be fetched on the CI machines.
fn run_deny(steps: &mut Steps) {
    steps.note(
        "deny: advisories skipped (the advisory database cannot be fetched on these machines)",
    );
    steps.step("deny", || {
        if !cmd::succeeds(&mut cargo(["deny", "--version"])) {
            cmd::run(&mut cargo(["install", "--locked", "cargo-deny"]))?;
        }
        cmd::run(&mut cargo(["deny", "check", "bans", "licenses", "sources"]))
    });
}

/// Packages the publishable crates, as `cargo publish` would, and builds
/// each package from its `.crate` file. Sibling crates that are not on
/// crates.io yet resolve through the temporary local registry that
/// `cargo package` (1.90+) builds for the packages of one invocation, so
/// verification is honest: every crate builds from exactly what would be
/// uploaded. Fails as well when cargo warns that metadata is missing
/// (description, license, documentation/homepage/repository); a missing
/// README file is already an error in cargo itself.
///
/// `--allow-dirty`: this checks packageability, not whether the working tree
/// is committed (on a fresh CI clone it always is).
fn package() -> Result<(), String> {
    forget_unpacked_packages()?;
    let mut cmd = cargo(["package", "--allow-dirty", "--target-dir"]);
    cmd.arg(verify_target_dir());
    for package in PUBLISHED {
        cmd.args(["-p", package]);
    }
    let stderr = cmd::run_tee_stderr(&mut cmd)?;
    let missing = metadata_warnings(&stderr);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "incomplete package metadata: {}",
            missing.join("; ")
        ))
    }
}

/// Removes our crates as cargo unpacked them from earlier packaging runs.
///
/// Cargo unpacks each `.crate` of the temporary local registry into
/// `$CARGO_HOME/registry/src/<hash of the registry path>/` and never again
/// once that directory exists; a later run from the same checkout path
/// (CI reuses its clone folder) would then verify against stale sources.
/// Our crates are not on crates.io, so every such directory is a leftover.
/// The verification builds under `target/package` are dropped too: cargo
/// never rebuilds a registry crate whose version it has built before.
fn forget_unpacked_packages() -> Result<(), String> {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || cmd::workspace_root().join("target"),
        std::path::PathBuf::from,
    );
    for packaged in [target.join("package"), verify_target_dir()] {
        if packaged.exists() {
            std::fs::remove_dir_all(&packaged)
                .map_err(|e| format!("removing {}: {e}", packaged.display()))?;
        }
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cargo")));
    let Some(src) = home.map(|h| h.join("registry/src")) else {
        return Ok(());
    };
    let Ok(registries) = std::fs::read_dir(&src) else {
        return Ok(());
    };
    for registry in registries.flatten() {
        let Ok(crates) = std::fs::read_dir(registry.path()) else {
            continue;
        };
        for krate in crates.flatten() {
            let name = krate.file_name().to_string_lossy().into_owned();
            // `<crate>-<version>`: a dash, then a digit.
            let ours = PUBLISHED.iter().any(|p| {
                name.strip_prefix(p)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()))
            });
            if ours {
                std::fs::remove_dir_all(krate.path())
                    .map_err(|e| format!("removing stale {}: {e}", krate.path().display()))?;
            }
        }
    }
    Ok(())
}

/// Where packaged crates are built for verification.
fn verify_target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(
            || cmd::workspace_root().join("target"),
            std::path::PathBuf::from,
        )
        .join("package-verify")
}

/// The "manifest has no ..." warnings in `cargo package` output, each with
/// the crate it is about (cargo prints it just before `Packaging <crate>`).
fn metadata_warnings(stderr: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending: Option<&str> = None;
    for line in stderr.lines() {
        if let Some(what) = line.strip_prefix("warning: manifest has no ") {
            pending = Some(what);
        } else if let Some(krate) = line.trim_start().strip_prefix("Packaging ")
            && let Some(what) = pending.take()
        {
            found.push(format!("{krate} has no {what}"));
        }
    }
    found.extend(pending.map(|what| format!("a crate has no {what}")));
    found
}

#[cfg(test)]
mod tests {
    use super::metadata_warnings;

    #[test]
    fn metadata_warning_names_the_crate_packaged_next() {
        let stderr = "\
   Packaging fdlink-core v0.1.0 (/w/crates/fdlink-core)
    Packaged 5 files, 15.1KiB (4.8KiB compressed)
warning: manifest has no description, documentation, homepage or repository
  |
   Packaging fdlink-gso v0.1.0 (/w/crates/fdlink-gso)
";
        assert_eq!(
            metadata_warnings(stderr),
            [
                "fdlink-gso v0.1.0 (/w/crates/fdlink-gso) has no description, documentation, homepage or repository"
            ]
        );
    }

    #[test]
    fn no_warning_means_complete_metadata() {
        assert!(metadata_warnings("   Packaging fdlink-sys v0.1.0 (/w)\n").is_empty());
    }
}
