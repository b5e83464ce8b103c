//! fdlink-gso against the Linux kernel, inside throwaway network namespaces.
//! Needs root and /dev/net/tun (SKIP otherwise, failure under `CI=true`).
//!
//! - Segmentation oracle: a super-packet with a virtio header is written into
//!   a TUN opened with `IFF_VNET_HDR`; the kernel forwards it out of a second
//!   TUN without offloads, segmenting it in software. The segments read there
//!   must equal, byte for byte, what `fdlink_gso::segment` makes of the same
//!   super-packet (after decrementing TTL / hop limit, as forwarding does).
//! - TSO receive: a kernel TCP client sends a bulk stream through a TUN with
//!   `IFF_VNET_HDR` and TSO offloads to a hand-written responder on the TUN
//!   descriptor; its super-packets are split with `segment_with_hdr`.
//! - GRO transmit: a hand-written TCP client on the TUN descriptor coalesces
//!   its segments with `gro::Coalescer` and writes super-packets to a kernel
//!   TCP server.
//!
//! Only 10.x and fd00:: addresses inside namespaces made here are used, and
//! every loop is bounded in time.

use std::io::{self, IoSlice, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::thread;
use std::time::{Duration, Instant};

use fdlink_gso::checksum::{self, Checksum};
use fdlink_gso::complete::verify_l4_checksum;
use fdlink_gso::gro::Coalescer;
use fdlink_gso::segment::{SegmentBuf, segment, segment_with_hdr};
use fdlink_gso::virtio::{self, VirtioNetHdr, flags as vflags, gso};
use fdlink_gso::wire::{IpVersion, PacketLayout, proto, tcp};
use fdlink_sys::tun::{OffloadFlags, TunConfig, TunDevice, set_offload};
use fdlink_tests::netns::{Netns, require_root, wait_readable};

/// Upper bound for one oracle case to deliver its segments.
const ORACLE_WAIT: Duration = Duration::from_secs(5);
/// Upper bound for a whole stream test (b, c).
const STREAM_WAIT: Duration = Duration::from_secs(20);
/// Read buffer: the largest TUN packet plus its virtio header.
const BUF_LEN: usize = 65536 + virtio::HDR_LEN + 64;

// ---------------------------------------------------------------------------
// Packet building (independent of the code under test except the checksum
// primitives, which have their own property tests).
// ---------------------------------------------------------------------------

/// The IP layer of a test packet.
#[derive(Debug, Clone)]
struct IpSpec {
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    /// IPv4 identification.
    ident: u16,
    /// IPv4 options (a multiple of 4 bytes).
    v4_options: Vec<u8>,
    /// Put an 8-byte destination-options header before the transport header
    /// (IPv6).
    v6_dstopts: bool,
}

impl IpSpec {
    fn new(src: IpAddr, dst: IpAddr) -> Self {
        Self {
            src,
            dst,
            ttl: 64,
            ident: 0x1234,
            v4_options: Vec::new(),
            v6_dstopts: false,
        }
    }

    fn is_v6(&self) -> bool {
        self.dst.is_ipv6()
    }

    /// Length of the IP header including options / extension headers.
    fn header_len(&self) -> usize {
        if self.is_v6() {
            40 + if self.v6_dstopts { 8 } else { 0 }
        } else {
            20 + self.v4_options.len()
        }
    }

    /// Pseudo-header sum for a transport segment of `l4_len` bytes.
    fn pseudo(&self, protocol: u8, l4_len: usize) -> Checksum {
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                checksum::pseudo_header_ipv4(s.octets(), d.octets(), protocol, l4_len as u16)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                checksum::pseudo_header_ipv6(s.octets(), d.octets(), protocol, l4_len as u32)
            }
            _ => panic!("mixed address families"),
        }
    }

    /// The IP packet carrying `l4` (whose checksum is already set).
    fn wrap(&self, protocol: u8, l4: &[u8]) -> Vec<u8> {
        let hl = self.header_len();
        let mut p = Vec::with_capacity(hl + l4.len());
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                assert_eq!(self.v4_options.len() % 4, 0, "IPv4 options must be padded");
                let total = (hl + l4.len()) as u16;
                p.push(0x40 | (hl / 4) as u8);
                p.push(0);
                p.extend_from_slice(&total.to_be_bytes());
                p.extend_from_slice(&self.ident.to_be_bytes());
                p.extend_from_slice(&[0x40, 0]); // DF
                p.push(self.ttl);
                p.push(protocol);
                p.extend_from_slice(&[0, 0]);
                p.extend_from_slice(&s.octets());
                p.extend_from_slice(&d.octets());
                p.extend_from_slice(&self.v4_options);
                let c = checksum::checksum(&p[..hl]);
                p[10..12].copy_from_slice(&c.to_be_bytes());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let payload_len = (hl - 40 + l4.len()) as u16;
                // Version 6, traffic class 0, a nonzero flow label.
                p.extend_from_slice(&[0x60, 0x0a, 0xbc, 0xde]);
                p.extend_from_slice(&payload_len.to_be_bytes());
                p.push(if self.v6_dstopts {
                    proto::IPV6_OPTS
                } else {
                    protocol
                });
                p.push(self.ttl);
                p.extend_from_slice(&s.octets());
                p.extend_from_slice(&d.octets());
                if self.v6_dstopts {
                    // Next header, length 0 (8 bytes), PadN with 4 zero bytes.
                    p.extend_from_slice(&[protocol, 0, 1, 4, 0, 0, 0, 0]);
                }
            }
            _ => panic!("mixed address families"),
        }
        p.extend_from_slice(l4);
        p
    }
}

