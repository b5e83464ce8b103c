//! `dump`: a tcpdump-like reader over an fdlink endpoint.
//!
//! ```text
//! dump (--tun NAME | --tap NAME | --af-packet IFACE) [--queues N]
//!      [--mode per-packet|recvmmsg|mmap] [--vnet] [--count N] [--duration SECS] [--quiet]
//! ```
//!
//! - `--tun NAME` / `--tap NAME`: attach to the TUN/TAP device `NAME`,
//!   creating it when it does not exist (a device created here is not
//!   persistent: it goes away when `dump` exits). `dump` does not configure
//!   the device: give it an address and set it up (`ip link set NAME up`)
//!   while `dump` runs. With `--queues N` above 1 the device is opened
//!   multi-queue (`IFF_MULTI_QUEUE`), one descriptor per queue.
//! - `--af-packet IFACE`: `N` raw `AF_PACKET` sockets (all EtherTypes) bound
//!   to `IFACE`; with several, the endpoint joins them into one hash fanout
//!   group, so each flow is seen on one queue.
//! - `--mode`: the endpoint's dispatch mode (default `per-packet`; `recvmmsg` and
//!   `mmap` need `--af-packet`).
//! - `--vnet`: frames carry a virtio-net header (`IFF_VNET_HDR` on TUN/TAP,
//!   with checksum and segmentation offloads turned on, so TCP super-packets
//!   larger than the MTU show; `PACKET_VNET_HDR` on AF_PACKET).
//! - `--count N`: stop after `N` packets; `--duration SECS` (fractions
//!   allowed): stop after that long; SIGINT or SIGTERM: stop now.
//! - `--quiet`: no per-packet lines.
//!
//! Output: `ready` once the readers run (flushed), then one line per packet
//!
//! ```text
//! q=<queue> len=<bytes> proto=<ipv4|ipv6|arp|0xNNNN> src=<addr> dst=<addr> l4=<tcp|udp|icmp|icmpv6|other>[ sport=<n> dport=<n>]
//! ```
//!
//! where `len` counts the link header (Ethernet for TAP/AF_PACKET, none for
//! TUN) and the network packet, not the virtio-net header. For IP packets
//! `src`/`dst` are the IP addresses; for ARP (Ethernet/IPv4) the sender and
//! target protocol (IP) addresses; for other EtherTypes the Ethernet source
//! and destination MACs; `-` where the packet is too short to tell. `l4` is
//! `tcp` or `udp` only when the transport header's ports are present (a
//! non-first IP fragment or a cut header is `other`); the ports follow
//! then. IPv6 extension headers (hop-by-hop, routing, fragment, destination
//! options, AH) are skipped to find the transport.
//!
//! At the end, one line per queue, `queue <i> received=<n>` (packets this
//! program took from the queue, at most `--count` in all), and
//! `stats received=<n> delivered=<n> dropped=<n>`: the endpoint's frames
//! read, packets delivered and inbound drops (they may exceed `--count` by
//! the rest of the last batch). Exit status 0; 2 for bad arguments, 1 when
//! the device cannot be opened.
//!
//! Example (as root, in a namespace):
//!
//! ```text
//! ip netns exec ns1 dump --tun dump0 --count 3 &
//! ip -n ns1 addr add 10.9.0.1/24 dev dump0; ip -n ns1 link set dump0 up
//! ip netns exec ns1 ping -c 3 10.9.0.2
//! ```

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fdlink_core::{Batch, DispatchMode, EtherType, Link, Offload, Packet};
use fdlink_sys::wait::{Interest, PollFd, StopEvent, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

const USAGE: &str = "usage: dump (--tun NAME | --tap NAME | --af-packet IFACE) [--queues N] \
                     [--mode per-packet|recvmmsg|mmap] [--vnet] [--count N] [--duration SECS] [--quiet]";

/// Packets per batch.
const BATCH: usize = 32;
/// How often the main thread checks whether every channel has closed.
const CLOSED_CHECK: Duration = Duration::from_millis(200);

#[derive(Debug)]
enum Source {
    Tun(String),
    Tap(String),
    AfPacket(String),
}

#[derive(Debug)]
struct Args {
    source: Source,
    queues: usize,
    mode: DispatchMode,
    vnet: bool,
    count: Option<u64>,
    duration: Option<Duration>,
    quiet: bool,
}

/// Parses the command line (without the program name). `Ok(None)` for
/// `--help`.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut source = None;
    let mut queues = 1usize;
    let mut mode = DispatchMode::PerPacket;
    let mut vnet = false;
    let mut count = None;
    let mut duration = None;
    let mut quiet = false;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--tun" | "--tap" | "--af-packet" => {
                if source.is_some() {
                    return Err("give one of --tun, --tap, --af-packet".into());
                }
                let name = value(&arg)?;
                source = Some(match arg.as_str() {
                    "--tun" => Source::Tun(name),
                    "--tap" => Source::Tap(name),
                    _ => Source::AfPacket(name),
                });
            }
            "--queues" => {
                queues = value(&arg)?
                    .parse()
                    .ok()
                    .filter(|n| (1..=256).contains(n))
                    .ok_or("--queues takes a number from 1 to 256")?;
            }
            "--mode" => mode = value(&arg)?.parse()?,
            "--vnet" => vnet = true,
            "--count" => {
                count = Some(
                    value(&arg)?
                        .parse::<u64>()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or("--count takes a positive number")?,
                );
            }
            "--duration" => {
                let secs = value(&arg)?;
                duration = Some(
                    secs.parse::<f64>()
                        .ok()
                        .and_then(|s| Duration::try_from_secs_f64(s).ok())
                        .ok_or("--duration takes a number of seconds")?,
                );
            }
            "--quiet" => quiet = true,
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let source = source.ok_or("give one of --tun, --tap, --af-packet")?;
    Ok(Some(Args {
        source,
        queues,
        mode,
        vnet,
        count,
        duration,
        quiet,
    }))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("dump: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dump: {e}");
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error>;

