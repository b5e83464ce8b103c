//! fdlink-sys AF_PACKET sockets, fanout and the mmap receive ring against
//! the kernel, on a veth pair inside a throwaway network namespace. Needs
//! root (SKIP otherwise, failure on CI).
//!
//! Layout of every test: namespace with veth `va` (10.30.0.1/24) and `vb`
//! (up, no address); a permanent neighbour entry for 10.30.0.2 points at
//! `vb`'s MAC, so UDP sent from 10.30.0.1 to 10.30.0.2 leaves `va` without an
//! ARP round and is received on `vb`, where the packet sockets listen. IPv6
//! is off in the namespace, so no other frames cross the pair.

use std::net::UdpSocket;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use fdlink_sys::packet::{
    ETH_P_ALL, FanoutMode, PacketSocket, join_fanout, packet_stats, set_ignore_outgoing,
    set_recv_buffer, set_send_buffer, set_vnet_hdr, vnet_hdr_enabled,
};
use fdlink_sys::ring::{RingConfig, RxRing, VNET_HDR_LEN};
use fdlink_tests::netns::{is_cloexec, open_fd_count, read_until, require_root, wait_readable};
use fdlink_tests::packet::udp4;
use fdlink_tests::procfs::{inode, page_size, socket_mappings};
use fdlink_tests::serial::serial;
use fdlink_tests::veth::{VethPair, VethSpec};

const WAIT: Duration = Duration::from_secs(5);
const PORT: u16 = 4343;

/// The veth pair `va` (10.30.0.1/24) — `vb` of the module docs.
fn veth() -> VethPair {
    VethPair::new(&VethSpec {
        prefix: "fdl",
        a: "va",
        b: "vb",
        a_cidr: "10.30.0.1/24",
        b_ip: "10.30.0.2",
        mac_b: None,
    })
    .unwrap()
}

/// Sockets on both ends of the pair.
trait Veth {
    /// A packet socket on `vb` for every EtherType.
    fn socket_b(&self) -> PacketSocket;
    /// A UDP socket bound to 10.30.0.1 inside the namespace.
    fn udp_a(&self) -> UdpSocket;
}

impl Veth for VethPair {
    fn socket_b(&self) -> PacketSocket {
        self.packet_socket().expect("open AF_PACKET on vb")
    }

    fn udp_a(&self) -> UdpSocket {
        self.udp_socket_a(0).unwrap()
    }
}

/// The UDP payload of an Ethernet/IPv4 frame from 10.30.0.1 to
/// 10.30.0.2:`port`; `None` for any other frame.
fn udp_payload(frame: &[u8], port: u16) -> Option<&[u8]> {
    if frame.len() < 42 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let u = udp4(&frame[14..])?;
    let ours = u.src == [10, 30, 0, 1] && u.dst == [10, 30, 0, 2] && u.dport == port;
    ours.then(|| u.rest())
}

/// Takes frames from `ring` until `want` UDP payloads for `port` were seen
/// or `WAIT` passed; returns the payloads in arrival order.
fn ring_payloads(ring: &mut RxRing, fd: BorrowedFd<'_>, port: u16, want: usize) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    while got.len() < want && Instant::now() < deadline {
        if !ring.is_ready() {
            wait_readable(fd, Duration::from_millis(100)).unwrap();
        }
        ring.drain(64, |f| {
            if let Some(p) = udp_payload(f.data(), port) {
                assert!(!f.is_truncated(), "{f:?}");
                assert_eq!(f.original_len(), f.data().len());
                got.push(p.to_vec());
            }
        });
    }
    got
}

#[test]
fn packet_socket_reads_the_peers_udp() {
    if !require_root("packet_socket_reads_the_peers_udp") {
        return;
    }
    let _g = serial();
    let v = veth();
    let sock = v.socket_b();
    assert_eq!(sock.ifindex(), v.index_b);
    assert_eq!(sock.protocol(), ETH_P_ALL);
    assert!(is_cloexec(&sock).unwrap(), "packet socket must be CLOEXEC");
    assert!(!vnet_hdr_enabled(sock.as_fd()).unwrap());

    let udp = v.udp_a();
    udp.send_to(b"hello over veth", "10.30.0.2:4343").unwrap();
    let frame = read_until(sock.as_fd(), WAIT, |f| udp_payload(f, PORT).is_some())
        .expect("the datagram arrives on vb");
    assert_eq!(frame[0..6], v.mac_b, "destination MAC");
    assert_eq!(frame[6..12], v.mac_a, "source MAC");
    assert_eq!(udp_payload(&frame, PORT), Some(&b"hello over veth"[..]));
}