/// How to fill the transport checksum field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Csum {
    /// The complete checksum.
    Full,
    /// The folded, uncomplemented pseudo-header sum including the full L4
    /// length, as `NEEDS_CSUM` requires.
    Seed,
}

/// A TCP header (options padded with NOPs... callers pass multiples of 4).
#[derive(Debug, Clone, Copy)]
struct TcpSpec<'a> {
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    options: &'a [u8],
}

fn tcp_packet(ip: &IpSpec, t: &TcpSpec<'_>, payload: &[u8], csum: Csum) -> Vec<u8> {
    assert_eq!(t.options.len() % 4, 0, "TCP options must be padded");
    let hl = 20 + t.options.len();
    let mut l4 = Vec::with_capacity(hl + payload.len());
    l4.extend_from_slice(&t.sport.to_be_bytes());
    l4.extend_from_slice(&t.dport.to_be_bytes());
    l4.extend_from_slice(&t.seq.to_be_bytes());
    l4.extend_from_slice(&t.ack.to_be_bytes());
    l4.push(((hl / 4) as u8) << 4);
    l4.push(t.flags);
    l4.extend_from_slice(&t.window.to_be_bytes());
    l4.extend_from_slice(&[0, 0, 0, 0]);
    l4.extend_from_slice(t.options);
    l4.extend_from_slice(payload);
    fill_l4_checksum(ip, proto::TCP, &mut l4, 16, csum);
    ip.wrap(proto::TCP, &l4)
}

fn udp_packet(ip: &IpSpec, sport: u16, dport: u16, payload: &[u8], csum: Csum) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut l4 = Vec::with_capacity(len);
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&(len as u16).to_be_bytes());
    l4.extend_from_slice(&[0, 0]);
    l4.extend_from_slice(payload);
    fill_l4_checksum(ip, proto::UDP, &mut l4, 6, csum);
    ip.wrap(proto::UDP, &l4)
}

