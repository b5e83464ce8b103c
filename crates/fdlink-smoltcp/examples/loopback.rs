//! Two smoltcp stacks joined by a socketpair through two fdlink endpoints
//! move a TCP stream; the receiver checks every byte.
//!
//! ```text
//! loopback [--bytes N] [--socket seqpacket|dgram] [--gso on|off]
//!          [--mode per-packet|recvmmsg] [--mtu N]
//! ```
//!
//! No privileges needed. With `--gso on` both ends carry virtio-net
//! headers, so smoltcp's 64 KiB segments cross the socketpair whole.

use std::os::fd::{AsFd, OwnedFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use fdlink_core::{DispatchMode, Endpoint, Options};
use fdlink_smoltcp::{DeviceConfig, FdlinkDevice, poll};
use fdlink_sys::fd::{SocketType, socketpair};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

const PORT: u16 = 5000;
const SOCKET_BUFFER: usize = 4 << 20;
const TIME_LIMIT: Duration = Duration::from_secs(120);

struct Args {
    bytes: u64,
    socket: SocketType,
    gso: bool,
    mode: DispatchMode,
    mtu: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        bytes: 256 << 20,
        socket: SocketType::SeqPacket,
        gso: true,
        mode: DispatchMode::Recvmmsg,
        mtu: 1500,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--bytes" => args.bytes = value()?.parse().map_err(|e| format!("--bytes: {e}"))?,
            "--socket" => {
                args.socket = match value()?.as_str() {
                    "seqpacket" => SocketType::SeqPacket,
                    "dgram" => SocketType::Datagram,
                    other => return Err(format!("--socket: {other:?} is not seqpacket|dgram")),
                }
            }
            "--gso" => {
                args.gso = match value()?.as_str() {
                    "on" => true,
                    "off" => false,
                    other => return Err(format!("--gso: {other:?} is not on|off")),
                }
            }
            "--mode" => args.mode = value()?.parse()?,
            "--mtu" => args.mtu = value()?.parse().map_err(|e| format!("--mtu: {e}"))?,
            "-h" | "--help" => {
                return Err("usage: loopback [--bytes N] [--socket seqpacket|dgram] [--gso on|off] [--mode per-packet|recvmmsg] [--mtu N]".into());
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !(576..=65535).contains(&args.mtu) {
        return Err(format!("--mtu {} is outside 576..=65535", args.mtu));
    }
    Ok(args)
}

fn pattern(offset: u64) -> u8 {
    (offset % 251) as u8
}

fn device(fd: OwnedFd, args: &Args) -> Result<FdlinkDevice, String> {
    // Room for a burst of 64 KiB super-packets in flight.
    fdlink_sys::packet::set_send_buffer(fd.as_fd(), SOCKET_BUFFER)
        .and_then(|_| fdlink_sys::packet::set_recv_buffer(fd.as_fd(), SOCKET_BUFFER))
        .map_err(|e| format!("socket buffers: {e}"))?;
    let options = Options::new()
        .fd(fd)
        .mtu(args.mtu)
        .dispatch(args.mode)
        .vnet_header_len(if args.gso { 10 } else { 0 });
    let endpoint = Endpoint::new(options).map_err(|e| format!("endpoint: {e}"))?;
    Ok(FdlinkDevice::new(
        endpoint,
        DeviceConfig::default().gso(args.gso),
    ))
}

fn stack(device: &mut FdlinkDevice, addr: [u8; 4]) -> Interface {
    let mut iface = Interface::new(
        Config::new(HardwareAddress::Ip),
        device,
        smoltcp::time::Instant::now(),
    );
    iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(
            IpAddress::v4(addr[0], addr[1], addr[2], addr[3]),
            24,
        ))
        .expect("one address fits")
    });
    iface
}

fn tcp_socket() -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
        tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
    )
}

