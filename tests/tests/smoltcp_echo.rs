//! fdlink-smoltcp against the Linux TCP/IP stack, inside throwaway network
//! namespaces. Needs root and /dev/net/tun (SKIP otherwise, failure under
//! `CI=true`).
//!
//! An in-process smoltcp echo server (TCP and UDP echo, ICMP echo answered
//! by smoltcp itself) runs over an [`FdlinkDevice`] on a TUN, a TAP or an
//! AF_PACKET socket on a veth end; kernel clients in the namespace talk to
//! it and check every byte that comes back.
//!
//! Only 10.x and fd00:: addresses inside namespaces made here are used, and
//! every loop is bounded in time.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use fdlink_core::{Endpoint, MacAddr, Options};
use fdlink_smoltcp::{DeviceConfig, FdlinkDevice, poll};
use fdlink_sys::netdev::{if_hwaddr, if_index};
use fdlink_sys::packet::{ETH_P_ALL, PacketSocket};
use fdlink_sys::tun::{OffloadFlags, TunConfig};
use fdlink_tests::netns::{Netns, require_root};
use fdlink_tests::tun::open_in;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpListenEndpoint};

/// The echo port.
const PORT: u16 = 7;
/// Upper bound for one whole exchange.
const EXCHANGE_LIMIT: Duration = Duration::from_secs(30);
/// The echo server's own upper bound (it also stops on its flag).
const SERVER_LIMIT: Duration = Duration::from_secs(50);
/// The pattern repeats with this (prime) period, so that misplaced blocks
/// are noticed.
const PATTERN_PERIOD: usize = 1_000_003;
/// The smoltcp side's MAC address on Ethernet links.
const SMOLTCP_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x5e, 0x01];

// ---------------------------------------------------------------------------
// The in-process smoltcp echo server.
// ---------------------------------------------------------------------------

/// What the echo server serves.
#[derive(Debug, Clone, Copy)]
struct ServerConfig {
    /// Its IPv4 and IPv6 addresses (with prefix lengths).
    v4: (IpAddress, u8),
    v6: (IpAddress, u8),
    /// Its MAC address, on Ethernet links.
    mac: Option<[u8; 6]>,
    /// Listening TCP sockets kept ready: as many as concurrent connects.
    pool: usize,
    /// Each TCP socket's receive and send buffer.
    buffer: usize,
}

fn tcp_socket(buffer: usize) -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; buffer]),
        tcp::SocketBuffer::new(vec![0; buffer]),
    );
    s.set_nagle_enabled(false);
    s.set_ack_delay(None);
    s
}

fn udp_socket() -> udp::Socket<'static> {
    udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 64], vec![0; 256 << 10]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 64], vec![0; 256 << 10]),
    )
}

