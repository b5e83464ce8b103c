//! Link-layer framing: MAC addresses, EtherTypes, the Ethernet II header and
//! the classification of inbound frames.

pub use fdlink_sys::abi::{MAX_IP_PACKET, VNET_HDR_LEN, VNET_HDR_LEN_MRG};
use std::fmt;

use crate::stats::DropReason;

/// A 48-bit Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// True for group (multicast and broadcast) addresses: the I/G bit.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }

    /// True for `00:00:00:00:00:00`.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// The address as bytes.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// Error from parsing a textual MAC address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseMacError;

impl fmt::Display for ParseMacError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected a MAC address as six hex octets separated by ':'")
    }
}

impl std::error::Error for ParseMacError {}

impl std::str::FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or(ParseMacError)?;
            if part.is_empty() || part.len() > 2 {
                return Err(ParseMacError);
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| ParseMacError)?;
        }
        if parts.next().is_some() {
            return Err(ParseMacError);
        }
        Ok(MacAddr(out))
    }
}

/// An EtherType: the network protocol a frame carries.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EtherType(pub u16);

impl EtherType {
    /// IPv4 (`0x0800`).
    pub const IPV4: EtherType = EtherType(0x0800);
    /// ARP (`0x0806`).
    pub const ARP: EtherType = EtherType(0x0806);
    /// IPv6 (`0x86dd`).
    pub const IPV6: EtherType = EtherType(0x86dd);

    /// The EtherType for an IP packet, from its version nibble.
    pub fn from_ip_version(packet: &[u8]) -> Option<EtherType> {
        match packet.first().map(|b| b >> 4) {
            Some(4) => Some(EtherType::IPV4),
            Some(6) => Some(EtherType::IPV6),
            _ => None,
        }
    }
}

impl fmt::Debug for EtherType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for EtherType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EtherType::IPV4 => f.write_str("ipv4"),
            EtherType::IPV6 => f.write_str("ipv6"),
            EtherType::ARP => f.write_str("arp"),
            EtherType(other) => write!(f, "0x{other:04x}"),
        }
    }
}

/// The Ethernet II header, as written on the wire.
pub mod ethernet {
    use super::{EtherType, MacAddr};
    use std::ops::Range;

    /// Header length in bytes.
    pub use fdlink_sys::abi::ETHERNET_HEADER_LEN as HEADER_LEN;
    /// Destination MAC.
    pub const DST: Range<usize> = 0..6;
    /// Source MAC.
    pub const SRC: Range<usize> = 6..12;
    /// EtherType.
    pub const ETHERTYPE: Range<usize> = 12..14;

    /// Builds a header.
    pub fn header(dst: MacAddr, src: MacAddr, ethertype: EtherType) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[DST].copy_from_slice(&dst.0);
        h[SRC].copy_from_slice(&src.0);
        h[ETHERTYPE].copy_from_slice(&ethertype.0.to_be_bytes());
        h
    }

    /// Reads (destination, source, EtherType) from a frame of at least
    /// [`HEADER_LEN`] bytes; `None` when shorter.
    pub fn parse(frame: &[u8]) -> Option<(MacAddr, MacAddr, EtherType)> {
        let h: &[u8; HEADER_LEN] = frame.get(..HEADER_LEN)?.try_into().ok()?;
        let mac = |r: Range<usize>| MacAddr(h[r].try_into().expect("6-byte range"));
        Some((
            mac(DST),
            mac(SRC),
            EtherType(u16::from_be_bytes([h[12], h[13]])),
        ))
    }
}

/// Smallest IPv4 header.
const IPV4_MIN_HEADER: usize = 20;
/// Fixed IPv6 header.
const IPV6_HEADER: usize = 40;

/// What inbound classification learned about a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Classified {
    pub(crate) protocol: EtherType,
    pub(crate) link_len: usize,
}

