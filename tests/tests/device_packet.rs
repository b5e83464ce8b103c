//! fdlink-core endpoints over AF_PACKET sockets on a veth pair inside a
//! throwaway network namespace: readv, recvmmsg and mmap dispatch, writes to
//! the kernel, fanout over several sockets, and release of sockets and
//! rings. Needs root (SKIP otherwise, failure on CI).
//!
//! Layout: veth `pa` (10.31.0.1/24, the kernel's side) and `pb` (up, no
//! address, the endpoint's side); a permanent neighbour entry sends
//! 10.31.0.2 to `pb`'s MAC without ARP; IPv6 is off, so nothing else
//! crosses the pair.

use std::collections::{BTreeMap, BTreeSet};
use std::net::UdpSocket;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etherparse::PacketBuilder;
use fdlink_core::{
    Batch, DispatchMode, DropReason, Endpoint, EtherType, MacAddr, Options, OptionsError, OutPacket,
};
use fdlink_gso::virtio::VirtioNetHdr;
use fdlink_sys::fd::{SocketType, socketpair};
use fdlink_sys::packet::set_vnet_hdr;
use fdlink_tests::netns::{open_fd_count, require_root};
use fdlink_tests::packet::udp4;
use fdlink_tests::procfs::{inode, socket_mappings};
use fdlink_tests::serial::serial;
use fdlink_tests::veth::{VethPair, VethSpec};

const WAIT: Duration = Duration::from_secs(5);
const PORT: u16 = 4310;
const MODES: [DispatchMode; 3] = [
    DispatchMode::PerPacket,
    DispatchMode::Recvmmsg,
    DispatchMode::Mmap,
];

/// The veth pair `pa` (10.31.0.1/24) — `pb` of the module docs.
fn veth() -> VethPair {
    VethPair::new(&VethSpec {
        prefix: "fdlpk",
        a: "pa",
        b: "pb",
        a_cidr: "10.31.0.1/24",
        b_ip: "10.31.0.2",
        mac_b: None,
    })
    .unwrap()
}

/// Endpoint sockets and options on `pb`, and kernel sockets on `pa`.
trait Veth {
    fn sockets(&self, n: usize, vnet: bool) -> Vec<OwnedFd>;
    fn options(&self, fds: Vec<OwnedFd>, mode: DispatchMode) -> Options;
    fn udp_a(&self, port: u16) -> UdpSocket;
}

impl Veth for VethPair {
    fn sockets(&self, n: usize, vnet: bool) -> Vec<OwnedFd> {
        (0..n)
            .map(|_| {
                let s = self.packet_socket().expect("AF_PACKET socket on pb");
                if vnet {
                    set_vnet_hdr(s.as_fd(), true).unwrap();
                }
                s.into_fd()
            })
            .collect()
    }

    fn options(&self, fds: Vec<OwnedFd>, mode: DispatchMode) -> Options {
        Options::new()
            .fds(fds)
            .ethernet(true)
            .link_address(MacAddr(self.mac_b))
            .dispatch(mode)
    }

    fn udp_a(&self, port: u16) -> UdpSocket {
        self.udp_socket_a(port).unwrap()
    }
}

/// (source port, payload) of a UDP/IPv4 packet from 10.31.0.1 to
/// 10.31.0.2:`PORT`.
fn udp_to_b(ip: &[u8]) -> Option<(u16, &[u8])> {
    let u = udp4(ip).filter(|u| u.dst == [10, 31, 0, 2] && u.dport == PORT)?;
    Some((u.sport, u.payload()?))
}

/// Pulls until `want` packets for `PORT` arrived (plus a short settling
/// time, so extras would show) or `WAIT` passed; returns (queue, vnet
/// header, payload) of each.
fn pull_port(e: &Endpoint, want: usize) -> Vec<(usize, Vec<u8>, Vec<u8>)> {
    let mut batch = e.new_batch();
    let mut deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    let mut settling = false;
    while Instant::now() < deadline {
        e.wait_readable(Some(Duration::from_millis(20))).unwrap();
        e.recv_batch(&mut batch).unwrap();
        for p in batch.iter() {
            assert_eq!(p.link_header().len(), 14);
            if let (EtherType::IPV4, Some((_, payload))) = (p.protocol(), udp_to_b(p.network())) {
                got.push((p.queue(), p.vnet_header().to_vec(), payload.to_vec()));
            }
        }
        if got.len() >= want && !settling {
            settling = true;
            deadline = deadline.min(Instant::now() + Duration::from_millis(200));
        }
    }
    got
}

