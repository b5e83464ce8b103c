//! TCP header view (RFC 9293).

use super::{Field, WireError, get_u16, get_u32, set_u16, set_u32};

/// Byte ranges of the TCP header fields.
pub mod field {
    use super::Field;
    /// Source port.
    pub const SRC_PORT: Field = 0..2;
    /// Destination port.
    pub const DST_PORT: Field = 2..4;
    /// Sequence number.
    pub const SEQ_NUM: Field = 4..8;
    /// Acknowledgment number.
    pub const ACK_NUM: Field = 8..12;
    /// Data offset (high nibble), reserved bits.
    pub const DATA_OFF: usize = 12;
    /// Flags byte (CWR .. FIN).
    pub const FLAGS: usize = 13;
    /// Window.
    pub const WINDOW: Field = 14..16;
    /// Checksum.
    pub const CHECKSUM: Field = 16..18;
    /// Urgent pointer.
    pub const URGENT: Field = 18..20;
}

/// Length of a TCP header without options.
pub const HEADER_LEN: usize = 20;

/// Offset of the checksum field, the `csum_offset` of a virtio header.
pub const CHECKSUM_OFFSET: u16 = field::CHECKSUM.start as u16;

/// TCP flag bits in the flags byte.
pub mod flags {
    /// No more data from sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push function.
    pub const PSH: u8 = 0x08;
    /// Acknowledgment field significant.
    pub const ACK: u8 = 0x10;
    /// Urgent pointer field significant.
    pub const URG: u8 = 0x20;
    /// ECN echo.
    pub const ECE: u8 = 0x40;
    /// Congestion window reduced.
    pub const CWR: u8 = 0x80;
}

/// A checked view of a TCP header and its payload.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` (the TCP header and payload) after checking the data
    /// offset against the buffer.
    ///
    /// # Errors
    /// [`WireError::Truncated`] or [`WireError::BadL4HeaderLength`].
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let buf = buffer.as_ref();
        if buf.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let header_len = usize::from(buf[field::DATA_OFF] >> 4) * 4;
        if header_len < HEADER_LEN || header_len > buf.len() {
            return Err(WireError::BadL4HeaderLength);
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

    /// Sequence number.
    pub fn seq_number(&self) -> u32 {
        get_u32(self.buf(), &field::SEQ_NUM)
    }

    /// Acknowledgment number.
    pub fn ack_number(&self) -> u32 {
        get_u32(self.buf(), &field::ACK_NUM)
    }

    /// Header length in bytes, options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.buf()[field::DATA_OFF] >> 4) * 4
    }

    /// The flags byte (see [`flags`]).
    pub fn flags(&self) -> u8 {
        self.buf()[field::FLAGS]
    }

    /// Window field.
    pub fn window(&self) -> u16 {
        get_u16(self.buf(), &field::WINDOW)
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        get_u16(self.buf(), &field::CHECKSUM)
    }

    /// Urgent pointer.
    pub fn urgent(&self) -> u16 {
        get_u16(self.buf(), &field::URGENT)
    }

    /// The options bytes.
    pub fn options(&self) -> &[u8] {
        &self.buf()[HEADER_LEN..self.header_len()]
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.buf()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the sequence number.
    pub fn set_seq_number(&mut self, seq: u32) {
        set_u32(self.buffer.as_mut(), &field::SEQ_NUM, seq);
    }

    /// Sets the flags byte.
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
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
        let mut b = [0u8; 28];
        b[0..2].copy_from_slice(&80u16.to_be_bytes());
        b[4..8].copy_from_slice(&7u32.to_be_bytes());
        b[12] = 6 << 4;
        b[13] = flags::ACK | flags::PSH;
        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        assert_eq!(p.src_port(), 80);
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.payload().len(), 4);
        p.set_seq_number(9);
        p.set_flags(flags::ACK);
        assert_eq!(p.seq_number(), 9);
        assert_eq!(p.flags(), flags::ACK);
    }

    #[test]
    fn rejects_bad_data_offset() {
        let mut b = [0u8; 20];
        b[12] = 4 << 4;
        assert_eq!(
            Packet::new_checked(&b[..]).unwrap_err(),
            WireError::BadL4HeaderLength
        );
        b[12] = 6 << 4;
        assert_eq!(
            Packet::new_checked(&b[..]).unwrap_err(),
            WireError::BadL4HeaderLength
        );
    }
}