fn fill_l4_checksum(ip: &IpSpec, protocol: u8, l4: &mut [u8], at: usize, csum: Csum) {
    let mut c = ip.pseudo(protocol, l4.len());
    let value = match csum {
        Csum::Seed => c.fold(),
        Csum::Full => {
            c.add_bytes(l4);
            match c.finish() {
                0 if protocol == proto::UDP => 0xffff,
                v => v,
            }
        }
    };
    l4[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

/// `len` bytes of a pattern that does not repeat with any small period.
fn pattern(len: usize, salt: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| {
            let x = i.wrapping_add(salt).wrapping_mul(2_654_435_761);
            (x >> 24) as u8 ^ (i >> 8) as u8
        })
        .collect()
}

fn encode_hdr(hdr: &VirtioNetHdr) -> [u8; virtio::HDR_LEN] {
    let mut out = [0u8; virtio::HDR_LEN];
    hdr.encode(&mut out).expect("encode virtio header");
    out
}

/// Writes one packet with its virtio header to a TUN descriptor.
fn tun_write(fd: BorrowedFd<'_>, hdr: &VirtioNetHdr, packet: &[u8]) -> io::Result<()> {
    let h = encode_hdr(hdr);
    let n = fdlink_sys::io::writev(fd, &[IoSlice::new(&h), IoSlice::new(packet)])?;
    assert_eq!(n, h.len() + packet.len(), "short write to the TUN");
    Ok(())
}

/// A plain header: no offload, checksum complete.
fn plain_hdr() -> VirtioNetHdr {
    VirtioNetHdr::default()
}

fn src_dst(layout: &PacketLayout, pkt: &[u8]) -> (IpAddr, IpAddr) {
    let ip = &pkt[layout.ip_offset..];
    match layout.version {
        IpVersion::V4 => {
            let s: [u8; 4] = ip[12..16].try_into().unwrap();
            let d: [u8; 4] = ip[16..20].try_into().unwrap();
            (Ipv4Addr::from(s).into(), Ipv4Addr::from(d).into())
        }
        IpVersion::V6 => {
            let s: [u8; 16] = ip[8..24].try_into().unwrap();
            let d: [u8; 16] = ip[24..40].try_into().unwrap();
            (Ipv6Addr::from(s).into(), Ipv6Addr::from(d).into())
        }
    }
}

/// Parsed TCP fields of an IP packet.
#[derive(Debug, Clone)]
struct TcpSeg {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    options: Vec<u8>,
    payload_range: std::ops::Range<usize>,
}

fn parse_tcp(pkt: &[u8]) -> Option<TcpSeg> {
    let layout = PacketLayout::parse(pkt).ok()?;
    if layout.l4_protocol != proto::TCP || layout.fragment {
        return None;
    }
    let (src, dst) = src_dst(&layout, pkt);
    let t = tcp::Packet::new_checked(&pkt[layout.l4_offset..layout.end()]).ok()?;
    Some(TcpSeg {
        src,
        dst,
        sport: t.src_port(),
        dport: t.dst_port(),
        seq: t.seq_number(),
        ack: t.ack_number(),
        flags: t.flags(),
        window: t.window(),
        options: t.options().to_vec(),
        payload_range: layout.payload_offset..layout.end(),
    })
}

/// The value of TCP option `kind` (its data bytes), if present.
fn tcp_option(options: &[u8], kind: u8) -> Option<&[u8]> {
    let mut i = 0;
    while i < options.len() {
        match options[i] {
            0 => return None,
            1 => i += 1,
            k => {
                let len = usize::from(*options.get(i + 1)?);
                if len < 2 || i + len > options.len() {
                    return None;
                }
                if k == kind {
                    return Some(&options[i + 2..i + len]);
                }
                i += len;
            }
        }
    }
    None
}

/// `a < b` in sequence space.
fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// First differing offset of two byte strings, with a short hex context.
fn first_diff(a: &[u8], b: &[u8]) -> Option<String> {
    if a == b {
        return None;
    }
    let i = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    let ctx = |s: &[u8]| {
        let lo = i.saturating_sub(4);
        let hi = (i + 8).min(s.len());
        format!("{:02x?}", &s[lo.min(hi)..hi])
    };
    Some(format!(
        "lengths {} vs {}, first difference at byte {i}: {} vs {}",
        a.len(),
        b.len(),
        ctx(a),
        ctx(b)
    ))
}

/// Reads packets from `fd` (without a virtio header) for which `accept`
/// holds until `count` were read or `timeout` passed, then keeps reading for
/// `linger` to catch extra ones.
fn collect(
    fd: BorrowedFd<'_>,
    count: usize,
    timeout: Duration,
    linger: Duration,
    mut accept: impl FnMut(&[u8]) -> bool,
) -> io::Result<Vec<Vec<u8>>> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = vec![0u8; BUF_LEN];
    let mut linger_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let end = linger_until.unwrap_or(deadline);
        if now >= end {
            return Ok(out);
        }
        if !wait_readable(fd, end - now)? {
            continue;
        }
        let n = fdlink_sys::io::read(fd, &mut buf)?;
        if accept(&buf[..n]) {
            out.push(buf[..n].to_vec());
            if out.len() >= count && linger_until.is_none() {
                linger_until = Some(Instant::now() + linger);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// (a) The kernel as segmentation oracle.
// ---------------------------------------------------------------------------

const IN_DEV: &str = "gsoin";
const OUT_DEV: &str = "gsoout";
const SRC4: Ipv4Addr = Ipv4Addr::new(10, 60, 1, 2);
const DST4: Ipv4Addr = Ipv4Addr::new(10, 60, 2, 2);
const SRC6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x60, 1, 0, 0, 0, 0, 2);
const DST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x60, 2, 0, 0, 0, 0, 2);

/// A namespace forwarding from TUN `gsoin` (virtio header) to TUN `gsoout`
/// (no virtio header, no offloads: the kernel segments in software).
struct Oracle {
    ingress: TunDevice,
    egress: TunDevice,
    // Dropped last: the devices go with the namespace anyway.
    _ns: Netns,
}

fn oracle() -> Oracle {
    let ns = Netns::new("fdlgso").expect("create netns");
    let (ingress, egress) = ns
        .run(|| {
            (
                TunConfig::tun().name(IN_DEV).vnet_hdr(true).open(),
                TunConfig::tun().name(OUT_DEV).open(),
            )
        })
        .expect("enter netns");
    let ingress = ingress.expect("open ingress TUN with IFF_VNET_HDR");
    let egress = egress.expect("open egress TUN");
    ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
    ns.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
    for (dev, v4, v6) in [
        (IN_DEV, "10.60.1.1/24", "fd00:60:1::1/64"),
        (OUT_DEV, "10.60.2.1/24", "fd00:60:2::1/64"),
    ] {
        ns.addr(dev, v4).unwrap();
        ns.addr(dev, v6).unwrap();
        ns.link_up(dev).unwrap();
    }
    Oracle {
        ingress,
        egress,
        _ns: ns,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum L4 {
    Tcp,
    Udp,
}

/// One oracle case.
#[derive(Debug, Clone)]
struct Case {
    name: &'static str,
    ip: IpSpec,
    l4: L4,
    tcp_flags: u8,
    tcp_options: &'static [u8],
    payload_len: usize,
    gso_size: u16,
}

const SPORT: u16 = 40000;
const DPORT: u16 = 5555;

impl Case {
    fn tcp4(name: &'static str) -> Self {
        Self {
            name,
            ip: IpSpec::new(SRC4.into(), DST4.into()),
            l4: L4::Tcp,
            tcp_flags: tcp::flags::ACK | tcp::flags::PSH,
            tcp_options: &[],
            payload_len: 4 * 1200,
            gso_size: 1200,
        }
    }

    fn tcp6(name: &'static str) -> Self {
        Self {
            ip: IpSpec::new(SRC6.into(), DST6.into()),
            ..Self::tcp4(name)
        }
    }

    /// The super-packet and its virtio header.
    fn build(&self) -> (VirtioNetHdr, Vec<u8>) {
        let payload = pattern(self.payload_len, self.payload_len as u32);
        let (packet, gso_type, l4_hdr, csum_offset) = match self.l4 {
            L4::Tcp => {
                let t = TcpSpec {
                    sport: SPORT,
                    dport: DPORT,
                    seq: 0xfffff000, // wraps during the stream
                    ack: 0x0102_0304,
                    flags: self.tcp_flags,
                    window: 501,
                    options: self.tcp_options,
                };
                let g = if self.ip.is_v6() {
                    gso::TCPV6
                } else {
                    gso::TCPV4
                };
                (
                    tcp_packet(&self.ip, &t, &payload, Csum::Seed),
                    g,
                    20 + self.tcp_options.len(),
                    16,
                )
            }
            L4::Udp => (
                udp_packet(&self.ip, SPORT, DPORT, &payload, Csum::Seed),
                gso::UDP_L4,
                8,
                6,
            ),
        };
        let hl = self.ip.header_len();
        let hdr = VirtioNetHdr {
            flags: vflags::NEEDS_CSUM,
            gso_type,
            hdr_len: (hl + l4_hdr) as u16,
            gso_size: self.gso_size,
            csum_start: hl as u16,
            csum_offset,
            num_buffers: None,
        };
        (hdr, packet)
    }

    /// Whether `pkt` (read from the egress TUN) belongs to this case.
    fn matches(&self, pkt: &[u8]) -> bool {
        let Ok(layout) = PacketLayout::parse(pkt) else {
            return false;
        };
        let want = match self.l4 {
            L4::Tcp => proto::TCP,
            L4::Udp => proto::UDP,
        };
        if layout.l4_protocol != want || layout.fragment {
            return false;
        }
        let (src, dst) = src_dst(&layout, pkt);
        let l4 = &pkt[layout.l4_offset..];
        src == self.ip.src
            && dst == self.ip.dst
            && l4.len() >= 4
            && u16::from_be_bytes([l4[0], l4[1]]) == SPORT
            && u16::from_be_bytes([l4[2], l4[3]]) == DPORT
    }
}

/// What forwarding does to a packet: TTL / hop limit minus one (and the
/// IPv4 header checksum recomputed).
fn forwarded(seg: &[u8]) -> Vec<u8> {
    let mut p = seg.to_vec();
    match p[0] >> 4 {
        4 => {
            p[8] -= 1;
            let hl = usize::from(p[0] & 0x0f) * 4;
            p[10..12].copy_from_slice(&[0, 0]);
            let c = checksum::checksum(&p[..hl]);
            p[10..12].copy_from_slice(&c.to_be_bytes());
        }
        6 => p[7] -= 1,
        v => panic!("IP version {v}"),
    }
    p
}

fn run_oracle_case(case: &Case) {
    let o = oracle();
    let (hdr, packet) = case.build();
    let expected_count = case.payload_len.div_ceil(usize::from(case.gso_size));

    // Ours, both ways in.
    let mut ours = SegmentBuf::new();
    let n = segment(&packet, 0, usize::from(case.gso_size), &mut ours)
        .unwrap_or_else(|e| panic!("{}: segment: {e}", case.name));
    assert_eq!(n, expected_count, "{}: our segment count", case.name);
    let mut ours_hdr = SegmentBuf::new();
    segment_with_hdr(&packet, 0, &hdr, &mut ours_hdr)
        .unwrap_or_else(|e| panic!("{}: segment_with_hdr: {e}", case.name));
    assert!(
        ours.iter().eq(ours_hdr.iter()),
        "{}: segment and segment_with_hdr disagree",
        case.name
    );

    // The kernel's.
    tun_write(o.ingress.fds()[0].as_fd(), &hdr, &packet)
        .unwrap_or_else(|e| panic!("{}: write super-packet: {e}", case.name));
    let kernel = collect(
        o.egress.fds()[0].as_fd(),
        expected_count,
        ORACLE_WAIT,
        Duration::from_millis(200),
        |p| case.matches(p),
    )
    .unwrap();
    assert_eq!(
        kernel.len(),
        expected_count,
        "{}: the kernel forwarded {} segments, expected {expected_count}",
        case.name,
        kernel.len()
    );

    for (i, (k, ours)) in kernel.iter().zip(ours.iter()).enumerate() {
        assert!(
            verify_l4_checksum(k),
            "{}: kernel segment {i} checksum",
            case.name
        );
        assert!(
            verify_l4_checksum(ours),
            "{}: our segment {i} checksum",
            case.name
        );
        if let Some(d) = first_diff(k, &forwarded(ours)) {
            panic!(
                "{}: segment {i}/{expected_count} differs from the kernel's: {d}",
                case.name
            );
        }
    }
}

#[test]
fn oracle_tcp4_plain() {
    if !require_root("oracle_tcp4_plain") {
        return;
    }
    run_oracle_case(&Case::tcp4("tcp4 plain"));
}

#[test]
fn oracle_tcp4_ip_options_and_tcp_timestamps() {
    if !require_root("oracle_tcp4_ip_options_and_tcp_timestamps") {
        return;
    }
    let mut case = Case::tcp4("tcp4 ip options");
    // NOP, NOP, NOP, EOL: 4 option bytes the kernel forwards unchanged.
    case.ip.v4_options = vec![1, 1, 1, 0];
    // NOP, NOP, timestamps.
    case.tcp_options = &[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
    case.payload_len = 3 * 1200 + 17;
    run_oracle_case(&case);
}

#[test]
fn oracle_tcp4_flags_fin_psh_cwr() {
    if !require_root("oracle_tcp4_flags_fin_psh_cwr") {
        return;
    }
    let mut case = Case::tcp4("tcp4 flags");
    let f = tcp::flags::FIN | tcp::flags::PSH | tcp::flags::CWR | tcp::flags::ACK;
    case.tcp_flags = f;
    run_oracle_case(&case);
    // The flags themselves, on our segments (equal to the kernel's above).
    let (_, packet) = case.build();
    let mut out = SegmentBuf::new();
    let n = segment(&packet, 0, 1200, &mut out).unwrap();
    let flags: Vec<u8> = out.iter().map(|s| s[20 + 13]).collect();
    let a = tcp::flags::ACK;
    let mut want = vec![a; n];
    want[0] |= tcp::flags::CWR;
    want[n - 1] |= tcp::flags::FIN | tcp::flags::PSH;
    assert_eq!(
        flags, want,
        "CWR on the first only, FIN|PSH on the last only"
    );
}

#[test]
fn oracle_tcp6_plain() {
    if !require_root("oracle_tcp6_plain") {
        return;
    }
    let mut case = Case::tcp6("tcp6 plain");
    case.tcp_flags = tcp::flags::FIN | tcp::flags::PSH | tcp::flags::CWR | tcp::flags::ACK;
    run_oracle_case(&case);
}

#[test]
fn oracle_tcp6_destination_options() {
    if !require_root("oracle_tcp6_destination_options") {
        return;
    }
    let mut case = Case::tcp6("tcp6 dstopts");
    case.ip.v6_dstopts = true;
    case.tcp_options = &[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
    case.payload_len = 3 * 1200 + 1;
    run_oracle_case(&case);
}

#[test]
fn oracle_udp4_l4() {
    if !require_root("oracle_udp4_l4") {
        return;
    }
    let mut case = Case::tcp4("udp4 uso");
    case.l4 = L4::Udp;
    case.payload_len = 3 * 1200 + 100;
    run_oracle_case(&case);
}

#[test]
fn oracle_udp6_l4() {
    if !require_root("oracle_udp6_l4") {
        return;
    }
    let mut case = Case::tcp6("udp6 uso");
    case.l4 = L4::Udp;
    case.payload_len = 4 * 1200;
    run_oracle_case(&case);
}

// ---------------------------------------------------------------------------
// (b) A kernel TCP sender's TSO super-packets, split with segment_with_hdr.
// ---------------------------------------------------------------------------

/// Addresses of a one-TUN namespace: the kernel's side and the peer played
/// by the test on the TUN descriptor.
#[derive(Debug, Clone, Copy)]
struct Pair {
    kernel: IpAddr,
    peer: IpAddr,
    kernel_cidr: &'static str,
}

fn pair(v6: bool, net: u16) -> Pair {
    if v6 {
        let (k, p, c) = match net {
            61 => ("fd00:61::1", "fd00:61::2", "fd00:61::1/64"),
            _ => ("fd00:62::1", "fd00:62::2", "fd00:62::1/64"),
        };
        Pair {
            kernel: k.parse().unwrap(),
            peer: p.parse().unwrap(),
            kernel_cidr: c,
        }
    } else {
        let (k, p, c) = match net {
            61 => ("10.61.0.1", "10.61.0.2", "10.61.0.1/24"),
            _ => ("10.62.0.1", "10.62.0.2", "10.62.0.1/24"),
        };
        Pair {
            kernel: k.parse().unwrap(),
            peer: p.parse().unwrap(),
            kernel_cidr: c,
        }
    }
}

fn tun_ns(prefix: &str, dev: &str, pair: &Pair, offloads: OffloadFlags) -> (Netns, TunDevice) {
    let ns = Netns::new(prefix).expect("create netns");
    let tun = ns
        .run(|| TunConfig::tun().name(dev).vnet_hdr(true).open())
        .expect("enter netns")
        .expect("open TUN with IFF_VNET_HDR");
    if !offloads.is_empty() {
        let got = set_offload(tun.fds()[0].as_fd(), offloads).expect("TUNSETOFFLOAD");
        assert!(got.contains(offloads), "offloads {got:?} lack {offloads:?}");
    }
    ns.addr(dev, pair.kernel_cidr).unwrap();
    ns.link_up(dev).unwrap();
    (ns, tun)
}

/// What the responder saw.
#[derive(Debug, Default)]
struct BulkStats {
    reads: usize,
    super_packets: usize,
    largest: usize,
    segments: usize,
}

const BULK_PORT: u16 = 5001;
const BULK_LEN: usize = 2 << 20;

fn bulk_stream(v6: bool) {
    let pair = pair(v6, 61);
    let (ns, tun) = tun_ns(
        "fdlbulk",
        "bulk0",
        &pair,
        OffloadFlags::CSUM | OffloadFlags::TSO4 | OffloadFlags::TSO6,
    );
    let fd = tun.fds()[0].as_fd();
    let data = pattern(BULK_LEN, 7);
    let (client, responder) = thread::scope(|s| {
        let client = s.spawn(|| {
            ns.run(|| -> io::Result<()> {
                let to = SocketAddr::new(pair.peer, BULK_PORT);
                let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
                stream.set_write_timeout(Some(STREAM_WAIT))?;
                stream.set_read_timeout(Some(STREAM_WAIT))?;
                stream.write_all(&data)?;
                stream.shutdown(Shutdown::Write)?;
                let mut rest = Vec::new();
                stream.read_to_end(&mut rest)?;
                Ok(())
            })
        });
        let responder = respond(fd, &pair, v6);
        (client.join(), responder)
    });
    let (received, stats) = responder.expect("responder");
    client
        .expect("client thread")
        .expect("enter netns")
        .expect("kernel client");
    eprintln!("bulk v6={v6}: {stats:?}");
    assert_eq!(received.len(), data.len(), "received stream length");
    assert!(
        received == data,
        "received stream differs from what was sent"
    );
    assert!(
        stats.super_packets > 0,
        "no TSO super-packet was read: {stats:?}"
    );
}

/// Plays the TCP peer of a kernel client: SYN-ACK, ACK every read, FIN
/// after the client's FIN. Returns the received stream.
fn respond(fd: BorrowedFd<'_>, pair: &Pair, v6: bool) -> io::Result<(Vec<u8>, BulkStats)> {
    let deadline = Instant::now() + STREAM_WAIT;
    let mss: u16 = if v6 { 1440 } else { 1460 };
    let our_isn: u32 = 0x8000_0000;
    let mut ip = IpSpec::new(pair.peer, pair.kernel);
    let mut client_port = None;
    let mut rcv_nxt = 0u32;
    let mut received = Vec::with_capacity(BULK_LEN);
    let mut stats = BulkStats::default();
    let mut buf = vec![0u8; BUF_LEN];
    let mut segs = SegmentBuf::new();
    let mut fin_received = false;
    let send = |ip: &mut IpSpec, t: TcpSpec<'_>| -> io::Result<()> {
        ip.ident = ip.ident.wrapping_add(1);
        let p = tcp_packet(ip, &t, &[], Csum::Full);
        tun_write(fd, &plain_hdr(), &p)
    };
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "stream incomplete after {STREAM_WAIT:?}: {} of {BULK_LEN} bytes, {stats:?}",
                    received.len()
                ),
            ));
        }
        if !wait_readable(fd, deadline - now)? {
            continue;
        }
        let n = fdlink_sys::io::read(fd, &mut buf)?;
        let hdr = VirtioNetHdr::decode(&buf[..n]).map_err(io::Error::other)?;
        let pkt = &buf[virtio::HDR_LEN..n];
        let Some(first) = parse_tcp(pkt) else {
            continue;
        };
        if first.src != pair.kernel || first.dst != pair.peer || first.dport != BULK_PORT {
            continue;
        }
        stats.reads += 1;
        stats.largest = stats.largest.max(pkt.len());
        if pkt.len() > 1500 {
            stats.super_packets += 1;
            let want = if v6 { gso::TCPV6 } else { gso::TCPV4 };
            let hl = if v6 { 40 } else { 20 };
            assert_eq!(hdr.gso_type & !gso::ECN, want, "gso_type of {hdr:?}");
            assert_eq!(
                hdr.flags & vflags::NEEDS_CSUM,
                vflags::NEEDS_CSUM,
                "{hdr:?}"
            );
            assert_eq!((hdr.csum_start, hdr.csum_offset), (hl, 16), "{hdr:?}");
            assert!(hdr.gso_size > 0 && hdr.gso_size <= mss, "{hdr:?}");
        }
        segs.clear();
        segment_with_hdr(pkt, 0, &hdr, &mut segs)
            .map_err(|e| io::Error::other(format!("segment_with_hdr {hdr:?}: {e}")))?;
        let mut need_ack = false;
        for seg in segs.iter() {
            stats.segments += 1;
            if !verify_l4_checksum(seg) {
                return Err(io::Error::other(format!(
                    "segment {} of a {}-byte read ({hdr:?}) fails its checksum",
                    stats.segments,
                    pkt.len()
                )));
            }
            let t = parse_tcp(seg).expect("a segment of a TCP packet parses");
            let syn = t.flags & tcp::flags::SYN != 0;
            if syn && t.flags & tcp::flags::ACK == 0 {
                client_port = Some(t.sport);
                rcv_nxt = t.seq.wrapping_add(1);
                // MSS, NOP, window scale 7.
                let opts = [2, 4, (mss >> 8) as u8, mss as u8, 1, 3, 3, 7];
                send(
                    &mut ip,
                    TcpSpec {
                        sport: BULK_PORT,
                        dport: t.sport,
                        seq: our_isn,
                        ack: rcv_nxt,
                        flags: tcp::flags::SYN | tcp::flags::ACK,
                        window: 0xffff,
                        options: &opts,
                    },
                )?;
                continue;
            }
            if Some(t.sport) != client_port {
                continue;
            }
            let payload = &seg[t.payload_range.clone()];
            let end = t.seq.wrapping_add(payload.len() as u32);
            if !payload.is_empty() {
                need_ack = true;
                // In order, or overlapping what we have (a retransmission).
                if !seq_lt(rcv_nxt, t.seq) && seq_lt(rcv_nxt, end) {
                    let skip = rcv_nxt.wrapping_sub(t.seq) as usize;
                    received.extend_from_slice(&payload[skip..]);
                    rcv_nxt = end;
                }
            }
            if t.flags & tcp::flags::FIN != 0 && end == rcv_nxt {
                need_ack = true;
                if !fin_received {
                    fin_received = true;
                    rcv_nxt = rcv_nxt.wrapping_add(1);
                }
            }
        }
        if need_ack && let Some(port) = client_port {
            let fin = if fin_received { tcp::flags::FIN } else { 0 };
            send(
                &mut ip,
                TcpSpec {
                    sport: BULK_PORT,
                    dport: port,
                    seq: our_isn.wrapping_add(1),
                    ack: rcv_nxt,
                    flags: tcp::flags::ACK | fin,
                    window: 0xffff,
                    options: &[],
                },
            )?;
            if fin_received {
                return Ok((received, stats));
            }
        }
    }
}