#[test]
fn every_mode_receives_every_frame_the_kernel_sends() {
    if !require_root("every_mode_receives_every_frame_the_kernel_sends") {
        return;
    }
    let _g = serial();
    for mode in MODES {
        let v = veth();
        let e = Endpoint::new(v.options(v.sockets(1, false), mode)).unwrap();
        let udp = v.udp_a(0);
        const N: usize = 80;
        let sent: Vec<Vec<u8>> = (0..N).map(|i| vec![i as u8; 1 + i * 17]).collect();
        for p in &sent {
            udp.send_to(p, ("10.31.0.2", PORT)).unwrap();
        }
        let got: Vec<Vec<u8>> = pull_port(&e, N).into_iter().map(|g| g.2).collect();
        assert_eq!(got.len(), N, "{mode}: exactly N frames");
        assert_eq!(got, sent, "{mode}: in order, byte for byte");
        let s = e.stats();
        assert_eq!(s.drops.inbound(), 0, "{mode}: {s}");
        assert_eq!(s.frames_read, s.rx_packets, "{mode}: {s}");
    }
}

/// Pulls for `how_long`, counting what arrives.
fn pull_for(e: &Endpoint, how_long: Duration) -> usize {
    let mut batch = e.new_batch();
    let deadline = Instant::now() + how_long;
    let mut got = 0;
    while Instant::now() < deadline {
        e.wait_readable(Some(Duration::from_millis(20))).unwrap();
        got += e.recv_batch(&mut batch).unwrap();
    }
    got
}

/// A socket on the interface the host itself sends from (`pa`) never reads
/// those frames back: the endpoint turns `PACKET_IGNORE_OUTGOING` on, and
/// where a kernel lacks it (here: turned off again behind its back) the
/// frames marked outgoing are dropped, counted, never delivered.
#[test]
fn frames_the_host_sends_are_not_read_back() {
    if !require_root("frames_the_host_sends_are_not_read_back") {
        return;
    }
    let _g = serial();
    for mode in MODES {
        let v = veth();
        let index_a =
            v.ns.run(|| fdlink_sys::netdev::if_index("pa"))
                .unwrap()
                .unwrap();
        let socket =
            v.ns.run(move || {
                fdlink_sys::packet::PacketSocket::open(index_a, fdlink_sys::packet::ETH_P_ALL)
            })
            .unwrap()
            .unwrap()
            .into_fd();
        let behind_its_back = socket.try_clone().unwrap();
        let e = Endpoint::new(
            Options::new()
                .fd(socket)
                .ethernet(true)
                .link_address(MacAddr(v.mac_a))
                .dispatch(mode),
        )
        .unwrap();
        let udp = v.udp_a(0);
        const N: usize = 20;
        for i in 0..N {
            udp.send_to(&[i as u8; 40], ("10.31.0.2", PORT)).unwrap();
        }
        assert_eq!(pull_for(&e, Duration::from_millis(300)), 0, "{mode}");
        let s = e.stats();
        assert_eq!(
            s.frames_read, 0,
            "{mode}: no read spent on the host's frames: {s}"
        );

        fdlink_sys::packet::set_ignore_outgoing(behind_its_back.as_fd(), false).unwrap();
        for i in 0..N {
            udp.send_to(&[i as u8; 40], ("10.31.0.2", PORT)).unwrap();
        }
        let deadline = Instant::now() + WAIT;
        while e.stats().frames_read < N as u64 && Instant::now() < deadline {
            pull_for(&e, Duration::from_millis(50));
        }
        assert_eq!(pull_for(&e, Duration::from_millis(200)), 0, "{mode}");
        let s = e.stats();
        assert_eq!(s.frames_read, N as u64, "{mode}: {s}");
        assert_eq!(s.drops.get(DropReason::Outgoing), N as u64, "{mode}: {s}");
        assert_eq!(s.rx_packets, 0, "{mode}: {s}");
    }
}

