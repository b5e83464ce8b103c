//! Scenario 5 (root): fdlink's netstack against its peers, one kernel TCP
//! client in a namespace whose TUN is routed into the stack under test
//! ([`crate::stacks`]):
//!
//! - echo throughput at 1 and 8 concurrent connections: the netstack's
//!   stream API on std threads and on tokio tasks, offload on and off,
//!   against netstack-smoltcp (tun-rs with offload), ipstack, and fdlink's
//!   own `echo` example engine (and the netstack with that engine's 1 MiB
//!   buffers, next to it, since its defaults are 256 KiB and 64 KiB);
//! - connections per second (connect, 1 KiB echo, close), against
//!   netstack-smoltcp;
//! - memory per idle established connection, in a child process of its
//!   own per run (a fresh heap: RSS after N connections minus RSS before,
//!   over N), against netstack-smoltcp with the same buffers.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use fdlink_sys::wait::{Interest, PollFd};
use fdlink_tests::netns::Netns;

use crate::kernel::{CONNECT_TIMEOUT, Window, next_port};
use crate::measure::{Meter, Plan, Sample, Summary, cpu_seconds};
use crate::report::{Outcome, Row};
use crate::stacks::{self, Buffers, Running, Serve, Stack};

/// Connection counts of the echo scenario.
pub const ECHO_CONNECTIONS: [usize; 2] = [1, 8];
/// Bytes per client write in the echo scenario.
const ECHO_CHUNK: usize = 64 << 10;
/// How long the client waits for the rest of the echo and the server's
/// FIN once it has sent its own.
const FINISH_TIMEOUT: Duration = Duration::from_secs(3);
/// Bytes echoed per connection in the connections/s scenario.
const CPS_ECHO: usize = 1024;
/// Client threads of the connections/s scenario, each connecting one
/// connection after another.
const CPS_CLIENTS: usize = 4;
/// Connections of the memory scenario (full run).
pub const MEMORY_CONNECTIONS: usize = 10_000;
/// Connections of the memory scenario in a smoke run.
const MEMORY_CONNECTIONS_QUICK: usize = 300;
/// Each buffer of each way of a connection in the memory scenario.
pub const MEMORY_BUFFER: usize = 16 << 10;
/// Runs of the memory scenario (full run): each opens 10,000 connections.
const MEMORY_RUNS: usize = 3;

const NETSTACK_VARIANTS: [Stack; 4] = [
    Stack::Netstack {
        tokio: false,
        offload: true,
    },
    Stack::Netstack {
        tokio: false,
        offload: false,
    },
    Stack::Netstack {
        tokio: true,
        offload: true,
    },
    Stack::Netstack {
        tokio: true,
        offload: false,
    },
];
/// The netstack variant the goals are checked on.
pub const GOAL_VARIANT: Stack = NETSTACK_VARIANTS[0];

/// The group names of the report.
pub const ECHO_GROUP: &str = "netstack echo";
/// The connections/s group.
pub const CPS_GROUP: &str = "netstack connections/s";
/// The memory group.
pub const MEMORY_GROUP: &str = "netstack memory";

/// The name of the echo row of `variant` against `baseline` at `conns`.
pub fn echo_row_name(conns: usize, variant: Stack, baseline: Stack) -> String {
    let against = match baseline {
        Stack::NetstackSmoltcp => String::new(),
        Stack::Ipstack => " vs ipstack".into(),
        Stack::EchoEngine => " vs echo engine".into(),
        Stack::Netstack { .. } | Stack::NetstackEngineBuffers => " vs netstack".into(),
    };
    format!(
        "{conns} conn{} {}{against}",
        if conns == 1 { "" } else { "s" },
        variant.label()
    )
}

/// The name of the connections/s row of `variant`.
pub fn cps_row_name(variant: Stack) -> String {
    format!("connect, 1 KiB echo, close: {}", variant.label())
}

/// Connections of the memory scenario in a full (or smoke) run.
pub fn memory_connections(quick: bool) -> usize {
    if quick {
        MEMORY_CONNECTIONS_QUICK
    } else {
        MEMORY_CONNECTIONS
    }
}