#[test]
fn tso_bulk_stream_v4() {
    if !require_root("tso_bulk_stream_v4") {
        return;
    }
    bulk_stream(false);
}

#[test]
fn tso_bulk_stream_v6() {
    if !require_root("tso_bulk_stream_v6") {
        return;
    }
    bulk_stream(true);
}

// ---------------------------------------------------------------------------
// (c) GRO: our segments coalesced and written to a kernel TCP server.
// ---------------------------------------------------------------------------

const GRO_PORT: u16 = 5002;
const GRO_LEN: usize = 1 << 20;
/// Segments per coalescing batch (about one 64 KiB super-packet).
const GRO_BATCH: usize = 44;

/// What the GRO client wrote.
#[derive(Debug, Default)]
struct GroStats {
    writes: usize,
    super_packets: usize,
    largest: usize,
    retransmits: usize,
}

fn gro_stream(v6: bool) {
    let pair = pair(v6, 62);
    let (_ns, tun) = tun_ns("fdlgro", "gro0", &pair, OffloadFlags::empty());
    let fd = tun.fds()[0].as_fd();
    let listener = _ns
        .run(|| TcpListener::bind(SocketAddr::new(pair.kernel, GRO_PORT)))
        .expect("enter netns")
        .expect("listen");
    listener.set_nonblocking(true).unwrap();
    let data = pattern(GRO_LEN, 99);
    let (server, client) = thread::scope(|s| {
        let server = s.spawn(|| -> io::Result<Vec<u8>> {
            let deadline = Instant::now() + STREAM_WAIT;
            let mut stream = loop {
                match listener.accept() {
                    Ok((stream, _)) => break stream,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if Instant::now() >= deadline {
                            return Err(io::Error::new(io::ErrorKind::TimedOut, "no connection"));
                        }
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(e),
                }
            };
            stream.set_nonblocking(false)?;
            stream.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now())))?;
            let mut got = Vec::with_capacity(GRO_LEN);
            stream.read_to_end(&mut got)?;
            Ok(got)
        });
        let client = gro_client(fd, &pair, v6, &data);
        (server.join(), client)
    });
    let stats = client.expect("GRO client");
    let got = server.expect("server thread").expect("kernel server");
    eprintln!("gro v6={v6}: {stats:?}");
    assert_eq!(got.len(), data.len(), "stream length at the kernel server");
    assert!(got == data, "the kernel server received different bytes");
    assert!(
        stats.super_packets > 0 && stats.largest > 1500,
        "no super-packet was written: {stats:?}"
    );
}

