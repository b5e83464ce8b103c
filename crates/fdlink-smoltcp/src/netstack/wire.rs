//! What the engine reads off a packet before smoltcp sees it (is it a SYN,
//! a UDP datagram, an echo request, and between which addresses), and the
//! packets it builds itself: UDP datagrams and echo replies. Parsing goes
//! through fdlink-gso's checked views; nothing here panics on any bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;

use fdlink_gso::checksum::{self, Checksum};
use fdlink_gso::wire::{IpVersion, PacketLayout, proto};

/// TCP header flags the engine looks at.
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// What an inbound IP packet is, as far as the engine cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Inbound {
    /// A TCP segment; `syn` for an opening SYN (SYN without ACK), `fin`
    /// when it carries a FIN; `ack` its acknowledgment number when the ACK
    /// flag is set.
    Tcp {
        src: SocketAddr,
        dst: SocketAddr,
        syn: bool,
        fin: bool,
        seq: u32,
        ack: Option<u32>,
        payload_len: usize,
    },
    /// A UDP datagram and where its payload is.
    Udp {
        src: SocketAddr,
        dst: SocketAddr,
        payload: Range<usize>,
    },
    /// An ICMP or ICMPv6 echo request.
    EchoRequest { dst: IpAddr },
    /// Anything else (smoltcp's to judge).
    Other { dst: Option<IpAddr> },
}

fn addrs(ip: &[u8], layout: &PacketLayout) -> Option<(IpAddr, IpAddr)> {
    match layout.version {
        IpVersion::V4 => {
            let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            Some((Ipv4Addr::from(src).into(), Ipv4Addr::from(dst).into()))
        }
        IpVersion::V6 => {
            let src: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            Some((Ipv6Addr::from(src).into(), Ipv6Addr::from(dst).into()))
        }
    }
}

fn ports(ip: &[u8], at: usize) -> Option<(u16, u16)> {
    let p = ip.get(at..at + 4)?;
    Some((
        u16::from_be_bytes([p[0], p[1]]),
        u16::from_be_bytes([p[2], p[3]]),
    ))
}

fn word(ip: &[u8], at: usize) -> Option<u32> {
    let w = ip.get(at..at + 4)?;
    Some(u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
}

/// Reads what `ip` (an IP packet, no link header) is.
pub(crate) fn classify(ip: &[u8]) -> Inbound {
    let Ok(layout) = PacketLayout::parse(ip) else {
        return Inbound::Other { dst: None };
    };
    let Some((src, dst)) = addrs(ip, &layout) else {
        return Inbound::Other { dst: None };
    };
    if layout.fragment {
        return Inbound::Other { dst: Some(dst) };
    }
    let l4 = layout.l4_offset;
    match layout.l4_protocol {
        proto::TCP => {
            let (Some((sport, dport)), Some(seq), Some(ack), Some(&flags)) = (
                ports(ip, l4),
                word(ip, l4 + 4),
                word(ip, l4 + 8),
                ip.get(l4 + 13),
            ) else {
                return Inbound::Other { dst: Some(dst) };
            };
            Inbound::Tcp {
                src: SocketAddr::new(src, sport),
                dst: SocketAddr::new(dst, dport),
                syn: flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
                fin: flags & TCP_FIN != 0,
                seq,
                ack: (flags & TCP_ACK != 0).then_some(ack),
                payload_len: layout.ip_len.saturating_sub(layout.payload_offset),
            }
        }
        proto::UDP => match ports(ip, l4) {
            Some((sport, dport)) => Inbound::Udp {
                src: SocketAddr::new(src, sport),
                dst: SocketAddr::new(dst, dport),
                payload: layout.payload_offset..layout.ip_len,
            },
            None => Inbound::Other { dst: Some(dst) },
        },
        proto::ICMP if layout.version == IpVersion::V4 && ip.get(l4) == Some(&8) => {
            Inbound::EchoRequest { dst }
        }
        proto::ICMPV6 if layout.version == IpVersion::V6 && ip.get(l4) == Some(&128) => {
            Inbound::EchoRequest { dst }
        }
        _ => Inbound::Other { dst: Some(dst) },
    }
}

/// Length of a UDP datagram of `payload` bytes between addresses of
/// `src`'s family, IP header included.
pub(crate) fn udp_len(src: SocketAddr, payload: usize) -> usize {
    let ip = if src.is_ipv4() { 20 } else { 40 };
    ip + 8 + payload
}

/// Writes a UDP datagram from `src` to `dst` carrying `payload` into `out`
/// (exactly [`udp_len`] bytes), every checksum filled in. `ident` is the
/// IPv4 identification.
pub(crate) fn write_udp(
    out: &mut [u8],
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
    ident: u16,
) {
    let udp_len = 8 + payload.len();
    let (ip_len, pseudo) = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = 20 + udp_len;
            let h = &mut out[..20];
            h.fill(0);
            h[0] = 0x45;
            h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            h[4..6].copy_from_slice(&ident.to_be_bytes());
            h[6] = 0x40; // don't fragment
            h[8] = 64;
            h[9] = proto::UDP;
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            let csum = checksum::checksum(h);
            h[10..12].copy_from_slice(&csum.to_be_bytes());
            (
                20,
                checksum::pseudo_header_ipv4(s.octets(), d.octets(), proto::UDP, udp_len as u16),
            )
        }
        (s, d) => {
            let (s, d) = (to_v6(s), to_v6(d));
            let h = &mut out[..40];
            h.fill(0);
            h[0] = 0x60;
            h[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
            h[6] = proto::UDP;
            h[7] = 64;
            h[8..24].copy_from_slice(&s.octets());
            h[24..40].copy_from_slice(&d.octets());
            (
                40,
                checksum::pseudo_header_ipv6(s.octets(), d.octets(), proto::UDP, udp_len as u32),
            )
        }
    };
    let u = &mut out[ip_len..ip_len + udp_len];
    u[0..2].copy_from_slice(&src.port().to_be_bytes());
    u[2..4].copy_from_slice(&dst.port().to_be_bytes());
    u[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    u[6..8].fill(0);
    u[8..].copy_from_slice(payload);
    let mut sum: Checksum = pseudo;
    sum.add_bytes(u);
    let csum = match sum.finish() {
        0 => 0xffff,
        c => c,
    };
    u[6..8].copy_from_slice(&csum.to_be_bytes());
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V6(a) => a,
        IpAddr::V4(a) => a.to_ipv6_mapped(),
    }
}