/// The name of the memory row at `conns` connections.
pub fn memory_row_name(conns: usize) -> String {
    format!(
        "RSS per idle connection, {conns} × {} KiB buffers (lower is better): {}",
        MEMORY_BUFFER >> 10,
        GOAL_VARIANT.label()
    )
}

/// Connects to `addr`, retrying while the server comes up.
fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(s) => return Ok(s),
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(io::Error::new(e.kind(), format!("connect {addr}: {e}"))),
        }
    }
}

/// The client's target on `server`: a fresh port where any port works,
/// so no run meets an earlier connection's 4-tuple.
fn target(server: &Running) -> SocketAddr {
    let mut t = server.target;
    if t.port() == 0 {
        t.set_port(next_port());
    }
    t
}

/// One kernel client, `conns` connections, writing and reading all of
/// them from one thread with `ppoll`; the figure is the echoed bytes it
/// read, in Gbit/s.
fn echo_client(addr: SocketAddr, conns: usize, plan: &Plan) -> Result<Sample, String> {
    let mut streams = Vec::with_capacity(conns);
    for _ in 0..conns {
        let s = connect(addr).map_err(|e| e.to_string())?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        streams.push(s);
    }
    let chunk = vec![0x5au8; ECHO_CHUNK];
    let mut buf = vec![0u8; 256 << 10];
    let mut echoed = 0u64;
    // Per connection: bytes written, bytes read back.
    let mut counts = vec![(0u64, 0u64); conns];
    let mut window = Window::new(plan);
    let io = |what: &str, e: io::Error| format!("client {what}: {e}");
    loop {
        let mut set: Vec<PollFd<'_>> = streams
            .iter()
            .flat_map(|s| {
                [
                    PollFd::new(s.as_fd(), Interest::Read),
                    PollFd::new(s.as_fd(), Interest::Write),
                ]
            })
            .collect();
        fdlink_sys::wait::poll(&mut set, Some(Duration::from_millis(10)))
            .map_err(|e| io("poll", e))?;
        for (i, mut s) in streams.iter().enumerate() {
            if set[2 * i].any() {
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => return Err("the server closed a connection".into()),
                        Ok(n) => {
                            echoed += n as u64;
                            counts[i].1 += n as u64;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(io("read", e)),
                    }
                }
            }
            if set[2 * i + 1].is_ready() {
                match s.write(&chunk) {
                    Ok(n) => counts[i].0 += n as u64,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(io("write", e)),
                }
            }
        }
        if let Some(sample) = window.update(echoed)? {
            return match finish(&streams, &counts, &mut buf) {
                Ok(()) => Ok(sample),
                Err(e) => Err(format!(
                    "{e} (it echoed {:.2} Gbit/s until then)",
                    sample.value
                )),
            };
        }
    }
}

/// Ends the echo run as a client would: a FIN behind the data still
/// queued (so it travels with data), then everything echoed back and the
/// server's FIN, within [`FINISH_TIMEOUT`].
fn finish(streams: &[TcpStream], counts: &[(u64, u64)], buf: &mut [u8]) -> Result<(), String> {
    for s in streams {
        s.shutdown(std::net::Shutdown::Write)
            .map_err(|e| format!("client shutdown: {e}"))?;
    }
    for (i, (mut s, &(written, mut read))) in streams.iter().zip(counts).enumerate() {
        s.set_nonblocking(false)
            .and_then(|()| s.set_read_timeout(Some(FINISH_TIMEOUT)))
            .map_err(|e| e.to_string())?;
        let lost = |read: u64, why: String| {
            format!(
                "connection {i}: after the client's FIN, {read} of {written} bytes echoed, then {why}"
            )
        };
        loop {
            match s.read(buf) {
                Ok(0) if read == written => break,
                Ok(0) => return Err(lost(read, "the server's FIN".into())),
                Ok(n) => read += n as u64,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(lost(read, format!("nothing for {FINISH_TIMEOUT:?}")));
                }
                Err(e) => return Err(lost(read, e.to_string())),
            }
        }
    }
    Ok(())
}

