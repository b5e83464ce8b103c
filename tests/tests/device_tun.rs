//! fdlink-core endpoints over real TUN/TAP devices, inside throwaway network
//! namespaces, against the Linux stack: UDP both ways, IPv6, virtio headers
//! with TSO super-packets, multi-queue flow spreading, TAP ARP, and
//! descriptor release. Needs root (SKIP otherwise, failure on CI).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use etherparse::PacketBuilder;
use fdlink_core::{
    DispatchMode, DropReason, Endpoint, EtherType, MacAddr, Options, OptionsError, OutPacket,
};
use fdlink_gso::virtio::VirtioNetHdr;
use fdlink_gso::wire::tcp::flags;
use fdlink_sys::netdev::if_hwaddr;
use fdlink_sys::tun::{OffloadFlags, TunConfig, set_offload};
use fdlink_tests::netns::{Netns, open_fd_count, require_root};
use fdlink_tests::packet::{parse_tcp, udp4};
use fdlink_tests::serial::serial;
use fdlink_tests::tcp_peer::{Handled, TcpPeer, TcpPeerConfig};

const WAIT: Duration = Duration::from_secs(5);

/// A namespace with IPv6 off (no router solicitations or MLD reports) and
/// TUN/TAP device `name` (queues, virtio header) at `cidr`, up.
fn device(name: &str, tap: bool, queues: usize, vnet: bool, cidr: &str) -> (Netns, Vec<OwnedFd>) {
    let ns = Netns::new("fdldev").unwrap();
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1").unwrap();
    ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
        .unwrap();
    let cfg = if tap {
        TunConfig::tap()
    } else {
        TunConfig::tun()
    };
    let cfg = cfg
        .name(name)
        .multi_queue(queues > 1)
        .queues(queues)
        .vnet_hdr(vnet);
    let dev = ns.run(move || cfg.open()).unwrap().expect("open device");
    ns.addr(name, cidr).unwrap();
    ns.link_up(name).unwrap();
    (ns, dev.into_fds())
}

/// (source port, destination port, payload) of a UDP/IPv4 packet to `dst`.
fn udp4_to(pkt: &[u8], dst: [u8; 4]) -> Option<(u16, u16, &[u8])> {
    let u = udp4(pkt).filter(|u| u.dst == dst)?;
    Some((u.sport, u.dport, u.payload()?))
}

/// Pulls from every queue, handing each (queue, vnet header, network
/// packet) to `f`, which tells whether it counts; returns once `want`
/// counted packets arrived plus a short settling time (so extra packets
/// would be seen too), or after `WAIT`.
fn pull_until(e: &Endpoint, want: usize, mut f: impl FnMut(usize, &[u8], &[u8]) -> bool) {
    let mut batch = e.new_batch();
    let mut deadline = Instant::now() + WAIT;
    let mut counted = 0;
    let mut settling = false;
    while Instant::now() < deadline {
        e.wait_readable(Some(Duration::from_millis(20))).unwrap();
        e.recv_batch(&mut batch).unwrap();
        for p in batch.iter() {
            counted += usize::from(f(p.queue(), p.vnet_header(), p.network()));
        }
        if counted >= want && !settling {
            settling = true;
            deadline = deadline.min(Instant::now() + Duration::from_millis(200));
        }
    }
}

#[test]
fn tun_endpoint_receives_every_kernel_datagram() {
    if !require_root("tun_endpoint_receives_every_kernel_datagram") {
        return;
    }
    let _g = serial();
    let (ns, fds) = device("fdlt0", false, 1, false, "10.41.0.1/24");
    let e = Endpoint::new(Options::new().fds(fds)).unwrap();
    assert_eq!(e.max_header_length(), 0);
    let sock = ns.run(|| UdpSocket::bind("10.41.0.1:0")).unwrap().unwrap();
    const N: usize = 100;
    let sent: Vec<Vec<u8>> = (0..N).map(|i| vec![i as u8; 10 + i * 7]).collect();
    for p in &sent {
        sock.send_to(p, "10.41.0.2:4100").unwrap();
    }
    let mut got = Vec::new();
    pull_until(&e, N, |_, _, pkt| match udp4_to(pkt, [10, 41, 0, 2]) {
        Some((_, 4100, payload)) => {
            got.push(payload.to_vec());
            true
        }
        _ => false,
    });
    assert_eq!(got.len(), N, "exactly N datagrams");
    assert_eq!(got, sent, "in order, byte for byte");
    let s = e.stats();
    assert_eq!(s.drops.inbound(), 0, "{s}");
}

