//! The MTU changes while the endpoint runs: [`Endpoint::set_mtu`] on a
//! socketpair (no privileges), and a live TUN whose MTU `ip link` raises and
//! lowers under traffic, followed by the endpoint
//! ([`Link::follow_device`]) and by the smoltcp interface that
//! [`fdlink_smoltcp::poll`] drives.
//!
//! Root-only tests print a SKIP line without root (and fail under
//! `CI=true`). Only 10.x and fd00:: addresses inside namespaces made here
//! are used, and every loop is bounded in time.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use fdlink_core::{DropReason, Endpoint, Link, Offload, Options, OptionsError, OutPacket};
use fdlink_gso::wire::tcp::flags as tcp_flags;
use fdlink_smoltcp::{DeviceConfig, FdlinkDevice};
use fdlink_sys::fd::{SocketType, socketpair};
use fdlink_tests::echo::{self, Net, PORT, Server, connect, exchange_on, ping};
use fdlink_tests::netns::{Netns, require_root};
use fdlink_tests::packet::{Csum, IpSpec, TcpSpec, parse_tcp, tagged_ipv4, tcp_option, tcp_packet};
use nix::sys::socket::{getsockopt, sockopt};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

// ---------------------------------------------------------------------------
// Endpoint::set_mtu on a socketpair
// ---------------------------------------------------------------------------

/// One packet from the peer's end, if one is queued.
fn peer_read(fd: &OwnedFd) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 70_000];
    match nix::sys::socket::recv(
        std::os::fd::AsRawFd::as_raw_fd(fd),
        &mut buf,
        nix::sys::socket::MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(nix::errno::Errno::EAGAIN) => None,
        Err(e) => panic!("peer recv: {e}"),
    }
}

fn peer_write(fd: &OwnedFd, packet: &[u8]) {
    let n = nix::unistd::write(fd.as_fd(), packet).expect("peer write");
    assert_eq!(n, packet.len(), "one whole packet");
}

/// Receives what is queued now (the peer's writes are queued before).
fn receive(endpoint: &Endpoint, batch: &mut fdlink_core::Batch) -> Vec<Vec<u8>> {
    endpoint.recv_batch(batch).expect("the link is open");
    batch.iter().map(|p| p.network().to_vec()).collect()
}

#[test]
fn set_mtu_on_a_socketpair() {
    let (ours, peer) = socketpair(SocketType::SeqPacket).expect("socketpair");
    let endpoint = Link::socket(ours).open().expect("endpoint");
    assert_eq!(endpoint.mtu(), 1500);
    // A batch made at the start: it must follow the MTU on its own.
    let mut batch = endpoint.new_batch();
    let big = tagged_ipv4(3000, 0xb1);
    let truncated = |e: &Endpoint| e.stats().drops.get(DropReason::Truncated);
    let oversized = |e: &Endpoint| e.stats().drops.get(DropReason::Oversized);

    // Out of range: typed errors, nothing changes.
    for bad in [0, 65_536, u32::MAX] {
        match endpoint.set_mtu(bad) {
            Err(OptionsError::InvalidMtu(m)) => assert_eq!(m, bad),
            other => panic!("set_mtu({bad}): {other:?}"),
        }
        assert_eq!(endpoint.mtu(), 1500);
    }

    // At 1500 a 3000-byte packet goes neither way.
    let out = endpoint.send(&[OutPacket::ip(&big)]);
    assert_eq!((out.sent, out.dropped), (0, 1), "send above the MTU");
    assert_eq!(oversized(&endpoint), 1);
    assert!(peer_read(&peer).is_none(), "nothing reached the peer");
    peer_write(&peer, &big);
    assert!(receive(&endpoint, &mut batch).is_empty());
    assert_eq!(truncated(&endpoint), 1, "received above the MTU");

    // Raised: it goes both ways, whole, through the same batch.
    endpoint.set_mtu(4000).expect("set_mtu(4000)");
    assert_eq!(endpoint.mtu(), 4000);
    assert!(endpoint.max_frame_size() >= 4000);
    let out = endpoint.send(&[OutPacket::ip(&big)]);
    assert_eq!((out.sent, out.dropped), (1, 0), "send after the raise");
    assert!(
        peer_read(&peer).as_deref() == Some(&big[..]),
        "the peer reads it whole"
    );
    peer_write(&peer, &big);
    let got = receive(&endpoint, &mut batch);
    assert!(got == [big.clone()], "one frame of {} bytes", big.len());
    assert_eq!(truncated(&endpoint), 1, "nothing more truncated");

    // Lowered again: sends are bounded by the new MTU at once.
    endpoint.set_mtu(1500).expect("set_mtu(1500)");
    let out = endpoint.send(&[OutPacket::ip(&big)]);
    assert_eq!((out.sent, out.dropped), (0, 1), "send after the lowering");
    assert_eq!(oversized(&endpoint), 2);
    let small = tagged_ipv4(1500, 0x5a);
    let out = endpoint.send(&[OutPacket::ip(&small)]);
    assert_eq!((out.sent, out.dropped), (1, 0), "a packet of the MTU");
    assert!(
        peer_read(&peer).as_deref() == Some(&small[..]),
        "the peer reads it whole"
    );

    let stats = endpoint.stats();
    assert_eq!(
        stats.frames_read,
        stats.rx_packets + stats.drops.inbound(),
        "{stats}"
    );
    assert_eq!(stats.rx_packets, 1, "{stats}");
    assert_eq!(stats.tx_packets, 2, "{stats}");
}

