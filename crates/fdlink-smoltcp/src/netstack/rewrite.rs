//! Segments smoltcp 0.14 would mishandle, rewritten before it sees them.
//!
//! **Acknowledgments a closed window would throw away.** smoltcp judges a
//! segment's sequence number before anything else and drops a segment
//! outside its receive window whole, acknowledgment included. RFC 9293
//! (3.10.7.4) asks for the opposite when the window is zero: "special
//! allowance should be made to accept valid ACKs". Without it an echo-like
//! connection can stop for good: a peer segment lost on the link puts the
//! peer's sequence ahead of ours, our window then closes because the
//! application is blocked writing, its writes wait for smoltcp's send
//! buffer, and that buffer waits for the very acknowledgments smoltcp now
//! drops (the peer's retransmissions and bare ACKs all start past our
//! window). So the engine remembers the acknowledgment number of the last
//! segment it sent on each connection — the sequence number smoltcp
//! expects next — and, while a connection's window is closed, hands
//! smoltcp each new acknowledgment the peer sends a second time, as a bare
//! ACK at that sequence number, which smoltcp accepts. Only an
//! acknowledgment newer than every earlier one from the peer is handed
//! over, so smoltcp never counts one as a duplicate.
//!
//! **A FIN behind data that did not fit.** smoltcp takes the part of a
//! segment inside its window and, when the segment ends with a FIN, takes
//! the FIN too, even if the end of the data was cut off: the stream ends
//! a few bytes short. Its scaled window rounds down, so the window's right
//! edge can move back by up to 2^scale − 1 bytes, and a peer that fills
//! the window it was offered earlier (any sender limited by our window)
//! sends exactly such bytes. So a segment carrying data and a FIN goes to
//! smoltcp as the data without the FIN, then a bare FIN at the end of the
//! data, which smoltcp takes only when the data before it is all in (the
//! peer sends the FIN again otherwise).

use fdlink_gso::checksum::{self, Checksum};
use fdlink_gso::wire::{IpVersion, PacketLayout, proto};
use smoltcp::socket::tcp;

const TCP_FIN: u8 = 0x01;
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
    rewritten(ip, seq, TCP_ACK, false, out)
}

/// Appends to `out` segment `ip` (which carries data and a FIN) as two:
/// its data without the FIN, then a bare FIN at the end of the data;
/// returns where the second starts. `None` (and nothing appended) when
/// `ip` is not a whole TCP segment.
pub(crate) fn split_fin(
    ip: &[u8],
    seq: u32,
    payload_len: usize,
    out: &mut Vec<u8>,
) -> Option<usize> {
    let flags = tcp_flags(ip)?;
    let start = out.len();
    if !rewritten(ip, seq, flags & !TCP_FIN, true, out) {
        return None;
    }
    let first = out.len();
    let fin_seq = seq.wrapping_add(payload_len as u32);
    if !rewritten(ip, fin_seq, (flags & TCP_ACK) | TCP_FIN, false, out) {
        out.truncate(start);
        return None;
    }
    Some(first)
}

fn tcp_flags(ip: &[u8]) -> Option<u8> {
    let layout = PacketLayout::parse(ip).ok()?;
    ip.get(layout.l4_offset + 13).copied()
}

/// Appends to `out` segment `ip` with sequence number `seq`, flags `flags`
/// and its payload or none; the urgent pointer cleared, lengths and
/// checksums made right.
fn rewritten(ip: &[u8], seq: u32, flags: u8, with_payload: bool, out: &mut Vec<u8>) -> bool {
    let Ok(layout) = PacketLayout::parse(ip) else {
        return false;
    };
    if layout.l4_protocol != proto::TCP || layout.fragment || layout.ip_offset != 0 {
        return false;
    }
    let end = if with_payload {
        layout.ip_len
    } else {
        layout.payload_offset
    };
    let Some(kept) = ip.get(..end) else {
        return false;
    };
    let start = out.len();
    out.extend_from_slice(kept);
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
    tcp[13] = flags & !0x20; // no URG, so no urgent pointer
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
                    fin: false,
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
    fn a_fin_behind_data_is_split_into_the_data_then_a_bare_fin() {
        for v6 in [false, true] {
            let seg = segment(v6, 0x10 | 0x08 | 0x01, &[], b"last bytes");
            let mut out = vec![0xee];
            let second = split_fin(&seg, 1000, 10, &mut out).expect("a TCP segment");
            let (data, fin) = (&out[1..second], &out[second..]);
            assert_eq!(data.len(), seg.len());
            let Inbound::Tcp {
                seq,
                payload_len,
                fin: has_fin,
                ..
            } = classify(data)
            else {
                panic!("TCP");
            };
            assert_eq!((seq, payload_len, has_fin), (1000, 10, false));
            assert_eq!(&data[data.len() - 10..], b"last bytes");
            let Inbound::Tcp {
                seq,
                payload_len,
                fin: has_fin,
                ack,
                ..
            } = classify(fin)
            else {
                panic!("TCP");
            };
            assert_eq!(
                (seq, payload_len, has_fin, ack),
                (1010, 0, true, Some(2000))
            );
            assert!(verifies(data) && verifies(fin));
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
            let mut split = Vec::new();
            if let Some(second) = split_fin(&bytes, seq, 3, &mut split) {
                prop_assert!(second <= split.len());
            }
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
