//! fdlink-sys AF_PACKET sockets, fanout and the mmap receive ring against
//! the kernel, on a veth pair inside a throwaway network namespace. Needs
//! root (SKIP otherwise, failure on CI).
//!
//! Layout of most tests: namespace with veth `va` (10.30.0.1/24) and `vb`
//! (up, no address); a permanent neighbour entry for 10.30.0.2 points at
//! `vb`'s MAC, so UDP sent from 10.30.0.1 to 10.30.0.2 leaves `va` without an
//! ARP round and is received on `vb`, where the packet sockets listen. IPv6
//! is off in the namespace, so no other frames cross the pair.
//!
//! The per-packet metadata tests (checksum state, outgoing frames) also use
//! a TAP device with a virtio header, for frames whose checksum state the
//! test chooses, and a VXLAN tunnel between two namespaces, for frames the
//! kernel verified. No offload is changed anywhere (no `ethtool`).

use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use fdlink_gso::checksum::pseudo_header_ipv4;
use fdlink_gso::virtio::{self, VirtioNetHdr};
use fdlink_sys::abi::VNET_HDR_LEN;
use fdlink_sys::io::{RecvInfo, RxChecksum, recv_one_meta};
use fdlink_sys::mmsg::RecvMmsg;
use fdlink_sys::netdev::{if_hwaddr, if_index};
use fdlink_sys::packet::{
    ETH_P_ALL, FanoutMode, PacketSocket, ignore_outgoing, join_fanout, packet_stats, set_auxdata,
    set_ignore_outgoing, set_recv_buffer, set_send_buffer, set_vnet_hdr, vnet_hdr_enabled,
};
use fdlink_sys::ring::{RingConfig, RxRing};
use fdlink_sys::tun::TunConfig;
use fdlink_tests::netns::{
    Netns, is_cloexec, open_fd_count, read_until, require_root, wait_readable,
};
use fdlink_tests::packet::{Csum, IpSpec, parse_tcp, udp_packet, udp4};
use fdlink_tests::procfs::{inode, page_size, socket_mappings};
use fdlink_tests::serial::serial;
use fdlink_tests::tun::tun_write;
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

// Per-packet metadata: the kernel's checksum state (PACKET_AUXDATA) and the
// outgoing packet type, through recvmmsg, recvmsg and the ring.

/// The TCP port the SYN tests connect to; nothing listens there.
const SYN_PORT: u16 = 4344;

/// Which metadata receive call a test reads with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// `RecvMmsg::with_packet_meta`.
    Mmsg,
    /// `recv_one_meta`.
    One,
}

/// Reads frames with their metadata from one socket, `via` one call or the
/// other, and keeps those read but not yet asked for (one batch can hold
/// several).
struct MetaReader<'a> {
    fd: BorrowedFd<'a>,
    via: Via,
    rx: RecvMmsg,
    bufs: Vec<Vec<u8>>,
    infos: [RecvInfo; 8],
    pending: Vec<(Vec<u8>, RecvInfo)>,
}

impl<'a> MetaReader<'a> {
    fn new(fd: BorrowedFd<'a>, via: Via) -> Self {
        let rx = RecvMmsg::with_packet_meta(8);
        assert!(rx.packet_meta());
        MetaReader {
            fd,
            via,
            rx,
            bufs: vec![vec![0u8; 2048]; 8],
            infos: [RecvInfo::default(); 8],
            pending: Vec::new(),
        }
    }

    /// The first frame, read earlier or now, that `accept` takes, with its
    /// [`RecvInfo`]. Gives up after `timeout` with `TimedOut`.
    fn until(
        &mut self,
        timeout: Duration,
        mut accept: impl FnMut(&[u8]) -> bool,
    ) -> io::Result<(Vec<u8>, RecvInfo)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.pending.iter().position(|(f, _)| accept(f)) {
                return Ok(self.pending.remove(i));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !wait_readable(self.fd, left)? {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{:?}: no matching frame within {timeout:?} ({} others read)",
                        self.via,
                        self.pending.len()
                    ),
                ));
            }
            let got = match self.via {
                Via::Mmsg => self.rx.recv(self.fd, &mut self.bufs, &mut self.infos),
                Via::One => recv_one_meta(self.fd, &mut self.bufs[0]).map(|info| {
                    self.infos[0] = info;
                    1
                }),
            };
            let got = match got {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e),
            };
            for (buf, info) in self.bufs.iter().zip(&self.infos).take(got) {
                assert!(!info.truncated, "{:?}: {info:?}", self.via);
                self.pending.push((buf[..info.len].to_vec(), *info));
            }
        }
    }
}