/// Turns the echo request `ip` into its reply in `out` (same length, which
/// the caller sized from `ip`): addresses swapped, type changed, hop limit
/// fresh, checksums recomputed. `None` for anything that is not a whole
/// echo request.
pub(crate) fn write_echo_reply(ip: &[u8], out: &mut [u8]) -> Option<usize> {
    let layout = PacketLayout::parse(ip).ok()?;
    let len = layout.ip_len;
    let out = out.get_mut(..len)?;
    out.copy_from_slice(ip.get(..len)?);
    let l4 = layout.l4_offset;
    match layout.version {
        IpVersion::V4 => {
            let (src, dst) = (out[12..16].to_vec(), out[16..20].to_vec());
            out[12..16].copy_from_slice(&dst);
            out[16..20].copy_from_slice(&src);
            out[8] = 64;
            out[10..12].fill(0);
            let hlen = layout.ip_header_len;
            let csum = checksum::checksum(&out[..hlen]);
            out[10..12].copy_from_slice(&csum.to_be_bytes());
            out[l4] = 0;
            out[l4 + 2..l4 + 4].fill(0);
            let csum = checksum::checksum(&out[l4..len]);
            out[l4 + 2..l4 + 4].copy_from_slice(&csum.to_be_bytes());
        }
        IpVersion::V6 => {
            let (src, dst) = (out[8..24].to_vec(), out[24..40].to_vec());
            out[8..24].copy_from_slice(&dst);
            out[24..40].copy_from_slice(&src);
            out[7] = 64;
            out[l4] = 129;
            out[l4 + 2..l4 + 4].fill(0);
            let s: [u8; 16] = out[8..24].try_into().ok()?;
            let d: [u8; 16] = out[24..40].try_into().ok()?;
            let mut sum = checksum::pseudo_header_ipv6(s, d, proto::ICMPV6, (len - l4) as u32);
            sum.add_bytes(&out[l4..len]);
            out[l4 + 2..l4 + 4].copy_from_slice(&sum.finish().to_be_bytes());
        }
    }
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fdlink_gso::complete::verify_l4_checksum;
    use proptest::prelude::*;

    fn v4(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn built_udp_datagrams_parse_back_and_verify() {
        for (src, dst) in [
            (v4("10.0.0.2:53"), v4("10.0.0.1:40000")),
            (v4("[fd00::2]:53"), v4("[fd00::1]:40000")),
        ] {
            let payload = b"the answer";
            let mut out = vec![0u8; udp_len(src, payload.len())];
            write_udp(&mut out, src, dst, payload, 7);
            assert!(verify_l4_checksum(&out));
            match classify(&out) {
                Inbound::Udp {
                    src: s,
                    dst: d,
                    payload: range,
                } => {
                    assert_eq!((s, d), (src, dst));
                    assert_eq!(&out[range], payload);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn an_echo_reply_swaps_addresses_and_verifies() {
        // IPv4 ICMP echo request 10.0.0.1 -> 192.0.2.9, id 1 seq 1.
        let mut req = vec![
            0x45, 0, 0, 28, 0, 1, 0, 0, 64, 1, 0, 0, 10, 0, 0, 1, 192, 0, 2, 9, 8, 0, 0, 0, 0, 1,
            0, 1,
        ];
        let c = checksum::checksum(&req[..20]);
        req[10..12].copy_from_slice(&c.to_be_bytes());
        let c = checksum::checksum(&req[20..]);
        req[22..24].copy_from_slice(&c.to_be_bytes());
        assert_eq!(
            classify(&req),
            Inbound::EchoRequest {
                dst: "192.0.2.9".parse().unwrap()
            }
        );
        let mut out = vec![0u8; req.len()];
        assert_eq!(write_echo_reply(&req, &mut out), Some(28));
        assert_eq!(&out[12..16], &[192, 0, 2, 9]);
        assert_eq!(&out[16..20], &[10, 0, 0, 1]);
        assert_eq!(out[20], 0, "echo reply");
        assert_eq!(checksum::checksum(&out[..20]), 0, "header checksum");
        assert_eq!(checksum::checksum(&out[20..]), 0, "ICMP checksum");
    }

    proptest! {
        #[test]
        fn classify_and_reply_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = classify(&bytes);
            let mut out = vec![0u8; bytes.len()];
            let _ = write_echo_reply(&bytes, &mut out);
        }
    }
}
