//! Acknowledgments a closed receive window would throw away.
//!
//! smoltcp judges a segment's sequence number before anything else and
//! drops a segment outside its receive window whole, acknowledgment
//! included. RFC 9293 (3.10.7.4) asks for the opposite when the window is
//! zero: "special allowance should be made to accept valid ACKs". Without
//! it an echo-like connection can stop for good: the peer's data segment
//! that was lost on the link puts the peer's sequence ahead of ours, our
//! window then closes because the application is blocked writing, its
//! writes wait for smoltcp's send buffer, and that buffer waits for the
//! very acknowledgments smoltcp now drops (the peer's retransmissions and
//! its bare ACKs all start past our window).
//!
//! The engine makes up for it. It remembers the acknowledgment number of
//! the last segment it sent on each connection — the sequence number
//! smoltcp expects next — and, while a connection's window is closed, hands
//! smoltcp each new acknowledgment the peer sends a second time, as a bare
//! ACK at that sequence number, which smoltcp accepts. Only an
//! acknowledgment newer than every earlier one from the peer is handed
//! over, so smoltcp never counts one as a duplicate.

use fdlink_gso::checksum::{self, Checksum};
use fdlink_gso::wire::{IpVersion, PacketLayout, proto};
use smoltcp::socket::tcp;

const TCP_ACK: u8 = 0x10;

/// What the engine knows of one connection's acknowledgments.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct AckTrack {
    /// The acknowledgment number of the last segment sent to the peer:
    /// the sequence number smoltcp expects next.
    sent: Option<u32>,
    /// The newest acknowledgment number the peer sent.
    peer: Option<u32>,
}

impl AckTrack {
    /// A segment to the peer carried acknowledgment number `ack`.
    pub(crate) fn sent(&mut self, ack: u32) {
        self.sent = Some(ack);
    }

    /// A segment from the peer (sequence number `seq`, `payload_len`
    /// bytes, acknowledgment `ack`) is about to reach `socket`: the
    /// sequence number of the bare ACK that salvages its acknowledgment,
    /// when smoltcp would drop it.
    pub(crate) fn salvage(
        &mut self,
        seq: u32,
        ack: Option<u32>,
        payload_len: usize,
        socket: &tcp::Socket<'_>,
    ) -> Option<u32> {
        let ack = ack?;
        if self.peer.is_some_and(|p| !seq_after(ack, p)) {
            // Not new: smoltcp may have taken it already.
            return None;
        }
        self.peer = Some(ack);
        let expected = self.sent?;
        if payload_len == 0 && seq == expected {
            // smoltcp takes a bare ACK at the expected sequence anyway.
            return None;
        }
        window_closed(socket).then_some(expected)
    }
}

/// `a` comes after `b` in sequence space (RFC 1982 arithmetic).
pub(crate) fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// True when the socket's receive window, as smoltcp advertises it, is
/// zero: its free space shifted by the window scale it would use. (A peer
/// without window scaling sees a zero window only at no free space; the
/// salvage is harmless in between.)
pub(crate) fn window_closed(socket: &tcp::Socket<'_>) -> bool {
    let capacity = socket.recv_capacity();
    let free = capacity.saturating_sub(socket.recv_queue());
    let capacity_log2 = (usize::BITS - capacity.leading_zeros()) as usize;
    let shift = capacity_log2.saturating_sub(16).min(14);
    free >> shift == 0
}

