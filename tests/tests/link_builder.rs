//! Every kind of link opened in one call ([`Link`]) carries TCP through
//! smoltcp: a TUN with offloads on and off, a multi-queue TUN with one
//! stack per queue, a TAP (ARP first, the builder's made-up MAC), an
//! `AF_PACKET` socket on a veth (offloads on and off, the mmap ring), a
//! socketpair end and a packet object. Then what `Offload::On` does when the
//! kernel refuses part of the offloads (provoked with a seccomp filter), and
//! the builder's errors.
//!
//! Kernel peers live in throwaway namespaces; the devices are opened inside
//! them (`Netns::run`). Root-only tests print a SKIP line without root (and
//! fail under `CI=true`). Only 10.x and fd00:: addresses inside namespaces
//! made here are used, and every loop is bounded in time.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::thread;
use std::time::{Duration, Instant};

use fdlink_core::{
    DeviceOffloads, DispatchMode, DropReason, Link, MemoryPacketIo, Offload, OpenError,
    StatsSnapshot, memory_pair,
};
use fdlink_smoltcp::{DeviceConfig, FdlinkDevice, poll};
use fdlink_sys::fd::{SocketType, socketpair};
use fdlink_sys::netdev::if_hwaddr;
use fdlink_tests::echo::{self, Net, PORT, Server, pattern_at, ping, tcp_exchange};
use fdlink_tests::netns::{Netns, format_mac, kernel_version, require_root};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

/// Network `n` of this test binary.
fn net(n: u8) -> Net {
    echo::net(78, n)
}

/// Bytes each way of one TCP exchange.
const EXCHANGE: u64 = 8 << 20;

/// The device every test here opens.
const DEV: &str = "smol0";

/// What a TUN with every offload grants on this kernel: USO since 6.2.
fn all_tun_offloads() -> DeviceOffloads {
    let base = DeviceOffloads::CSUM | DeviceOffloads::TSO4 | DeviceOffloads::TSO6;
    match kernel_version() {
        Some(v) if v >= (6, 2) => base | DeviceOffloads::USO,
        _ => base,
    }
}

/// Opens `link` inside `ns` as one smoltcp device (default configuration).
fn open_in(ns: &Netns, link: Link) -> FdlinkDevice {
    ns.run(|| FdlinkDevice::open(link, DeviceConfig::default()))
        .expect("enter netns")
        .unwrap_or_else(|e| panic!("open the link: {e}"))
}

/// TCP echo over IPv4 and IPv6, `EXCHANGE` bytes each, checked byte for
/// byte.
fn tcp_both(ns: &Netns, net: &Net, what: &str, server: &Server) {
    for (v6, salt) in [(false, 11), (true, 13)] {
        let to = SocketAddr::new(net.smol(v6), PORT);
        tcp_exchange(ns, to, EXCHANGE, salt)
            .unwrap_or_else(|e| panic!("{what}: TCP {to}: {e}; {:?}", server.status()));
    }
}

/// No frame was dropped on either side of the endpoint.
fn assert_no_drops(what: &str, stats: &StatsSnapshot) {
    assert_eq!(stats.kernel_drops, 0, "{what}: kernel drops: {stats}");
    assert_no_endpoint_drops(what, stats);
}

/// The endpoint dropped no frame it read, and sent everything.
fn assert_no_endpoint_drops(what: &str, stats: &StatsSnapshot) {
    assert_eq!(stats.drops.total(), 0, "{what}: drops: {stats}");
    assert_eq!(
        stats.frames_read, stats.rx_packets,
        "{what}: every frame read was delivered: {stats}"
    );
}

// ---------------------------------------------------------------------------
// TUN
// ---------------------------------------------------------------------------

