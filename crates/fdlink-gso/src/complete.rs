//! Checksum completion for `NEEDS_CSUM` packets, and verification of
//! transport checksums.
//!
//! A packet handed over with `NEEDS_CSUM` carries, in its checksum field,
//! only the pseudo-header *seed* (the folded, uncomplemented pseudo-header
//! sum, full L4 length included). Completing it means summing everything
//! from `csum_start` to the end — seed included — and storing the
//! complement, exactly as Linux's `skb_checksum_help` does (a result of 0
//! is stored as `0xffff`).

use core::fmt;

use crate::checksum::{self, Checksum};
use crate::wire::{IpVersion, PacketLayout, proto, udp};

/// Why a checksum could not be completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CompleteError {
    /// `csum_start` is past the end of the packet.
    StartOutOfBounds {
        /// The requested start.
        csum_start: usize,
        /// The packet length.
        packet_len: usize,
    },
    /// The 2-byte checksum field at `csum_start + csum_offset` does not fit
    /// in the packet.
    FieldOutOfBounds {
        /// The requested start.
        csum_start: usize,
        /// The requested offset.
        csum_offset: usize,
        /// The packet length.
        packet_len: usize,
    },
}

impl fmt::Display for CompleteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::StartOutOfBounds {
                csum_start,
                packet_len,
            } => write!(
                f,
                "csum_start {csum_start} beyond packet length {packet_len}"
            ),
            Self::FieldOutOfBounds {
                csum_start,
                csum_offset,
                packet_len,
            } => write!(
                f,
                "checksum field at {csum_start}+{csum_offset} beyond packet length {packet_len}"
            ),
        }
    }
}

impl std::error::Error for CompleteError {}

/// Completes the checksum of a `NEEDS_CSUM` packet in place: sums
/// `packet[csum_start..]` (the checksum field holds the pseudo-header seed)
/// and stores the complement at `csum_start + csum_offset`. Returns the
/// stored value.
///
/// # Errors
/// [`CompleteError`] when the start or the checksum field is out of bounds;
/// the packet is then left untouched.
pub fn complete_checksum(
    packet: &mut [u8],
    csum_start: usize,
    csum_offset: usize,
) -> Result<u16, CompleteError> {
    let packet_len = packet.len();
    if csum_start > packet_len {
        return Err(CompleteError::StartOutOfBounds {
            csum_start,
            packet_len,
        });
    }
    let at = csum_start
        .checked_add(csum_offset)
        .filter(|&at| at.checked_add(2).is_some_and(|end| end <= packet_len))
        .ok_or(CompleteError::FieldOutOfBounds {
            csum_start,
            csum_offset,
            packet_len,
        })?;
    let csum = match checksum::checksum(&packet[csum_start..]) {
        0 => 0xffff,
        c => c,
    };
    packet[at..at + 2].copy_from_slice(&csum.to_be_bytes());
    Ok(csum)
}

/// Verifies the transport checksum of an IP packet (no link header): TCP
/// and UDP over IPv4/IPv6, ICMP over IPv4 and ICMPv6 over IPv6.
///
/// Returns `false` for packets that do not parse, for fragments, for other
/// protocols and for a UDP length field outside `8..=` the IP payload
/// length. A zero UDP checksum over IPv4 means "no checksum" and verifies;
/// over IPv6 it does not.
#[must_use]
pub fn verify_l4_checksum(ip_packet: &[u8]) -> bool {
    let Ok(layout) = PacketLayout::parse(ip_packet) else {
        return false;
    };
    if layout.fragment {
        return false;
    }
    let mut l4 = &ip_packet[layout.l4_offset..layout.end()];
    let with_pseudo = match (layout.l4_protocol, layout.version) {
        (proto::TCP, _) | (proto::ICMPV6, IpVersion::V6) => true,
        (proto::ICMP, IpVersion::V4) => false,
        (proto::UDP, version) => {
            let Ok(u) = udp::Packet::new_checked(l4) else {
                return false;
            };
            let ulen = usize::from(u.len());
            if ulen < udp::HEADER_LEN || ulen > l4.len() {
                return false;
            }
            if u.checksum() == 0 {
                return version == IpVersion::V4;
            }
            l4 = &l4[..ulen];
            true
        }
        _ => return false,
    };
    let mut c = if with_pseudo {
        match layout.pseudo_header(ip_packet, l4.len()) {
            Some(c) => c,
            None => return false,
        }
    } else {
        Checksum::new()
    };
    c.add_bytes(l4);
    c.fold() == 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IPv4 + UDP, 4 bytes of payload, checksum field holding the seed.
    fn udp_v4_seeded() -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 32, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, //
            0x30, 0x39, 0x00, 0x35, 0, 12, 0, 0, 1, 2, 3, 4,
        ];
        let seed = checksum::pseudo_header_ipv4([10, 0, 0, 1], [10, 0, 0, 2], 17, 12).fold();
        p[26..28].copy_from_slice(&seed.to_be_bytes());
        p
    }

    #[test]
    fn completes_a_seeded_packet() {
        let mut p = udp_v4_seeded();
        assert!(!verify_l4_checksum(&p));
        complete_checksum(&mut p, 20, 6).unwrap();
        assert!(verify_l4_checksum(&p));
    }

    #[test]
    fn rejects_out_of_bounds() {
        let mut p = udp_v4_seeded();
        let before = p.clone();
        assert!(complete_checksum(&mut p, 33, 0).is_err());
        assert!(complete_checksum(&mut p, 20, 11).is_err());
        assert!(complete_checksum(&mut p, 20, usize::MAX).is_err());
        assert!(complete_checksum(&mut p, usize::MAX, 1).is_err());
        assert_eq!(p, before);
    }

    #[test]
    fn zero_udp_checksum_rules() {
        let mut p = udp_v4_seeded();
        p[26..28].copy_from_slice(&[0, 0]);
        assert!(verify_l4_checksum(&p));
    }

    #[test]
    fn icmpv4_echo_verifies() {
        let mut p = vec![
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, //
            8, 0, 0, 0, 0, 1, 0, 1,
        ];
        let c = checksum::checksum(&p[20..]);
        p[22..24].copy_from_slice(&c.to_be_bytes());
        assert!(verify_l4_checksum(&p));
        p[27] ^= 1;
        assert!(!verify_l4_checksum(&p));
    }
}