/// [`CPS_CLIENTS`] threads, each connecting, echoing 1 KiB and closing,
/// one connection after another; the figure is connections/s.
fn cps_client(addr: SocketAddr, plan: &Plan) -> Result<Sample, String> {
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let failed: Mutex<Option<String>> = Mutex::new(None);
    let one = || -> io::Result<()> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let data = [0x5au8; CPS_ECHO];
        s.write_all(&data)?;
        let mut back = [0u8; CPS_ECHO];
        s.read_exact(&mut back)?;
        if back != data {
            return Err(io::Error::other("the echo differs"));
        }
        Ok(())
    };
    let sample = thread::scope(|scope| {
        for _ in 0..CPS_CLIENTS {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    match one() {
                        Ok(()) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            if !stop.swap(true, Ordering::Relaxed) {
                                *failed.lock().unwrap_or_else(|p| p.into_inner()) =
                                    Some(format!("client: {e}"));
                            }
                        }
                    }
                }
            });
        }
        let wait = |d: Duration| {
            let until = Instant::now() + d;
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(5));
            }
        };
        let started = Instant::now();
        while done.load(Ordering::Relaxed) == 0
            && !stop.load(Ordering::Relaxed)
            && started.elapsed() < CONNECT_TIMEOUT
        {
            thread::sleep(Duration::from_millis(1));
        }
        wait(plan.tcp_warmup);
        let meter = Meter::start();
        let before = done.load(Ordering::Relaxed);
        wait(plan.tcp_window);
        let after = done.load(Ordering::Relaxed);
        let mut sample = Sample::new(0.0, &meter);
        stop.store(true, Ordering::Relaxed);
        sample.value = (after - before) as f64 / sample.wall;
        sample
    });
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None if done.load(Ordering::Relaxed) == 0 => Err("no connection completed".into()),
        None => Ok(sample),
    }
}

/// Starts `stack`, runs `client` against it inside `ns`, stops the stack.
fn with_server(
    ns: &Netns,
    stack: Stack,
    client: impl FnOnce(SocketAddr) -> Result<Sample, String> + Send,
) -> Result<Sample, String> {
    let server = stacks::start(ns, stack, Serve::Echo, None)?;
    let addr = target(&server);
    let tun = server.tun.clone();
    let result = ns
        .run(move || client(addr))
        .map_err(|e| format!("netns: {e}"))?
        .map_err(|e| match server.netstack_stats() {
            // What the engines counted, to tell where the bytes stopped.
            Some(stats) => format!("{e} [netstack: {stats}]"),
            None => e,
        });
    drop(server);
    if ns.ip(&["link", "show", "dev", &tun]).is_ok() {
        // Its threads wait forever, idle. Delete the device, so that its
        // address and routes do not stand in the next server's way.
        eprintln!(
            "bench: {}: stopped, but its TUN {tun} is still open (its runtime did not shut down); deleting it",
            stack.label()
        );
        ns.ip(&["link", "del", "dev", &tun])
            .map_err(|e| format!("delete the leftover {tun}: {e}"))?;
    }
    result
}

/// Failures after which a variant is not run again (a peer that fails
/// every run should not cost every run's timeouts).
const MAX_FAILURES: usize = 2;

/// Measures every variant `runs` times, interleaved. A variant with a
/// failed run is a failure, whose error says how many runs failed and
/// what the others measured; after [`MAX_FAILURES`] it is not run again.
fn interleaved_or_failed(
    runs: usize,
    variants: &[Stack],
    mut measure: impl FnMut(Stack) -> Result<Sample, String>,
) -> Vec<Result<Summary, String>> {
    let mut out: Vec<(Vec<Sample>, Vec<String>)> = vec![(Vec::new(), Vec::new()); variants.len()];
    for _ in 0..runs {
        for (i, v) in variants.iter().enumerate() {
            let (samples, errors) = &mut out[i];
            if errors.len() >= MAX_FAILURES {
                continue;
            }
            match measure(*v) {
                Ok(s) => samples.push(s),
                Err(e) => {
                    eprintln!("bench: {}: {e}", v.label());
                    errors.push(e);
                }
            }
        }
    }
    out.into_iter()
        .map(|(samples, errors)| match errors.first() {
            None => Ok(Summary::of(&samples)),
            Some(first) => {
                let others = if samples.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; the {} other runs: median {}",
                        samples.len(),
                        crate::report::fmt_value(Summary::of(&samples).median)
                    )
                };
                Err(format!(
                    "{} of {} runs failed, the first: {first}{others}",
                    errors.len(),
                    errors.len() + samples.len()
                ))
            }
        })
        .collect()
}