fn tun_one_queue(name: &str, n: u8, offload: Offload) {
    if !require_root(name) {
        return;
    }
    let net = net(n);
    let ns = Netns::new("fdllink").expect("create netns");
    let device = open_in(&ns, Link::tun(DEV).offload(offload));
    let endpoint = device.endpoint();
    assert_eq!(endpoint.mtu(), 1500, "the TUN's own MTU");
    assert!(!endpoint.is_ethernet());
    assert_eq!(endpoint.channel_count(), 1);
    match offload {
        Offload::Off => {
            assert_eq!(endpoint.vnet_header_len(), 0, "Off: no virtio header");
            assert_eq!(endpoint.device_offloads(), DeviceOffloads::NONE);
        }
        _ => {
            assert_eq!(endpoint.vnet_header_len(), 10, "virtio-net header");
            assert_eq!(
                endpoint.device_offloads(),
                all_tun_offloads(),
                "what TUNSETOFFLOAD granted"
            );
        }
    }
    net.configure_kernel(&ns, DEV);
    let server = Server::start(vec![device], net.server(None, 2, 4 << 20));
    tcp_both(&ns, &net, name, &server);
    let stats = server.stop_stats();
    eprintln!("{name}: {stats}");
    assert_no_drops(name, &stats);
    let average = stats.rx_bytes / stats.rx_packets.max(1);
    if offload == Offload::Off {
        // Without a virtio header the kernel segments: no frame beyond the
        // MTU can be delivered.
        assert!(average <= 1500, "{name}: {stats}");
    } else {
        // With TSO granted the kernel hands over super-packets: a stream's
        // frames are far larger than the MTU on average.
        assert!(
            average > 1500,
            "{name}: no super-packets from the kernel: {stats}"
        );
    }
}

#[test]
fn builder_tun_offload_auto_tcp() {
    tun_one_queue("builder_tun_offload_auto_tcp", 1, Offload::Auto);
}

#[test]
fn builder_tun_offload_off_tcp() {
    tun_one_queue("builder_tun_offload_off_tcp", 2, Offload::Off);
}

#[test]
fn builder_tun_two_queues_one_stack_each() {
    let name = "builder_tun_two_queues_one_stack_each";
    if !require_root(name) {
        return;
    }
    const CONNECTIONS: u64 = 8;
    const EACH: u64 = 2 << 20;
    let net = net(3);
    let ns = Netns::new("fdllink").expect("create netns");
    let link = Link::tun(DEV).queues(2);
    let devices = ns
        .run(|| FdlinkDevice::open_per_queue(link, DeviceConfig::default()))
        .expect("enter netns")
        .unwrap_or_else(|e| panic!("open the link: {e}"));
    assert_eq!(devices.len(), 2, "one device per queue");
    for (q, d) in devices.iter().enumerate() {
        assert_eq!(d.queue(), Some(q));
        assert_eq!(d.endpoint().channel_count(), 2);
        assert_eq!(d.endpoint().vnet_header_len(), 10);
    }
    net.configure_kernel(&ns, DEV);
    let server = Server::start(devices, net.server(None, CONNECTIONS as usize, 1 << 20));
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
    let stats = server.stop_stats();
    eprintln!("{name}: {stats}");
    for (i, r) in results.into_iter().enumerate() {
        r.unwrap_or_else(|e| panic!("connection {i}: {e}; stats {stats}"));
    }
    assert_no_drops(name, &stats);
}

// ---------------------------------------------------------------------------
// TAP
// ---------------------------------------------------------------------------

#[test]
fn builder_tap_made_up_mac_arp_then_tcp() {
    let name = "builder_tap_made_up_mac_arp_then_tcp";
    if !require_root(name) {
        return;
    }
    let net = net(4);
    let ns = Netns::new("fdllink").expect("create netns");
    let (device, tap_mac) = ns
        .run(|| {
            let device = FdlinkDevice::open(Link::tap(DEV), DeviceConfig::default())?;
            let tap_mac = if_hwaddr(DEV).map_err(|source| OpenError::Io {
                what: "the TAP's MAC".into(),
                source,
            })?;
            Ok::<_, OpenError>((device, tap_mac))
        })
        .expect("enter netns")
        .unwrap_or_else(|e| panic!("open the TAP: {e}"));
    let endpoint = device.endpoint();
    assert!(endpoint.is_ethernet());
    assert_eq!(endpoint.vnet_header_len(), 10);
    assert_eq!(endpoint.mtu(), 1500);
    let mac = endpoint.link_address().expect("a TAP endpoint has a MAC").0;
    assert_eq!(mac[0] & 0x01, 0, "unicast: {}", format_mac(mac));
    assert_eq!(
        mac[0] & 0x02,
        0x02,
        "locally administered: {}",
        format_mac(mac)
    );
    let tap_mac = tap_mac.expect("a TAP has a MAC");
    assert_ne!(mac, tap_mac, "the stack's MAC is not the TAP's own");
    // Keep the link quiet: no router solicitations to answer.
    ns.sysctl(&format!("net.ipv6.conf.{DEV}.accept_ra"), "0")
        .unwrap();
    net.configure_kernel(&ns, DEV);
    let server = Server::start(vec![device], net.server(Some(mac), 2, 4 << 20));
    // The kernel learns the stack's MAC by ARP (and NDP) first.
    for v6 in [false, true] {
        let to = net.smol(v6);
        ping(&ns, to).unwrap_or_else(|e| panic!("ping {to}: {e}"));
    }
    tcp_both(&ns, &net, name, &server);
    let neigh = ns.ip(&["neigh", "show", "dev", DEV]).unwrap();
    let mac_text = format_mac(mac);
    for ip in [net.smol4, net.smol6] {
        assert!(
            neigh
                .lines()
                .any(|l| l.starts_with(&format!("{ip} ")) && l.contains(&mac_text)),
            "no neighbour entry {ip} -> {mac_text}: {neigh}"
        );
    }
    let stats = server.stop_stats();
    eprintln!("{name}: {stats}");
    assert_eq!(stats.drops.get(DropReason::Truncated), 0, "{stats}");
    assert_eq!(stats.drops.get(DropReason::BadChecksum), 0, "{stats}");
}