/// Takes frames from `ring` until `accept` takes one (given its data, its
/// checksum state and whether it is outgoing); returns those two, or `None`
/// after `WAIT`.
fn ring_meta_until(
    ring: &mut RxRing,
    fd: BorrowedFd<'_>,
    mut accept: impl FnMut(&[u8]) -> bool,
) -> Option<(RxChecksum, bool)> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if !ring.is_ready() {
            wait_readable(fd, Duration::from_millis(100)).unwrap();
        }
        while let Some(f) = ring.next_frame() {
            if accept(f.data()) {
                // The two views of the status word agree.
                let state = f.checksum();
                assert_eq!(
                    f.checksum_not_ready(),
                    state == RxChecksum::Partial,
                    "{f:?}"
                );
                assert_eq!(f.checksum_valid(), state == RxChecksum::Valid, "{f:?}");
                assert_eq!(f.is_outgoing(), f.packet_type() == 4, "{f:?}");
                return Some((state, f.is_outgoing()));
            }
        }
    }
    None
}

/// What the transport checksum field of an Ethernet/IPv4 TCP or UDP
/// `frame` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum L4Sum {
    /// Only the pseudo-header sum: what a partial checksum is.
    Seed,
    /// A checksum that verifies.
    Full,
    /// Neither.
    Other,
}

fn l4_sum(frame: &[u8]) -> L4Sum {
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let l4 = &ip[ihl..total];
    let field = match ip[9] {
        6 => 16,
        17 => 6,
        p => panic!("not TCP or UDP: protocol {p}"),
    };
    let mut sum = pseudo_header_ipv4(
        ip[12..16].try_into().unwrap(),
        ip[16..20].try_into().unwrap(),
        ip[9],
        l4.len() as u16,
    );
    let seed = sum.fold();
    sum.add_bytes(l4);
    if u16::from_be_bytes([l4[field], l4[field + 1]]) == seed {
        L4Sum::Seed
    } else if sum.fold() == 0xffff {
        L4Sum::Full
    } else {
        L4Sum::Other
    }
}

/// Whether `frame` is the TCP SYN from 10.30.0.1 to 10.30.0.2:`port`.
fn is_syn_to(frame: &[u8], port: u16) -> bool {
    frame.len() > 14
        && frame[12..14] == [0x08, 0x00]
        && parse_tcp(&frame[14..]).is_some_and(|t| {
            t.dport == port && t.dst == std::net::Ipv4Addr::new(10, 30, 0, 2) && t.flags == 0x02
        })
}

/// Starts a TCP connection from inside the namespace to 10.30.0.2:`port`,
/// where nothing answers: the connect is non-blocking, so it returns with
/// the SYN on its way. Keep the socket until the SYN was read.
fn start_connect(v: &VethPair, port: u16) -> OwnedFd {
    use nix::errno::Errno;
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, connect, socket};
    v.ns.run(move || {
        let s = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("TCP socket");
        match connect(s.as_raw_fd(), &SockaddrIn::new(10, 30, 0, 2, port)) {
            Err(Errno::EINPROGRESS) => s,
            other => panic!("non-blocking connect: {other:?}"),
        }
    })
    .unwrap()
}

#[test]
fn kernel_sent_syn_and_udp_arrive_with_a_partial_checksum() {
    if !require_root("kernel_sent_syn_and_udp_arrive_with_a_partial_checksum") {
        return;
    }
    let _g = serial();
    // The veth offloads stay at their defaults: checksum offload on, so the
    // kernel in the namespace leaves TCP and UDP checksums partial.
    let v = veth();
    let sockets = [Via::Mmsg, Via::One].map(|via| {
        let s = v.socket_b();
        set_auxdata(s.as_fd(), true).unwrap();
        (via, s)
    });
    let without_auxdata = v.socket_b();
    let ring_sock = v.socket_b();
    let mut ring = RxRing::new(ring_sock.as_fd(), RingConfig::default()).unwrap();

    let udp = v.udp_a();
    udp.send_to(b"partial", "10.30.0.2:4343").unwrap();
    let _syn = start_connect(&v, SYN_PORT);
    let is_udp = |f: &[u8]| udp_payload(f, PORT) == Some(&b"partial"[..]);
    let is_syn = |f: &[u8]| is_syn_to(f, SYN_PORT);

    for (via, s) in &sockets {
        let mut reader = MetaReader::new(s.as_fd(), *via);
        for (what, accept) in [("UDP", &is_udp as &dyn Fn(&[u8]) -> bool), ("SYN", &is_syn)] {
            let (frame, info) = reader
                .until(WAIT, accept)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(
                info.checksum,
                RxChecksum::Partial,
                "{via:?} {what}: {info:?}"
            );
            assert!(!info.outgoing, "{via:?} {what}: received on vb, not sent");
            assert_eq!(
                l4_sum(&frame),
                L4Sum::Seed,
                "{via:?} {what}: the field holds the seed"
            );
        }
    }
    // Without PACKET_AUXDATA the kernel says nothing: the same frames read
    // as Unknown.
    let mut reader = MetaReader::new(without_auxdata.as_fd(), Via::One);
    for (what, accept) in [("UDP", &is_udp as &dyn Fn(&[u8]) -> bool), ("SYN", &is_syn)] {
        let (_, info) = reader
            .until(WAIT, accept)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(info.checksum, RxChecksum::Unknown, "{what} without auxdata");
    }
    // The ring carries the status without any option.
    for (what, accept) in [("UDP", &is_udp as &dyn Fn(&[u8]) -> bool), ("SYN", &is_syn)] {
        let got = ring_meta_until(&mut ring, ring_sock.as_fd(), |f| accept(f));
        assert_eq!(got, Some((RxChecksum::Partial, false)), "ring {what}");
    }
}

