//! Checked views over IP, TCP and UDP headers, in the style of smoltcp's
//! `wire` module.
//!
//! Each protocol has a `Packet<T: AsRef<[u8]>>` view whose `new_checked`
//! validates, once, every length its accessors rely on; afterwards the
//! accessors cannot panic. Setters exist when `T: AsMut<[u8]>` so that
//! segmentation and coalescing edit headers in place. Field offsets live in
//! each module's `field` module.
//!
//! [`PacketLayout`] walks a whole IP packet (IPv4 options, IPv6 extension
//! headers) once and records where the transport header and payload are.

use core::fmt;

pub mod ipv4;
pub mod ipv6;
mod layout;
pub mod tcp;
pub mod udp;

pub use layout::{IpVersion, PacketLayout};

/// A byte range inside a header.
pub(crate) type Field = core::ops::Range<usize>;

/// IANA protocol numbers used by this crate.
pub mod proto {
    /// IPv6 hop-by-hop options.
    pub const HOP_BY_HOP: u8 = 0;
    /// ICMP for IPv4.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// IPv6 routing header.
    pub const IPV6_ROUTE: u8 = 43;
    /// IPv6 fragment header.
    pub const IPV6_FRAG: u8 = 44;
    /// ICMP for IPv6.
    pub const ICMPV6: u8 = 58;
    /// IPv6 "no next header".
    pub const IPV6_NONXT: u8 = 59;
    /// IPv6 destination options.
    pub const IPV6_OPTS: u8 = 60;
}

/// Why a byte slice is not a well-formed header or packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// The buffer is shorter than the fixed part of a header.
    Truncated,
    /// The IP version nibble is neither 4 nor 6 (or not the view's version).
    UnknownVersion(u8),
    /// The IPv4 IHL is below 5 or runs past the buffer.
    BadIpHeaderLength,
    /// The IP total/payload length is shorter than the headers or longer
    /// than the buffer.
    BadIpLength,
    /// An IPv6 extension header runs past the packet, or there are too many.
    BadExtensionHeader,
    /// The TCP data offset is below 5 or runs past the packet, or the UDP
    /// header does not fit.
    BadL4HeaderLength,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("buffer shorter than the header"),
            Self::UnknownVersion(v) => write!(f, "unexpected IP version {v}"),
            Self::BadIpHeaderLength => f.write_str("bad IPv4 header length"),
            Self::BadIpLength => f.write_str("IP length inconsistent with the buffer"),
            Self::BadExtensionHeader => f.write_str("malformed IPv6 extension header chain"),
            Self::BadL4HeaderLength => f.write_str("transport header does not fit the packet"),
        }
    }
}

impl std::error::Error for WireError {}

/// Reads a big-endian u16 at `at`; callers have checked the bounds.
#[inline]
pub(crate) fn get_u16(buf: &[u8], at: &Field) -> u16 {
    u16::from_be_bytes([buf[at.start], buf[at.start + 1]])
}

/// Reads a big-endian u32 at `at`; callers have checked the bounds.
#[inline]
pub(crate) fn get_u32(buf: &[u8], at: &Field) -> u32 {
    let b = &buf[at.start..at.start + 4];
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Writes a big-endian u16 at `at`; callers have checked the bounds.
#[inline]
pub(crate) fn set_u16(buf: &mut [u8], at: &Field, value: u16) {
    buf[at.start..at.start + 2].copy_from_slice(&value.to_be_bytes());
}

/// Writes a big-endian u32 at `at`; callers have checked the bounds.
#[inline]
pub(crate) fn set_u32(buf: &mut [u8], at: &Field, value: u32) {
    buf[at.start..at.start + 4].copy_from_slice(&value.to_be_bytes());
}
