//! The Internet checksum (RFC 1071), its incremental update (RFC 1624) and
//! the IPv4/IPv6 pseudo-header sums.
//!
//! The one's-complement sum is independent of byte order (RFC 1071 §2(B)), so
//! the bulk loop adds native-endian 32-bit words into 64-bit lanes (no carry
//! handling inside the loop, which the compiler vectorises) and swaps the
//! folded result into network order once at the end.
//!
//! Vocabulary used throughout the crate:
//! - the *sum* ([`Checksum::fold`]) is the folded, uncomplemented 16-bit
//!   one's-complement sum; a pseudo-header sum is the checksum *seed* that a
//!   `NEEDS_CSUM` packet carries in its checksum field;
//! - the *checksum* ([`Checksum::finish`]) is the complement of the sum, the
//!   value stored on the wire.

/// Bytes summed per iteration of the wide loop.
const BLOCK: usize = 64;
/// 32-bit words per block.
const WORDS: usize = BLOCK / 4;

/// Sums `data` as native-endian 16-bit words into a wide accumulator.
///
/// `data.len()` must be even for the result to be meaningful on its own; an
/// odd trailing byte is handled by [`Checksum`]. The return value is not
/// folded; it never exceeds `2^49` for inputs up to 4 GiB.
#[inline]
fn sum_ne(data: &[u8]) -> u64 {
    let mut lanes = [0u64; WORDS];
    let mut blocks = data.chunks_exact(BLOCK);
    for block in &mut blocks {
        for (lane, word) in lanes.iter_mut().zip(block.chunks_exact(4)) {
            let word: [u8; 4] = [word[0], word[1], word[2], word[3]];
            *lane += u64::from(u32::from_ne_bytes(word));
        }
    }
    let mut acc: u64 = lanes.iter().sum();
    let rest = blocks.remainder();
    let mut words = rest.chunks_exact(2);
    for word in &mut words {
        acc += u64::from(u16::from_ne_bytes([word[0], word[1]]));
    }
    if let [last] = words.remainder() {
        // The odd byte is the high-order byte of a network-order word, that
        // is the first byte of a native-order word on either endianness
        // once the final swap is applied.
        acc += u64::from(u16::from_ne_bytes([*last, 0]));
    }
    acc
}

/// Folds a wide one's-complement accumulator to 16 bits (end-around carry).
#[inline]
fn fold64(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Folds a native-order wide sum into a network-order (big-endian value) sum.
#[inline]
fn fold_ne(acc: u64) -> u16 {
    u16::from_be(fold64(acc))
}

/// A running Internet checksum that can be fed any number of byte slices.
///
/// Slices may have odd lengths: the next slice then continues at an odd
/// offset of the checksummed stream, exactly as if all slices had been
/// concatenated.
///
/// ```
/// use fdlink_gso::checksum::{Checksum, checksum};
///
/// let data = [0x45u8, 0x00, 0x00, 0x1c, 0xab];
/// let mut c = Checksum::new();
/// c.add_bytes(&data[..3]);
/// c.add_bytes(&data[3..]);
/// assert_eq!(c.finish(), checksum(&data));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checksum {
    /// Sum of big-endian 16-bit words, kept below 2^48.
    acc: u64,
    /// Whether an odd number of bytes has been added so far.
    odd: bool,
}

impl Checksum {
    /// An empty sum.
    #[must_use]
    pub const fn new() -> Self {
        Self { acc: 0, odd: false }
    }

    /// A sum seeded with a folded 16-bit sum (for example a pseudo-header
    /// seed read from a checksum field).
    #[must_use]
    pub const fn from_sum(sum: u16) -> Self {
        Self {
            acc: sum as u64,
            odd: false,
        }
    }

    /// Adds a slice of bytes to the checksummed stream.
    pub fn add_bytes(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let (rest, lead) = if self.odd {
            // The first byte is the low-order half of the pending word.
            (&data[1..], u64::from(data[0]))
        } else {
            (data, 0)
        };
        self.acc += lead + u64::from(fold_ne(sum_ne(rest)));
        self.odd = rest.len() % 2 == 1;
        // Keep the accumulator small so that it never overflows.
        self.acc = u64::from(fold64(self.acc));
    }

    /// Adds a big-endian 16-bit word at an even offset of the stream.
    ///
    /// Words are meant to be added at even offsets (pseudo-header fields);
    /// after an odd-length slice the word is added as if it were aligned.
    pub fn add_u16(&mut self, word: u16) {
        self.acc += u64::from(word);
    }

    /// Adds a big-endian 32-bit word as two 16-bit words.
    pub fn add_u32(&mut self, word: u32) {
        self.acc += u64::from(word >> 16) + u64::from(word & 0xffff);
    }

    /// Adds another folded sum (one's-complement addition).
    pub fn add_sum(&mut self, sum: u16) {
        self.acc += u64::from(sum);
    }

    /// The folded, uncomplemented 16-bit sum (a checksum *seed*).
    #[must_use]
    pub fn fold(&self) -> u16 {
        fold64(self.acc)
    }

    /// The checksum: the complement of [`fold`](Self::fold), the value stored
    /// in a header.
    #[must_use]
    pub fn finish(&self) -> u16 {
        !self.fold()
    }
}