fn row(
    group: &'static str,
    name: String,
    unit: &'static str,
    value: &Result<Summary, String>,
    baseline_stack: Stack,
    baseline: &Result<Summary, String>,
) -> Row {
    match (value, baseline) {
        (Ok(v), Ok(b)) => Row::measured(group, name, unit, baseline_stack.label(), *v, *b),
        (Err(e), _) => Row::without(group, name, Outcome::Failed(e.clone())),
        (_, Err(e)) => {
            let why = format!("{}: {e}", baseline_stack.label());
            let outcome = match baseline_stack {
                // A peer's failure is the peer's, not the run's.
                Stack::NetstackSmoltcp | Stack::Ipstack => Outcome::BaselineFailed(why),
                _ => Outcome::Failed(why),
            };
            Row::without(group, name, outcome)
        }
    }
}

/// The runs of one measurement in this group: a smoke run measures once.
fn runs(plan: &Plan) -> usize {
    if plan.quick { 1 } else { plan.runs }
}

/// Echo throughput at 1 and 8 connections: every netstack variant and
/// every peer, interleaved.
pub fn run_echo(plan: &Plan, ns: &Netns) -> Vec<Row> {
    let mut variants = NETSTACK_VARIANTS.to_vec();
    variants.extend([
        Stack::NetstackEngineBuffers,
        Stack::NetstackSmoltcp,
        Stack::Ipstack,
        Stack::EchoEngine,
    ]);
    let mut rows = Vec::new();
    for conns in ECHO_CONNECTIONS {
        let summaries = interleaved_or_failed(runs(plan), &variants, |stack| {
            with_server(ns, stack, |addr| echo_client(addr, conns, plan))
        });
        let of = |s: Stack| &summaries[variants.iter().position(|v| *v == s).unwrap_or(0)];
        for v in NETSTACK_VARIANTS {
            rows.push(row(
                ECHO_GROUP,
                echo_row_name(conns, v, Stack::NetstackSmoltcp),
                "Gbit/s",
                of(v),
                Stack::NetstackSmoltcp,
                of(Stack::NetstackSmoltcp),
            ));
        }
        for baseline in [Stack::Ipstack, Stack::EchoEngine] {
            rows.push(row(
                ECHO_GROUP,
                echo_row_name(conns, GOAL_VARIANT, baseline),
                "Gbit/s",
                of(GOAL_VARIANT),
                baseline,
                of(baseline),
            ));
        }
        // The same engine buffers as the echo engine: what is left of the
        // difference is the netstack's own.
        rows.push(row(
            ECHO_GROUP,
            echo_row_name(conns, Stack::NetstackEngineBuffers, Stack::EchoEngine),
            "Gbit/s",
            of(Stack::NetstackEngineBuffers),
            Stack::EchoEngine,
            of(Stack::EchoEngine),
        ));
    }
    rows
}

/// Connections per second: the netstack on threads and on tokio against
/// netstack-smoltcp.
pub fn run_cps(plan: &Plan, ns: &Netns) -> Vec<Row> {
    let variants = [
        GOAL_VARIANT,
        Stack::Netstack {
            tokio: true,
            offload: true,
        },
        Stack::NetstackSmoltcp,
    ];
    let summaries = interleaved_or_failed(runs(plan), &variants, |stack| {
        with_server(ns, stack, |addr| cps_client(addr, plan))
    });
    variants[..2]
        .iter()
        .zip(&summaries)
        .map(|(v, s)| {
            row(
                CPS_GROUP,
                cps_row_name(*v),
                "conn/s",
                s,
                Stack::NetstackSmoltcp,
                &summaries[2],
            )
        })
        .collect()
}

