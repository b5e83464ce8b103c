//! A transparent proxy (tun2socks) over the netstack: every TCP connection
//! and UDP flow routed into a TUN — to any address and port — is forwarded
//! to its original destination through this host's own sockets, or through
//! a SOCKS5 server.
//!
//! ```text
//! tunproxy --tun NAME [--queues N] [--offload on|off] [--socks5 HOST:PORT]
//! ```
//!
//! It creates (or opens) the TUN, prints `ready`, and serves. A new TCP
//! connection is held before its handshake while the upstream connection is
//! made; if the upstream refuses, the TUN's client gets a reset, as if the
//! destination had refused it itself. Data is copied both ways with
//! half-close: when one side finishes sending, that direction is shut down
//! on the other side, and the connection closes when both are done. Each
//! UDP flow gets its own upstream socket (or SOCKS5 UDP association).
//!
//! After `ready` the device is only used through its descriptors, so it
//! keeps working when moved to another namespace (`ip link set NAME netns
//! OTHER`) while the upstream sockets stay in this process's namespace. On
//! SIGINT or SIGTERM it prints a `stats ...` line and exits 0; when the link
//! dies it prints one line on stderr and exits 1. For example:
//!
//! ```text
//! tunproxy --tun tp0 &
//! ip addr add 10.9.0.1/32 dev tp0; ip link set tp0 up
//! ip route add 10.200.0.0/16 dev tp0    # everything there is proxied
//! ```

use std::io::{self, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream as HostTcp, ToSocketAddrs,
    UdpSocket,
};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fdlink_core::{Link, Offload};
use fdlink_smoltcp::netstack::{
    Netstack, NetstackConfig, NetstackStats, PendingTcp, SpecialDestination, UdpFlow,
};
use nix::sys::signal::{SigSet, Signal};

const USAGE: &str =
    "usage: tunproxy --tun NAME [--queues N] [--offload on|off] [--socks5 HOST:PORT]";

/// How long an upstream connection may take. Well under the netstack's
/// 10 s limit on holding a SYN undecided.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a UDP flow's upstream reader looks whether the flow ended.
const UDP_POLL: Duration = Duration::from_millis(500);

/// Where connections go.
#[derive(Debug, Clone, Copy)]
enum Upstream {
    /// Straight to the original destination.
    Direct,
    /// Through this SOCKS5 server (no authentication).
    Socks5(SocketAddr),
}

struct Args {
    tun: String,
    queues: usize,
    offload: bool,
    upstream: Upstream,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        tun: String::new(),
        queues: 1,
        offload: true,
        upstream: Upstream::Direct,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value\n{USAGE}"));
        match flag.as_str() {
            "--tun" => args.tun = value()?,
            "--queues" => {
                args.queues = value()?.parse().map_err(|e| format!("--queues: {e}"))?;
            }
            "--offload" => {
                args.offload = match value()?.as_str() {
                    "on" => true,
                    "off" => false,
                    other => return Err(format!("--offload: {other:?} is not on|off")),
                }
            }
            "--socks5" => {
                let server = value()?;
                let addr = server
                    .to_socket_addrs()
                    .map_err(|e| format!("--socks5 {server}: {e}"))?
                    .next()
                    .ok_or(format!("--socks5 {server}: no address"))?;
                args.upstream = Upstream::Socks5(addr);
            }
            _ => return Err(USAGE.into()),
        }
    }
    if args.tun.is_empty() || args.queues == 0 {
        return Err(USAGE.into());
    }
    Ok(args)
}

// ---------------------------------------------------------------------------
// SOCKS5 (RFC 1928), the little a client needs: no authentication, CONNECT
// and UDP ASSOCIATE, IPv4 and IPv6 addresses.
// ---------------------------------------------------------------------------

const SOCKS_CONNECT: u8 = 1;
const SOCKS_UDP_ASSOCIATE: u8 = 3;

/// Appends `addr` as a SOCKS5 address: type, address, port.
fn put_socks_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(1);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// Reads a SOCKS5 address of type `atyp` from `r`; a domain name (which we
/// never ask for) is read past and gives `None`.
fn read_socks_addr(r: &mut impl Read, atyp: u8) -> io::Result<Option<SocketAddr>> {
    let ip = match atyp {
        1 => {
            let mut a = [0u8; 4];
            r.read_exact(&mut a)?;
            Some(IpAddr::from(a))
        }
        4 => {
            let mut a = [0u8; 16];
            r.read_exact(&mut a)?;
            Some(IpAddr::from(a))
        }
        3 => {
            let mut len = [0u8; 1];
            r.read_exact(&mut len)?;
            r.read_exact(&mut vec![0u8; usize::from(len[0])])?;
            None
        }
        _ => return Err(io::Error::other("SOCKS5: unknown address type")),
    };
    let mut port = [0u8; 2];
    r.read_exact(&mut port)?;
    Ok(ip.map(|ip| SocketAddr::new(ip, u16::from_be_bytes(port))))
}

