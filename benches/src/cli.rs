//! The `bench` binary: runs every scenario, prints and writes the report.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use fdlink_tests::netns::Netns;

use crate::measure::{Plan, Summary};
use crate::report::{self, Goal, Outcome, Row};
use crate::{afpacket, pps, tcp};

const USAGE: &str = "usage: bench [--quick] [--out DIR] [--only pps,afpacket,tcp,micro]";
/// `tcp` includes the ceilings, which are interleaved with the TCP runs.
const GROUPS: [&str; 4] = ["pps", "afpacket", "tcp", "micro"];

/// How long the kernel gets to clean up a deleted namespace before the next
/// measurement.
const NAMESPACE_SETTLE: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(Debug)]
struct Args {
    quick: bool,
    out: PathBuf,
    only: Vec<String>,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        quick: false,
        out: PathBuf::from("target/bench"),
        only: GROUPS.iter().map(|s| s.to_string()).collect(),
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => a.quick = true,
            "--out" => a.out = args.next().ok_or("--out needs a directory")?.into(),
            "--only" => {
                let list = args.next().ok_or("--only needs a list")?;
                a.only = list.split(',').map(str::to_owned).collect();
                if let Some(bad) = a.only.iter().find(|g| !GROUPS.contains(&g.as_str())) {
                    return Err(format!("--only: unknown group {bad:?}"));
                }
            }
            // `cargo bench` passes `--bench` to harness-less targets.
            "--bench" => {}
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    Ok(a)
}

/// Why the device scenarios cannot run, if they cannot.
fn missing_privileges() -> Option<String> {
    let root = nix::unistd::geteuid().is_root();
    let tun = std::path::Path::new("/dev/net/tun").exists();
    (!(root && tun)).then(|| format!("needs root and /dev/net/tun (root: {root}, tun: {tun})"))
}

/// The goals of issue 6, each on one row's ratio.
pub fn goals() -> Vec<Goal> {
    vec![
        Goal {
            text: "TCP kernel→smoltcp with offload ≥ 2.5× TunTapInterface",
            row: "TCP over TUN: kernel→smoltcp fdlink offload".into(),
            min: 2.5,
        },
        Goal {
            text: "TCP kernel→smoltcp with offload ≥ 75 % of the ACK-only ceiling",
            row: "ceilings: kernel→smoltcp fdlink offload vs ACK-only".into(),
            min: 0.75,
        },
        Goal {
            text: "TCP smoltcp→kernel with offload ≥ 4× TunTapInterface",
            row: "TCP over TUN: smoltcp→kernel fdlink offload".into(),
            min: 4.0,
        },
        Goal {
            text: "socketpair recvmmsg dispatch ≥ 90 % of bare recvmmsg, 64 B",
            row: "socketpair pps: 64 B recvmmsg".into(),
            min: 0.9,
        },
        Goal {
            text: "socketpair recvmmsg dispatch ≥ 90 % of bare recvmmsg, 1500 B",
            row: "socketpair pps: 1500 B recvmmsg".into(),
            min: 0.9,
        },
        Goal {
            text: "checksum ≥ 0.8× memcpy at 64 KiB",
            row: "micro: checksum 64 KiB".into(),
            min: 0.8,
        },
    ]
}

fn micro_rows(quick: bool) -> Vec<Row> {
    crate::micro::run_micro(quick)
        .into_iter()
        .map(|r| {
            let name = if r.unit == "ns" {
                format!("{} (time; ratio = copies)", r.name)
            } else {
                r.name.clone()
            };
            Row::measured(
                "micro",
                name,
                r.unit,
                r.baseline_name.clone(),
                Summary::single(r.value),
                Summary::single(r.baseline),
            )
        })
        .collect()
}

/// Adds a group's rows, or one row saying why it has none.
fn collect(rows: &mut Vec<Row>, group: &'static str, result: Result<Vec<Row>, String>) {
    match result {
        Ok(r) => {
            for row in &r {
                println!("  {}", summary_line(row));
            }
            rows.extend(r);
        }
        Err(e) => {
            eprintln!("bench: {group} FAILED: {e}");
            rows.push(Row::without(group, "all", Outcome::Failed(e)));
        }
    }
}

