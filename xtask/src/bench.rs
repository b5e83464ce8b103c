//! `cargo xtask bench [--quick]`: builds the `bench` binary of
//! `fdlink-benches` in release mode and runs it, which measures every
//! scenario next to its baseline and writes `target/bench/report.md` and
//! `target/bench/report.svg`.
//!
//! The netstack scenarios compare fdlink's netstack with netstack-smoltcp,
//! ipstack and fdlink's own `echo` engine (echo throughput, connections/s,
//! memory per idle connection).
//!
//! The device scenarios (AF_PACKET, TUN, namespaces) need root and
//! `/dev/net/tun`; without them they are reported as skipped, not failed.
//! `--quick` is a smoke run for CI: short windows, few runs, and no
//! assertion on speed (neither does the full run assert any).

use std::process::ExitCode;

use crate::cmd;

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
    let out = cmd::workspace_root().join("target").join("bench");
    let mut bench = cmd::cargo([
        "run",
        "--quiet",
        "--release",
        "--package",
        "fdlink-benches",
        "--bin",
        "bench",
        "--",
    ]);
    bench.arg("--out").arg(&out);
    if opts.quick {
        bench.arg("--quick");
    }
    match cmd::run(&mut bench) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("xtask bench: {why}");
            ExitCode::FAILURE
        }
    }
}
