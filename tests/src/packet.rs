//! Hand-built IPv4/IPv6 packets with UDP or TCP, and parsers for what the
//! kernel sends back.
//!
//! The builders depend on the code under test only through the checksum
//! primitives of `fdlink_gso::checksum`, which have their own property
//! tests; the parsers use `fdlink_gso::wire`. Everything here works on IP
//! packets (no link header, no virtio header).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;

use fdlink_gso::checksum::{self, Checksum};
use fdlink_gso::wire::{IpVersion, PacketLayout, proto, tcp};

/// A bare IPv4 packet of `len` bytes (at least 20): a header with only
/// its version, length and total length set, every other byte `tag`. No
/// checksum is right; for tests of the link, which does not look past the
/// IP version.
pub fn tagged_ipv4(len: usize, tag: u8) -> Vec<u8> {
    let mut p = vec![tag; len.max(20)];
    p[0] = 0x45;
    let total = p.len() as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p
}

/// The IP layer of a test packet.
#[derive(Debug, Clone)]
pub struct IpSpec {
    /// Source address.
    pub src: IpAddr,
    /// Destination address (its family decides the IP version).
    pub dst: IpAddr,
    /// IPv4 TTL / IPv6 hop limit.
    pub ttl: u8,
    /// IPv4 identification.
    pub ident: u16,
    /// IPv4 options (a multiple of 4 bytes).
    pub v4_options: Vec<u8>,
    /// Put an 8-byte destination-options header before the transport header
    /// (IPv6).
    pub v6_dstopts: bool,
}

impl IpSpec {
    /// `src` → `dst`, TTL 64, identification 0x1234, no options.
    pub fn new(src: IpAddr, dst: IpAddr) -> Self {
        Self {
            src,
            dst,
            ttl: 64,
            ident: 0x1234,
            v4_options: Vec::new(),
            v6_dstopts: false,
        }
    }

    /// Whether this is an IPv6 packet.
    pub fn is_v6(&self) -> bool {
        self.dst.is_ipv6()
    }

    /// Length of the IP header including options / extension headers.
    pub fn header_len(&self) -> usize {
        if self.is_v6() {
            40 + if self.v6_dstopts { 8 } else { 0 }
        } else {
            20 + self.v4_options.len()
        }
    }

    /// Pseudo-header sum for a transport segment of `l4_len` bytes.
    pub fn pseudo(&self, protocol: u8, l4_len: usize) -> Checksum {
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

    /// The IP packet carrying `l4` (whose checksum is already set). IPv4
    /// packets have DF set and a complete header checksum; IPv6 packets a
    /// nonzero flow label.
    pub fn wrap(&self, protocol: u8, l4: &[u8]) -> Vec<u8> {
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
pub enum Csum {
    /// The complete checksum.
    Full,
    /// The folded, uncomplemented pseudo-header sum including the full L4
    /// length, as `NEEDS_CSUM` requires.
    Seed,
}

/// A TCP header; `options` must be a multiple of 4 bytes.
#[derive(Debug, Clone, Copy)]
pub struct TcpSpec<'a> {
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Flags byte (`tcp::flags`).
    pub flags: u8,
    /// Window field, unscaled.
    pub window: u16,
    /// Options, already padded.
    pub options: &'a [u8],
}

/// A TCP segment from `src` to `dst` carrying `payload`, with no options,
/// a 65535-byte window and every checksum right.
pub fn tcp_segment(
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let t = TcpSpec {
        sport: src.port(),
        dport: dst.port(),
        seq,
        ack,
        flags,
        window: 65535,
        options: &[],
    };
    tcp_packet(&IpSpec::new(src.ip(), dst.ip()), &t, payload, Csum::Full)
}

/// An IP packet carrying TCP segment `t` with `payload`.
pub fn tcp_packet(ip: &IpSpec, t: &TcpSpec<'_>, payload: &[u8], csum: Csum) -> Vec<u8> {
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

/// An IP packet carrying a UDP datagram `sport` → `dport` with `payload`.
pub fn udp_packet(ip: &IpSpec, sport: u16, dport: u16, payload: &[u8], csum: Csum) -> Vec<u8> {
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

/// Writes the checksum of transport segment `l4` (field at offset `at`).
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
pub fn pattern(len: usize, salt: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| {
            let x = i.wrapping_add(salt).wrapping_mul(2_654_435_761);
            (x >> 24) as u8 ^ (i >> 8) as u8
        })
        .collect()
}

/// Source and destination address of the IP packet `pkt` laid out as
/// `layout`.
pub fn src_dst(layout: &PacketLayout, pkt: &[u8]) -> (IpAddr, IpAddr) {
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
pub struct TcpSeg {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Flags byte.
    pub flags: u8,
    /// Window field, unscaled.
    pub window: u16,
    /// Where the options are in the packet.
    pub options_range: Range<usize>,
    /// Where the payload is in the packet (up to the IP length).
    pub payload_range: Range<usize>,
}

impl TcpSeg {
    /// The options, given the packet this was parsed from.
    pub fn options<'p>(&self, pkt: &'p [u8]) -> &'p [u8] {
        &pkt[self.options_range.clone()]
    }

    /// The payload, given the packet this was parsed from.
    pub fn payload<'p>(&self, pkt: &'p [u8]) -> &'p [u8] {
        &pkt[self.payload_range.clone()]
    }