// ---------------------------------------------------------------------------
// AF_PACKET on a veth
// ---------------------------------------------------------------------------

/// `AF_PACKET` on veth end `smol0`, the kernel's end `kern0` at its default
/// offloads (partial checksums, super-frames): ping, then TCP both ways;
/// every frame `kern0` sent was read, or counted as dropped by the kernel.
///
/// Only the mmap ring loses frames here: each of its slots is sized for a
/// 64 KiB super-frame and holds one frame of any size, so the ~128 slots of
/// its 8 MiB budget fill with a stream's ACKs and super-frames between two
/// polls, where the socket queue (charged by each frame's real size) does
/// not. TCP recovers; the drops are counted, and the count is checked.
fn af_packet(name: &str, n: u8, offload: Offload, mode: DispatchMode) {
    if !require_root(name) {
        return;
    }
    let net = net(n);
    let ns = Netns::new("fdllink").expect("create netns");
    // Both ends stay down until the socket exists, so it sees every frame
    // the kernel end ever sends.
    ns.ip(&["link", "add", "kern0", "type", "veth", "peer", "name", DEV])
        .unwrap();
    let (device, veth_mac) = ns
        .run(|| {
            let device = FdlinkDevice::open(
                Link::af_packet(DEV).offload(offload).mode(mode),
                DeviceConfig::default(),
            )?;
            let mac = if_hwaddr(DEV).map_err(|source| OpenError::Io {
                what: "the veth's MAC".into(),
                source,
            })?;
            Ok::<_, OpenError>((device, mac))
        })
        .expect("enter netns")
        .unwrap_or_else(|e| panic!("open AF_PACKET: {e}"));
    let endpoint = device.endpoint();
    let mac = endpoint
        .link_address()
        .expect("an AF_PACKET endpoint has a MAC");
    assert_eq!(Some(mac.0), veth_mac, "the interface's own MAC");
    assert!(endpoint.is_ethernet());
    assert_eq!(endpoint.mtu(), 1500);
    let expected_vnet = if offload == Offload::Off { 0 } else { 10 };
    assert_eq!(endpoint.vnet_header_len(), expected_vnet);
    ns.link_up(DEV).unwrap();
    net.configure_kernel(&ns, "kern0");
    let server = Server::start(vec![device], net.server(Some(mac.0), 2, 4 << 20));
    for v6 in [false, true] {
        let to = net.smol(v6);
        ping(&ns, to).unwrap_or_else(|e| panic!("ping {to}: {e}"));
    }
    tcp_both(&ns, &net, name, &server);
    // Every frame read is one the kernel end sent (a super-frame counts
    // once, as the socket reads it), once both are still.
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
    let stats = server.stop_stats();
    eprintln!("{name}: {stats}");
    assert_eq!(
        read, sent,
        "frames read + kernel drops vs frames kern0 sent: {stats}"
    );
    if mode == DispatchMode::Mmap {
        assert_no_endpoint_drops(name, &stats);
    } else {
        assert_no_drops(name, &stats);
    }
}

#[test]
fn builder_af_packet_veth_offload_auto() {
    af_packet(
        "builder_af_packet_veth_offload_auto",
        5,
        Offload::Auto,
        DispatchMode::Recvmmsg,
    );
}

#[test]
fn builder_af_packet_veth_offload_off() {
    af_packet(
        "builder_af_packet_veth_offload_off",
        6,
        Offload::Off,
        DispatchMode::Recvmmsg,
    );
}