/// A namespace with IPv6 off (no router solicitations or MLD reports).
fn quiet_netns(prefix: &str) -> Netns {
    let ns = Netns::new(prefix).unwrap();
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1").unwrap();
    ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
        .unwrap();
    ns
}

/// A TAP device `fdlcsum0` with a virtio header in a namespace without
/// IPv6, up; returns the namespace, the device's descriptor, its index and
/// its MAC.
fn tap_with_vnet_hdr() -> (Netns, OwnedFd, u32, [u8; 6]) {
    let ns = quiet_netns("fdlcsum");
    let dev = ns
        .run(|| TunConfig::tap().name("fdlcsum0").vnet_hdr(true).open())
        .unwrap()
        .expect("open TAP");
    ns.link_up("fdlcsum0").unwrap();
    let (index, mac) = ns
        .run(|| (if_index("fdlcsum0"), if_hwaddr("fdlcsum0")))
        .unwrap();
    let fd = dev.into_fds().remove(0);
    (
        ns,
        fd,
        index.unwrap(),
        mac.unwrap().expect("a TAP has a MAC"),
    )
}

#[test]
fn tap_frames_carry_the_checksum_state_of_their_virtio_header() {
    if !require_root("tap_frames_carry_the_checksum_state_of_their_virtio_header") {
        return;
    }
    let _g = serial();
    let (ns, tap, index, mac) = tap_with_vnet_hdr();
    let open = || {
        let s = ns
            .run(move || PacketSocket::open(index, ETH_P_ALL))
            .unwrap()
            .unwrap();
        set_auxdata(s.as_fd(), true).unwrap();
        s
    };
    let (mmsg_sock, one_sock, ring_sock) = (open(), open(), open());
    let mut ring = RxRing::new(ring_sock.as_fd(), RingConfig::default()).unwrap();

    // UDP 10.40.0.2:5000 -> 10.40.0.1:4345 into the TAP, one frame per
    // virtio header: no flags with a full checksum (what a forwarded packet
    // looks like), NEEDS_CSUM with the seed. (DATA_VALID is not a case: TUN
    // ignores it on write, so such a frame reads Unknown too.)
    let ip = IpSpec::new([10, 40, 0, 2].into(), [10, 40, 0, 1].into());
    let cases = [
        (0u8, Csum::Full, RxChecksum::Unknown),
        (virtio::flags::NEEDS_CSUM, Csum::Seed, RxChecksum::Partial),
    ];
    for (i, &(flags, csum, _)) in cases.iter().enumerate() {
        let mut frame = Vec::new();
        frame.extend_from_slice(&mac);
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&udp_packet(&ip, 5000, 4345, &[i as u8; 32], csum));
        let mut hdr = VirtioNetHdr {
            flags,
            ..VirtioNetHdr::default()
        };
        if flags & virtio::flags::NEEDS_CSUM != 0 {
            hdr.csum_start = 14 + 20;
            hdr.csum_offset = 6;
        }
        tun_write(tap.as_fd(), &hdr, &frame).unwrap();
    }

    let case_of = |f: &[u8]| -> Option<usize> {
        let u = udp4(f.get(14..)?)?;
        (u.dport == 4345 && u.dst == [10, 40, 0, 1]).then(|| usize::from(u.rest()[0]))
    };
    for (via, sock) in [(Via::Mmsg, &mmsg_sock), (Via::One, &one_sock)] {
        let mut reader = MetaReader::new(sock.as_fd(), via);
        for (i, &(flags, _, want)) in cases.iter().enumerate() {
            let (_, info) = reader
                .until(WAIT, |f| case_of(f) == Some(i))
                .unwrap_or_else(|e| panic!("case {i}: {e}"));
            assert_eq!(
                info.checksum, want,
                "{via:?}, virtio flags {flags:#x}: {info:?}"
            );
            assert!(!info.outgoing, "{via:?}: written into the TAP is received");
        }
    }
    for (i, &(flags, _, want)) in cases.iter().enumerate() {
        let got = ring_meta_until(&mut ring, ring_sock.as_fd(), |f| case_of(f) == Some(i));
        assert_eq!(got, Some((want, false)), "ring, virtio flags {flags:#x}");
    }
}

