//! IPv4 header view (RFC 791).

use super::{Field, WireError, get_u16, set_u16};
use crate::checksum;

/// Byte ranges of the IPv4 header fields.
pub mod field {
    use super::Field;
    /// Version (high nibble) and IHL (low nibble).
    pub const VER_IHL: usize = 0;
    /// DSCP and ECN.
    pub const DSCP_ECN: usize = 1;
    /// Total length.
    pub const LENGTH: Field = 2..4;
    /// Identification.
    pub const IDENT: Field = 4..6;
    /// Flags and fragment offset.
    pub const FLG_OFF: Field = 6..8;
    /// Time to live.
    pub const TTL: usize = 8;
    /// Protocol.
    pub const PROTOCOL: usize = 9;
    /// Header checksum.
    pub const CHECKSUM: Field = 10..12;
    /// Source address.
    pub const SRC_ADDR: Field = 12..16;
    /// Destination address.
    pub const DST_ADDR: Field = 16..20;
}

/// Length of an IPv4 header without options.
pub const HEADER_LEN: usize = 20;

/// "Don't fragment" flag in the flags/offset word.
const DF: u16 = 0x4000;
/// "More fragments" flag in the flags/offset word.
const MF: u16 = 0x2000;
/// Fragment offset mask in the flags/offset word.
const OFFSET_MASK: u16 = 0x1fff;

/// A checked view of an IPv4 packet.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` after checking the version, the IHL and the total
    /// length against the buffer length.
    ///
    /// # Errors
    /// [`WireError::Truncated`], [`WireError::UnknownVersion`],
    /// [`WireError::BadIpHeaderLength`] or [`WireError::BadIpLength`].
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let buf = buffer.as_ref();
        if buf.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let version = buf[field::VER_IHL] >> 4;
        if version != 4 {
            return Err(WireError::UnknownVersion(version));
        }
        let header_len = usize::from(buf[field::VER_IHL] & 0x0f) * 4;
        if header_len < HEADER_LEN || header_len > buf.len() {
            return Err(WireError::BadIpHeaderLength);
        }
        let total = usize::from(get_u16(buf, &field::LENGTH));
        if total < header_len || total > buf.len() {
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

    /// Header length in bytes, options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.buf()[field::VER_IHL] & 0x0f) * 4
    }

    /// DSCP and ECN byte.
    pub fn dscp_ecn(&self) -> u8 {
        self.buf()[field::DSCP_ECN]
    }

    /// Total length field (header plus payload).
    pub fn total_len(&self) -> u16 {
        get_u16(self.buf(), &field::LENGTH)
    }

    /// Identification field.
    pub fn ident(&self) -> u16 {
        get_u16(self.buf(), &field::IDENT)
    }

    /// Whether the "don't fragment" flag is set.
    pub fn dont_frag(&self) -> bool {
        get_u16(self.buf(), &field::FLG_OFF) & DF != 0
    }

    /// Whether the "more fragments" flag is set.
    pub fn more_frags(&self) -> bool {
        get_u16(self.buf(), &field::FLG_OFF) & MF != 0
    }

    /// Fragment offset in 8-byte units.
    pub fn frag_offset(&self) -> u16 {
        get_u16(self.buf(), &field::FLG_OFF) & OFFSET_MASK
    }

    /// Whether this packet is a fragment (MF set or a nonzero offset).
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }

    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.buf()[field::TTL]
    }

    /// Protocol of the payload.
    pub fn protocol(&self) -> u8 {
        self.buf()[field::PROTOCOL]
    }

    /// Header checksum field.
    pub fn checksum(&self) -> u16 {
        get_u16(self.buf(), &field::CHECKSUM)
    }

    /// Source address.
    pub fn src_addr(&self) -> [u8; 4] {
        addr(&self.buf()[field::SRC_ADDR])
    }

    /// Destination address.
    pub fn dst_addr(&self) -> [u8; 4] {
        addr(&self.buf()[field::DST_ADDR])
    }

    /// The options bytes (empty without options).
    pub fn options(&self) -> &[u8] {
        &self.buf()[HEADER_LEN..self.header_len()]
    }

    /// Whether the header checksum verifies.
    pub fn verify_checksum(&self) -> bool {
        checksum::checksum(&self.buf()[..self.header_len()]) == 0
    }

    /// The payload, up to the total length (trailing padding excluded).
    pub fn payload(&self) -> &[u8] {
        &self.buf()[self.header_len()..usize::from(self.total_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the total length field.
    pub fn set_total_len(&mut self, len: u16) {
        set_u16(self.buffer.as_mut(), &field::LENGTH, len);
    }

    /// Sets the identification field.
    pub fn set_ident(&mut self, ident: u16) {
        set_u16(self.buffer.as_mut(), &field::IDENT, ident);
    }

    /// Sets the header checksum field.
    pub fn set_checksum(&mut self, csum: u16) {
        set_u16(self.buffer.as_mut(), &field::CHECKSUM, csum);
    }

    /// Recomputes and stores the header checksum.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let header_len = self.header_len();
        let csum = checksum::checksum(&self.buffer.as_ref()[..header_len]);
        self.set_checksum(csum);
    }
}

fn addr(bytes: &[u8]) -> [u8; 4] {
    [bytes[0], bytes[1], bytes[2], bytes[3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut p = vec![
            0x46, 0x00, 0x00, 0x1c, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0x00, 0x00, 10, 0, 0, 1,
            10, 0, 0, 2, 0x01, 0x01, 0x01, 0x00,
        ];
        p.extend_from_slice(&[0xaa; 4]);
        p
    }

    #[test]
    fn parses_fields_and_options() {
        let p = Packet::new_checked(sample()).unwrap();
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.total_len(), 28);
        assert_eq!(p.ident(), 0x1234);
        assert!(p.dont_frag());
        assert!(!p.is_fragment());
        assert_eq!(p.protocol(), 6);
        assert_eq!(p.src_addr(), [10, 0, 0, 1]);
        assert_eq!(p.options(), &[1, 1, 1, 0]);
        assert_eq!(p.payload(), &[0xaa; 4]);
    }

    #[test]
    fn fill_checksum_verifies() {
        let mut p = Packet::new_checked(sample()).unwrap();
        assert!(!p.verify_checksum());
        p.fill_checksum();
        assert!(p.verify_checksum());
    }

    #[test]
    fn rejects_bad_lengths() {
        let mut b = sample();
        b[0] = 0x44;
        assert_eq!(
            Packet::new_checked(&b[..]).unwrap_err(),
            WireError::BadIpHeaderLength
        );
        let mut b = sample();
        b[3] = 29;
        assert_eq!(
            Packet::new_checked(&b[..]).unwrap_err(),
            WireError::BadIpLength
        );
        assert_eq!(
            Packet::new_checked(&sample()[..19]).unwrap_err(),
            WireError::Truncated
        );
    }
}