/// Checks a received frame (virtio header already removed) and tells its
/// protocol and link header length, or why it must be dropped.
///
/// With Ethernet framing, a unicast destination other than `own` is foreign
/// (no filtering when `own` is `None`). Without, the IP version nibble picks
/// the protocol. IP packets shorter than their fixed header are short.
pub(crate) fn classify(
    frame: &[u8],
    ethernet: Option<Option<MacAddr>>,
) -> Result<Classified, DropReason> {
    let (protocol, link_len) = match ethernet {
        Some(own) => {
            let (dst, _src, ethertype) = ethernet::parse(frame).ok_or(DropReason::ShortFrame)?;
            if let Some(own) = own
                && !dst.is_multicast()
                && dst != own
            {
                return Err(DropReason::ForeignMac);
            }
            (ethertype, ethernet::HEADER_LEN)
        }
        None => {
            if frame.is_empty() {
                return Err(DropReason::ShortFrame);
            }
            let protocol = EtherType::from_ip_version(frame).ok_or(DropReason::UnknownProtocol)?;
            (protocol, 0)
        }
    };
    let network = &frame[link_len..];
    let min = match protocol {
        EtherType::IPV4 => IPV4_MIN_HEADER,
        EtherType::IPV6 => IPV6_HEADER,
        _ => 0,
    };
    if network.len() < min {
        return Err(DropReason::ShortFrame);
    }
    if link_len > 0 && min > 0 && EtherType::from_ip_version(network) != Some(protocol) {
        // An IP EtherType whose payload is not that IP version.
        return Err(DropReason::UnknownProtocol);
    }
    Ok(Classified { protocol, link_len })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);

    fn ipv4(len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p
    }

    fn frame(dst: MacAddr, ethertype: EtherType, payload: &[u8]) -> Vec<u8> {
        let mut f = ethernet::header(dst, MacAddr([2, 9, 9, 9, 9, 9]), ethertype).to_vec();
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn ip_mode_uses_the_version_nibble() {
        let c = classify(&ipv4(20), None).unwrap();
        assert_eq!(
            c,
            Classified {
                protocol: EtherType::IPV4,
                link_len: 0
            }
        );
        let mut v6 = vec![0u8; 40];
        v6[0] = 0x60;
        assert_eq!(classify(&v6, None).unwrap().protocol, EtherType::IPV6);
        assert_eq!(
            classify(&[0x50; 40], None),
            Err(DropReason::UnknownProtocol)
        );
        assert_eq!(classify(&[], None), Err(DropReason::ShortFrame));
        assert_eq!(classify(&ipv4(19), None), Err(DropReason::ShortFrame));
    }

    #[test]
    fn ethernet_mode_filters_foreign_unicast_only() {
        let mode = Some(Some(OWN));
        let ok = classify(&frame(OWN, EtherType::IPV4, &ipv4(20)), mode).unwrap();
        assert_eq!(
            ok,
            Classified {
                protocol: EtherType::IPV4,
                link_len: 14
            }
        );
        let foreign = frame(MacAddr([2, 0, 0, 0, 0, 2]), EtherType::IPV4, &ipv4(20));
        assert_eq!(classify(&foreign, mode), Err(DropReason::ForeignMac));
        let bcast = frame(MacAddr::BROADCAST, EtherType::ARP, &[0; 28]);
        assert_eq!(classify(&bcast, mode).unwrap().protocol, EtherType::ARP);
        assert!(classify(&foreign, Some(None)).is_ok());
        assert_eq!(classify(&[0u8; 13], mode), Err(DropReason::ShortFrame));
    }

    #[test]
    fn ethernet_ip_payload_is_checked() {
        let mode = Some(Some(OWN));
        assert_eq!(
            classify(&frame(OWN, EtherType::IPV6, &ipv4(40)), mode),
            Err(DropReason::UnknownProtocol)
        );
        assert_eq!(
            classify(&frame(OWN, EtherType::IPV4, &ipv4(10)), mode),
            Err(DropReason::ShortFrame)
        );
    }

    #[test]
    fn mac_parses_and_prints() {
        let mac: MacAddr = "02:00:5e:10:00:0a".parse().unwrap();
        assert_eq!(mac, MacAddr([2, 0, 0x5e, 0x10, 0, 0x0a]));
        assert_eq!(mac.to_string(), "02:00:5e:10:00:0a");
        assert!("02:00:5e:10:00".parse::<MacAddr>().is_err());
        assert!("02:00:5e:10:00:0a:01".parse::<MacAddr>().is_err());
        assert!("zz:00:5e:10:00:0a".parse::<MacAddr>().is_err());
    }

    proptest::proptest! {
        #[test]
        fn classify_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..128), eth in 0u8..3) {
            let mode = match eth { 0 => None, 1 => Some(None), _ => Some(Some(OWN)) };
            let _ = classify(&bytes, mode);
        }
    }
}