#[test]
fn transmissions_are_marked_outgoing_unless_ignored() {
    if !require_root("transmissions_are_marked_outgoing_unless_ignored") {
        return;
    }
    let _g = serial();
    let v = veth();
    let sender = v.socket_b();
    let watchers = [Via::Mmsg, Via::One].map(|via| (via, v.socket_b()));
    let ignoring = v.socket_b();
    assert!(
        ignore_outgoing(ignoring.as_fd()).unwrap(),
        "PACKET_IGNORE_OUTGOING is there since Linux 4.20"
    );
    let ring_sock = v.socket_b();
    let mut ring = RxRing::new(ring_sock.as_fd(), RingConfig::default()).unwrap();

    // A frame sent out of vb with a marker EtherType (local experimental).
    let mut frame = Vec::new();
    frame.extend_from_slice(&v.mac_a);
    frame.extend_from_slice(&v.mac_b);
    frame.extend_from_slice(&[0x88, 0xb5]);
    frame.extend_from_slice(b"fdlink outgoing marker, metadata test.........");
    let is_marker = |f: &[u8]| f.len() >= 14 && f[12..14] == [0x88, 0xb5];
    assert_eq!(
        nix::unistd::write(sender.as_fd(), &frame).unwrap(),
        frame.len()
    );

    for (via, s) in &watchers {
        let (got, info) = MetaReader::new(s.as_fd(), *via)
            .until(WAIT, is_marker)
            .expect("another socket on vb sees the frame");
        assert_eq!(got, frame);
        assert!(info.outgoing, "{via:?}: {info:?}");
        assert_eq!(
            info.checksum,
            RxChecksum::Unknown,
            "{via:?}: no IP, no offload"
        );
    }
    assert_eq!(
        ring_meta_until(&mut ring, ring_sock.as_fd(), is_marker),
        Some((RxChecksum::Unknown, true)),
        "the ring marks it outgoing too"
    );
    // The others have it, so it went past every tap already.
    let quiet = Duration::from_millis(300);
    let ignored = MetaReader::new(ignoring.as_fd(), Via::One).until(quiet, is_marker);
    assert_eq!(
        ignored.unwrap_err().kind(),
        io::ErrorKind::TimedOut,
        "ignored"
    );
    let own = MetaReader::new(sender.as_fd(), Via::One).until(quiet, is_marker);
    assert_eq!(
        own.unwrap_err().kind(),
        io::ErrorKind::TimedOut,
        "the kernel does not loop a socket's own frame back to it"
    );
}

#[test]
fn the_hosts_own_transmissions_are_outgoing_and_partial() {
    if !require_root("the_hosts_own_transmissions_are_outgoing_and_partial") {
        return;
    }
    let _g = serial();
    let v = veth();
    // A socket on va, the kernel's end: what the namespace's stack sends
    // there is outgoing.
    let index_a = v.ns.run(|| if_index("va")).unwrap().unwrap();
    let open = || {
        let s =
            v.ns.run(move || PacketSocket::open(index_a, ETH_P_ALL))
                .unwrap()
                .unwrap();
        set_auxdata(s.as_fd(), true).unwrap();
        s
    };
    let sockets = [(Via::Mmsg, open()), (Via::One, open())];
    let ignoring = open();
    assert!(ignore_outgoing(ignoring.as_fd()).unwrap());

    let udp = v.udp_a();
    udp.send_to(b"from the host", "10.30.0.2:4343").unwrap();
    let _syn = start_connect(&v, SYN_PORT);
    let is_udp = |f: &[u8]| udp_payload(f, PORT) == Some(&b"from the host"[..]);
    let is_syn = |f: &[u8]| is_syn_to(f, SYN_PORT);
    for (via, s) in &sockets {
        let mut reader = MetaReader::new(s.as_fd(), *via);
        for (what, accept) in [("UDP", &is_udp as &dyn Fn(&[u8]) -> bool), ("SYN", &is_syn)] {
            let (frame, info) = reader
                .until(WAIT, accept)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(info.outgoing, "{via:?} {what}: {info:?}");
            assert_eq!(
                info.checksum,
                RxChecksum::Partial,
                "{via:?} {what}: {info:?}"
            );
            assert_eq!(l4_sum(&frame), L4Sum::Seed, "{via:?} {what}");
        }
    }
    let quiet = Duration::from_millis(300);
    let ignored =
        MetaReader::new(ignoring.as_fd(), Via::One).until(quiet, |f| is_udp(f) || is_syn(f));
    assert_eq!(ignored.unwrap_err().kind(), io::ErrorKind::TimedOut);
}