/// Connects to SOCKS5 `server` and asks it for `command` on `addr`; returns
/// the control connection and the address the server bound.
fn socks5_request(
    server: SocketAddr,
    command: u8,
    addr: SocketAddr,
) -> io::Result<(HostTcp, Option<SocketAddr>)> {
    let mut s = HostTcp::connect_timeout(&server, CONNECT_TIMEOUT)?;
    s.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    // Greeting: version 5, one method, "no authentication".
    s.write_all(&[5, 1, 0])?;
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice)?;
    if choice != [5, 0] {
        return Err(io::Error::other("SOCKS5: the server wants authentication"));
    }
    let mut request = vec![5, command, 0];
    put_socks_addr(&mut request, addr);
    s.write_all(&request)?;
    // Reply: version, status, reserved, bound address.
    let mut head = [0u8; 4];
    s.read_exact(&mut head)?;
    match head[1] {
        0 => {}
        5 => return Err(io::ErrorKind::ConnectionRefused.into()),
        3 | 4 => return Err(io::ErrorKind::HostUnreachable.into()),
        code => return Err(io::Error::other(format!("SOCKS5: request failed ({code})"))),
    }
    let bound = read_socks_addr(&mut s, head[3])?;
    s.set_read_timeout(None)?;
    Ok((s, bound))
}

// ---------------------------------------------------------------------------
// TCP
// ---------------------------------------------------------------------------