/// The link the arguments name, in one call: the device opened or
/// attached, its offloads set (`--vnet`: every one the kernel grants,
/// else none), its MTU read from it.
fn link(args: &Args) -> Link {
    let link = match &args.source {
        Source::Tun(name) => Link::tun(name),
        Source::Tap(name) => Link::tap(name),
        Source::AfPacket(name) => Link::af_packet(name),
    };
    link.queues(args.queues)
        .mode(args.mode)
        .batch_size(BATCH)
        .offload(if args.vnet {
            Offload::Auto
        } else {
            Offload::Off
        })
}

fn run(args: &Args) -> Result<(), BoxError> {
    // Block the signals before any reader thread exists, so every thread
    // inherits the mask and they are only ever read from the signalfd.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block()?;
    let signal_fd = SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;

    let endpoint = link(args).open()?;
    let queues = endpoint.channel_count();

    let per_queue: Arc<Vec<AtomicU64>> = Arc::new((0..queues).map(|_| AtomicU64::new(0)).collect());
    let taken = Arc::new(AtomicU64::new(0));
    let done = Arc::new(StopEvent::new()?);
    let dispatcher = {
        let per_queue = Arc::clone(&per_queue);
        let taken = Arc::clone(&taken);
        let done = Arc::clone(&done);
        let count = args.count;
        let quiet = args.quiet;
        move |q: usize, batch: &mut Batch| {
            let mut lines = String::new();
            for packet in batch.iter() {
                let k = taken.fetch_add(1, Ordering::Relaxed);
                if count.is_some_and(|c| k >= c) {
                    break;
                }
                per_queue[q].fetch_add(1, Ordering::Relaxed);
                if !quiet {
                    describe(q, &packet, &mut lines);
                    lines.push('\n');
                }
                if count.is_some_and(|c| k + 1 == c) {
                    let _ = done.signal();
                }
            }
            if !lines.is_empty() {
                // A closed stdout (`dump | head`) must not kill the reader.
                let _ = std::io::stdout().lock().write_all(lines.as_bytes());
            }
        }
    };
    endpoint.attach(Arc::new(dispatcher))?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready")?;
        out.flush()?;
    }

    let deadline = args.duration.map(|d| Instant::now() + d);
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            break;
        }
        let slice = left.map_or(CLOSED_CHECK, |l| l.min(CLOSED_CHECK));
        let mut set = [
            PollFd::new(signal_fd.as_fd(), Interest::Read),
            PollFd::new(done.as_fd(), Interest::Read),
        ];
        poll(&mut set, Some(slice))?;
        if set[0].any() {
            // Consume it; which of the two it was does not matter.
            let _ = signal_fd.read_signal();
            break;
        }
        if set[1].any() || endpoint.is_closed() {
            break;
        }
    }
    endpoint.detach();

    let stats = endpoint.stats();
    let mut out = std::io::stdout().lock();
    for (i, n) in per_queue.iter().enumerate() {
        writeln!(out, "queue {i} received={}", n.load(Ordering::Relaxed))?;
    }
    writeln!(
        out,
        "stats received={} delivered={} dropped={}",
        stats.frames_read,
        stats.rx_packets,
        stats.drops.inbound()
    )?;
    out.flush()?;
    // A link that died (device deleted, peer closed) is a failure: say why
    // on stderr and exit non-zero, after the counts.
    match endpoint.close_reason() {
        Some(reason) if endpoint.is_closed() => Err(format!("the link closed: {reason}").into()),
        _ => Ok(()),
    }
}