#[test]
fn vnet_hdr_prefixes_each_read() {
    if !require_root("vnet_hdr_prefixes_each_read") {
        return;
    }
    let _g = serial();
    let v = veth();
    let sock = v.socket_b();
    set_vnet_hdr(sock.as_fd(), true).unwrap();
    assert!(vnet_hdr_enabled(sock.as_fd()).unwrap());

    let udp = v.udp_a();
    udp.send_to(b"with a virtio header", "10.30.0.2:4343")
        .unwrap();
    let read = read_until(sock.as_fd(), WAIT, |r| {
        r.len() > VNET_HDR_LEN && udp_payload(&r[VNET_HDR_LEN..], PORT).is_some()
    })
    .expect("the datagram arrives behind a virtio-net header");
    let (hdr, frame) = read.split_at(VNET_HDR_LEN);
    assert_eq!(hdr[1], 0, "gso_type NONE for a small datagram: {hdr:?}");
    assert!(hdr[0] <= 3, "only NEEDS_CSUM/DATA_VALID flags: {hdr:?}");
    assert_eq!(frame[0..6], v.mac_b);
    assert_eq!(udp_payload(frame, PORT), Some(&b"with a virtio header"[..]));
}

#[test]
fn rx_ring_receives_the_peers_udp_in_order() {
    if !require_root("rx_ring_receives_the_peers_udp_in_order") {
        return;
    }
    let _g = serial();
    let v = veth();
    let sock = v.socket_b();
    let mut ring = RxRing::new(sock.as_fd(), RingConfig::default()).unwrap();
    let page = page_size();
    assert_eq!(ring.block_size() % page, 0, "blocks are whole pages");
    assert!(ring.frame_count() >= 256);
    assert!(!ring.vnet_hdr());
    assert!(!ring.is_ready(), "nothing received yet");

    let udp = v.udp_a();
    let sent: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
    for p in &sent {
        udp.send_to(p, "10.30.0.2:4343").unwrap();
    }
    assert_eq!(
        ring_payloads(&mut ring, sock.as_fd(), PORT, sent.len()),
        sent
    );

    // Frame metadata of one more datagram.
    udp.send_to(b"meta", "10.30.0.2:4343").unwrap();
    let deadline = Instant::now() + WAIT;
    let mut seen = false;
    while !seen && Instant::now() < deadline {
        wait_readable(sock.as_fd(), Duration::from_millis(100)).unwrap();
        while let Some(f) = ring.next_frame() {
            if udp_payload(f.data(), PORT) == Some(b"meta") {
                assert_eq!(f.ifindex(), v.index_b);
                assert_eq!(f.protocol(), 0x0800);
                assert_eq!(f.packet_type(), 0, "PACKET_HOST");
                assert!(f.vnet_hdr().is_none());
                assert!(f.timestamp() > Duration::from_secs(1_600_000_000));
                seen = true;
            }
        }
    }
    assert!(seen, "metadata frame received");
}

#[test]
fn rx_ring_reports_truncation_and_the_vnet_header() {
    if !require_root("rx_ring_reports_truncation_and_the_vnet_header") {
        return;
    }
    let _g = serial();
    let v = veth();
    let sock = v.socket_b();
    set_vnet_hdr(sock.as_fd(), true).unwrap();
    // 128-byte slots: the MAC header starts at 76 with the virtio header, so
    // 52 bytes of each frame fit.
    let mut ring = RxRing::new(sock.as_fd(), RingConfig::new(128, 8)).unwrap();
    assert!(ring.vnet_hdr());
    assert_eq!(ring.frame_size(), 128);

    let udp = v.udp_a();
    let payload: Vec<u8> = (0..1000u16).map(|i| i as u8).collect();
    udp.send_to(&payload, "10.30.0.2:4343").unwrap();

    let deadline = Instant::now() + WAIT;
    let mut seen = false;
    while !seen && Instant::now() < deadline {
        wait_readable(sock.as_fd(), Duration::from_millis(100)).unwrap();
        while let Some(f) = ring.next_frame() {
            let d = f.data();
            let is_ours = d.len() >= 42
                && d[12..14] == [0x08, 0x00]
                && d[14 + 9] == 17
                && d[36..38] == PORT.to_be_bytes();
            if !is_ours {
                continue;
            }
            assert!(f.is_truncated(), "{f:?}");
            assert_eq!(f.original_len(), 14 + 20 + 8 + payload.len());
            assert!(d.len() < 128 && d.len() >= 42, "{f:?}");
            assert_eq!(d[42..], payload[..d.len() - 42], "captured prefix");
            let hdr = f.vnet_hdr().expect("virtio header in the slot");
            assert_eq!(hdr[1], 0, "gso_type NONE: {hdr:?}");
            seen = true;
        }
    }
    assert!(seen, "truncated frame received");
}