#[test]
fn set_mtu_with_fixed_receive_buffers() {
    let (ours, peer) = socketpair(SocketType::SeqPacket).expect("socketpair");
    let endpoint = Endpoint::new(Options::new().fd(ours).mtu(1500).receive_buffer_size(2000))
        .expect("endpoint");
    assert_eq!(endpoint.max_frame_size(), 2000);
    match endpoint.set_mtu(4000) {
        Err(OptionsError::ReceiveBufferTooSmall { size, needed }) => {
            assert_eq!((size, needed), (2000, 4000));
        }
        other => panic!("set_mtu(4000) with 2000-byte buffers: {other:?}"),
    }
    assert_eq!(endpoint.mtu(), 1500, "unchanged after the refusal");
    // What the buffers hold is allowed, and they stay as they were.
    endpoint.set_mtu(2000).expect("set_mtu(2000)");
    assert_eq!(endpoint.mtu(), 2000);
    assert_eq!(endpoint.max_frame_size(), 2000);
    let packet = tagged_ipv4(2000, 0x77);
    peer_write(&peer, &packet);
    let mut batch = endpoint.new_batch();
    let got = receive(&endpoint, &mut batch);
    assert!(got == [packet], "one frame of 2000 bytes");
}

/// A frame the peer queued while the MTU was high arrives as it is after a
/// lowering (see `Endpoint::set_mtu`): it was read whole.
#[test]
fn set_mtu_lowered_frames_queued_before_arrive() {
    let (ours, peer) = socketpair(SocketType::SeqPacket).expect("socketpair");
    let endpoint = Link::socket(ours).mtu(4000).open().expect("endpoint");
    let mut batch = endpoint.new_batch();
    let big = tagged_ipv4(3000, 0xc3);
    peer_write(&peer, &big);
    endpoint.set_mtu(1500).expect("set_mtu(1500)");
    let got = receive(&endpoint, &mut batch);
    let stats = endpoint.stats();
    let lens: Vec<usize> = got.iter().map(Vec::len).collect();
    assert_eq!(lens, [big.len()], "{stats}");
    assert!(got[0] == big, "the frame arrives unchanged");
}

// ---------------------------------------------------------------------------
// smoltcp over an IP link follows set_mtu: the MSS of its SYN-ACKs
// ---------------------------------------------------------------------------

/// The MSS option of the SYN-ACK the stack behind `device` answers a SYN
/// from port `sport` with (the peer plays the client on its socketpair
/// end).
fn syn_ack_mss(
    peer: &OwnedFd,
    iface: &mut Interface,
    device: &mut FdlinkDevice,
    sockets: &mut SocketSet<'_>,
    sport: u16,
) -> u16 {
    let ip = IpSpec::new(
        "10.79.200.1".parse().unwrap(),
        "10.79.200.2".parse().unwrap(),
    );
    // MSS 65495, as a loopback would offer: the stack's own limit shows.
    let options = [2, 4, 0xff, 0xd7];
    let syn = TcpSpec {
        sport,
        dport: PORT,
        seq: 1000,
        ack: 0,
        flags: tcp_flags::SYN,
        window: 65535,
        options: &options,
    };
    peer_write(peer, &tcp_packet(&ip, &syn, &[], Csum::Full));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "no SYN-ACK to port {sport}");
        fdlink_smoltcp::poll(iface, device, sockets, Duration::from_millis(10)).expect("poll");
        let Some(packet) = peer_read(peer) else {
            continue;
        };
        let seg = parse_tcp(&packet).expect("a TCP segment");
        if seg.dport == sport && seg.has(tcp_flags::SYN | tcp_flags::ACK) {
            let mss = tcp_option(seg.options(&packet), 2).expect("an MSS option");
            return u16::from_be_bytes([mss[0], mss[1]]);
        }
    }
}