/// Runs a smoltcp TCP + UDP echo server on `device` until `stop` is set (or
/// [`SERVER_LIMIT`] passes). Returns the device, for its stats.
fn serve(
    mut device: FdlinkDevice,
    cfg: ServerConfig,
    stop: &AtomicBool,
    seen: &AtomicU64,
) -> FdlinkDevice {
    let hw = match cfg.mac {
        Some(mac) => HardwareAddress::Ethernet(EthernetAddress(mac)),
        None => HardwareAddress::Ip,
    };
    let mut iface = Interface::new(Config::new(hw), &mut device, smoltcp::time::Instant::now());
    iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(cfg.v4.0, cfg.v4.1)).unwrap();
        a.push(IpCidr::new(cfg.v6.0, cfg.v6.1)).unwrap();
    });
    let mut sockets = SocketSet::new(vec![]);
    let udp = sockets.add(udp_socket());
    sockets
        .get_mut::<udp::Socket<'_>>(udp)
        .bind(IpListenEndpoint::from(PORT))
        .unwrap();
    let mut tcp: Vec<SocketHandle> = Vec::new();
    let mut scratch = vec![0u8; 64 << 10];
    let deadline = Instant::now() + SERVER_LIMIT;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        // Keep `pool` listeners ready; forget finished connections.
        tcp.retain(|&h| {
            let done = sockets.get::<tcp::Socket<'_>>(h).state() == tcp::State::Closed;
            if done {
                sockets.remove(h);
            }
            !done
        });
        let listening = tcp
            .iter()
            .filter(|&&h| sockets.get::<tcp::Socket<'_>>(h).state() == tcp::State::Listen)
            .count();
        for _ in listening..cfg.pool {
            let mut s = tcp_socket(cfg.buffer);
            s.listen(PORT).unwrap();
            tcp.push(sockets.add(s));
        }
        poll(
            &mut iface,
            &mut device,
            &mut sockets,
            Duration::from_millis(10),
        )
        .expect("poll");
        let stats = device.endpoint().stats();
        seen.store(stats.frames_read + stats.kernel_drops, Ordering::Relaxed);
        let mut moved = false;
        for &h in &tcp {
            let s = sockets.get_mut::<tcp::Socket<'_>>(h);
            while s.can_recv() && s.can_send() {
                let room = (s.send_capacity() - s.send_queue()).min(scratch.len());
                let n = s.recv_slice(&mut scratch[..room]).unwrap_or(0);
                if n == 0 {
                    break;
                }
                s.send_slice(&scratch[..n]).unwrap();
                moved = true;
            }
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
            // Send what was queued now rather than after the next sleep.
            poll(&mut iface, &mut device, &mut sockets, Duration::ZERO).expect("poll");
        }
    }
    device
}

/// A running echo server thread; stopped and joined on drop.
struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<FdlinkDevice>>,
    /// The frames the endpoint read, and the kernel dropped before it could
    /// (`frames_read + kernel_drops`), after the last poll (one server).
    seen: Arc<AtomicU64>,
}