#[test]
fn a_full_ring_drops_and_counts_and_then_recovers() {
    if !require_root("a_full_ring_drops_and_counts_and_then_recovers") {
        return;
    }
    let _g = serial();
    let v = veth();
    let sock = v.socket_b();
    // Only our datagrams, not vb's own IPv6 chatter, should fill the ring.
    set_ignore_outgoing(sock.as_fd(), true).unwrap();
    let mut ring = RxRing::new(sock.as_fd(), RingConfig::new(2048, 4)).unwrap();
    let slots = ring.frame_count();
    let _ = packet_stats(sock.as_fd()).unwrap(); // reset counters

    let udp = v.udp_a();
    let total = slots + 8;
    for i in 0..total {
        udp.send_to(&(i as u32).to_be_bytes(), "10.30.0.2:4343")
            .unwrap();
    }
    // Let the kernel deliver everything before we read.
    let deadline = Instant::now() + WAIT;
    let mut stats = packet_stats(sock.as_fd()).unwrap();
    let mut packets = stats.packets;
    let mut drops = stats.drops;
    while (packets as usize) < total && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        stats = packet_stats(sock.as_fd()).unwrap();
        packets += stats.packets;
        drops += stats.drops;
    }
    assert!(packets as usize >= total, "kernel saw {packets} of {total}");
    assert!(
        drops >= 8,
        "the ring had {slots} slots for {total} frames: {drops} drops"
    );

    // The ring holds the oldest frames, in order.
    let got = ring_payloads(&mut ring, sock.as_fd(), PORT, slots);
    let first: Vec<u32> = got
        .iter()
        .map(|p| u32::from_be_bytes(p[..4].try_into().unwrap()))
        .collect();
    let expected: Vec<u32> = (0..slots as u32).collect();
    assert_eq!(first, expected);

    // Once drained, it receives again.
    udp.send_to(b"again", "10.30.0.2:4343").unwrap();
    assert_eq!(
        ring_payloads(&mut ring, sock.as_fd(), PORT, 1),
        vec![b"again".to_vec()]
    );
}

/// How many lines of /proc/self/maps map the socket `fd`.
fn mappings(fd: BorrowedFd<'_>) -> usize {
    socket_mappings(inode(fd))
}

#[test]
fn ring_and_sockets_are_released_on_drop() {
    if !require_root("ring_and_sockets_are_released_on_drop") {
        return;
    }
    let _g = serial();
    let v = veth();
    let before = open_fd_count().unwrap();
    let sock = v.socket_b();
    assert_eq!(open_fd_count().unwrap(), before + 1);
    assert_eq!(mappings(sock.as_fd()), 0);

    let ring = RxRing::new(sock.as_fd(), RingConfig::default()).unwrap();
    assert_eq!(mappings(sock.as_fd()), 1, "ring mapped");
    // Only one live ring per socket.
    let busy = RxRing::new(sock.as_fd(), RingConfig::default()).unwrap_err();
    assert_eq!(busy.raw_os_error(), Some(libc::EBUSY));
    drop(ring);
    assert_eq!(mappings(sock.as_fd()), 0, "ring unmapped on drop");

    // The dropped ring is replaced by a new one, which works.
    let mut ring = RxRing::new(sock.as_fd(), RingConfig::new(4096, 16)).unwrap();
    assert_eq!(mappings(sock.as_fd()), 1);
    let udp = v.udp_a();
    udp.send_to(b"second ring", "10.30.0.2:4343").unwrap();
    assert_eq!(
        ring_payloads(&mut ring, sock.as_fd(), PORT, 1),
        vec![b"second ring".to_vec()]
    );
    drop(ring);
    drop(udp);
    drop(sock);
    assert_eq!(open_fd_count().unwrap(), before, "every descriptor closed");
}