#[test]
fn smoltcp_over_ip_follows_set_mtu() {
    let (ours, peer) = socketpair(SocketType::SeqPacket).expect("socketpair");
    let mut device =
        FdlinkDevice::open(Link::socket(ours), DeviceConfig::default()).expect("device");
    let mut iface = Interface::new(
        Config::new(HardwareAddress::Ip),
        &mut device,
        smoltcp::time::Instant::now(),
    );
    iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(IpAddress::v4(10, 79, 200, 2), 24))
            .expect("one address fits")
    });
    let mut sockets = SocketSet::new(vec![]);
    for _ in 0..3 {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 64 << 10]),
            tcp::SocketBuffer::new(vec![0; 64 << 10]),
        );
        s.listen(PORT).unwrap();
        sockets.add(s);
    }
    let mss = |iface: &mut Interface,
               device: &mut FdlinkDevice,
               sockets: &mut SocketSet<'_>,
               sport| { syn_ack_mss(&peer, iface, device, sockets, sport) };
    assert_eq!(mss(&mut iface, &mut device, &mut sockets, 40_001), 1460);
    device.endpoint().set_mtu(9000).expect("set_mtu(9000)");
    // The interface is made again for the new MTU (an IP one: no MAC).
    assert_eq!(mss(&mut iface, &mut device, &mut sockets, 40_002), 8960);
    assert_eq!(
        iface.ipv4_addr(),
        Some("10.79.200.2".parse().unwrap()),
        "its address kept"
    );
    device.endpoint().set_mtu(1280).expect("set_mtu(1280)");
    assert_eq!(mss(&mut iface, &mut device, &mut sockets, 40_003), 1240);
}

// ---------------------------------------------------------------------------
// A TUN's MTU changed with `ip link` under traffic
// ---------------------------------------------------------------------------

const DEV: &str = "mtu0";

/// Waits until `cond` holds, at most `limit`.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// The MSS the kernel's side of `stream` sends with (`TCP_MAXSEG`): the
/// smaller of its own and the one the smoltcp side advertised.
fn mss(stream: &TcpStream) -> u32 {
    getsockopt(stream, sockopt::TcpMaxSeg).expect("TCP_MAXSEG")
}

/// `ping -M do -s 8000` (no fragmentation), three tries within 10 s.
fn ping_8000(ns: &Netns, to: &str) -> io::Result<String> {
    let mut args = vec![
        "-M", "do", "-s", "8000", "-c", "3", "-i", "0.2", "-W", "2", "-w", "10",
    ];
    if to.contains(':') {
        args.insert(0, "-6");
    }
    args.push(to);
    ns.exec("ping", &args)
}

/// Runs an exchange of `total` bytes on a new connection to `to` on a
/// thread; `echoed` follows its progress.
fn exchange_thread<'s>(
    s: &'s thread::Scope<'s, '_>,
    ns: &'s Netns,
    to: SocketAddr,
    total: u64,
    echoed: &'s AtomicU64,
) -> thread::ScopedJoinHandle<'s, io::Result<()>> {
    let stream = connect(ns, to).expect("connect");
    s.spawn(move || exchange_on(stream, total, 7, Some(echoed)))
}

/// `ip link set DEV mtu <mtu>` once `echoed` passed `at` bytes of `total`;
/// returns how far the exchange was when the command returned.
fn change_mtu_midway(ns: &Netns, echoed: &AtomicU64, at: u64, total: u64, mtu: u32) -> u64 {
    assert!(
        wait_for(Duration::from_secs(20), || echoed.load(Ordering::Relaxed)
            >= at),
        "the exchange reached {} of {at} bytes",
        echoed.load(Ordering::Relaxed)
    );
    ns.ip(&["link", "set", DEV, "mtu", &mtu.to_string()])
        .expect("ip link set mtu");
    let progress = echoed.load(Ordering::Relaxed);
    assert!(
        progress < total,
        "the exchange ended before the MTU changed: make it longer"
    );
    progress
}