/// Reads TCP packets of our connection from the TUN until `f` says stop or
/// `wait` passes; returns whether `f` stopped it.
fn read_acks(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    pair: &Pair,
    sport: u16,
    wait: Duration,
    mut f: impl FnMut(&TcpSeg) -> bool,
) -> io::Result<bool> {
    let end = Instant::now() + wait;
    loop {
        let now = Instant::now();
        if now >= end || !wait_readable(fd, end - now)? {
            return Ok(false);
        }
        let n = fdlink_sys::io::read(fd, buf)?;
        let Some(t) = parse_tcp(&buf[virtio::HDR_LEN..n]) else {
            continue;
        };
        if t.src == pair.kernel && t.dst == pair.peer && t.dport == sport && f(&t) {
            return Ok(true);
        }
    }
}

fn gro_client(fd: BorrowedFd<'_>, pair: &Pair, v6: bool, data: &[u8]) -> io::Result<GroStats> {
    let deadline = Instant::now() + STREAM_WAIT;
    let timed_out = |what: &str| io::Error::new(io::ErrorKind::TimedOut, what.to_string());
    let sport: u16 = 41000;
    let isn: u32 = 0xffff_0000; // wraps during the stream
    let mut ip = IpSpec::new(pair.peer, pair.kernel);
    let mut buf = vec![0u8; BUF_LEN];
    let mut stats = GroStats::default();
    let seg = |ip: &mut IpSpec, seq: u32, ack: u32, flags: u8, opts: &[u8], payload: &[u8]| {
        ip.ident = ip.ident.wrapping_add(1);
        let t = TcpSpec {
            sport,
            dport: GRO_PORT,
            seq,
            ack,
            flags,
            window: 0xffff,
            options: opts,
        };
        tcp_packet(ip, &t, payload, Csum::Full)
    };

    // Handshake: MSS 1460, NOP, window scale 7.
    let mut synack = None;
    for _ in 0..5 {
        let syn = seg(
            &mut ip,
            isn,
            0,
            tcp::flags::SYN,
            &[2, 4, 0x05, 0xb4, 1, 3, 3, 7],
            &[],
        );
        tun_write(fd, &plain_hdr(), &syn)?;
        read_acks(fd, &mut buf, pair, sport, Duration::from_secs(1), |t| {
            let ok = t.flags & (tcp::flags::SYN | tcp::flags::ACK)
                == tcp::flags::SYN | tcp::flags::ACK
                && t.ack == isn.wrapping_add(1);
            if ok {
                synack = Some(t.clone());
            }
            ok
        })?;
        if synack.is_some() {
            break;
        }
    }
    let synack = synack.ok_or_else(|| timed_out("no SYN-ACK from the kernel server"))?;
    let peer_ws = tcp_option(&synack.options, 3).map_or(0, |v| v[0].min(14));
    let peer_mss = tcp_option(&synack.options, 2).map_or(536, |v| u16::from_be_bytes([v[0], v[1]]));
    let mss = usize::from(peer_mss).min(1448);
    let rcv = synack.seq.wrapping_add(1);
    let ack = seg(&mut ip, isn.wrapping_add(1), rcv, tcp::flags::ACK, &[], &[]);
    tun_write(fd, &plain_hdr(), &ack)?;

    // Data, window-limited, in coalesced batches.
    let base = isn.wrapping_add(1);
    let mut snd_una = 0usize; // offsets into `data`
    let mut snd_nxt = 0usize;
    let mut wnd = usize::from(synack.window); // not scaled in a SYN-ACK
    let mut gro = Coalescer::new();
    let mut last_progress = Instant::now();
    while snd_una < data.len() {
        if Instant::now() >= deadline {
            return Err(timed_out(&format!(
                "{snd_una} of {} bytes acknowledged, {stats:?}",
                data.len()
            )));
        }
        gro.clear();
        let mut n = 0;
        while snd_nxt < data.len() && n < GRO_BATCH {
            let len = mss.min(data.len() - snd_nxt);
            if snd_nxt + len > snd_una + wnd {
                break;
            }
            let last = n + 1 == GRO_BATCH || snd_nxt + len == data.len();
            let psh = if last { tcp::flags::PSH } else { 0 };
            let seq = base.wrapping_add(snd_nxt as u32);
            let p = seg(
                &mut ip,
                seq,
                rcv,
                tcp::flags::ACK | psh,
                &[],
                &data[snd_nxt..snd_nxt + len],
            );
            gro.push(&p);
            snd_nxt += len;
            n += 1;
        }
        gro.flush();
        for (hdr, p) in gro.iter() {
            tun_write(fd, hdr, p)?;
            stats.writes += 1;
            stats.largest = stats.largest.max(p.len());
            if hdr.gso_type != gso::NONE {
                stats.super_packets += 1;
                let want = if v6 { gso::TCPV6 } else { gso::TCPV4 };
                assert_eq!(hdr.gso_type, want, "{hdr:?}");
                assert_eq!(usize::from(hdr.gso_size), mss, "{hdr:?}");
            }
        }
        // ACKs: wait briefly when the window is full, otherwise just drain.
        let window_full = snd_nxt == data.len() || snd_nxt + mss > snd_una + wnd;
        let wait = if window_full {
            Duration::from_millis(200)
        } else {
            Duration::ZERO
        };
        let before = snd_una;
        read_acks(fd, &mut buf, pair, sport, wait, |t| {
            if t.flags & tcp::flags::ACK != 0 {
                let acked = t.ack.wrapping_sub(base) as usize;
                if acked <= data.len() && acked > snd_una {
                    snd_una = acked;
                }
                wnd = usize::from(t.window) << peer_ws;
            }
            // Stop at the first ACK that makes progress when waiting.
            window_full && snd_una > before
        })?;
        if snd_una > before {
            last_progress = Instant::now();
        } else if last_progress.elapsed() > Duration::from_millis(500) {
            // Go back N: resend everything not acknowledged.
            stats.retransmits += 1;
            snd_nxt = snd_una;
            last_progress = Instant::now();
        }
        if snd_nxt < snd_una {
            snd_nxt = snd_una;
        }
    }

    // FIN, until it is acknowledged.
    let fin_seq = base.wrapping_add(data.len() as u32);
    loop {
        if Instant::now() >= deadline {
            return Err(timed_out("FIN not acknowledged"));
        }
        let fin = seg(
            &mut ip,
            fin_seq,
            rcv,
            tcp::flags::FIN | tcp::flags::ACK,
            &[],
            &[],
        );
        tun_write(fd, &plain_hdr(), &fin)?;
        let acked = read_acks(fd, &mut buf, pair, sport, Duration::from_millis(500), |t| {
            t.ack == fin_seq.wrapping_add(1)
        })?;
        if acked {
            return Ok(stats);
        }
    }
}

#[test]
fn gro_stream_to_kernel_server_v4() {
    if !require_root("gro_stream_to_kernel_server_v4") {
        return;
    }
    gro_stream(false);
}

#[test]
fn gro_stream_to_kernel_server_v6() {
    if !require_root("gro_stream_to_kernel_server_v6") {
        return;
    }
    gro_stream(true);
}