impl Server {
    fn start(devices: Vec<FdlinkDevice>, cfg: ServerConfig) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicU64::new(0));
        let threads = devices
            .into_iter()
            .map(|d| {
                let stop = Arc::clone(&stop);
                let seen = Arc::clone(&seen);
                thread::spawn(move || serve(d, cfg, &stop, &seen))
            })
            .collect();
        Server {
            stop,
            threads,
            seen,
        }
    }

    /// Frames the (single) server's link saw so far: read, or dropped by
    /// the kernel before they could be.
    fn frames_seen(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }

    /// Stops the server and returns the endpoint's stats line.
    fn stop(mut self) -> String {
        self.stop.store(true, Ordering::Relaxed);
        let mut line = String::new();
        for t in self.threads.drain(..) {
            let device = t.join().expect("echo server panicked");
            line = device.endpoint().stats().to_string();
        }
        line
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------
// Links.
// ---------------------------------------------------------------------------

/// Addresses of one test network.
#[derive(Debug, Clone, Copy)]
struct Net {
    kernel4: &'static str,
    smol4: &'static str,
    kernel6: &'static str,
    smol6: &'static str,
}

fn net(n: u8) -> Net {
    // Leaked strings: a handful per test process.
    let s = |v: String| -> &'static str { Box::leak(v.into_boxed_str()) };
    Net {
        kernel4: s(format!("10.77.{n}.1")),
        smol4: s(format!("10.77.{n}.2")),
        kernel6: s(format!("fd00:77:{n}::1")),
        smol6: s(format!("fd00:77:{n}::2")),
    }
}

impl Net {
    fn server(&self, mac: Option<[u8; 6]>, pool: usize, buffer: usize) -> ServerConfig {
        ServerConfig {
            v4: (IpAddress::Ipv4(self.smol4.parse().unwrap()), 24),
            v6: (IpAddress::Ipv6(self.smol6.parse().unwrap()), 64),
            mac,
            pool,
            buffer,
        }
    }

    fn configure_kernel(&self, ns: &Netns, dev: &str) {
        ns.addr(dev, &format!("{}/24", self.kernel4)).unwrap();
        ns.addr(dev, &format!("{}/64", self.kernel6)).unwrap();
        ns.link_up(dev).unwrap();
    }

    fn smol(&self, v6: bool) -> IpAddr {
        if v6 { self.smol6 } else { self.smol4 }.parse().unwrap()
    }
}

/// A TUN or TAP in a fresh namespace with the kernel side configured, and
/// its fdlink devices (one per queue).
fn tuntap(
    prefix: &str,
    net: &Net,
    tap: bool,
    offload: bool,
    queues: usize,
) -> (Netns, Vec<FdlinkDevice>) {
    let ns = Netns::new(prefix).expect("create netns");
    let dev = "smol0";
    let config = if tap {
        TunConfig::tap()
    } else {
        TunConfig::tun()
    }
    .name(dev)
    .vnet_hdr(offload)
    .multi_queue(queues > 1)
    .queues(queues);
    let offloads = if offload {
        OffloadFlags::CSUM | OffloadFlags::TSO4 | OffloadFlags::TSO6
    } else {
        OffloadFlags::empty()
    };
    let tun = open_in(&ns, config, offloads, "open TUN/TAP");
    if tap {
        // The kernel's own router solicitations and such are harmless; keep
        // the link quiet anyway.
        ns.sysctl(&format!("net.ipv6.conf.{dev}.accept_ra"), "0")
            .unwrap();
    }
    net.configure_kernel(&ns, dev);
    let mut options = Options::new()
        .fds(tun.into_fds())
        .mtu(1500)
        .ethernet(tap)
        .vnet_header_len(if offload { 10 } else { 0 });
    if tap {
        options = options.link_address(MacAddr(SMOLTCP_MAC));
    }
    let endpoint = Endpoint::new(options).expect("endpoint");
    let config = DeviceConfig::default().gso(offload);
    let devices = if queues > 1 {
        FdlinkDevice::per_queue(endpoint, config)
    } else {
        vec![FdlinkDevice::new(endpoint, config)]
    };
    (ns, devices)
}

// ---------------------------------------------------------------------------
// Kernel clients.
// ---------------------------------------------------------------------------

fn pattern() -> &'static [u8] {
    static PATTERN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PATTERN.get_or_init(|| {
        let mut x = 0x9e37_79b9u32;
        (0..PATTERN_PERIOD)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    })
}

/// The pattern from `offset` on, at most `len` bytes (up to the period's
/// end).
fn pattern_at(offset: u64, len: usize) -> &'static [u8] {
    let p = pattern();
    let start = (offset % PATTERN_PERIOD as u64) as usize;
    &p[start..(start + len).min(PATTERN_PERIOD)]
}

fn connect(ns: &Netns, to: SocketAddr) -> io::Result<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = ns.run(|| TcpStream::connect_timeout(&to, Duration::from_secs(5)))?;
        match r {
            Ok(s) => return Ok(s),
            // The server may not be listening quite yet.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Sends `total` pattern bytes (offset by `salt`) to the echo server over a
/// kernel TCP connection and checks that exactly those come back.
fn tcp_exchange(ns: &Netns, to: SocketAddr, total: u64, salt: u64) -> io::Result<()> {
    let stream = connect(ns, to)?;
    stream.set_read_timeout(Some(EXCHANGE_LIMIT))?;
    stream.set_write_timeout(Some(EXCHANGE_LIMIT))?;
    let mut writer = stream.try_clone()?;
    let sender = thread::spawn(move || -> io::Result<()> {
        let mut sent = 0u64;
        while sent < total {
            let chunk = pattern_at(salt + sent, (total - sent).min(256 << 10) as usize);
            writer.write_all(chunk)?;
            sent += chunk.len() as u64;
        }
        writer.shutdown(Shutdown::Write)
    });
    let mut reader = stream;
    let mut buf = vec![0u8; 256 << 10];
    let mut got = 0u64;
    let deadline = Instant::now() + EXCHANGE_LIMIT;
    let result = loop {
        if Instant::now() > deadline {
            break Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{got} of {total} bytes echoed in time"),
            ));
        }
        let n = match reader.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(io::Error::new(e.kind(), format!("after {got} bytes: {e}"))),
        };
        let mut at = 0;
        let mut bad = None;
        while at < n {
            let want = pattern_at(salt + got, n - at);
            let have = &buf[at..at + want.len()];
            if have != want {
                bad = have.iter().zip(want).position(|(a, b)| a != b);
                break;
            }
            at += want.len();
            got += want.len() as u64;
        }
        if let Some(i) = bad {
            break Err(io::Error::other(format!(
                "echoed byte {} differs",
                got + i as u64
            )));
        }
        if got > total {
            break Err(io::Error::other(format!(
                "{got} bytes echoed, sent {total}"
            )));
        }
    };
    let _ = reader.shutdown(Shutdown::Both);
    sender.join().expect("sender thread")?;
    result?;
    if got != total {
        return Err(io::Error::other(format!(
            "{got} bytes echoed, sent {total}"
        )));
    }
    Ok(())
}