fn summary_line(r: &Row) -> String {
    match &r.outcome {
        Outcome::Measured {
            value,
            baseline,
            ratio,
        } => format!(
            "{:<58} {:>10} {:<6} vs {:>10} ({}) ratio {:.2}",
            r.label(),
            report::fmt_value(value.median),
            r.unit,
            report::fmt_value(baseline.median),
            r.baseline_name,
            ratio
        ),
        Outcome::Skipped(why) => format!("{:<58} skipped: {why}", r.label()),
        Outcome::Failed(why) => format!("{:<58} FAILED: {why}", r.label()),
    }
}

fn run(args: Args) -> Result<bool, String> {
    let plan = Plan::new(args.quick);
    let want = |g: &str| args.only.iter().any(|o| o == g);
    let started = Instant::now();
    let mut rows = Vec::new();
    let step = |name: &str| println!("bench: {name} ({:.0} s)", started.elapsed().as_secs_f64());

    // Micro first: deleting a network namespace is asynchronous kernel work
    // that keeps a core busy for a while, and would slow whatever follows
    // the device scenarios.
    if want("micro") {
        step("micro");
        collect(&mut rows, "micro", Ok(micro_rows(args.quick)));
    }
    if want("pps") {
        step("socketpair packets/s");
        collect(&mut rows, "socketpair pps", pps::run(&plan));
    }
    let no_root = missing_privileges();
    if let Some(why) = &no_root {
        println!("bench: SKIP device scenarios: {why}");
        for (g, w) in [
            ("AF_PACKET veth pps", "afpacket"),
            ("TCP over TUN", "tcp"),
            ("ceilings", "tcp"),
        ] {
            if want(w) {
                rows.push(Row::without(g, "all", Outcome::Skipped(why.clone())));
            }
        }
    } else {
        if want("afpacket") {
            step("AF_PACKET packets/s");
            collect(&mut rows, "AF_PACKET veth pps", afpacket::run(&plan));
            // Let the kernel finish tearing the veth namespace down.
            std::thread::sleep(NAMESPACE_SETTLE);
        }
        if want("tcp") {
            step("TCP over TUN and ceilings");
            let result = Netns::new("fdlb-tcp")
                .map_err(|e| format!("netns: {e}"))
                .and_then(|ns| tcp::run(&plan, &ns));
            collect(&mut rows, "TCP over TUN", result);
        }
    }

    let goals = goals();
    let header = format!(
        "Mode: {}; {} runs per measurement (median quoted, min–max shown), \
         interleaved; packets/s windows of {:.1} s, TCP windows of {:.1} s after \
         {:.1} s of warm-up. Kernel {}, {} CPUs. CPU s is user+system time of the \
         whole bench process (receiver, sender and kernel peer threads) per \
         window (`getrusage(RUSAGE_SELF)`), next to the window's wall time. \
         Reproduce with `cargo xtask bench`.",
        if args.quick {
            "--quick (smoke run: figures are not meaningful)"
        } else {
            "full"
        },
        plan.runs,
        plan.pps_window.as_secs_f64(),
        plan.tcp_window.as_secs_f64(),
        plan.tcp_warmup.as_secs_f64(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "?".into()),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let md = report::markdown(&rows, &goals, &header);
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("create {}: {e}", args.out.display()))?;
    let md_path = args.out.join("report.md");
    let svg_path = args.out.join("report.svg");
    std::fs::write(&md_path, &md).map_err(|e| format!("write {}: {e}", md_path.display()))?;
    report::svg(&rows, &svg_path)?;
    println!("\n{md}");
    println!(
        "bench: wrote {} and {} in {:.0} s",
        md_path.display(),
        svg_path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(!rows.iter().any(|r| matches!(r.outcome, Outcome::Failed(_))))
}

/// Entry point of the `bench` binary.
pub fn main(args: impl Iterator<Item = String>) -> ExitCode {
    let args = match parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if cfg!(debug_assertions) && !args.quick {
        eprintln!("bench: warning: debug build; use --release for meaningful figures");
    }
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("bench: some scenarios failed (see the report)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}