/// Memory per idle connection: each run a child process (`bench
/// --memory-child STACK N`), interleaved.
pub fn run_memory(plan: &Plan) -> Vec<Row> {
    let conns = memory_connections(plan.quick);
    let variants = [GOAL_VARIANT, Stack::NetstackSmoltcp];
    let runs = if plan.quick { 1 } else { MEMORY_RUNS };
    let summaries = interleaved_or_failed(runs, &variants, |stack| memory_run(stack, conns));
    vec![row(
        MEMORY_GROUP,
        memory_row_name(conns),
        "KiB",
        &summaries[0],
        Stack::NetstackSmoltcp,
        &summaries[1],
    )]
}

/// The child's name for a stack.
fn child_name(stack: Stack) -> &'static str {
    match stack {
        Stack::NetstackSmoltcp => "netstack-smoltcp",
        _ => "netstack",
    }
}

/// One memory run in a child process: KiB per connection; the wall time
/// is the time to open them, the CPU time the child's meanwhile.
fn memory_run(stack: Stack, conns: usize) -> Result<Sample, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let out = Command::new(exe)
        .args(["--memory-child", child_name(stack), &conns.to_string()])
        .output()
        .map_err(|e| format!("memory child: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "memory child ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let field = |key: &str| -> Result<f64, String> {
        stdout
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("memory child: no {key} in {stdout:?}"))
    };
    Ok(Sample {
        value: field("rss_per_conn")? / 1024.0,
        wall: field("open_s")?,
        cpu: field("cpu_s")?,
        per_wakeup: None,
    })
}

/// Resident set size of this process, bytes (`VmRSS`).
fn rss() -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| "no VmRSS".into())
}

/// The memory child: its own namespace, one stack holding `conns` idle
/// connections opened one after another by a kernel client; prints
/// `rss_per_conn=BYTES open_s=S cpu_s=S`.
pub fn memory_child(stack: &str, conns: usize) -> Result<String, String> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let stack = match stack {
        "netstack" => GOAL_VARIANT,
        "netstack-smoltcp" => Stack::NetstackSmoltcp,
        other => return Err(format!("unknown stack {other:?}")),
    };
    let want = conns as u64 + 4096;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| e.to_string())?;
    if soft < want {
        setrlimit(Resource::RLIMIT_NOFILE, want, hard.max(want))
            .map_err(|e| format!("RLIMIT_NOFILE {want}: {e}"))?;
    }
    let ns = Netns::new("fdlb-mem").map_err(|e| format!("netns: {e}"))?;
    ns.sysctl("net.ipv4.ip_local_port_range", "1024 65000")
        .map_err(|e| e.to_string())?;
    let server = stacks::start(&ns, stack, Serve::Hold, Some(Buffers(MEMORY_BUFFER)))?;
    let addr = target(&server);
    // One connection first, so that what every connection needs once
    // (thread stacks, tables) is there before the baseline.
    let first = ns
        .run(|| connect(addr))
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    wait_accepted(&server, 1)?;
    thread::sleep(Duration::from_millis(200));
    let before = rss()?;
    let cpu = cpu_seconds();
    let started = Instant::now();
    let clients = ns
        .run(|| {
            (1..conns)
                .map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
                .collect::<io::Result<Vec<_>>>()
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    wait_accepted(&server, conns)?;
    let open_s = started.elapsed().as_secs_f64();
    let cpu_s = cpu_seconds() - cpu;
    thread::sleep(Duration::from_millis(300));
    let after = rss()?;
    let per = after.saturating_sub(before) as f64 / (conns - 1).max(1) as f64;
    let stats = server.netstack_stats().unwrap_or_default();
    drop(clients);
    drop(first);
    drop(server);
    Ok(format!(
        "rss_per_conn={per:.0} open_s={open_s:.3} cpu_s={cpu_s:.3} rss_before={before} rss_after={after} {stats}"
    ))
}

fn wait_accepted(server: &Running, n: usize) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.accepted.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            return Err(format!(
                "{} of {n} connections accepted in 60 s",
                server.accepted.load(Ordering::Relaxed)
            ));
        }
        thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}
