//! A smoltcp TCP and UDP echo server on a real device: a TUN, a TAP or an
//! AF_PACKET socket on an existing interface.
//!
//! ```text
//! echo (--tun NAME | --tap NAME | --af-packet IFACE) --addr A.B.C.D/LEN
//!      [--addr6 X::Y/LEN] [--mac MAC] [--port N] [--queues N]
//!      [--offload on|off]
//! ```
//!
//! It serves TCP echo (several connections at once) and UDP echo on
//! `--port` (default 7) over IPv4 and IPv6, answers ping, prints `ready`
//! once serving, and on SIGINT or SIGTERM prints a `stats ...` line and
//! exits 0. A missing TUN/TAP is created; the kernel side (addresses, link
//! up) is the user's to configure, e.g.:
//!
//! ```text
//! echo --tun echo0 --addr 10.9.0.2/24 --addr6 fd00:9::2/64 &
//! ip addr add 10.9.0.1/24 dev echo0; ip addr add fd00:9::1/64 dev echo0
//! ip link set echo0 up; ping 10.9.0.2
//! ```

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fdlink_core::{Closed, Link, MacAddr, Offload};
use fdlink_smoltcp::{DeviceConfig, FdlinkDevice, poll};
use nix::sys::signal::{SigSet, Signal};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, IpListenEndpoint};

const USAGE: &str = "usage: echo (--tun NAME | --tap NAME | --af-packet IFACE) --addr A.B.C.D/LEN \
                     [--addr6 X::Y/LEN] [--mac MAC] [--port N] [--queues N] [--offload on|off]";
/// Listening TCP sockets kept ready per stack: this many connections may
/// arrive at once.
const LISTEN_POOL: usize = 8;
/// Each TCP socket's receive and send buffer.
const TCP_BUFFER: usize = 1 << 20;
/// The longest a stack sleeps before it looks at the stop flag again.
const MAX_SLEEP: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkKind {
    Tun,
    Tap,
    AfPacket,
}

#[derive(Debug)]
struct Args {
    link: LinkKind,
    name: String,
    addr: IpCidr,
    addr6: Option<IpCidr>,
    mac: Option<MacAddr>,
    port: u16,
    queues: usize,
    offload: bool,
}

fn parse_cidr(flag: &str, s: &str, v6: bool) -> Result<IpCidr, String> {
    let cidr: IpCidr = s
        .parse()
        .map_err(|_| format!("{flag}: {s:?} is not an address/prefix-length"))?;
    match (cidr, v6) {
        (IpCidr::Ipv4(_), false) | (IpCidr::Ipv6(_), true) => Ok(cidr),
        _ => Err(format!(
            "{flag}: {s:?} is not an IPv{} address",
            if v6 { 6 } else { 4 }
        )),
    }
}

fn parse_args() -> Result<Args, String> {
    let mut link = None;
    let mut addr = None;
    let mut args = Args {
        link: LinkKind::Tun,
        name: String::new(),
        addr: IpCidr::new(smoltcp::wire::IpAddress::v4(0, 0, 0, 0), 0),
        addr6: None,
        mac: None,
        port: 7,
        queues: 1,
        offload: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--tun" | "--tap" | "--af-packet" => {
                if link.is_some() {
                    return Err("give one of --tun, --tap, --af-packet".into());
                }
                link = Some(match flag.as_str() {
                    "--tun" => LinkKind::Tun,
                    "--tap" => LinkKind::Tap,
                    _ => LinkKind::AfPacket,
                });
                args.name = value()?;
            }
            "--addr" => addr = Some(parse_cidr("--addr", &value()?, false)?),
            "--addr6" => args.addr6 = Some(parse_cidr("--addr6", &value()?, true)?),
            "--mac" => {
                let v = value()?;
                args.mac = Some(
                    v.parse()
                        .map_err(|_| format!("--mac: {v:?} is not a MAC"))?,
                );
            }
            "--port" => args.port = value()?.parse().map_err(|e| format!("--port: {e}"))?,
            "--queues" => {
                args.queues = value()?.parse().map_err(|e| format!("--queues: {e}"))?;
                if args.queues == 0 {
                    return Err("--queues must be at least 1".into());
                }
            }
            "--offload" => {
                args.offload = match value()?.as_str() {
                    "on" => true,
                    "off" => false,
                    other => return Err(format!("--offload: {other:?} is not on|off")),
                }
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    args.link = link.ok_or(format!(
        "one of --tun, --tap, --af-packet is needed\n{USAGE}"
    ))?;
    args.addr = addr.ok_or(format!("--addr is needed\n{USAGE}"))?;
    Ok(args)
}

/// The link the arguments name, in one call: the device opened or
/// attached, its offloads set (`--offload on`: every one the kernel grants,
/// the rest in software; `off`: none), MTU and MAC read from it.
fn link(args: &Args) -> Link {
    let link = match args.link {
        LinkKind::Tun => Link::tun(&args.name),
        LinkKind::Tap => Link::tap(&args.name),
        LinkKind::AfPacket => Link::af_packet(&args.name),
    }
    .queues(args.queues)
    .offload(if args.offload {
        Offload::Auto
    } else {
        Offload::Off
    });
    match args.mac {
        Some(mac) => link.mac(mac),
        None => link,
    }
}

fn tcp_socket() -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
        tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
    );
    s.set_nagle_enabled(false);
    s
}