#[test]
fn fanout_with_a_kernel_unique_group_spreads_flows() {
    if !require_root("fanout_with_a_kernel_unique_group_spreads_flows") {
        return;
    }
    let _g = serial();
    let v = veth();
    let s1 = v.socket_b();
    let s2 = v.socket_b();
    let id = join_fanout(s1.as_fd(), FanoutMode::Hash, None).unwrap();
    assert_eq!(
        join_fanout(s2.as_fd(), FanoutMode::Hash, Some(id)).unwrap(),
        id
    );
    // A member with another mode is refused; a new unique group gets
    // another id; a socket joins only once.
    let s3 = v.socket_b();
    let err = join_fanout(s3.as_fd(), FanoutMode::LoadBalance, Some(id)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    let other = join_fanout(s3.as_fd(), FanoutMode::Hash, None).unwrap();
    assert_ne!(other, id);
    let again = join_fanout(s3.as_fd(), FanoutMode::Hash, None).unwrap_err();
    assert_eq!(again.raw_os_error(), Some(libc::EALREADY));
    drop(s3);

    // 32 flows (distinct source ports): each arrives exactly once, on one
    // of the two members, and both members get some.
    let flows: Vec<UdpSocket> = (0..32).map(|_| v.udp_a()).collect();
    for (i, f) in flows.iter().enumerate() {
        f.send_to(&[i as u8], "10.30.0.2:4343").unwrap();
    }
    let mut seen = [[false; 32]; 2];
    let mut buf = vec![0u8; 2048];
    let deadline = Instant::now() + WAIT;
    while seen.iter().flatten().filter(|&&s| s).count() < 32 && Instant::now() < deadline {
        for (k, s) in [&s1, &s2].into_iter().enumerate() {
            while wait_readable(s.as_fd(), Duration::from_millis(10)).unwrap() {
                let n = nix::unistd::read(s.as_fd(), &mut buf).unwrap();
                if let Some(p) = udp_payload(&buf[..n], PORT) {
                    let i = usize::from(p[0]);
                    assert!(!seen[k][i], "flow {i} delivered twice to member {k}");
                    seen[k][i] = true;
                }
            }
        }
    }
    for i in 0..32 {
        assert!(
            seen[0][i] ^ seen[1][i],
            "flow {i} must reach exactly one member: {seen:?}"
        );
    }
    assert!(seen[0].iter().any(|&s| s) && seen[1].iter().any(|&s| s));
}

#[test]
fn buffer_sizes_and_ignore_outgoing() {
    if !require_root("buffer_sizes_and_ignore_outgoing") {
        return;
    }
    let _g = serial();
    let v = veth();
    let sender = v.socket_b();
    let ignoring = v.socket_b();
    let watching = v.socket_b();

    // Root may exceed rmem_max/wmem_max; the kernel doubles the value.
    assert!(set_recv_buffer(ignoring.as_fd(), 4 << 20).unwrap() >= 4 << 20);
    assert!(set_send_buffer(sender.as_fd(), 4 << 20).unwrap() >= 4 << 20);

    set_ignore_outgoing(ignoring.as_fd(), true).unwrap();
    // A frame sent out of vb with a marker EtherType (local experimental).
    let mut frame = Vec::new();
    frame.extend_from_slice(&v.mac_a);
    frame.extend_from_slice(&v.mac_b);
    frame.extend_from_slice(&[0x88, 0xb5]);
    frame.extend_from_slice(b"fdlink outgoing marker........................");
    let is_marker = |f: &[u8]| f.len() >= 14 && f[12..14] == [0x88, 0xb5];
    assert_eq!(
        nix::unistd::write(sender.as_fd(), &frame).unwrap(),
        frame.len()
    );

    let seen = read_until(watching.as_fd(), WAIT, is_marker).expect("watcher sees it");
    assert_eq!(seen, frame);
    // The watcher has it, so it was delivered to taps already; the ignoring
    // socket must have nothing of it.
    let ignored = read_until(ignoring.as_fd(), Duration::from_millis(300), is_marker);
    assert_eq!(
        ignored.unwrap_err().kind(),
        std::io::ErrorKind::TimedOut,
        "PACKET_IGNORE_OUTGOING hides transmitted frames"
    );
}
