//! IPv6 header view (RFC 8200) and the extension-header walk.

use super::{Field, WireError, get_u16, proto, set_u16};

/// Byte ranges of the IPv6 fixed header fields.
pub mod field {
    use super::Field;
    /// Version, traffic class and flow label.
    pub const VER_TC_FLOW: Field = 0..4;
    /// Payload length (extension headers included).
    pub const PAYLOAD_LEN: Field = 4..6;
    /// Next header.
    pub const NXT_HDR: usize = 6;
    /// Hop limit.
    pub const HOP_LIMIT: usize = 7;
    /// Source address.
    pub const SRC_ADDR: Field = 8..24;
    /// Destination address.
    pub const DST_ADDR: Field = 24..40;
}

/// Byte ranges inside an extension header.
pub mod ext_field {
    use super::Field;
    /// Next header.
    pub const NXT_HDR: usize = 0;
    /// Header extension length in 8-byte units, not counting the first 8.
    pub const LENGTH: usize = 1;
    /// Fragment header: offset (13 bits), reserved, M flag.
    pub const FRAG_OFF_M: Field = 2..4;
}

/// Length of the IPv6 fixed header.
pub const HEADER_LEN: usize = 40;

/// Length of the fragment extension header.
pub const FRAG_HEADER_LEN: usize = 8;

/// Upper bound on the number of extension headers walked, so that a chain
/// of tiny headers cannot make parsing expensive.
pub const MAX_EXTENSIONS: usize = 16;

/// A checked view of an IPv6 packet (fixed header only).
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` after checking the version and that the payload length
    /// fits in the buffer.
    ///
    /// # Errors
    /// [`WireError::Truncated`], [`WireError::UnknownVersion`] or
    /// [`WireError::BadIpLength`].
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let buf = buffer.as_ref();
        if buf.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let version = buf[0] >> 4;
        if version != 6 {
            return Err(WireError::UnknownVersion(version));
        }
        if HEADER_LEN + usize::from(get_u16(buf, &field::PAYLOAD_LEN)) > buf.len() {
            return Err(WireError::BadIpLength);
        }
        Ok(Self { buffer })
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The whole underlying buffer.
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    fn buf(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// Payload length field (extension headers included).
    pub fn payload_len(&self) -> u16 {
        get_u16(self.buf(), &field::PAYLOAD_LEN)
    }

    /// Total packet length according to the header.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + usize::from(self.payload_len())
    }

    /// Next header of the fixed header.
    pub fn next_header(&self) -> u8 {
        self.buf()[field::NXT_HDR]
    }

    /// Hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.buf()[field::HOP_LIMIT]
    }

    /// Source address.
    pub fn src_addr(&self) -> [u8; 16] {
        addr(&self.buf()[field::SRC_ADDR])
    }

    /// Destination address.
    pub fn dst_addr(&self) -> [u8; 16] {
        addr(&self.buf()[field::DST_ADDR])
    }

    /// Walks the extension headers (within the payload length) to the
    /// upper-layer protocol.
    ///
    /// # Errors
    /// [`WireError::BadExtensionHeader`] when a header runs past the payload
    /// or the chain is longer than [`MAX_EXTENSIONS`].
    pub fn extensions(&self) -> Result<Extensions, WireError> {
        walk_extensions(&self.buf()[..self.total_len()], self.next_header())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the payload length field.
    pub fn set_payload_len(&mut self, len: u16) {
        set_u16(self.buffer.as_mut(), &field::PAYLOAD_LEN, len);
    }
}

/// Where the extension-header chain of an IPv6 packet ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extensions {
    /// The upper-layer protocol (the last next-header value).
    pub protocol: u8,
    /// Offset of the upper-layer header from the start of the IPv6 header.
    pub l4_offset: usize,
    /// Whether a fragment header was found.
    pub fragment: bool,
}

/// Walks the extension headers of `packet` (an IPv6 packet trimmed to its
/// total length), starting with `next`, the fixed header's next header.
fn walk_extensions(packet: &[u8], mut next: u8) -> Result<Extensions, WireError> {
    let mut offset = HEADER_LEN;
    let mut fragment = false;
    for _ in 0..=MAX_EXTENSIONS {
        let len = match next {
            proto::HOP_BY_HOP | proto::IPV6_ROUTE | proto::IPV6_OPTS => {
                let len_byte = packet
                    .get(offset + ext_field::LENGTH)
                    .ok_or(WireError::BadExtensionHeader)?;
                (usize::from(*len_byte) + 1) * 8
            }
            proto::IPV6_FRAG => {
                fragment = true;
                FRAG_HEADER_LEN
            }
            _ => {
                return Ok(Extensions {
                    protocol: next,
                    l4_offset: offset,
                    fragment,
                });
            }
        };
        if offset + len > packet.len() {
            return Err(WireError::BadExtensionHeader);
        }
        next = packet[offset + ext_field::NXT_HDR];
        offset += len;
    }
    Err(WireError::BadExtensionHeader)
}

fn addr(bytes: &[u8]) -> [u8; 16] {
    let mut a = [0; 16];
    a.copy_from_slice(bytes);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_exts(exts: &[(u8, usize)], l4: u8, payload: usize) -> Vec<u8> {
        let ext_total: usize = exts.iter().map(|e| e.1).sum();
        let mut p = vec![0u8; HEADER_LEN];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((ext_total + payload) as u16).to_be_bytes());
        p[6] = exts.first().map_or(l4, |e| e.0);
        for (i, &(_, len)) in exts.iter().enumerate() {
            let next = exts.get(i + 1).map_or(l4, |e| e.0);
            let mut h = vec![0u8; len];
            h[0] = next;
            h[1] = (len / 8 - 1) as u8;
            p.extend_from_slice(&h);
        }
        p.resize(p.len() + payload, 0xcc);
        p
    }

    #[test]
    fn walks_to_the_upper_layer() {
        let p = with_exts(
            &[
                (proto::HOP_BY_HOP, 8),
                (proto::IPV6_ROUTE, 24),
                (proto::IPV6_OPTS, 16),
            ],
            proto::TCP,
            10,
        );
        let ext = Packet::new_checked(&p[..]).unwrap().extensions().unwrap();
        assert_eq!(ext.protocol, proto::TCP);
        assert_eq!(ext.l4_offset, 40 + 48);
        assert!(!ext.fragment);
    }

    #[test]
    fn fragment_header_is_noted() {
        let mut p = with_exts(&[(proto::IPV6_FRAG, 8)], proto::UDP, 8);
        p[41] = 0; // reserved, not a length
        let ext = Packet::new_checked(&p[..]).unwrap().extensions().unwrap();
        assert!(ext.fragment);
        assert_eq!(ext.l4_offset, 48);
    }

    #[test]
    fn truncated_chain_is_an_error() {
        let mut p = with_exts(&[(proto::IPV6_OPTS, 16)], proto::TCP, 0);
        p[41] = 5;
        assert_eq!(
            Packet::new_checked(&p[..]).unwrap().extensions(),
            Err(WireError::BadExtensionHeader)
        );
    }
}
