//! UDP header view (RFC 768).

use super::{Field, WireError, get_u16, set_u16};

/// Byte ranges of the UDP header fields.
pub mod field {
    use super::Field;
    /// Source port.
    pub const SRC_PORT: Field = 0..2;
    /// Destination port.
    pub const DST_PORT: Field = 2..4;
    /// Length (header plus payload).
    pub const LENGTH: Field = 4..6;
    /// Checksum.
    pub const CHECKSUM: Field = 6..8;
}

/// Length of the UDP header.
pub const HEADER_LEN: usize = 8;

/// Offset of the checksum field, the `csum_offset` of a virtio header.
pub const CHECKSUM_OFFSET: u16 = field::CHECKSUM.start as u16;

/// A checked view of a UDP header and its payload.
///
/// The length field is not checked by the view (segmentation rewrites it);
/// [`PacketLayout`](super::PacketLayout) takes the L4 length from the IP
/// header.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` (the UDP header and payload).
    ///
    /// # Errors
    /// [`WireError::Truncated`] when the buffer is shorter than 8 bytes.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
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

    /// Source port.
    pub fn src_port(&self) -> u16 {
        get_u16(self.buf(), &field::SRC_PORT)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        get_u16(self.buf(), &field::DST_PORT)
    }

    /// Length field.
    pub fn len(&self) -> u16 {
        get_u16(self.buf(), &field::LENGTH)
    }

    /// Whether the length field is zero (never valid on the wire).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        get_u16(self.buf(), &field::CHECKSUM)
    }

    /// Everything after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buf()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the length field.
    pub fn set_len(&mut self, len: u16) {
        set_u16(self.buffer.as_mut(), &field::LENGTH, len);
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, csum: u16) {
        set_u16(self.buffer.as_mut(), &field::CHECKSUM, csum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_edits() {
        let mut b = [0, 53, 0, 54, 0, 10, 0, 0, 1, 2];
        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port(), p.len()), (53, 54, 10));
        p.set_len(9);
        p.set_checksum(0xffff);
        assert_eq!(p.len(), 9);
        assert_eq!(p.checksum(), 0xffff);
        assert_eq!(p.payload(), &[1, 2]);
        assert!(Packet::new_checked(&b[..7]).is_err());
    }
}