    /// Whether all of `flags` are set.
    pub fn has(&self, flags: u8) -> bool {
        self.flags & flags == flags
    }
}

/// The TCP fields of IP packet `pkt`, or `None` when it is not an
/// unfragmented, well-formed TCP packet. Allocates nothing.
pub fn parse_tcp(pkt: &[u8]) -> Option<TcpSeg> {
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
        options_range: layout.l4_offset + 20..layout.payload_offset,
        payload_range: layout.payload_offset..layout.end(),
    })
}

/// The value of TCP option `kind` (its data bytes), if present.
pub fn tcp_option(options: &[u8], kind: u8) -> Option<&[u8]> {
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
pub fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// First differing offset of two byte strings, with a short hex context;
/// `None` when they are equal.
pub fn first_diff(a: &[u8], b: &[u8]) -> Option<String> {
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

/// The UDP fields of an IPv4 packet, parsed by hand (no checks beyond the
/// lengths needed to read them).
#[derive(Debug, Clone, Copy)]
pub struct Udp4<'a> {
    /// Source address.
    pub src: [u8; 4],
    /// Destination address.
    pub dst: [u8; 4],
    /// The IPv4 total length field.
    pub ip_total_len: usize,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// The UDP length field.
    pub udp_len: usize,
    /// The whole UDP datagram as read (header included), to the end of
    /// `pkt`.
    pub datagram: &'a [u8],
}

impl<'a> Udp4<'a> {
    /// The payload as the UDP length field bounds it; `None` when that
    /// field points past what was read.
    pub fn payload(&self) -> Option<&'a [u8]> {
        self.datagram.get(8..self.udp_len)
    }

    /// Everything after the UDP header, whatever the length field says.
    pub fn rest(&self) -> &'a [u8] {
        &self.datagram[8..]
    }
}

/// Parses IPv4 packet `pkt` as UDP; `None` for anything else (another
/// version or protocol, or too short for the headers).
pub fn udp4(pkt: &[u8]) -> Option<Udp4<'_>> {
    if pkt.len() < 28 || pkt[0] >> 4 != 4 || pkt[9] != proto::UDP {
        return None;
    }
    let udp = pkt.get(usize::from(pkt[0] & 0x0f) * 4..)?;
    if udp.len() < 8 {
        return None;
    }
    let be = |b: &[u8], i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    Some(Udp4 {
        src: pkt[12..16].try_into().unwrap(),
        dst: pkt[16..20].try_into().unwrap(),
        ip_total_len: usize::from(be(pkt, 2)),
        sport: be(udp, 0),
        dport: be(udp, 2),
        udp_len: usize::from(be(udp, 4)),
        datagram: udp,
    })
}