/// Connects to `dst` upstream.
fn connect(upstream: Upstream, dst: SocketAddr) -> io::Result<HostTcp> {
    let stream = match upstream {
        Upstream::Direct => HostTcp::connect_timeout(&dst, CONNECT_TIMEOUT)?,
        Upstream::Socks5(server) => socks5_request(server, SOCKS_CONNECT, dst)?.0,
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Copies `from` into `to` until `from` ends. `Err` when either side
/// failed.
fn pump(mut from: impl Read, mut to: impl Write) -> io::Result<()> {
    let mut buf = vec![0u8; 32 << 10];
    loop {
        match from.read(&mut buf)? {
            0 => return Ok(()),
            n => to.write_all(&buf[..n])?,
        }
    }
}

/// Decides on a held connection: accepted if its destination takes the
/// upstream connection, refused (a reset) otherwise; then copies both ways.
fn proxy_tcp(pending: PendingTcp, upstream: Upstream) {
    let host = match connect(upstream, pending.original_dst()) {
        Ok(host) => host,
        Err(_) => return pending.refuse(),
    };
    let client = pending.accept();
    let (client, host) = (&client, &host);
    std::thread::scope(|s| {
        // Client to upstream on a second thread, upstream to client here.
        // A side that finished sending has its direction shut on the
        // other; a failure shuts both (which also ends the other copy).
        s.spawn(move || match pump(client, host) {
            Ok(()) => drop(host.shutdown(Shutdown::Write)),
            Err(_) => {
                let _ = host.shutdown(Shutdown::Both);
                let _ = client.shutdown(Shutdown::Write);
            }
        });
        match pump(host, client) {
            Ok(()) => drop(client.shutdown(Shutdown::Write)),
            Err(_) => {
                let _ = client.shutdown(Shutdown::Write);
                let _ = host.shutdown(Shutdown::Both);
            }
        }
    });
    // Both directions are done: dropping both ends closes them.
}

// ---------------------------------------------------------------------------
// UDP
// ---------------------------------------------------------------------------

/// A UDP flow's upstream: a connected socket, straight to the destination
/// or to a SOCKS5 relay (with the association's control connection, which
/// must stay open as long as the association is used).
struct UdpUpstream {
    socket: UdpSocket,
    socks: Option<(HostTcp, SocketAddr)>,
}

impl UdpUpstream {
    fn open(upstream: Upstream, dst: SocketAddr) -> io::Result<UdpUpstream> {
        let any = match dst {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let socket = UdpSocket::bind((any, 0))?;
        let socks = match upstream {
            Upstream::Direct => {
                socket.connect(dst)?;
                None
            }
            Upstream::Socks5(server) => {
                // Tell the server where our datagrams come from (port only:
                // the address it sees may differ).
                let from = SocketAddr::new(any, socket.local_addr()?.port());
                let (control, bound) = socks5_request(server, SOCKS_UDP_ASSOCIATE, from)?;
                let mut relay = bound.ok_or_else(|| io::Error::other("SOCKS5: no relay"))?;
                if relay.ip().is_unspecified() {
                    // "Same address as the server".
                    relay.set_ip(server.ip());
                }
                socket.connect(relay)?;
                Some((control, dst))
            }
        };
        Ok(UdpUpstream { socket, socks })
    }

    fn send(&self, payload: &[u8]) -> io::Result<()> {
        match &self.socks {
            None => self.socket.send(payload),
            Some((_, dst)) => {
                // Reserved, fragment 0, destination, payload.
                let mut datagram = vec![0, 0, 0];
                put_socks_addr(&mut datagram, *dst);
                datagram.extend_from_slice(payload);
                self.socket.send(&datagram)
            }
        }
        .map(drop)
    }

    /// The next reply's payload, as a range of `buf`; `None` for a datagram
    /// to ignore (a SOCKS5 fragment or a bad header).
    fn recv(&self, buf: &mut [u8]) -> io::Result<Option<std::ops::Range<usize>>> {
        let n = self.socket.recv(buf)?;
        if self.socks.is_none() {
            return Ok(Some(0..n));
        }
        let mut header = &buf[..n];
        let mut fixed = [0u8; 4];
        if header.read_exact(&mut fixed).is_err() || fixed[2] != 0 {
            return Ok(None);
        }
        match read_socks_addr(&mut header, fixed[3]) {
            Ok(_) => Ok(Some(n - header.len()..n)),
            Err(_) => Ok(None),
        }
    }
}

/// Forwards one UDP flow until it expires (idle) on the netstack.
fn proxy_udp(flow: UdpFlow, upstream: Upstream) {
    let Ok(host) = UdpUpstream::open(upstream, flow.original_dst()) else {
        // Nowhere to send: the datagrams are dropped, as a router would.
        return;
    };
    if host.socket.set_read_timeout(Some(UDP_POLL)).is_err() {
        return;
    }
    let ended = AtomicBool::new(false);
    std::thread::scope(|s| {
        // Replies to the flow's source, leaving from the original
        // destination.
        s.spawn(|| {
            let mut buf = vec![0u8; 65536];
            while !ended.load(Ordering::Relaxed) {
                // A timeout, an ICMP error from the destination or a
                // datagram to skip gives no payload, and a reply the flow
                // has no room for is dropped: go on, until the flow ends.
                if let Ok(Some(payload)) = host.recv(&mut buf)
                    && let Err(e) = flow.send(&buf[payload], Some(UDP_POLL))
                    && e.kind() == io::ErrorKind::UnexpectedEof
                {
                    break;
                }
            }
        });
        let mut buf = vec![0u8; 65536];
        // Ends when the flow expires.
        while let Ok(n) = flow.recv(&mut buf, None) {
            let _ = host.send(&buf[..n]);
        }
        ended.store(true, Ordering::Relaxed);
    });
}

// ---------------------------------------------------------------------------

/// The `stats` line: the netstack's counters and its refusals by reason.
fn stats_line(s: &NetstackStats) -> String {
    format!(
        "stats {s} refused_half_open={} refused_connections={} refused_udp={} refused_by_app={} refused_loopback={}",
        s.refused_half_open,
        s.refused_connections,
        s.refused_udp,
        s.refused_by_app,
        s.refused_to(SpecialDestination::Loopback),
    )
}

fn run(args: Args) -> Result<(), String> {
    // Block the stop signals before any thread exists, so only the waiter
    // below takes them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals
        .thread_block()
        .map_err(|e| format!("blocking signals: {e}"))?;
    let link = Link::tun(&args.tun)
        .queues(args.queues)
        .offload(if args.offload {
            Offload::Auto
        } else {
            Offload::Off
        });
    let config = NetstackConfig::default()
        .decide_before_handshake(true)
        .device(fdlink_smoltcp::DeviceConfig::default().gso(args.offload));
    let netstack = Arc::new(Netstack::open(link, config).map_err(|e| e.to_string())?);
    let for_signal = Arc::clone(&netstack);
    std::thread::spawn(move || {
        if signals.wait().is_ok() {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", stats_line(&for_signal.stats()));
            let _ = out.flush();
            std::process::exit(0);
        }
    });
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "ready");
        let _ = out.flush();
    }
    let upstream = args.upstream;
    let udp = Arc::clone(&netstack);
    std::thread::spawn(move || {
        while let Ok(flow) = udp.accept_udp() {
            std::thread::spawn(move || proxy_udp(flow, upstream));
        }
    });
    loop {
        match netstack.accept_pending() {
            Ok(pending) => {
                std::thread::spawn(move || proxy_tcp(pending, upstream));
            }
            Err(e) => return Err(format!("the link closed: {e}")),
        }
    }
}

fn main() -> ExitCode {
    match parse_args().and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tunproxy: {e}");
            ExitCode::FAILURE
        }
    }
}