#[test]
fn every_mode_writes_frames_the_peer_kernel_receives() {
    if !require_root("every_mode_writes_frames_the_peer_kernel_receives") {
        return;
    }
    let _g = serial();
    for mode in MODES {
        let v = veth();
        let e = Endpoint::new(v.options(v.sockets(1, false), mode)).unwrap();
        let udp = v.udp_a(4311);
        udp.set_read_timeout(Some(WAIT)).unwrap();
        let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
        let packets: Vec<Vec<u8>> = payloads
            .iter()
            .map(|p| {
                let mut ip = Vec::new();
                PacketBuilder::ipv4([10, 31, 0, 2], [10, 31, 0, 1], 64)
                    .udp(7000, 4311)
                    .write(&mut ip, p)
                    .unwrap();
                ip
            })
            .collect();
        let out: Vec<OutPacket<'_>> = packets
            .iter()
            .map(|ip| OutPacket::ip(ip).to(MacAddr(v.mac_a)))
            .collect();
        let sent = e.send(&out);
        assert_eq!((sent.sent, sent.dropped), (10, 0), "{mode}");
        let mut buf = [0u8; 2048];
        for want in &payloads {
            let (n, from) = udp.recv_from(&mut buf).expect("datagram on pa");
            assert_eq!(&buf[..n], &want[..], "{mode}");
            assert_eq!(from.to_string(), "10.31.0.2:7000");
        }
        assert_eq!(e.stats().tx_packets, 10);
    }
}

#[test]
fn mmap_ring_is_pollable_pushes_and_counts_truncation() {
    if !require_root("mmap_ring_is_pollable_pushes_and_counts_truncation") {
        return;
    }
    let _g = serial();
    let v = veth();
    // Receive buffers of 214 bytes: the ring's slots hold 200-byte IP
    // packets, no more (by default an AF_PACKET channel takes 64 KiB
    // super-frames).
    let e = Endpoint::new(
        v.options(v.sockets(1, false), DispatchMode::Mmap)
            .mtu(200)
            .receive_buffer_size(14 + 200),
    )
    .unwrap();
    let mut batch = e.new_batch();
    e.recv_batch(&mut batch).unwrap();
    assert!(
        !e.wait_readable(Some(Duration::from_millis(200))).unwrap(),
        "an empty ring does not poll readable"
    );
    let udp = v.udp_a(0);
    udp.send_to(b"first", ("10.31.0.2", PORT)).unwrap();
    assert!(
        e.wait_readable(Some(WAIT)).unwrap(),
        "POLLIN once the ring holds a frame"
    );
    assert_eq!(pull_port(&e, 1).len(), 1);
    assert!(
        !e.wait_readable(Some(Duration::from_millis(100))).unwrap(),
        "drained ring is not readable"
    );

    udp.send_to(&[7u8; 1000], ("10.31.0.2", PORT)).unwrap();
    let deadline = Instant::now() + WAIT;
    while e.stats().drops.get(DropReason::Truncated) == 0 && Instant::now() < deadline {
        e.wait_readable(Some(Duration::from_millis(20))).unwrap();
        e.recv_batch(&mut batch).unwrap();
        assert!(batch.iter().all(|p| udp_to_b(p.network()).is_none()));
    }
    assert_eq!(e.stats().drops.get(DropReason::Truncated), 1);

    // The push path wakes on the ring's POLLIN.
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&got);
    e.attach(Arc::new(move |_q: usize, b: &mut Batch| {
        for p in b.iter() {
            if let Some((_, payload)) = udp_to_b(p.network()) {
                sink.lock().unwrap().push(payload.to_vec());
            }
        }
    }))
    .unwrap();
    for i in 0..20u8 {
        udp.send_to(&[i; 50], ("10.31.0.2", PORT)).unwrap();
    }
    let deadline = Instant::now() + WAIT;
    while got.lock().unwrap().len() < 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    e.detach();
    let got = got.lock().unwrap();
    assert_eq!(got.len(), 20);
    assert!(got.iter().enumerate().all(|(i, p)| p == &[i as u8; 50]));
}

#[test]
fn mmap_carries_the_virtio_header_in_front() {
    if !require_root("mmap_carries_the_virtio_header_in_front") {
        return;
    }
    let _g = serial();
    let v = veth();
    for mode in MODES {
        let e = Endpoint::new(v.options(v.sockets(1, true), mode).vnet_header_len(10)).unwrap();
        assert_eq!(e.max_header_length(), 24);
        let udp = v.udp_a(0);
        udp.send_to(b"with a virtio header", ("10.31.0.2", PORT))
            .unwrap();
        let got = pull_port(&e, 1);
        assert_eq!(got.len(), 1, "{mode}");
        let (_, hdr, payload) = &got[0];
        assert_eq!(hdr.len(), 10, "{mode}");
        let hdr = VirtioNetHdr::decode(hdr).unwrap();
        assert_eq!(hdr.gso_type, 0, "{mode}: {hdr:?}");
        assert_eq!(payload, b"with a virtio header");
    }
    // The socket and the options must agree about the header, in every
    // mode: a typed error, not frames misread and dropped.
    for mode in MODES {
        let err = Endpoint::new(v.options(v.sockets(1, true), mode)).unwrap_err();
        assert!(
            matches!(
                err,
                OptionsError::VnetHeaderMismatch {
                    channel: 0,
                    device: 10,
                    options: 0
                }
            ),
            "{mode}: {err:?}"
        );
        let err =
            Endpoint::new(v.options(v.sockets(1, false), mode).vnet_header_len(10)).unwrap_err();
        assert!(
            matches!(
                err,
                OptionsError::VnetHeaderMismatch {
                    channel: 0,
                    device: 0,
                    options: 10
                }
            ),
            "{mode}: {err:?}"
        );
    }
}