/// One stack: serves until `stop` is set, then returns its device.
fn serve(
    mut device: FdlinkDevice,
    mac: Option<MacAddr>,
    addrs: Vec<IpCidr>,
    port: u16,
    stop: &AtomicBool,
) -> Result<FdlinkDevice, String> {
    let hw = match mac {
        Some(m) => HardwareAddress::Ethernet(EthernetAddress(m.0)),
        None => HardwareAddress::Ip,
    };
    let mut iface = Interface::new(Config::new(hw), &mut device, smoltcp::time::Instant::now());
    iface.update_ip_addrs(|a| {
        for cidr in addrs {
            let _ = a.push(cidr);
        }
    });
    let mut sockets = SocketSet::new(vec![]);
    let udp = sockets.add(udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 64], vec![0; 256 << 10]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 64], vec![0; 256 << 10]),
    ));
    sockets
        .get_mut::<udp::Socket<'_>>(udp)
        .bind(IpListenEndpoint::from(port))
        .map_err(|e| format!("UDP bind: {e}"))?;
    let mut tcp: Vec<SocketHandle> = Vec::new();
    let mut scratch = vec![0u8; 64 << 10];
    while !stop.load(Ordering::Relaxed) {
        // Keep LISTEN_POOL listeners ready; forget finished connections.
        tcp.retain(|&h| {
            let closed = sockets.get::<tcp::Socket<'_>>(h).state() == tcp::State::Closed;
            if closed {
                sockets.remove(h);
            }
            !closed
        });
        let listening = tcp
            .iter()
            .filter(|&&h| sockets.get::<tcp::Socket<'_>>(h).state() == tcp::State::Listen)
            .count();
        for _ in listening..LISTEN_POOL {
            let mut s = tcp_socket();
            s.listen(port).map_err(|e| format!("TCP listen: {e}"))?;
            tcp.push(sockets.add(s));
        }
        poll(&mut iface, &mut device, &mut sockets, MAX_SLEEP).map_err(link_closed)?;
        let mut moved = false;
        for &h in &tcp {
            let s = sockets.get_mut::<tcp::Socket<'_>>(h);
            while s.can_recv() && s.can_send() {
                let room = (s.send_capacity() - s.send_queue()).min(scratch.len());
                let n = s.recv_slice(&mut scratch[..room]).unwrap_or(0);
                if n == 0 {
                    break;
                }
                let _ = s.send_slice(&scratch[..n]);
                moved = true;
            }
            // The client finished sending and has all its echo: close too.
            if !s.may_recv() && s.may_send() && s.send_queue() == 0 {
                s.close();
            }
        }
        let s = sockets.get_mut::<udp::Socket<'_>>(udp);
        while s.can_recv() && s.can_send() {
            let Ok((n, meta)) = s.recv_slice(&mut scratch) else {
                break;
            };
            let _ = s.send_slice(&scratch[..n], meta.endpoint);
            moved = true;
        }
        if moved {
            poll(&mut iface, &mut device, &mut sockets, Duration::ZERO).map_err(link_closed)?;
        }
    }
    Ok(device)
}

/// The one line `echo` ends with when its link dies (device deleted, peer
/// closed, the link failing).
fn link_closed(Closed(reason): Closed) -> String {
    format!("the link closed: {reason}")
}

fn run(args: Args) -> Result<(), String> {
    // Block the stop signals before any thread exists, so every thread
    // inherits the mask and only the sigwait below takes them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals
        .thread_block()
        .map_err(|e| format!("blocking signals: {e}"))?;

    let config = DeviceConfig::default().gso(args.offload);
    let devices = if args.queues > 1 {
        FdlinkDevice::open_per_queue(link(&args), config)
    } else {
        FdlinkDevice::open(link(&args), config).map(|d| vec![d])
    }
    .map_err(|e| e.to_string())?;
    let mac = devices[0].endpoint().link_address();
    let mut addrs = vec![args.addr];
    addrs.extend(args.addr6);
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = devices
        .into_iter()
        .enumerate()
        .map(|(q, device)| {
            let stop = Arc::clone(&stop);
            let addrs = addrs.clone();
            let port = args.port;
            std::thread::Builder::new()
                .name(format!("echo-q{q}"))
                .spawn(move || {
                    let result = serve(device, mac, addrs, port, &stop);
                    // A failed stack stops the others too.
                    stop.store(true, Ordering::Relaxed);
                    result
                })
                .map_err(|e| format!("spawn: {e}"))
        })
        .collect::<Result<_, _>>()?;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "ready");
        let _ = out.flush();
    }
    // Wait for SIGINT/SIGTERM, or a stack that gave up.
    let waiter = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let signal = signals.wait();
            stop.store(true, Ordering::Relaxed);
            signal
        })
    };
    let mut first_error = None;
    let mut stats = None;
    for w in workers {
        match w.join() {
            Ok(Ok(device)) => stats = Some(device.endpoint().stats()),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(_) => {
                first_error.get_or_insert("a stack panicked".into());
            }
        }
    }
    if let Some(e) = first_error {
        // The signal waiter is still blocked; exiting ends it.
        return Err(e);
    }
    let _ = waiter.join();
    if let Some(stats) = stats {
        println!("stats {stats}");
    }
    Ok(())
}

fn main() -> ExitCode {
    match parse_args().and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo: {e}");
            ExitCode::FAILURE
        }
    }
}