/// Appends the line describing `packet` (without the newline).
fn describe(q: usize, packet: &Packet<'_>, out: &mut String) {
    let proto = packet.protocol();
    let _ = write!(out, "q={q} len={} proto={proto}", packet.link_frame().len());
    let net = packet.network();
    let summary = match proto {
        EtherType::IPV4 => ipv4(net),
        EtherType::IPV6 => ipv6(net),
        EtherType::ARP => arp(net),
        _ => other(packet.link_header()),
    };
    let _ = write!(
        out,
        " src={} dst={} l4={}",
        summary.src, summary.dst, summary.l4
    );
    if let Some((sport, dport)) = summary.ports {
        let _ = write!(out, " sport={sport} dport={dport}");
    }
}

/// What the per-packet line says after `proto=`.
struct Summary {
    src: String,
    dst: String,
    l4: &'static str,
    ports: Option<(u16, u16)>,
}

impl Summary {
    fn unknown() -> Summary {
        Summary {
            src: "-".into(),
            dst: "-".into(),
            l4: "other",
            ports: None,
        }
    }
}

/// The transport name and ports of IP protocol `proto` whose header starts
/// `l4` (`None`: not the first fragment, no transport header here).
fn transport(proto: u8, l4: Option<&[u8]>) -> (&'static str, Option<(u16, u16)>) {
    let ports = l4.and_then(|h| h.get(..4)).map(|h| {
        (
            u16::from_be_bytes([h[0], h[1]]),
            u16::from_be_bytes([h[2], h[3]]),
        )
    });
    match (proto, ports) {
        (6, Some(p)) => ("tcp", Some(p)),
        (17, Some(p)) => ("udp", Some(p)),
        (1, _) if l4.is_some() => ("icmp", None),
        (58, _) if l4.is_some() => ("icmpv6", None),
        _ => ("other", None),
    }
}

fn ipv4(p: &[u8]) -> Summary {
    let Some(h) = p.get(..20) else {
        return Summary::unknown();
    };
    let src = Ipv4Addr::new(h[12], h[13], h[14], h[15]);
    let dst = Ipv4Addr::new(h[16], h[17], h[18], h[19]);
    let ihl = usize::from(h[0] & 0x0f) * 4;
    let first_fragment = u16::from_be_bytes([h[6], h[7]]) & 0x1fff == 0;
    let l4 = if ihl >= 20 && first_fragment {
        p.get(ihl..)
    } else {
        None
    };
    let (l4, ports) = transport(h[9], l4);
    Summary {
        src: src.to_string(),
        dst: dst.to_string(),
        l4,
        ports,
    }
}

fn ipv6(p: &[u8]) -> Summary {
    let Some(h) = p.get(..40) else {
        return Summary::unknown();
    };
    let addr = |r: std::ops::Range<usize>| {
        let b: [u8; 16] = h[r].try_into().unwrap_or([0; 16]);
        Ipv6Addr::from(b).to_string()
    };
    let mut next = h[6];
    let mut off = 40;
    let mut l4 = None;
    // Walk at most a few extension headers; anything odd ends as "other".
    for _ in 0..8 {
        let rest = p.get(off..);
        match next {
            0 | 43 | 60 => match rest.and_then(|r| r.get(..2)) {
                Some(e) => {
                    next = e[0];
                    off += (usize::from(e[1]) + 1) * 8;
                }
                None => break,
            },
            51 => match rest.and_then(|r| r.get(..2)) {
                Some(e) => {
                    next = e[0];
                    off += (usize::from(e[1]) + 2) * 4;
                }
                None => break,
            },
            44 => match rest.and_then(|r| r.get(..4)) {
                // Only the first fragment carries the transport header.
                Some(e) if u16::from_be_bytes([e[2], e[3]]) & 0xfff8 == 0 => {
                    next = e[0];
                    off += 8;
                }
                _ => break,
            },
            _ => {
                l4 = rest;
                break;
            }
        }
    }
    let (l4, ports) = transport(next, l4);
    Summary {
        src: addr(8..24),
        dst: addr(24..40),
        l4,
        ports,
    }
}

/// ARP over Ethernet for IPv4: sender and target protocol addresses.
fn arp(p: &[u8]) -> Summary {
    match p.get(..28) {
        Some(a) if a[0..2] == [0, 1] && a[2..4] == [8, 0] && a[4] == 6 && a[5] == 4 => Summary {
            src: Ipv4Addr::new(a[14], a[15], a[16], a[17]).to_string(),
            dst: Ipv4Addr::new(a[24], a[25], a[26], a[27]).to_string(),
            l4: "other",
            ports: None,
        },
        _ => Summary::unknown(),
    }
}

/// Another EtherType: the Ethernet MACs, when there is an Ethernet header.
fn other(link: &[u8]) -> Summary {
    match fdlink_core::link::ethernet::parse(link) {
        Some((dst, src, _)) => Summary {
            src: src.to_string(),
            dst: dst.to_string(),
            l4: "other",
            ports: None,
        },
        None => Summary::unknown(),
    }
}
