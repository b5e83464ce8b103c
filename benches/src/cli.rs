//! The `bench` binary: runs every scenario, prints and writes the report.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use fdlink_tests::netns::Netns;

use crate::measure::{Plan, Summary};
use crate::report::{self, Goal, Outcome, Row};
use crate::{afpacket, netstack, pps, tcp};

const USAGE: &str = "usage: bench [--quick] [--out DIR] [--only pps,afpacket,tcp,netstack,micro]";
/// `tcp` includes the ceilings, which are interleaved with the TCP runs;
/// `netstack` the echo, connections/s and memory scenarios.
const GROUPS: [&str; 5] = ["pps", "afpacket", "tcp", "netstack", "micro"];

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

/// The goals: issue 6's on the link, then the netstack's, each on one
/// row (the memory row names its connections, fewer in a smoke run).
pub fn goals(quick: bool) -> Vec<Goal> {
    use crate::netstack::{
        CPS_GROUP, ECHO_GROUP, GOAL_VARIANT, MEMORY_GROUP, cps_row_name, echo_row_name,
        memory_connections, memory_row_name,
    };
    use crate::stacks::Stack;
    let echo = |conns: usize, baseline: Stack| {
        format!(
            "{ECHO_GROUP}: {}",
            echo_row_name(conns, GOAL_VARIANT, baseline)
        )
    };
    vec![
        Goal::ratio(
            "TCP kernel→smoltcp with offload ≥ 2.5× TunTapInterface",
            "TCP over TUN: kernel→smoltcp fdlink offload",
            2.5,
        ),
        Goal::ratio(
            "TCP kernel→smoltcp with offload ≥ 75 % of the ACK-only ceiling",
            "ceilings: kernel→smoltcp fdlink offload vs ACK-only",
            0.75,
        ),
        Goal::ratio(
            "TCP smoltcp→kernel with offload ≥ 4× TunTapInterface",
            "TCP over TUN: smoltcp→kernel fdlink offload",
            4.0,
        ),
        Goal::ratio(
            "socketpair recvmmsg dispatch ≥ 90 % of bare recvmmsg, 64 B",
            "socketpair pps: 64 B recvmmsg",
            0.9,
        ),
        Goal::ratio(
            "socketpair recvmmsg dispatch ≥ 90 % of bare recvmmsg, 1500 B",
            "socketpair pps: 1500 B recvmmsg",
            0.9,
        ),
        Goal::ratio(
            "checksum ≥ 0.8× memcpy at 64 KiB",
            "micro: checksum 64 KiB",
            0.8,
        ),
        Goal::ratio(
            "netstack echo (threads, offload) ≥ 4× netstack-smoltcp, 1 connection",
            echo(1, Stack::NetstackSmoltcp),
            4.0,
        ),
        Goal::ratio(
            "netstack echo (threads, offload) ≥ 4× netstack-smoltcp, 8 connections",
            echo(8, Stack::NetstackSmoltcp),
            4.0,
        ),
        Goal::ratio(
            "netstack echo (threads, offload) ≥ 80 % of fdlink's echo engine, 1 connection",
            echo(1, Stack::EchoEngine),
            0.8,
        ),
        Goal::ratio(
            "netstack echo (threads, offload) ≥ 80 % of fdlink's echo engine, 8 connections",
            echo(8, Stack::EchoEngine),
            0.8,
        ),
        Goal::ratio(
            "netstack connections/s (threads, offload) ≥ 2× netstack-smoltcp",
            format!("{CPS_GROUP}: {}", cps_row_name(GOAL_VARIANT)),
            2.0,
        ),
        Goal::value_at_most(
            "netstack RSS per idle connection (16 KiB buffers) ≤ 64 KiB",
            format!(
                "{MEMORY_GROUP}: {}",
                memory_row_name(memory_connections(quick))
            ),
            64.0,
        ),
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
        Outcome::BaselineFailed(why) => format!("{:<58} baseline FAILED: {why}", r.label()),
    }
}

/// The netstack scenarios: echo and connections/s in one namespace, then
/// memory (child processes with namespaces of their own).
fn run_netstack(plan: &Plan, rows: &mut Vec<Row>, step: &dyn Fn(&str)) {
    let ns = match Netns::new("fdlb-ns").and_then(|ns| {
        // Connections/s leaves many client sockets in TIME_WAIT.
        ns.sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
        ns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
        Ok(ns)
    }) {
        Ok(ns) => ns,
        Err(e) => {
            collect(rows, netstack::ECHO_GROUP, Err(format!("netns: {e}")));
            return;
        }
    };
    step("netstack echo");
    collect(
        rows,
        netstack::ECHO_GROUP,
        Ok(netstack::run_echo(plan, &ns)),
    );
    step("netstack connections/s");
    collect(rows, netstack::CPS_GROUP, Ok(netstack::run_cps(plan, &ns)));
    drop(ns);
    std::thread::sleep(NAMESPACE_SETTLE);
    step("netstack memory");
    collect(rows, netstack::MEMORY_GROUP, Ok(netstack::run_memory(plan)));
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
            (netstack::ECHO_GROUP, "netstack"),
            (netstack::CPS_GROUP, "netstack"),
            (netstack::MEMORY_GROUP, "netstack"),
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
        if want("netstack") {
            // Let the kernel finish with the TCP scenarios' namespace.
            std::thread::sleep(NAMESPACE_SETTLE);
            run_netstack(&plan, &mut rows, &step);
        }
    }

    let goals = goals(args.quick);
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
    let mut args = args.peekable();
    if args.peek().is_some_and(|a| a == "--memory-child") {
        return memory_child(args.skip(1));
    }
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

/// `bench --memory-child STACK N`: one run of the memory scenario (see
/// [`netstack::memory_child`]), in a process of its own.
fn memory_child(mut args: impl Iterator<Item = String>) -> ExitCode {
    let (Some(stack), Some(n)) = (args.next(), args.next().and_then(|n| n.parse().ok())) else {
        eprintln!("bench: --memory-child STACK CONNECTIONS");
        return ExitCode::from(2);
    };
    match netstack::memory_child(&stack, n) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench: memory child: {e}");
            ExitCode::FAILURE
        }
    }
}