#[test]
fn tun_endpoint_writes_reach_kernel_udp_sockets_v4_and_v6() {
    if !require_root("tun_endpoint_writes_reach_kernel_udp_sockets_v4_and_v6") {
        return;
    }
    let _g = serial();
    let ns = Netns::new("fdldev").unwrap();
    let dev = ns
        .run(|| TunConfig::tun().name("fdlt1").open())
        .unwrap()
        .unwrap();
    ns.addr("fdlt1", "10.42.0.1/24").unwrap();
    ns.addr("fdlt1", "fd00:42::1/64").unwrap();
    ns.link_up("fdlt1").unwrap();
    let e = Endpoint::new(Options::new().fds(dev.into_fds())).unwrap();

    let v4 = ns
        .run(|| UdpSocket::bind("10.42.0.1:4200"))
        .unwrap()
        .unwrap();
    let v6 = ns
        .run(|| UdpSocket::bind("[fd00:42::1]:4206"))
        .unwrap()
        .unwrap();
    for s in [&v4, &v6] {
        s.set_read_timeout(Some(WAIT)).unwrap();
    }
    let mut p4 = Vec::new();
    PacketBuilder::ipv4([10, 42, 0, 2], [10, 42, 0, 1], 64)
        .udp(5555, 4200)
        .write(&mut p4, b"from the endpoint over IPv4")
        .unwrap();
    let mut p6 = Vec::new();
    let a6 = |last: u8| {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[0xfd, 0, 0, 0x42]);
        a[15] = last;
        a
    };
    PacketBuilder::ipv6(a6(2), a6(1), 64)
        .udp(5556, 4206)
        .write(&mut p6, b"from the endpoint over IPv6")
        .unwrap();
    let out = e.send(&[OutPacket::ip(&p4), OutPacket::ip(&p6)]);
    assert_eq!(out.sent, 2, "{out:?}");

    let mut buf = [0u8; 256];
    let (n, from) = v4.recv_from(&mut buf).expect("IPv4 datagram arrives");
    assert_eq!(&buf[..n], b"from the endpoint over IPv4");
    assert_eq!(from.to_string(), "10.42.0.2:5555");
    let (n, from) = v6.recv_from(&mut buf).expect("IPv6 datagram arrives");
    assert_eq!(&buf[..n], b"from the endpoint over IPv6");
    assert_eq!(from.to_string(), "[fd00:42::2]:5556");
    assert_eq!(e.stats().tx_packets, 2);
}

#[test]
fn batched_and_ring_modes_are_refused_on_a_tun() {
    if !require_root("batched_and_ring_modes_are_refused_on_a_tun") {
        return;
    }
    let _g = serial();
    for mode in [DispatchMode::Recvmmsg, DispatchMode::Mmap] {
        let ns = Netns::new("fdldev").unwrap();
        let dev = ns
            .run(|| TunConfig::tun().name("fdlt2").open())
            .unwrap()
            .unwrap();
        let before = open_fd_count().unwrap();
        let err = Endpoint::new(Options::new().fds(dev.into_fds()).dispatch(mode)).unwrap_err();
        match &err {
            OptionsError::DispatchUnsupported {
                channel: 0,
                mode: m,
                kind,
            } => {
                assert_eq!(*m, mode);
                assert!(kind.contains("TUN"), "{kind}");
            }
            other => panic!("{mode}: expected DispatchUnsupported, got {other:?}"),
        }
        assert!(err.to_string().contains(&mode.to_string()), "{err}");
        assert_eq!(
            open_fd_count().unwrap(),
            before - 1,
            "the refused descriptor is closed"
        );
    }
}