/// Sends a few datagrams of different sizes and checks each echo.
fn udp_exchange(ns: &Netns, to: SocketAddr) -> io::Result<()> {
    let bind: SocketAddr = if to.is_ipv6() {
        "[::]:0".parse().unwrap()
    } else {
        "0.0.0.0:0".parse().unwrap()
    };
    let socket = ns.run(|| UdpSocket::bind(bind))??;
    socket.connect(to)?;
    socket.set_read_timeout(Some(Duration::from_millis(300)))?;
    let mut buf = vec![0u8; 2048];
    for (i, len) in [1usize, 100, 1000, 1400].into_iter().enumerate() {
        let msg = pattern_at(i as u64 * 7919, len);
        let deadline = Instant::now() + Duration::from_secs(5);
        // UDP may be lost: resend until the echo comes back.
        'retry: loop {
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no UDP echo of {len} bytes"),
                ));
            }
            socket.send(msg)?;
            loop {
                match socket.recv(&mut buf) {
                    Ok(n) if buf[..n] == *msg => break 'retry,
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        continue 'retry;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(())
}

fn ping(ns: &Netns, to: IpAddr) -> io::Result<String> {
    let to = to.to_string();
    let mut args = vec!["-c", "3", "-i", "0.2", "-W", "2", "-w", "10"];
    if to.contains(':') {
        args.insert(0, "-6");
    }
    args.push(&to);
    ns.exec("ping", &args)
}

// ---------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------

/// Bytes each way of the TUN bulk exchanges.
const BULK: u64 = 64 << 20;

fn tun_bulk(name: &str, n: u8, offload: bool, v6: bool) {
    if !require_root(name) {
        return;
    }
    let net = net(n);
    let (ns, devices) = tuntap("fdlsmol", &net, false, offload, 1);
    let server = Server::start(devices, net.server(None, 2, 4 << 20));
    let started = Instant::now();
    let result = tcp_exchange(&ns, SocketAddr::new(net.smol(v6), PORT), BULK, 0);
    let elapsed = started.elapsed();
    let stats = server.stop();
    eprintln!(
        "{name}: {} MiB each way in {elapsed:?}; {stats}",
        BULK >> 20
    );
    result.unwrap_or_else(|e| panic!("{name}: {e}; stats {stats}"));
}

#[test]
fn smoltcp_tun_tcp4_offload_on() {
    tun_bulk("smoltcp_tun_tcp4_offload_on", 1, true, false);
}

#[test]
fn smoltcp_tun_tcp6_offload_on() {
    tun_bulk("smoltcp_tun_tcp6_offload_on", 2, true, true);
}

#[test]
fn smoltcp_tun_tcp4_offload_off() {
    tun_bulk("smoltcp_tun_tcp4_offload_off", 3, false, false);
}

#[test]
fn smoltcp_tun_tcp6_offload_off() {
    tun_bulk("smoltcp_tun_tcp6_offload_off", 4, false, true);
}

#[test]
fn smoltcp_tun_ping_and_udp() {
    let name = "smoltcp_tun_ping_and_udp";
    if !require_root(name) {
        return;
    }
    let net = net(5);
    let (ns, devices) = tuntap("fdlsmol", &net, false, true, 1);
    let server = Server::start(devices, net.server(None, 1, 64 << 10));
    for v6 in [false, true] {
        let to = net.smol(v6);
        ping(&ns, to).unwrap_or_else(|e| panic!("ping {to}: {e}"));
        udp_exchange(&ns, SocketAddr::new(to, PORT))
            .unwrap_or_else(|e| panic!("UDP echo {to}: {e}"));
    }
    eprintln!("{name}: {}", server.stop());
}

#[test]
fn smoltcp_tun_sharded_two_queues() {
    let name = "smoltcp_tun_sharded_two_queues";
    if !require_root(name) {
        return;
    }
    const CONNECTIONS: u64 = 16;
    const EACH: u64 = 4 << 20;
    let net = net(6);
    let (ns, devices) = tuntap("fdlsmol", &net, false, true, 2);
    assert_eq!(devices.len(), 2, "one device per queue");
    let server = Server::start(devices, net.server(None, CONNECTIONS as usize, 1 << 20));
    let started = Instant::now();
    let results: Vec<io::Result<()>> = thread::scope(|s| {
        let clients: Vec<_> = (0..CONNECTIONS)
            .map(|i| {
                let ns = &ns;
                let to = SocketAddr::new(net.smol(i % 2 == 1), PORT);
                s.spawn(move || tcp_exchange(ns, to, EACH, i * 104_729))
            })
            .collect();
        clients
            .into_iter()
            .map(|c| c.join().expect("client thread"))
            .collect()
    });
    let elapsed = started.elapsed();
    let stats = server.stop();
    eprintln!(
        "{name}: {CONNECTIONS} x {} MiB each way in {elapsed:?}; {stats}",
        EACH >> 20
    );
    for (i, r) in results.into_iter().enumerate() {
        r.unwrap_or_else(|e| panic!("connection {i}: {e}; stats {stats}"));
    }
}

#[test]
fn smoltcp_tap_arp_ndp_then_tcp() {
    let name = "smoltcp_tap_arp_ndp_then_tcp";
    if !require_root(name) {
        return;
    }
    let net = net(7);
    let (ns, devices) = tuntap("fdlsmol", &net, true, false, 1);
    let server = Server::start(devices, net.server(Some(SMOLTCP_MAC), 2, 1 << 20));
    for v6 in [false, true] {
        let to = SocketAddr::new(net.smol(v6), PORT);
        tcp_exchange(&ns, to, 4 << 20, 17).unwrap_or_else(|e| panic!("TAP TCP {to}: {e}"));
        udp_exchange(&ns, to).unwrap_or_else(|e| panic!("TAP UDP {to}: {e}"));
    }
    // The kernel learned the smoltcp side's MAC by ARP and NDP.
    let neigh = ns.ip(&["neigh", "show", "dev", "smol0"]).unwrap();
    let mac = fdlink_tests::netns::format_mac(SMOLTCP_MAC);
    for ip in [net.smol4, net.smol6] {
        assert!(
            neigh
                .lines()
                .any(|l| l.starts_with(&format!("{ip} ")) && l.contains(&mac)),
            "no neighbour entry {ip} -> {mac}: {neigh}"
        );
    }
    eprintln!("{name}: {}", server.stop());
}

/// smoltcp over an AF_PACKET socket on a veth whose kernel end keeps its
/// default offloads: the kernel's frames arrive with partial checksums
/// (and, without a virtio header, as super-frames), which the endpoint
/// learns of from the kernel and completes; its own transmissions are not
/// read back, so every frame read is one the kernel peer sent.
fn af_packet_echo(name: &str, n: u8, offload: bool) {
    if !require_root(name) {
        return;
    }
    let net = net(n);
    let ns = Netns::new("fdlsmol").expect("create netns");
    // Links stay down until the socket exists, so it sees every frame the
    // kernel end ever sends.
    ns.ip(&[
        "link", "add", "kern0", "type", "veth", "peer", "name", "smol0",
    ])
    .unwrap();
    let (socket, mac) = ns
        .run(|| -> io::Result<(OwnedFd, [u8; 6])> {
            let index = if_index("smol0")?;
            let mac = if_hwaddr("smol0")?.ok_or_else(|| io::Error::other("veth has no MAC"))?;
            let socket = PacketSocket::open(index, ETH_P_ALL)?.into_fd();
            if offload {
                fdlink_sys::packet::set_vnet_hdr(socket.as_fd(), true)?;
            }
            Ok((socket, mac))
        })
        .expect("enter netns")
        .expect("AF_PACKET socket");
    let endpoint = Endpoint::new(
        Options::new()
            .fd(socket)
            .mtu(1500)
            .ethernet(true)
            .link_address(MacAddr(mac))
            .vnet_header_len(if offload { 10 } else { 0 }),
    )
    .expect("endpoint");
    ns.link_up("smol0").unwrap();
    net.configure_kernel(&ns, "kern0");
    let device = FdlinkDevice::new(endpoint, DeviceConfig::default().gso(offload));
    let server = Server::start(vec![device], net.server(Some(mac), 2, 4 << 20));
    for v6 in [false, true] {
        let to = net.smol(v6);
        ping(&ns, to).unwrap_or_else(|e| panic!("ping {to}: {e}"));
    }
    for v6 in [false, true] {
        let to = SocketAddr::new(net.smol(v6), PORT);
        let total = if v6 { 8 << 20 } else { BULK };
        tcp_exchange(&ns, to, total, 29).unwrap_or_else(|e| panic!("AF_PACKET TCP {to}: {e}"));
    }
    let neigh = ns.ip(&["neigh", "show", "dev", "kern0"]).unwrap();
    let mac_text = fdlink_tests::netns::format_mac(mac);
    assert!(
        neigh
            .lines()
            .any(|l| l.starts_with(&format!("{} ", net.smol4)) && l.contains(&mac_text)),
        "no ARP entry {} -> {mac_text}: {neigh}",
        net.smol4
    );
    // Every frame read is one the kernel end sent (its tx_packets counts
    // a super-frame once, as the socket reads it), once both are still;
    // a frame the socket's full queue dropped is counted as such.
    let sent_by_peer = || -> u64 {
        ns.exec("cat", &["/sys/class/net/kern0/statistics/tx_packets"])
            .expect("kern0 statistics")
            .trim()
            .parse()
            .expect("a number")
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let (sent, read) = loop {
        let before = sent_by_peer();
        thread::sleep(Duration::from_millis(100));
        let read = server.frames_seen();
        let sent = sent_by_peer();
        if (before == sent && read == sent) || Instant::now() > deadline {
            break (sent, read);
        }
    };
    let stats = server.stop();
    assert_eq!(
        read, sent,
        "frames read + kernel drops vs frames kern0 sent: {stats}"
    );
    assert!(!stats.contains("drop."), "nothing dropped: {stats}");
    eprintln!("{name}: {stats}");
}

#[test]
fn smoltcp_af_packet_veth_default_offloads_offload_off() {
    af_packet_echo(
        "smoltcp_af_packet_veth_default_offloads_offload_off",
        8,
        false,
    );
}

#[test]
fn smoltcp_af_packet_veth_default_offloads_offload_on() {
    af_packet_echo(
        "smoltcp_af_packet_veth_default_offloads_offload_on",
        9,
        true,
    );
}
