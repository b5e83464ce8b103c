//! A once-parsed summary of where each layer of an IP packet starts.

use super::{WireError, ipv4, ipv6, proto, tcp, udp};
use crate::checksum::{self, Checksum};

/// IP version of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpVersion {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// Where the IP header, the transport header and the payload of a packet
/// are, as offsets from the start of the buffer that was parsed (so a link
/// header of `ip_offset` bytes may precede the IP header).
///
/// Only TCP and UDP headers are parsed; for other protocols and for
/// fragments `l4_header_len` is 0 and `payload_offset == l4_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PacketLayout {
    /// IP version.
    pub version: IpVersion,
    /// Offset of the IP header (the link header length).
    pub ip_offset: usize,
    /// IP header length: IPv4 options or IPv6 extension headers included.
    pub ip_header_len: usize,
    /// IP packet length according to the IP header (trailing bytes of the
    /// buffer beyond it are padding).
    pub ip_len: usize,
    /// Transport protocol (the last next-header value for IPv6).
    pub l4_protocol: u8,
    /// Offset of the transport header: `ip_offset + ip_header_len`.
    pub l4_offset: usize,
    /// Transport header length (TCP options included), 0 when not parsed.
    pub l4_header_len: usize,
    /// Offset of the transport payload.
    pub payload_offset: usize,
    /// Whether the packet is an IP fragment (transport header not parsed).
    pub fragment: bool,
}

impl PacketLayout {
    /// Parses an IP packet that starts at offset 0 of `packet`.
    ///
    /// # Errors
    /// Any [`WireError`] describing the first inconsistency found.
    pub fn parse(packet: &[u8]) -> Result<Self, WireError> {
        Self::parse_at(packet, 0)
    }

    /// Parses an IP packet that starts at `ip_offset` (after a link header).
    ///
    /// # Errors
    /// Any [`WireError`] describing the first inconsistency found;
    /// [`WireError::Truncated`] when `ip_offset` is past the end.
    pub fn parse_at(packet: &[u8], ip_offset: usize) -> Result<Self, WireError> {
        let ip = packet.get(ip_offset..).ok_or(WireError::Truncated)?;
        let first = *ip.first().ok_or(WireError::Truncated)?;
        let (version, ip_header_len, ip_len, l4_protocol, fragment) = match first >> 4 {
            4 => {
                let p = ipv4::Packet::new_checked(ip)?;
                let len = usize::from(p.total_len());
                (
                    IpVersion::V4,
                    p.header_len(),
                    len,
                    p.protocol(),
                    p.is_fragment(),
                )
            }
            6 => {
                let p = ipv6::Packet::new_checked(ip)?;
                let ext = p.extensions()?;
                (
                    IpVersion::V6,
                    ext.l4_offset,
                    p.total_len(),
                    ext.protocol,
                    ext.fragment,
                )
            }
            v => return Err(WireError::UnknownVersion(v)),
        };
        let l4 = &ip[ip_header_len..ip_len];
        let l4_header_len = match l4_protocol {
            _ if fragment => 0,
            proto::TCP => tcp::Packet::new_checked(l4)
                .map_err(|_| WireError::BadL4HeaderLength)?
                .header_len(),
            proto::UDP => {
                udp::Packet::new_checked(l4).map_err(|_| WireError::BadL4HeaderLength)?;
                udp::HEADER_LEN
            }
            _ => 0,
        };
        let l4_offset = ip_offset + ip_header_len;
        Ok(Self {
            version,
            ip_offset,
            ip_header_len,
            ip_len,
            l4_protocol,
            l4_offset,
            l4_header_len,
            payload_offset: l4_offset + l4_header_len,
            fragment,
        })
    }

    /// Offset one past the last byte of the IP packet.
    pub fn end(&self) -> usize {
        self.ip_offset + self.ip_len
    }

    /// Transport length: header plus payload.
    pub fn l4_len(&self) -> usize {
        self.end() - self.l4_offset
    }

    /// Transport payload length.
    pub fn payload_len(&self) -> usize {
        self.end() - self.payload_offset
    }

    /// Offset of the transport checksum field relative to the transport
    /// header (`csum_offset`), for TCP and UDP.
    pub fn l4_checksum_offset(&self) -> Option<u16> {
        match self.l4_protocol {
            proto::TCP => Some(tcp::CHECKSUM_OFFSET),
            proto::UDP => Some(udp::CHECKSUM_OFFSET),
            _ => None,
        }
    }

    /// The pseudo-header sum of this packet's transport protocol for an L4
    /// length of `l4_len`. `packet` must be the buffer this layout was
    /// parsed from (or a copy of its headers); `None` if it is too short.
    pub(crate) fn pseudo_header(&self, packet: &[u8], l4_len: usize) -> Option<Checksum> {
        let ip = packet.get(self.ip_offset..)?;
        Some(match self.version {
            IpVersion::V4 => {
                let p = ipv4::Packet::new_checked(ip).ok()?;
                let len = u16::try_from(l4_len).ok()?;
                checksum::pseudo_header_ipv4(p.src_addr(), p.dst_addr(), self.l4_protocol, len)
            }
            IpVersion::V6 => {
                let p = ipv6::Packet::new_checked(ip).ok()?;
                let len = u32::try_from(l4_len).ok()?;
                checksum::pseudo_header_ipv6(p.src_addr(), p.dst_addr(), self.l4_protocol, len)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_v4(options: usize, payload: usize) -> Vec<u8> {
        let ihl = 20 + options;
        let total = ihl + 20 + payload;
        let mut p = vec![0u8; total + 3]; // 3 bytes of trailing padding
        p[0] = 0x40 | (ihl / 4) as u8;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[9] = proto::TCP;
        p[ihl + 12] = 5 << 4;
        p
    }

    #[test]
    fn ipv4_with_options() {
        let p = tcp_v4(8, 100);
        let l = PacketLayout::parse(&p).unwrap();
        assert_eq!(l.version, IpVersion::V4);
        assert_eq!(
            (l.ip_header_len, l.l4_offset, l.l4_header_len),
            (28, 28, 20)
        );
        assert_eq!(
            (l.payload_offset, l.ip_len, l.payload_len()),
            (48, 148, 100)
        );
    }

    #[test]
    fn link_prefix_shifts_offsets() {
        let mut p = vec![0xee; 14];
        p.extend_from_slice(&tcp_v4(0, 5));
        let l = PacketLayout::parse_at(&p, 14).unwrap();
        assert_eq!((l.l4_offset, l.payload_offset, l.end()), (34, 54, 59));
    }

    #[test]
    fn truncated_tcp_header_is_an_error() {
        let mut p = tcp_v4(0, 0);
        p[32] = 6 << 4;
        assert_eq!(PacketLayout::parse(&p), Err(WireError::BadL4HeaderLength));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(PacketLayout::parse(&[]).is_err());
        assert!(PacketLayout::parse(&[0x70; 60]).is_err());
        assert!(PacketLayout::parse_at(&[0x45; 10], 11).is_err());
    }
}