#[test]
fn mmap_is_refused_on_anything_but_af_packet() {
    let (a, _b) = socketpair(SocketType::SeqPacket).unwrap();
    let err = Endpoint::new(Options::new().fd(a).dispatch(DispatchMode::Mmap)).unwrap_err();
    assert!(
        matches!(
            err,
            OptionsError::DispatchUnsupported {
                channel: 0,
                mode: DispatchMode::Mmap,
                ..
            }
        ),
        "{err:?}"
    );
    let (io, _peer) = fdlink_core::memory_pair(4);
    let err = Endpoint::new(Options::new().packet_io(io).dispatch(DispatchMode::Mmap)).unwrap_err();
    assert!(
        matches!(err, OptionsError::DispatchUnsupported { .. }),
        "{err:?}"
    );
}

#[test]
fn fanout_over_four_sockets_keeps_each_of_32_flows_on_one_queue() {
    if !require_root("fanout_over_four_sockets_keeps_each_of_32_flows_on_one_queue") {
        return;
    }
    let _g = serial();
    for mode in [DispatchMode::PerPacket, DispatchMode::Mmap] {
        let v = veth();
        let e = Endpoint::new(v.options(v.sockets(4, false), mode)).unwrap();
        assert_eq!(e.channel_count(), 4);
        const FLOWS: usize = 32;
        const PER_FLOW: usize = 4;
        let socks: Vec<UdpSocket> = (0..FLOWS).map(|_| v.udp_a(0)).collect();
        for round in 0..PER_FLOW {
            for (i, s) in socks.iter().enumerate() {
                s.send_to(&[i as u8, round as u8], ("10.31.0.2", PORT))
                    .unwrap();
            }
        }
        let got = pull_port(&e, FLOWS * PER_FLOW);
        assert_eq!(got.len(), FLOWS * PER_FLOW, "{mode}: every packet, once");
        let mut queues_of: BTreeMap<u8, BTreeSet<usize>> = BTreeMap::new();
        for (q, _, payload) in &got {
            queues_of.entry(payload[0]).or_default().insert(*q);
        }
        assert_eq!(queues_of.len(), FLOWS);
        for (flow, qs) in &queues_of {
            assert_eq!(qs.len(), 1, "{mode}: flow {flow} on queues {qs:?}");
        }
        let used: BTreeSet<usize> = queues_of.values().flatten().copied().collect();
        assert!(used.len() > 1, "{mode}: flows spread: {used:?}");
        let s = e.stats();
        assert_eq!(s.drops.total(), 0, "{mode}: {s}");
        assert_eq!(s.frames_read, s.rx_packets, "{mode}: {s}");
    }
}

#[test]
fn dropping_the_endpoint_closes_sockets_and_unmaps_rings() {
    if !require_root("dropping_the_endpoint_closes_sockets_and_unmaps_rings") {
        return;
    }
    let _g = serial();
    let v = veth();
    let before = open_fd_count().unwrap();
    let fds = v.sockets(2, false);
    let inodes: Vec<u64> = fds.iter().map(|f| inode(f.as_fd())).collect();
    assert!(inodes.iter().all(|&i| socket_mappings(i) == 0));
    let e = Endpoint::new(v.options(fds, DispatchMode::Mmap)).unwrap();
    for &i in &inodes {
        assert_eq!(socket_mappings(i), 1, "one ring per socket");
    }
    e.attach(Arc::new(|_q: usize, _b: &mut Batch| {})).unwrap();
    assert_eq!(
        open_fd_count().unwrap(),
        before + 2 + 2 + 1,
        "sockets, their closed events, the stop event"
    );
    drop(e);
    assert_eq!(open_fd_count().unwrap(), before, "every descriptor closed");
    for &i in &inodes {
        assert_eq!(socket_mappings(i), 0, "ring unmapped");
    }
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    assert!(
        !maps.contains("socket:["),
        "no socket mapping left:\n{maps}"
    );
}