#[test]
fn builder_af_packet_veth_mmap_offload_auto() {
    af_packet(
        "builder_af_packet_veth_mmap_offload_auto",
        7,
        Offload::Auto,
        DispatchMode::Mmap,
    );
}

#[test]
fn builder_af_packet_veth_mmap_offload_off() {
    af_packet(
        "builder_af_packet_veth_mmap_offload_off",
        9,
        Offload::Off,
        DispatchMode::Mmap,
    );
}

// ---------------------------------------------------------------------------
// Socketpair ends and packet objects: two smoltcp stacks
// ---------------------------------------------------------------------------

/// Bytes the client stack sends the server stack.
const STACK_TO_STACK: u64 = 4 << 20;

fn stack(device: &mut FdlinkDevice, last: u8) -> Interface {
    let mut iface = Interface::new(
        Config::new(HardwareAddress::Ip),
        device,
        smoltcp::time::Instant::now(),
    );
    iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(IpAddress::v4(10, 78, 100, last), 24))
            .expect("one address fits")
    });
    iface
}

fn stack_socket() -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 1 << 20]),
        tcp::SocketBuffer::new(vec![0; 1 << 20]),
    )
}

/// Two smoltcp stacks over `a` and `b`, polled in turn on this thread: the
/// one on `a` sends `STACK_TO_STACK` pattern bytes to the one on `b`, which
/// checks each. Then every frame one endpoint sent the other read, and
/// nothing was dropped.
fn two_stacks(what: &str, a: Link, b: Link) {
    let mut da = FdlinkDevice::open(a, DeviceConfig::default())
        .unwrap_or_else(|e| panic!("{what}: open a: {e}"));
    let mut db = FdlinkDevice::open(b, DeviceConfig::default())
        .unwrap_or_else(|e| panic!("{what}: open b: {e}"));
    let mut ia = stack(&mut da, 1);
    let mut ib = stack(&mut db, 2);
    let mut sa = SocketSet::new(vec![]);
    let mut sb = SocketSet::new(vec![]);
    let client = sa.add(stack_socket());
    let server = sb.add(stack_socket());
    sb.get_mut::<tcp::Socket<'_>>(server).listen(PORT).unwrap();
    sa.get_mut::<tcp::Socket<'_>>(client)
        .connect(ia.context(), (IpAddress::v4(10, 78, 100, 2), PORT), 49152)
        .unwrap();
    let (mut sent, mut got) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "{what}: {got} of {STACK_TO_STACK} bytes in time; a: {} b: {}",
            da.endpoint().stats(),
            db.endpoint().stats()
        );
        poll(&mut ia, &mut da, &mut sa, Duration::ZERO).expect("poll a");
        poll(&mut ib, &mut db, &mut sb, Duration::ZERO).expect("poll b");
        let c = sa.get_mut::<tcp::Socket<'_>>(client);
        if sent < STACK_TO_STACK && c.can_send() {
            sent += c
                .send(|buf| {
                    let n = buf.len().min((STACK_TO_STACK - sent) as usize);
                    let mut at = 0;
                    while at < n {
                        let p = pattern_at(sent + at as u64, n - at);
                        buf[at..at + p.len()].copy_from_slice(p);
                        at += p.len();
                    }
                    (n, n as u64)
                })
                .unwrap();
        }
        if sent == STACK_TO_STACK && c.may_send() {
            c.close();
        }
        let s = sb.get_mut::<tcp::Socket<'_>>(server);
        while s.can_recv() {
            let checked = s
                .recv(|buf| {
                    let mut at = 0;
                    while at < buf.len() {
                        let p = pattern_at(got + at as u64, buf.len() - at);
                        assert_eq!(
                            &buf[at..at + p.len()],
                            p,
                            "{what}: bytes from {} on differ",
                            got + at as u64
                        );
                        at += p.len();
                    }
                    (buf.len(), buf.len() as u64)
                })
                .unwrap();
            got += checked;
        }
        if !s.may_recv() && s.state() == tcp::State::CloseWait {
            s.close();
        }
        let done =
            |s: &tcp::Socket<'_>| matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait);
        if done(sa.get::<tcp::Socket<'_>>(client)) && done(sb.get::<tcp::Socket<'_>>(server)) {
            break;
        }
    }
    assert_eq!(got, STACK_TO_STACK, "{what}: bytes received");
    // Whatever is still queued on the links (the last ACK) is read.
    for _ in 0..10 {
        poll(&mut ia, &mut da, &mut sa, Duration::ZERO).expect("poll a");
        poll(&mut ib, &mut db, &mut sb, Duration::ZERO).expect("poll b");
    }
    let (a, b) = (da.endpoint().stats(), db.endpoint().stats());
    eprintln!("{what}: a {a}; b {b}");
    assert_eq!(a.tx_packets, b.frames_read, "{what}: a to b; a {a}; b {b}");
    assert_eq!(b.tx_packets, a.frames_read, "{what}: b to a; a {a}; b {b}");
    assert_no_drops(what, &a);
    assert_no_drops(what, &b);
}