/// Client: connects and writes `total` pattern bytes, then closes.
fn send_side(mut device: FdlinkDevice, total: u64, deadline: Instant) -> Result<(), String> {
    let mut iface = stack(&mut device, [10, 0, 0, 1]);
    let mut sockets = SocketSet::new(vec![]);
    let handle = sockets.add(tcp_socket());
    sockets
        .get_mut::<tcp::Socket<'_>>(handle)
        .connect(iface.context(), (IpAddress::v4(10, 0, 0, 2), PORT), 49152)
        .map_err(|e| format!("connect: {e}"))?;
    let mut sent = 0u64;
    loop {
        if Instant::now() > deadline {
            return Err(format!("sender timed out after {sent} bytes"));
        }
        let polled = poll(
            &mut iface,
            &mut device,
            &mut sockets,
            Duration::from_millis(5),
        );
        match polled {
            Ok(_) => {}
            // The receiver checked every byte and closed its end before our
            // FIN's last ACK came back: done.
            Err(_) if sent == total => return Ok(()),
            Err(e) => return Err(format!("the link closed after {sent} bytes: {e}")),
        }
        let socket = sockets.get_mut::<tcp::Socket<'_>>(handle);
        if sent < total && socket.can_send() {
            sent += socket
                .send(|buf| {
                    let n = buf.len().min((total - sent) as usize);
                    for (i, b) in buf[..n].iter_mut().enumerate() {
                        *b = pattern(sent + i as u64);
                    }
                    (n, n as u64)
                })
                .map_err(|e| format!("send: {e}"))?;
            if sent == total {
                socket.close();
            }
        }
        if sent == total && !socket.is_open() {
            return Ok(());
        }
        if socket.state() == tcp::State::Closed && sent < total {
            return Err(format!("connection closed after {sent} bytes"));
        }
    }
}

/// Server: accepts, checks every byte; returns when the peer closes.
fn receive_side(
    mut device: FdlinkDevice,
    total: u64,
    deadline: Instant,
) -> Result<(u64, Duration), String> {
    let mut iface = stack(&mut device, [10, 0, 0, 2]);
    let mut sockets = SocketSet::new(vec![]);
    let handle = sockets.add(tcp_socket());
    sockets
        .get_mut::<tcp::Socket<'_>>(handle)
        .listen(PORT)
        .map_err(|e| format!("listen: {e}"))?;
    let mut received = 0u64;
    let mut started = None;
    let mut corrupt = None;
    loop {
        if Instant::now() > deadline {
            return Err(format!("receiver timed out after {received} bytes"));
        }
        poll(
            &mut iface,
            &mut device,
            &mut sockets,
            Duration::from_millis(5),
        )
        .map_err(|e| format!("poll: {e}"))?;
        let socket = sockets.get_mut::<tcp::Socket<'_>>(handle);
        while socket.can_recv() {
            started.get_or_insert_with(Instant::now);
            received += socket
                .recv(|buf| {
                    if corrupt.is_none() {
                        corrupt = buf
                            .iter()
                            .enumerate()
                            .find(|(i, b)| **b != pattern(received + *i as u64))
                            .map(|(i, _)| received + i as u64);
                    }
                    (buf.len(), buf.len() as u64)
                })
                .map_err(|e| format!("recv: {e}"))?;
        }
        if let Some(at) = corrupt {
            return Err(format!("byte {at} differs from what was sent"));
        }
        if received >= total && !socket.may_recv() {
            socket.close();
            let elapsed = started.map_or(Duration::ZERO, |s| s.elapsed());
            // Let the FIN exchange finish so the sender sees the close (it
            // may close the link first: everything arrived anyway).
            for _ in 0..20 {
                let polled = poll(
                    &mut iface,
                    &mut device,
                    &mut sockets,
                    Duration::from_millis(1),
                );
                if polled.is_err() {
                    break;
                }
            }
            return Ok((received, elapsed));
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let (a, b) = socketpair(args.socket).map_err(|e| format!("socketpair: {e}"))?;
    let client = device(a, &args)?;
    let server = device(b, &args)?;
    let deadline = Instant::now() + TIME_LIMIT;
    let total = args.bytes;
    let (sent, received) = std::thread::scope(|s| {
        let receiver = s.spawn(move || receive_side(server, total, deadline));
        let sender = s.spawn(move || send_side(client, total, deadline));
        (
            sender
                .join()
                .unwrap_or_else(|_| Err("sender panicked".into())),
            receiver
                .join()
                .unwrap_or_else(|_| Err("receiver panicked".into())),
        )
    });
    sent?;
    let (bytes, elapsed) = received?;
    if bytes != total {
        return Err(format!("received {bytes} bytes, expected {total}"));
    }
    let secs = elapsed.as_secs_f64().max(1e-9);
    println!(
        "transferred {bytes} bytes in {secs:.3} s: {:.2} Gbit/s",
        bytes as f64 * 8.0 / secs / 1e9
    );
    println!("integrity ok");
    Ok(())
}

fn main() -> ExitCode {
    match parse_args().and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loopback: {e}");
            ExitCode::FAILURE
        }
    }
}