/// The folded, uncomplemented one's-complement sum of `data`.
#[must_use]
pub fn sum(data: &[u8]) -> u16 {
    let mut c = Checksum::new();
    c.add_bytes(data);
    c.fold()
}

/// The Internet checksum of `data`: the complement of its one's-complement
/// sum, ready to store in a header.
#[must_use]
pub fn checksum(data: &[u8]) -> u16 {
    !sum(data)
}

/// Updates a stored checksum after a 16-bit field changed from `old` to
/// `new` (RFC 1624, equation 3: `HC' = ~(~HC + ~m + m')`).
#[must_use]
pub fn update_u16(csum: u16, old: u16, new: u16) -> u16 {
    let acc = u64::from(!csum) + u64::from(!old) + u64::from(new);
    !fold64(acc)
}

/// Updates a stored checksum after a 32-bit field (for example a TCP
/// sequence number or an IPv4 address) changed from `old` to `new`.
#[must_use]
pub fn update_u32(csum: u16, old: u32, new: u32) -> u16 {
    let acc = u64::from(!csum)
        + u64::from(!(old >> 16) as u16)
        + u64::from(!(old as u16))
        + u64::from(new >> 16)
        + u64::from(new & 0xffff);
    !fold64(acc)
}

/// The pseudo-header sum for TCP/UDP over IPv4 (RFC 793, RFC 768): source
/// and destination address, zero, protocol and the L4 length (header plus
/// payload).
#[must_use]
pub fn pseudo_header_ipv4(src: [u8; 4], dst: [u8; 4], protocol: u8, l4_len: u16) -> Checksum {
    let mut c = Checksum::new();
    c.add_u32(u32::from_be_bytes(src));
    c.add_u32(u32::from_be_bytes(dst));
    c.add_u16(u16::from(protocol));
    c.add_u16(l4_len);
    c
}

/// The pseudo-header sum for an upper-layer protocol over IPv6 (RFC 8200
/// §8.1): source and destination address, the 32-bit upper-layer length and
/// the next-header value.
#[must_use]
pub fn pseudo_header_ipv6(src: [u8; 16], dst: [u8; 16], next_header: u8, l4_len: u32) -> Checksum {
    let mut c = Checksum::new();
    for chunk in src.chunks_exact(4).chain(dst.chunks_exact(4)) {
        c.add_u32(u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]));
    }
    c.add_u32(l4_len);
    c.add_u16(u16::from(next_header));
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071 done the obvious way, one big-endian word at a time.
    fn naive(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        for pair in data.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            acc += u32::from(word);
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the sum of 00 01 f2 03 f4 f5 f6 f7 is ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(sum(&data), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn ipv4_header_checksum_verifies_to_zero() {
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&hdr), 0);
    }

    #[test]
    fn wide_loop_matches_naive_for_all_small_lengths() {
        let data: Vec<u8> = (0..600u32).map(|i| (i * 7919 % 251) as u8).collect();
        for len in 0..data.len() {
            assert_eq!(sum(&data[..len]), naive(&data[..len]), "length {len}");
        }
    }

    #[test]
    fn odd_splits_match_one_shot() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 31 + 7) as u8).collect();
        for a in 0..20 {
            for b in a..40 {
                let mut c = Checksum::new();
                c.add_bytes(&data[..a]);
                c.add_bytes(&data[a..b]);
                c.add_bytes(&data[b..]);
                assert_eq!(c.fold(), naive(&data), "splits {a} {b}");
            }
        }
    }

    #[test]
    fn all_ones_does_not_overflow() {
        let data = vec![0xff; 1 << 20];
        assert_eq!(sum(&data), 0xffff);
    }

    #[test]
    fn incremental_update_matches_recompute() {
        let mut data = [0x12u8, 0x34, 0x56, 0x78, 0x9a, 0xbc];
        let before = checksum(&data);
        data[2..4].copy_from_slice(&0xfffeu16.to_be_bytes());
        assert_eq!(update_u16(before, 0x5678, 0xfffe), checksum(&data));
        let before = checksum(&data);
        data[0..4].copy_from_slice(&0xdead_beefu32.to_be_bytes());
        assert_eq!(
            update_u32(before, 0x1234_fffe, 0xdead_beef),
            checksum(&data)
        );
    }

    #[test]
    fn pseudo_header_v4_matches_bytes() {
        let bytes = [10, 0, 0, 1, 10, 0, 0, 2, 0, 6, 0x01, 0x00];
        let c = pseudo_header_ipv4([10, 0, 0, 1], [10, 0, 0, 2], 6, 256);
        assert_eq!(c.fold(), naive(&bytes));
    }

    #[test]
    fn pseudo_header_v6_matches_bytes() {
        let src = [0xfe; 16];
        let dst = [0x01; 16];
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&src);
        bytes.extend_from_slice(&dst);
        bytes.extend_from_slice(&70_000u32.to_be_bytes());
        bytes.extend_from_slice(&[0, 0, 0, 17]);
        assert_eq!(
            pseudo_header_ipv6(src, dst, 17, 70_000).fold(),
            naive(&bytes)
        );
    }
}