#[test]
fn tso_on_a_vnet_tun_delivers_super_packets_with_their_headers() {
    if !require_root("tso_on_a_vnet_tun_delivers_super_packets_with_their_headers") {
        return;
    }
    let _g = serial();
    let (ns, fds) = device("fdlt3", false, 1, true, "10.43.0.1/24");
    use std::os::fd::AsFd;
    let accepted = set_offload(
        fds[0].as_fd(),
        OffloadFlags::CSUM | OffloadFlags::TSO4 | OffloadFlags::TSO6,
    )
    .unwrap();
    assert!(accepted.contains(OffloadFlags::TSO4), "{accepted:?}");
    let e = Endpoint::new(Options::new().fds(fds).vnet_header_len(10)).unwrap();
    assert_eq!(e.max_header_length(), 10, "the virtio header is counted");

    const TOTAL: usize = 4 << 20;
    let mut peer = TcpPeer::new(TcpPeerConfig {
        isn: 0x1000_0000,
        ..TcpPeerConfig::new([10, 43, 0, 2].into(), [10, 43, 0, 1].into(), 80)
    });
    let mut batch = e.new_batch();
    let mut next = 0usize; // stream bytes received in order
    let mut big = 0usize;
    std::thread::scope(|s| {
        let sender = s.spawn(|| {
            ns.run(|| {
                let mut c = TcpStream::connect_timeout(&"10.43.0.2:80".parse().unwrap(), WAIT)?;
                c.set_write_timeout(Some(WAIT))?;
                let data: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
                c.write_all(&data)?;
                c.flush()
            })
            .unwrap()
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while !peer.fin_received() && Instant::now() < deadline {
            e.wait_readable(Some(Duration::from_millis(50))).unwrap();
            e.recv_batch(&mut batch).unwrap();
            let mut replies = Vec::new();
            for p in batch.iter() {
                let ip = p.network();
                if ip.len() < 40 || ip[0] != 0x45 || ip[9] != 6 || ip[16..20] != [10, 43, 0, 2] {
                    continue;
                }
                let Some(t) = parse_tcp(ip) else {
                    continue;
                };
                let doff = t.payload_range.start - 20;
                let payload = t.payload(ip);
                let hdr = VirtioNetHdr::decode(p.vnet_header()).expect("valid virtio header");
                if t.flags & flags::SYN == 0 {
                    if ip.len() > 1500 {
                        // A TSO super-packet: the header describes it.
                        big += 1;
                        assert_eq!(hdr.gso_type & 0x7f, 1, "GSO_TCPV4: {hdr:?}");
                        assert!(
                            hdr.gso_size > 0 && usize::from(hdr.gso_size) <= 1460,
                            "{hdr:?}"
                        );
                        assert!(payload.len() > usize::from(hdr.gso_size), "{hdr:?}");
                        assert!(usize::from(hdr.hdr_len) >= 20 + doff, "{hdr:?}");
                        assert!(usize::from(hdr.hdr_len) <= ip.len(), "{hdr:?}");
                        assert_eq!(hdr.flags & 1, 1, "NEEDS_CSUM: {hdr:?}");
                        assert_eq!((hdr.csum_start, hdr.csum_offset), (20, 16), "{hdr:?}");
                    } else {
                        assert!(hdr.gso_type == 0, "no GSO below the MTU: {hdr:?}");
                    }
                }
                match peer.handle_parsed(&t, ip) {
                    Handled::Syn => replies.push(peer.syn_ack()),
                    Handled::Data(new) => {
                        for (k, b) in new.iter().enumerate() {
                            assert_eq!(*b, ((next + k) % 251) as u8, "stream byte {}", next + k);
                        }
                        next += new.len();
                    }
                    Handled::Ignored | Handled::Reset => {}
                }
            }
            // The SYN-ACK (if any) and the latest cumulative ACK.
            if peer.needs_ack() {
                replies.extend(peer.ack(0));
            }
            if !replies.is_empty() {
                let out: Vec<_> = replies.iter().map(|a| OutPacket::ip(a)).collect();
                assert_eq!(e.send(&out).dropped, 0);
            }
        }
        if !peer.fin_received()
            && let Some(rst) = peer.ack(flags::RST)
        {
            // Unblock the sender before failing.
            e.send(&[OutPacket::ip(&rst)]);
        }
        sender.join().unwrap().ok();
    });
    assert!(
        peer.remote_port().is_some(),
        "the kernel's SYN came out of the TUN"
    );
    assert_eq!(next, TOTAL, "every byte received in order");
    assert!(peer.fin_received(), "FIN seen");
    assert!(big > 0, "at least one read larger than the MTU");
    let s = e.stats();
    assert_eq!(s.drops.inbound(), 0, "{s}");
    assert!(s.rx_bytes as usize > TOTAL);
}

#[test]
fn multi_queue_tun_keeps_each_of_32_flows_on_one_queue() {
    if !require_root("multi_queue_tun_keeps_each_of_32_flows_on_one_queue") {
        return;
    }
    let _g = serial();
    let (ns, fds) = device("fdlt4", false, 4, false, "10.44.0.1/24");
    let e = Endpoint::new(Options::new().fds(fds)).unwrap();
    assert_eq!(e.channel_count(), 4);
    const FLOWS: usize = 32;
    const PER_FLOW: usize = 4;
    let socks: Vec<UdpSocket> = (0..FLOWS)
        .map(|_| ns.run(|| UdpSocket::bind("10.44.0.1:0")).unwrap().unwrap())
        .collect();
    for round in 0..PER_FLOW {
        for (i, s) in socks.iter().enumerate() {
            s.send_to(&[i as u8, round as u8], "10.44.0.2:4400")
                .unwrap();
        }
    }
    let mut queues_of: BTreeMap<u16, BTreeSet<usize>> = BTreeMap::new();
    let mut total = 0;
    let mut delivered = 0;
    pull_until(&e, FLOWS * PER_FLOW, |q, _, pkt| {
        delivered += 1;
        match udp4_to(pkt, [10, 44, 0, 2]) {
            Some((sport, 4400, _)) => {
                queues_of.entry(sport).or_default().insert(q);
                total += 1;
                true
            }
            _ => false,
        }
    });
    assert_eq!(total, FLOWS * PER_FLOW, "every packet counted");
    assert_eq!(queues_of.len(), FLOWS);
    for (port, qs) in &queues_of {
        assert_eq!(qs.len(), 1, "flow {port} on queues {qs:?}");
    }
    let used: BTreeSet<usize> = queues_of.values().flatten().copied().collect();
    assert!(used.len() > 1, "flows spread over queues: {used:?}");
    let s = e.stats();
    assert_eq!(s.drops.total(), 0, "{s}");
    assert_eq!(s.rx_packets, delivered, "{s}");
    assert_eq!(s.frames_read, delivered, "{s}");
}

#[test]
fn tap_endpoint_answers_the_kernels_arp() {
    if !require_root("tap_endpoint_answers_the_kernels_arp") {
        return;
    }
    let _g = serial();
    let (ns, fds) = device("fdlt5", true, 1, false, "10.45.0.1/24");
    let tap_mac = ns.run(|| if_hwaddr("fdlt5")).unwrap().unwrap().unwrap();
    let own = MacAddr([0x02, 0, 0, 0, 0x45, 0x02]);
    let e = Endpoint::new(Options::new().fds(fds).ethernet(true).link_address(own)).unwrap();
    assert_eq!(e.max_header_length(), 14);

    let sock = ns.run(|| UdpSocket::bind("10.45.0.1:0")).unwrap().unwrap();
    sock.send_to(b"after arp", "10.45.0.2:4500").unwrap();

    let mut request = None;
    let mut datagram = None;
    let mut batch = e.new_batch();
    let deadline = Instant::now() + WAIT;
    while request.is_none() && Instant::now() < deadline {
        e.wait_readable(Some(Duration::from_millis(50))).unwrap();
        e.recv_batch(&mut batch).unwrap();
        for p in batch.iter() {
            let arp = p.network();
            if p.protocol() == EtherType::ARP && arp.len() >= 28 && arp[24..28] == [10, 45, 0, 2] {
                assert_eq!(p.link_header()[0..6], [0xff; 6], "broadcast");
                assert_eq!(p.link_header()[6..12], tap_mac);
                assert_eq!(arp[6..8], [0, 1], "request");
                request = Some(arp.to_vec());
            }
        }
    }
    let request = request.expect("the kernel's ARP request");
    assert_eq!(request[14..18], [10, 45, 0, 1]);

    // The reply: we are 10.45.0.2 at `own`.
    let mut reply = vec![0, 1, 8, 0, 6, 4, 0, 2];
    reply.extend_from_slice(&own.0);
    reply.extend_from_slice(&[10, 45, 0, 2]);
    reply.extend_from_slice(&tap_mac);
    reply.extend_from_slice(&[10, 45, 0, 1]);
    let out = e.send(&[OutPacket::new(EtherType::ARP, &reply).to(MacAddr(tap_mac))]);
    assert_eq!(out.sent, 1);

    let deadline = Instant::now() + WAIT;
    let mut state = String::new();
    while Instant::now() < deadline {
        state = ns
            .ip(&["neigh", "show", "10.45.0.2", "dev", "fdlt5"])
            .unwrap();
        if state.contains("REACHABLE") || state.contains("STALE") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        state.contains("REACHABLE") || state.contains("STALE"),
        "neighbour entry: {state:?}"
    );
    assert!(state.contains(&own.to_string()), "{state}");

    // The datagrams that waited for the resolution now come to our MAC.
    pull_until(&e, 1, |_, _, pkt| match udp4_to(pkt, [10, 45, 0, 2]) {
        Some((_, 4500, payload)) => {
            datagram = Some(payload.to_vec());
            true
        }
        _ => false,
    });
    assert_eq!(datagram.as_deref(), Some(&b"after arp"[..]));
    assert_eq!(e.stats().drops.get(DropReason::ForeignMac), 0);
}

#[test]
fn dropping_a_tun_endpoint_closes_its_queues() {
    if !require_root("dropping_a_tun_endpoint_closes_its_queues") {
        return;
    }
    let _g = serial();
    let ns = Netns::new("fdldev").unwrap();
    let before = open_fd_count().unwrap();
    let dev = ns
        .run(|| {
            TunConfig::tun()
                .name("fdlt6")
                .multi_queue(true)
                .queues(3)
                .vnet_hdr(true)
                .open()
        })
        .unwrap()
        .unwrap();
    let e = Endpoint::new(Options::new().fds(dev.into_fds()).vnet_header_len(10)).unwrap();
    e.attach(std::sync::Arc::new(
        |_q: usize, _b: &mut fdlink_core::Batch| {},
    ))
    .unwrap();
    assert_eq!(
        open_fd_count().unwrap(),
        before + 3 + 3 + 1,
        "3 queues + stop event"
    );
    drop(e);
    assert_eq!(open_fd_count().unwrap(), before);
    assert!(
        ns.ip(&["link", "show", "fdlt6"]).is_err(),
        "the device went away with its last queue"
    );
}

/// The endpoint asks the kernel what each TUN/TAP queue really carries: a
/// device opened with virtio headers under options without them (or the
/// reverse), or with the wrong framing, is a typed error, not a stream of
/// silently dropped frames.
#[test]
fn a_device_that_disagrees_with_the_options_is_refused() {
    if !require_root("a_device_that_disagrees_with_the_options_is_refused") {
        return;
    }
    let _g = serial();
    type SetOptions = fn(Options) -> Options;
    let cases: [(bool, bool, SetOptions); 4] = [
        (false, true, |o| o),
        (false, false, |o| o.vnet_header_len(10)),
        (true, false, |o| o),
        (false, false, |o| o.ethernet(true)),
    ];
    for (tap, vnet, options) in cases {
        let (_ns, fds) = device("fdlmis0", tap, 1, vnet, "10.46.0.1/24");
        let err = Endpoint::new(options(Options::new().fds(fds))).unwrap_err();
        match (tap, vnet) {
            (false, true) => assert!(
                matches!(
                    err,
                    OptionsError::VnetHeaderMismatch {
                        device: 10,
                        options: 0,
                        ..
                    }
                ),
                "{err}"
            ),
            (true, _) => assert!(
                matches!(
                    err,
                    OptionsError::FramingMismatch {
                        device: "a TAP",
                        ..
                    }
                ),
                "{err}"
            ),
            _ => assert!(
                matches!(
                    err,
                    OptionsError::VnetHeaderMismatch { device: 0, .. }
                        | OptionsError::FramingMismatch {
                            device: "a TUN",
                            ..
                        }
                ),
                "{err}"
            ),
        }
    }
    // A 12-byte header (TUNSETVNETHDRSZ) is read back as such.
    let (_ns, fds) = device("fdlmis0", false, 1, true, "10.46.0.1/24");
    fdlink_sys::tun::set_vnet_hdr_size(std::os::fd::AsFd::as_fd(&fds[0]), 12).unwrap();
    let err = Endpoint::new(Options::new().fds(fds).vnet_header_len(10)).unwrap_err();
    assert!(
        matches!(
            err,
            OptionsError::VnetHeaderMismatch {
                device: 12,
                options: 10,
                ..
            }
        ),
        "{err}"
    );
}