#[test]
fn a_frame_verified_by_the_kernel_reads_valid() {
    if !require_root("a_frame_verified_by_the_kernel_reads_valid") {
        return;
    }
    let _g = serial();
    // A VXLAN tunnel between two namespaces over a veth pair. The receiving
    // VXLAN device takes decapsulated frames in through the kernel's
    // receive offload (GRO cells), which verifies the inner UDP checksum
    // and marks the frame CHECKSUM_UNNECESSARY before the device's packet
    // taps see it. (TUN ignores DATA_VALID on write, and AF_PACKET drops
    // the looped-back copy of a broadcast, so neither yields one.)
    let (ns1, ns2) = (quiet_netns("fdlvx"), quiet_netns("fdlvx"));
    ns1.ip(&[
        "link",
        "add",
        "va",
        "type",
        "veth",
        "peer",
        "name",
        "vb",
        "netns",
        ns2.name(),
    ])
    .unwrap();
    for (ns, dev, local, remote) in [
        (&ns1, "va", "10.31.0.1", "10.31.0.2"),
        (&ns2, "vb", "10.31.0.2", "10.31.0.1"),
    ] {
        ns.addr(dev, &format!("{local}/24")).unwrap();
        ns.link_up(dev).unwrap();
        ns.ip(&[
            "link", "add", "fdlvx0", "type", "vxlan", "id", "42", "local", local, "remote", remote,
            "dstport", "4789", "dev", dev,
        ])
        .unwrap();
        ns.link_up("fdlvx0").unwrap();
    }
    let vxlan = |ns: &Netns| {
        let (index, mac) = ns
            .run(|| (if_index("fdlvx0"), if_hwaddr("fdlvx0")))
            .unwrap();
        (index.unwrap(), mac.unwrap().expect("VXLAN has a MAC"))
    };
    let ((index1, _), (index2, mac2)) = (vxlan(&ns1), vxlan(&ns2));
    let sender = ns1
        .run(move || PacketSocket::open(index1, ETH_P_ALL))
        .unwrap()
        .unwrap();
    let open = || {
        let s = ns2
            .run(move || PacketSocket::open(index2, ETH_P_ALL))
            .unwrap()
            .unwrap();
        set_auxdata(s.as_fd(), true).unwrap();
        s
    };
    let sockets = [(Via::Mmsg, open()), (Via::One, open())];
    let ring_sock = open();
    let mut ring = RxRing::new(ring_sock.as_fd(), RingConfig::default()).unwrap();

    // UDP 10.60.0.2:5000 -> 10.60.0.1:4346 with a full checksum, into the
    // tunnel.
    let ip = IpSpec::new([10, 60, 0, 2].into(), [10, 60, 0, 1].into());
    let mut frame = Vec::new();
    frame.extend_from_slice(&mac2);
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    frame.extend_from_slice(&[0x08, 0x00]);
    frame.extend_from_slice(&udp_packet(&ip, 5000, 4346, b"verified", Csum::Full));
    assert_eq!(
        nix::unistd::write(sender.as_fd(), &frame).unwrap(),
        frame.len()
    );

    let ours = |f: &[u8]| f == frame;
    for (via, s) in &sockets {
        let (_, info) = MetaReader::new(s.as_fd(), *via)
            .until(WAIT, ours)
            .expect("the frame out of the tunnel");
        assert!(!info.outgoing, "{via:?}: {info:?}");
        assert_eq!(info.checksum, RxChecksum::Valid, "{via:?}: {info:?}");
    }
    let got = ring_meta_until(&mut ring, ring_sock.as_fd(), ours);
    assert_eq!(got, Some((RxChecksum::Valid, false)), "ring");
}