#[test]
fn tun_follows_its_mtu_under_traffic() {
    let name = "tun_follows_its_mtu_under_traffic";
    if !require_root(name) {
        return;
    }
    const TOTAL: u64 = 64 << 20;
    let net: Net = echo::net(79, 1);
    let ns = Netns::new("fdlmtu").expect("create netns");
    let link = Link::tun(DEV).offload(Offload::Off).follow_device(true);
    let device = ns
        .run(|| FdlinkDevice::open(link, DeviceConfig::default()))
        .expect("enter netns")
        .unwrap_or_else(|e| panic!("open the TUN: {e}"));
    assert_eq!(device.endpoint().mtu(), 1500);
    assert_eq!(device.endpoint().vnet_header_len(), 0);
    net.configure_kernel(&ns, DEV);
    let server = Server::start(vec![device], net.server(None, 4, 4 << 20));
    let status = || server.status();
    let v4 = SocketAddr::new(net.smol(false), PORT);

    // At 1500: small pings work; an 8000-byte one that may not be
    // fragmented is refused by the kernel before it leaves.
    for v6 in [false, true] {
        ping(&ns, net.smol(v6)).unwrap_or_else(|e| panic!("ping at 1500: {e}"));
    }
    let refused = ping_8000(&ns, net.smol4).expect_err("ping -M do -s 8000 at MTU 1500");
    assert!(
        refused.to_string().contains("message too long, mtu=1500"),
        "{refused}"
    );
    let first = connect(&ns, v4).expect("connect at 1500");
    assert!(mss(&first) <= 1460, "MSS at 1500: {}", mss(&first));
    drop(first);

    // Raised under a running exchange: it completes byte-exact.
    let echoed = AtomicU64::new(0);
    let at_raise = thread::scope(|s| {
        let running = exchange_thread(s, &ns, v4, TOTAL, &echoed);
        let at = change_mtu_midway(&ns, &echoed, 4 << 20, TOTAL, 9000);
        running
            .join()
            .expect("exchange thread")
            .unwrap_or_else(|e| panic!("exchange across the raise: {e}; {:?}", status()));
        at
    });
    assert!(
        wait_for(Duration::from_secs(5), || status().mtu == 9000),
        "the endpoint follows the raise: {:?}",
        status()
    );
    // Large pings are answered now, whole.
    for to in [net.smol4, net.smol6] {
        let out = ping_8000(&ns, to).unwrap_or_else(|e| panic!("ping -s 8000 {to} at 9000: {e}"));
        assert!(out.contains("8008 bytes from"), "{out}");
    }
    // New connections see the new MSS, and carry it.
    for v6 in [false, true] {
        let to = SocketAddr::new(net.smol(v6), PORT);
        let stream = connect(&ns, to).expect("connect at 9000");
        let mss = mss(&stream);
        eprintln!("{to}: MSS {mss} at MTU 9000");
        assert!((1461..=8960).contains(&mss), "{to}: MSS {mss} at MTU 9000");
        exchange_on(stream, 8 << 20, 3, None).unwrap_or_else(|e| panic!("{to} at 9000: {e}"));
    }
    let raised = status().stats;
    assert_eq!(
        raised.drops.total(),
        0,
        "nothing dropped across the raise: {raised}"
    );
    assert_eq!(raised.frames_read, raised.rx_packets, "{raised}");

    // Lowered under a running exchange: it completes byte-exact.
    echoed.store(0, Ordering::Relaxed);
    let at_lower = thread::scope(|s| {
        let running = exchange_thread(s, &ns, v4, TOTAL, &echoed);
        let at = change_mtu_midway(&ns, &echoed, 4 << 20, TOTAL, 1500);
        running
            .join()
            .expect("exchange thread")
            .unwrap_or_else(|e| panic!("exchange across the lowering: {e}; {:?}", status()));
        at
    });
    assert!(
        wait_for(Duration::from_secs(5), || status().mtu == 1500),
        "the endpoint follows the lowering: {:?}",
        status()
    );
    let stream = connect(&ns, v4).expect("connect at 1500 again");
    assert!(mss(&stream) <= 1460, "MSS at 1500 again: {}", mss(&stream));
    drop(stream);
    let stats = server.stop_stats();
    eprintln!("{name}: raised after {at_raise} bytes, lowered after {at_lower} bytes; {stats}");
    // Read whole, each frame: those the TUN queued at 9000 too.
    assert_eq!(stats.drops.get(DropReason::Truncated), 0, "{stats}");
    assert_eq!(stats.drops.inbound(), 0, "{stats}");
    assert_eq!(stats.frames_read, stats.rx_packets, "{stats}");
    // What smoltcp sent between the lowering and the next poll, which
    // made its interface again, was sized for 9000 and refused: TCP sent
    // it again. Nothing else was dropped.
    assert_eq!(
        stats.drops.outbound(),
        stats.drops.get(DropReason::Oversized),
        "{stats}"
    );
}