#[test]
fn builder_socket_seqpacket_two_stacks() {
    let (a, b) = socketpair(SocketType::SeqPacket).expect("socketpair");
    for fd in [&a, &b] {
        // Room for a burst of a full batch.
        fdlink_sys::packet::set_send_buffer(fd.as_fd(), 4 << 20).unwrap();
        fdlink_sys::packet::set_recv_buffer(fd.as_fd(), 4 << 20).unwrap();
    }
    two_stacks(
        "builder_socket_seqpacket_two_stacks",
        Link::socket(a),
        Link::socket(b),
    );
}

#[test]
fn builder_socket_seqpacket_vnet_header_two_stacks() {
    let (a, b) = socketpair(SocketType::SeqPacket).expect("socketpair");
    for fd in [&a, &b] {
        fdlink_sys::packet::set_send_buffer(fd.as_fd(), 4 << 20).unwrap();
        fdlink_sys::packet::set_recv_buffer(fd.as_fd(), 4 << 20).unwrap();
    }
    // Both ends carry virtio-net headers: smoltcp's super-packets cross
    // whole.
    two_stacks(
        "builder_socket_seqpacket_vnet_header_two_stacks",
        Link::socket(a).vnet_header_len(10),
        Link::socket(b).vnet_header_len(10),
    );
}

#[test]
fn builder_packet_io_memory_pair_two_stacks() {
    let (a, b): (MemoryPacketIo, MemoryPacketIo) = memory_pair(4096);
    two_stacks(
        "builder_packet_io_memory_pair_two_stacks",
        Link::packet_io(a),
        Link::packet_io(b),
    );
}

// ---------------------------------------------------------------------------
// Offload::On
// ---------------------------------------------------------------------------

#[test]
fn builder_offload_on_granted_in_full() {
    let name = "builder_offload_on_granted_in_full";
    if !require_root(name) {
        return;
    }
    let ns = Netns::new("fdllink").expect("create netns");
    ns.ip(&[
        "link", "add", "kern0", "type", "veth", "peer", "name", "veth1",
    ])
    .unwrap();
    let (tun, packet) = ns
        .run(|| {
            (
                Link::tun(DEV).offload(Offload::On).open(),
                Link::af_packet("veth1").offload(Offload::On).open(),
            )
        })
        .expect("enter netns");
    match kernel_version() {
        Some(v) if v >= (6, 2) => {
            let tun = tun.unwrap_or_else(|e| panic!("TUN with Offload::On: {e}"));
            assert_eq!(tun.vnet_header_len(), 10);
            assert_eq!(tun.device_offloads(), DeviceOffloads::ALL);
        }
        v => {
            // No USO before 6.2: On must say what was refused.
            match tun {
                Err(OpenError::OffloadRefused { refused, .. }) => {
                    assert!(refused.contains("USO"), "{refused}")
                }
                other => panic!("kernel {v:?}: expected a refusal, got {other:?}"),
            }
        }
    }
    let packet = packet.unwrap_or_else(|e| panic!("AF_PACKET with Offload::On: {e}"));
    assert_eq!(packet.vnet_header_len(), 10);
}