/// Appends to `out` a bare ACK made from segment `ip`: its headers (IP
/// options and TCP options kept), no payload, sequence number `seq`, only
/// the ACK flag, lengths and checksums made right. False (and nothing
/// appended) when `ip` is not a whole TCP segment.
pub(crate) fn bare_ack(ip: &[u8], seq: u32, out: &mut Vec<u8>) -> bool {
    let Ok(layout) = PacketLayout::parse(ip) else {
        return false;
    };
    if layout.l4_protocol != proto::TCP || layout.fragment || layout.ip_offset != 0 {
        return false;
    }
    let Some(headers) = ip.get(..layout.payload_offset) else {
        return false;
    };
    let start = out.len();
    out.extend_from_slice(headers);
    let packet = &mut out[start..];
    let total = packet.len();
    let l4 = layout.l4_offset;
    let tcp_len = total - l4;
    let pseudo = match layout.version {
        IpVersion::V4 => {
            packet[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            packet[10..12].fill(0);
            let csum = checksum::checksum(&packet[..layout.ip_header_len]);
            packet[10..12].copy_from_slice(&csum.to_be_bytes());
            let src: [u8; 4] = packet[12..16].try_into().unwrap_or_default();
            let dst: [u8; 4] = packet[16..20].try_into().unwrap_or_default();
            checksum::pseudo_header_ipv4(src, dst, proto::TCP, tcp_len as u16)
        }
        IpVersion::V6 => {
            packet[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
            let src: [u8; 16] = packet[8..24].try_into().unwrap_or_default();
            let dst: [u8; 16] = packet[24..40].try_into().unwrap_or_default();
            checksum::pseudo_header_ipv6(src, dst, proto::TCP, tcp_len as u32)
        }
    };
    let tcp = &mut packet[l4..];
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[13] = TCP_ACK;
    // No urgent pointer without URG.
    tcp[18..20].fill(0);
    tcp[16..18].fill(0);
    let mut sum: Checksum = pseudo;
    sum.add_bytes(tcp);
    tcp[16..18].copy_from_slice(&sum.finish().to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netstack::wire::{Inbound, classify};
    use proptest::prelude::*;
    use std::net::IpAddr;

    /// An IPv4 or IPv6 TCP segment with `options` and `payload`.
    fn segment(v6: bool, flags: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
        let tcp_len = 20 + options.len() + payload.len();
        let mut p = Vec::new();
        if v6 {
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&(tcp_len as u16).to_be_bytes());
            p.extend_from_slice(&[proto::TCP, 64]);
            p.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            p.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        } else {
            let total = 20 + tcp_len;
            p.extend_from_slice(&[0x45, 0]);
            p.extend_from_slice(&(total as u16).to_be_bytes());
            p.extend_from_slice(&[0, 1, 0x40, 0, 64, proto::TCP, 0, 0]);
            p.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
            let csum = checksum::checksum(&p[..20]);
            p[10..12].copy_from_slice(&csum.to_be_bytes());
        }
        p.extend_from_slice(&4000u16.to_be_bytes());
        p.extend_from_slice(&80u16.to_be_bytes());
        p.extend_from_slice(&1000u32.to_be_bytes());
        p.extend_from_slice(&2000u32.to_be_bytes());
        p.push((((20 + options.len()) / 4) << 4) as u8);
        p.push(flags);
        p.extend_from_slice(&512u16.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0]);
        p.extend_from_slice(options);
        p.extend_from_slice(payload);
        p
    }

    /// The TCP checksum of `ip` verifies.
    fn verifies(ip: &[u8]) -> bool {
        let layout = PacketLayout::parse(ip).unwrap();
        let tcp = &ip[layout.l4_offset..layout.ip_len];
        let Inbound::Tcp { src, dst, .. } = classify(ip) else {
            panic!("a TCP segment");
        };
        let mut sum = match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                checksum::pseudo_header_ipv4(s.octets(), d.octets(), proto::TCP, tcp.len() as u16)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                checksum::pseudo_header_ipv6(s.octets(), d.octets(), proto::TCP, tcp.len() as u32)
            }
            _ => unreachable!(),
        };
        sum.add_bytes(tcp);
        sum.finish() == 0
    }

    #[test]
    fn a_data_segment_becomes_a_bare_ack_at_the_given_sequence() {
        for v6 in [false, true] {
            let options = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
            let seg = segment(v6, 0x18 | 0x01, &options, b"nineteen bytes here");
            let Inbound::Tcp {
                src,
                dst,
                seq,
                ack,
                payload_len,
                ..
            } = classify(&seg)
            else {
                panic!("a TCP segment");
            };
            assert_eq!((seq, ack, payload_len), (1000, Some(2000), 19));
            let mut out = vec![0xee];
            assert!(bare_ack(&seg, 777, &mut out));
            let bare = &out[1..];
            assert_eq!(bare.len(), seg.len() - 19);
            assert_eq!(
                classify(bare),
                Inbound::Tcp {
                    src,
                    dst,
                    syn: false,
                    seq: 777,
                    ack: Some(2000),
                    payload_len: 0
                }
            );
            let ack = bare;
            let layout = PacketLayout::parse(ack).unwrap();
            assert_eq!(ack[layout.l4_offset + 13], TCP_ACK, "only ACK is left");
            assert_eq!(&ack[layout.l4_offset + 20..], &options, "options kept");
            assert!(verifies(ack));
            if !v6 {
                assert_eq!(checksum::checksum(&ack[..20]), 0, "IPv4 header checksum");
            }
        }
    }

    #[test]
    fn sequence_comparison_wraps() {
        assert!(seq_after(1, 0));
        assert!(seq_after(5, u32::MAX - 5));
        assert!(!seq_after(u32::MAX - 5, 5));
        assert!(!seq_after(7, 7));
    }

    #[test]
    fn a_window_is_closed_below_its_scale() {
        let socket = |cap: usize| {
            tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0u8; cap]),
                tcp::SocketBuffer::new(vec![0u8; 16]),
            )
        };
        assert!(!window_closed(&socket(256 << 10)));
        assert!(!window_closed(&socket(1024)));
        assert!(window_closed(&socket(0)));
    }

    proptest! {
        #[test]
        fn parse_and_bare_ack_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), seq in any::<u32>()) {
            let mut out = Vec::new();
            if bare_ack(&bytes, seq, &mut out) {
                match classify(&out) {
                    Inbound::Tcp { seq: s, payload_len, .. } => {
                        prop_assert_eq!(s, seq);
                        prop_assert_eq!(payload_len, 0);
                    }
                    other => prop_assert!(false, "a bare ACK reads as {:?}", other),
                }
            }
        }
    }
}