/// A seccomp filter on the calling thread only: `ioctl(_, TUNSETOFFLOAD,
/// flags)` with a UDP segmentation flag fails with `EINVAL`, as on a kernel
/// without USO (before 6.2). Everything else is allowed.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn refuse_uso_on_this_thread() -> io::Result<()> {
    use fdlink_sys::tun::OffloadFlags;
    use libc::{
        BPF_ABS, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_RET, BPF_W, SECCOMP_RET_ALLOW,
        SECCOMP_RET_ERRNO, sock_filter, sock_fprog,
    };
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH: u32 = 0xc000_003e;
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH: u32 = 0xc000_00b7;
    // struct seccomp_data: nr at 0, arch at 4, args[i] at 16 + 8 i (the
    // low half first: both architectures are little-endian).
    const NR: u32 = 0;
    const ARCH: u32 = 4;
    const ARG1_LOW: u32 = 24;
    const ARG2_LOW: u32 = 32;
    let uso = (OffloadFlags::USO4 | OffloadFlags::USO6).bits();
    let ld = |k: u32| sock_filter {
        code: (BPF_LD | BPF_W | BPF_ABS) as u16,
        jt: 0,
        jf: 0,
        k,
    };
    // Jump to the last instruction (allow) when the test fails.
    let jump = |op: u32, k: u32, to_allow: u8| sock_filter {
        code: (BPF_JMP | op | BPF_K) as u16,
        jt: 0,
        jf: to_allow,
        k,
    };
    let ret = |k: u32| sock_filter {
        code: (BPF_RET | BPF_K) as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let filter = [
        ld(ARCH),
        jump(BPF_JEQ, AUDIT_ARCH, 7),
        ld(NR),
        jump(BPF_JEQ, libc::SYS_ioctl as u32, 5),
        ld(ARG1_LOW),
        jump(BPF_JEQ, libc::TUNSETOFFLOAD as u32, 3),
        ld(ARG2_LOW),
        jump(BPF_JSET, uso, 1),
        ret(SECCOMP_RET_ERRNO | libc::EINVAL as u32),
        ret(SECCOMP_RET_ALLOW),
    ];
    let prog = sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integers.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `prog` points at `filter`, both alive for the call; the
    // kernel copies the program. Without SECCOMP_FILTER_FLAG_TSYNC (prctl
    // takes no flags) only the calling thread is filtered.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const sock_fprog,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[test]
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn builder_offload_on_refused_in_part() {
    let name = "builder_offload_on_refused_in_part";
    if !require_root(name) {
        return;
    }
    let net = net(8);
    let ns = Netns::new("fdllink").expect("create netns");
    let (on, auto) = ns
        .run(|| {
            // This thread only, and it ends with the closure.
            refuse_uso_on_this_thread().expect("seccomp filter");
            let on = Link::tun(DEV).offload(Offload::On).open();
            let auto = FdlinkDevice::open(
                Link::tun(DEV).offload(Offload::Auto),
                DeviceConfig::default(),
            );
            (on, auto)
        })
        .expect("enter netns");
    match on {
        Err(OpenError::OffloadRefused { device, refused }) => {
            assert_eq!(device, DEV);
            assert!(
                refused.contains("USO4") && refused.contains("USO6"),
                "what was refused: {refused}"
            );
            assert!(
                !refused.contains("TSO") && !refused.contains("CSUM"),
                "only USO was refused: {refused}"
            );
        }
        other => panic!("Offload::On with USO refused: {other:?}"),
    }
    // Auto takes what is left and moves TCP as usual.
    let device = auto.unwrap_or_else(|e| panic!("Offload::Auto with USO refused: {e}"));
    let endpoint = device.endpoint();
    assert_eq!(endpoint.vnet_header_len(), 10);
    assert_eq!(
        endpoint.device_offloads(),
        DeviceOffloads::CSUM | DeviceOffloads::TSO4 | DeviceOffloads::TSO6,
        "USO left out"
    );
    net.configure_kernel(&ns, DEV);
    let server = Server::start(vec![device], net.server(None, 2, 4 << 20));
    tcp_both(&ns, &net, name, &server);
    let stats = server.stop_stats();
    eprintln!("{name}: {stats}");
    assert_no_drops(name, &stats);
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

#[test]
fn builder_tun_name_too_long_is_an_io_error() {
    let long = "a-name-much-too-long-for-a-tun";
    match Link::tun(long).open() {
        Err(OpenError::Io { what, source }) => {
            assert!(what.contains(long), "names the device: {what}");
            if std::fs::File::open("/dev/net/tun").is_ok() {
                // The name is checked before the kernel is asked.
                assert_eq!(source.kind(), io::ErrorKind::InvalidInput, "{source}");
            }
        }
        other => panic!("expected OpenError::Io, got {other:?}"),
    }
}

#[test]
fn builder_af_packet_no_such_interface_names_it() {
    let err = Link::af_packet("no-such-if")
        .open()
        .expect_err("no such interface");
    assert!(matches!(err, OpenError::Io { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("\"no-such-if\""),
        "names the interface: {text}"
    );
}
