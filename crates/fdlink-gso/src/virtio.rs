//! The `virtio_net_hdr` that precedes each packet on a TUN/TAP device opened
//! with `IFF_VNET_HDR` and on an AF_PACKET socket with `PACKET_VNET_HDR`.
//!
//! Two forms exist: the 10-byte header and the 12-byte "mergeable rx
//! buffers" form that appends `num_buffers`. All fields are little-endian
//! (the kernel's "virtio 1.0" byte order on every host this crate targets).
//!
//! [`VirtioNetHdr::decode`] never fails on field *values*; it only needs
//! enough bytes. [`VirtioNetHdr::validate`] then checks every value against
//! the packet that follows and returns a typed [`VirtioError`]: it is at
//! least as strict as Linux's `virtio_net_hdr_to_skb` (6.18) together with
//! the TUN driver's `tun_vnet_hdr_get`, which refuse a write with `EINVAL`
//! when
//!
//! - `gso_type` is unknown, or a GSO packet has `gso_size` 0;
//! - `hdr_len`, or with `NEEDS_CSUM` the checksum field
//!   (`csum_start + csum_offset + 2`), is past the end of the packet;
//! - with `NEEDS_CSUM`, `csum_start` is below the smallest IP header (20
//!   bytes, 40 for TCPV6), or a GSO packet has no room for the smallest
//!   transport header (TCP 20, UDP 8 bytes) at `csum_start`;
//! - `csum_offset` is not the TCP (16) or UDP_L4 (6) checksum offset;
//! - a UDP_L4 packet lacks `NEEDS_CSUM`, carries an ECN bit, or its payload
//!   (from `csum_start + 8` to the end) needs more than
//!   [`UDP_MAX_SEGMENTS`] segments of `gso_size`;
//! - a GSO packet's `gso_size` is [`GSO_BY_FRAGS`].
//!
//! We refuse more than that: unknown flag bits, ECN on UFO, any GSO packet
//! without `NEEDS_CSUM` (Linux probes such packets with its flow dissector)
//! and a UFO `csum_offset` other than 6.

use core::fmt;

use crate::wire;

/// Byte ranges of the header fields.
pub mod field {
    use crate::wire::Field;
    /// Flags ([`NEEDS_CSUM`](super::flags::NEEDS_CSUM), ...).
    pub const FLAGS: usize = 0;
    /// GSO type ([`super::gso`]).
    pub const GSO_TYPE: usize = 1;
    /// Length of the headers to replicate in each segment.
    pub const HDR_LEN: Field = 2..4;
    /// Payload bytes per segment.
    pub const GSO_SIZE: Field = 4..6;
    /// Where checksumming starts.
    pub const CSUM_START: Field = 6..8;
    /// Where the checksum is stored, relative to `csum_start`.
    pub const CSUM_OFFSET: Field = 8..10;
    /// Number of merged buffers (12-byte form only).
    pub const NUM_BUFFERS: Field = 10..12;
}

/// Length of the basic header.
pub use fdlink_core::link::VNET_HDR_LEN as HDR_LEN;
/// Length of the mergeable-buffers header.
pub use fdlink_core::link::VNET_HDR_LEN_MRG as HDR_LEN_MRG;

/// Most datagrams one UDP_L4 super-packet may be cut into (Linux's
/// `UDP_MAX_SEGMENTS`).
pub const UDP_MAX_SEGMENTS: usize = 128;

/// The `gso_size` Linux reserves as its `GSO_BY_FRAGS` marker; a header
/// carrying it is refused.
pub const GSO_BY_FRAGS: u16 = 0xFFFF;

/// Header flag bits.
pub mod flags {
    /// The checksum from `csum_start` on must be completed; the field holds
    /// the pseudo-header seed.
    pub const NEEDS_CSUM: u8 = 1;
    /// The checksum has been verified.
    pub const DATA_VALID: u8 = 2;
    /// All flag bits this crate understands.
    pub const KNOWN: u8 = NEEDS_CSUM | DATA_VALID;
}

/// Raw `gso_type` values.
pub mod gso {
    /// Not a GSO packet.
    pub const NONE: u8 = 0;
    /// TCP over IPv4.
    pub const TCPV4: u8 = 1;
    /// UDP fragmentation offload (UFO, legacy).
    pub const UDP: u8 = 3;
    /// TCP over IPv6.
    pub const TCPV6: u8 = 4;
    /// UDP segmentation (USO), either IP version.
    pub const UDP_L4: u8 = 5;
    /// ECN bit: the TCP super-packet had CWR set.
    pub const ECN: u8 = 0x80;
}

/// The decoded kind of a `gso_type` (without the ECN bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GsoKind {
    /// Not a GSO packet.
    None,
    /// TCP over IPv4.
    TcpV4,
    /// UDP fragmentation offload (legacy).
    Udp,
    /// TCP over IPv6.
    TcpV6,
    /// UDP segmentation offload.
    UdpL4,
}

impl GsoKind {
    /// Decodes a raw `gso_type`, returning the kind and the ECN bit, or
    /// `None` for an unknown value.
    pub fn from_raw(raw: u8) -> Option<(Self, bool)> {
        let ecn = raw & gso::ECN != 0;
        let kind = match raw & !gso::ECN {
            gso::NONE => Self::None,
            gso::TCPV4 => Self::TcpV4,
            gso::UDP => Self::Udp,
            gso::TCPV6 => Self::TcpV6,
            gso::UDP_L4 => Self::UdpL4,
            _ => return None,
        };
        Some((kind, ecn))
    }

    /// The raw value without the ECN bit.
    pub fn to_raw(self) -> u8 {
        match self {
            Self::None => gso::NONE,
            Self::TcpV4 => gso::TCPV4,
            Self::Udp => gso::UDP,
            Self::TcpV6 => gso::TCPV6,
            Self::UdpL4 => gso::UDP_L4,
        }
    }

    /// Whether this kind segments TCP.
    pub fn is_tcp(self) -> bool {
        matches!(self, Self::TcpV4 | Self::TcpV6)
    }
}

/// A decoded `virtio_net_hdr` with raw field values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VirtioNetHdr {
    /// Flags ([`flags`]).
    pub flags: u8,
    /// GSO type ([`gso`]).
    pub gso_type: u8,
    /// Length of the headers (link header included when present).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Offset where checksumming starts.
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start`.
    pub csum_offset: u16,
    /// `num_buffers` of the 12-byte form; `None` for the 10-byte form.
    pub num_buffers: Option<u16>,
}

/// What a validated header asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Offload {
    /// Segmentation kind.
    pub gso: GsoKind,
    /// The ECN bit of `gso_type`.
    pub ecn: bool,
    /// Payload bytes per segment (nonzero when `gso != None`).
    pub gso_size: u16,
    /// `(csum_start, csum_offset)` when `NEEDS_CSUM` is set.
    pub needs_csum: Option<(usize, usize)>,
    /// Whether `DATA_VALID` is set.
    pub data_valid: bool,
}

/// Why a virtio header was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum VirtioError {
    /// The buffer is shorter than the header form being decoded or encoded.
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
    /// Flag bits other than `NEEDS_CSUM` and `DATA_VALID` are set.
    UnknownFlags(u8),
    /// `gso_type` is not one of the known values.
    UnknownGsoType(u8),
    /// The ECN bit is set on a non-TCP `gso_type`.
    EcnWithoutTcp(u8),
    /// A GSO packet without `NEEDS_CSUM`.
    GsoWithoutNeedsCsum,
    /// A GSO packet with `gso_size == 0`.
    ZeroGsoSize,
    /// A GSO packet with `gso_size` equal to [`GSO_BY_FRAGS`] (0xFFFF),
    /// which Linux reserves and refuses.
    GsoSizeByFrags,
    /// `hdr_len` is larger than the packet.
    HdrLenTooLarge {
        /// The header's `hdr_len`.
        hdr_len: u16,
        /// The packet length.
        packet_len: usize,
    },
    /// `csum_start + csum_offset + 2` is past the end of the packet.
    CsumOutOfBounds {
        /// The header's `csum_start`.
        csum_start: u16,
        /// The header's `csum_offset`.
        csum_offset: u16,
        /// The packet length.
        packet_len: usize,
    },
    /// `csum_start` (with `NEEDS_CSUM`) is below the smallest IP header
    /// Linux accepts there: 20 bytes, or 40 for TCPV6.
    CsumStartTooSmall {
        /// The header's `csum_start`.
        csum_start: u16,
        /// The smallest value allowed for this `gso_type`.
        min: u16,
    },
    /// `csum_offset` is not the TCP (16) or UDP (6) checksum offset required
    /// by the `gso_type`.
    CsumOffsetMismatch {
        /// The header's `csum_offset`.
        csum_offset: u16,
        /// The offset the `gso_type` requires.
        expected: u16,
    },
    /// A GSO packet has no room for the smallest transport header of its
    /// `gso_type` (TCP 20, UDP 8 bytes) at `csum_start`.
    TransportHeaderOutOfBounds {
        /// The header's `csum_start`.
        csum_start: u16,
        /// The smallest transport header length for the `gso_type`.
        header_len: usize,
        /// The packet length.
        packet_len: usize,
    },
    /// A UDP_L4 packet whose payload (from `csum_start + 8` to the end of
    /// the packet) would make more than [`UDP_MAX_SEGMENTS`] datagrams of
    /// `gso_size` bytes.
    TooManyUdpSegments {
        /// Payload bytes after the UDP header.
        payload_len: usize,
        /// The header's `gso_size`.
        gso_size: u16,
    },
}

impl fmt::Display for VirtioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Truncated { needed, got } => {
                write!(f, "virtio header needs {needed} bytes, got {got}")
            }
            Self::UnknownFlags(v) => write!(f, "unknown virtio header flags {v:#04x}"),
            Self::UnknownGsoType(v) => write!(f, "unknown gso_type {v:#04x}"),
            Self::EcnWithoutTcp(v) => write!(f, "ECN bit on non-TCP gso_type {v:#04x}"),
            Self::GsoWithoutNeedsCsum => f.write_str("GSO packet without NEEDS_CSUM"),
            Self::ZeroGsoSize => f.write_str("GSO packet with gso_size 0"),
            Self::GsoSizeByFrags => {
                write!(
                    f,
                    "gso_size {GSO_BY_FRAGS:#06x} is the reserved GSO_BY_FRAGS"
                )
            }
            Self::HdrLenTooLarge {
                hdr_len,
                packet_len,
            } => write!(f, "hdr_len {hdr_len} beyond packet length {packet_len}"),
            Self::CsumOutOfBounds {
                csum_start,
                csum_offset,
                packet_len,
            } => write!(
                f,
                "checksum at {csum_start}+{csum_offset} beyond packet length {packet_len}"
            ),
            Self::CsumOffsetMismatch {
                csum_offset,
                expected,
            } => write!(f, "csum_offset {csum_offset}, gso_type requires {expected}"),
            Self::CsumStartTooSmall { csum_start, min } => {
                write!(f, "csum_start {csum_start} below the minimum {min}")
            }
            Self::TransportHeaderOutOfBounds {
                csum_start,
                header_len,
                packet_len,
            } => write!(
                f,
                "{header_len}-byte transport header at {csum_start} beyond packet length {packet_len}"
            ),
            Self::TooManyUdpSegments {
                payload_len,
                gso_size,
            } => write!(
                f,
                "{payload_len} payload bytes at gso_size {gso_size} exceed {UDP_MAX_SEGMENTS} segments"
            ),
        }
    }
}

impl std::error::Error for VirtioError {}

impl VirtioNetHdr {
    /// Decodes the 10-byte form from the start of `bytes`.
    ///
    /// # Errors
    /// [`VirtioError::Truncated`] when `bytes` is shorter than 10 bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, VirtioError> {
        let b = bytes.get(..HDR_LEN).ok_or(VirtioError::Truncated {
            needed: HDR_LEN,
            got: bytes.len(),
        })?;
        Ok(Self {
            flags: b[field::FLAGS],
            gso_type: b[field::GSO_TYPE],
            hdr_len: le16(b, &field::HDR_LEN),
            gso_size: le16(b, &field::GSO_SIZE),
            csum_start: le16(b, &field::CSUM_START),
            csum_offset: le16(b, &field::CSUM_OFFSET),
            num_buffers: None,
        })
    }

    /// Decodes the 12-byte mergeable-buffers form from the start of `bytes`.
    ///
    /// # Errors
    /// [`VirtioError::Truncated`] when `bytes` is shorter than 12 bytes.
    pub fn decode_mrg(bytes: &[u8]) -> Result<Self, VirtioError> {
        let b = bytes.get(..HDR_LEN_MRG).ok_or(VirtioError::Truncated {
            needed: HDR_LEN_MRG,
            got: bytes.len(),
        })?;
        let mut hdr = Self::decode(b)?;
        hdr.num_buffers = Some(le16(b, &field::NUM_BUFFERS));
        Ok(hdr)
    }

    /// Encoded length: 12 with `num_buffers`, 10 without.
    pub fn encoded_len(&self) -> usize {
        if self.num_buffers.is_some() {
            HDR_LEN_MRG
        } else {
            HDR_LEN
        }
    }

    /// Encodes into the start of `out` and returns the number of bytes
    /// written ([`encoded_len`](Self::encoded_len)).
    ///
    /// # Errors
    /// [`VirtioError::Truncated`] when `out` is too short.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, VirtioError> {
        let len = self.encoded_len();
        let got = out.len();
        let b = out
            .get_mut(..len)
            .ok_or(VirtioError::Truncated { needed: len, got })?;
        b[field::FLAGS] = self.flags;
        b[field::GSO_TYPE] = self.gso_type;
        put_le16(b, &field::HDR_LEN, self.hdr_len);
        put_le16(b, &field::GSO_SIZE, self.gso_size);
        put_le16(b, &field::CSUM_START, self.csum_start);
        put_le16(b, &field::CSUM_OFFSET, self.csum_offset);
        if let Some(n) = self.num_buffers {
            put_le16(b, &field::NUM_BUFFERS, n);
        }
        Ok(len)
    }

    /// Checks every field against `packet` (the bytes that follow the
    /// header, link header included if the device has one).
    ///
    /// Rules: only known flag and `gso_type` bits; ECN only with TCP; a GSO
    /// packet has `NEEDS_CSUM` and a `gso_size` that is neither 0 nor
    /// [`GSO_BY_FRAGS`]; `hdr_len` within the packet; with `NEEDS_CSUM`,
    /// `csum_start + csum_offset + 2` within the packet and `csum_start` at
    /// least 20 (40 for TCPV6); for GSO packets, `csum_offset` equal to the
    /// TCP (16) or UDP (6) checksum offset and the smallest TCP (20) or UDP
    /// (8) header within the packet at `csum_start`; for UDP_L4, at most
    /// [`UDP_MAX_SEGMENTS`] segments of payload after that UDP header.
    ///
    /// This does not parse the IP packet; see
    /// [`crate::segment::segment_with_hdr`] for the checks that do.
    ///
    /// # Errors
    /// The first [`VirtioError`] found.
    pub fn validate(&self, packet: &[u8]) -> Result<Offload, VirtioError> {
        if self.flags & !flags::KNOWN != 0 {
            return Err(VirtioError::UnknownFlags(self.flags));
        }
        let (gso, ecn) =
            GsoKind::from_raw(self.gso_type).ok_or(VirtioError::UnknownGsoType(self.gso_type))?;
        if ecn && !gso.is_tcp() {
            return Err(VirtioError::EcnWithoutTcp(self.gso_type));
        }
        let needs = self.flags & flags::NEEDS_CSUM != 0;
        if gso != GsoKind::None {
            if !needs {
                return Err(VirtioError::GsoWithoutNeedsCsum);
            }
            if self.gso_size == 0 {
                return Err(VirtioError::ZeroGsoSize);
            }
            if self.gso_size == GSO_BY_FRAGS {
                return Err(VirtioError::GsoSizeByFrags);
            }
        }
        if usize::from(self.hdr_len) > packet.len() {
            return Err(VirtioError::HdrLenTooLarge {
                hdr_len: self.hdr_len,
                packet_len: packet.len(),
            });
        }
        let needs_csum = if needs {
            let start = usize::from(self.csum_start);
            let offset = usize::from(self.csum_offset);
            if start + offset + 2 > packet.len() {
                return Err(VirtioError::CsumOutOfBounds {
                    csum_start: self.csum_start,
                    csum_offset: self.csum_offset,
                    packet_len: packet.len(),
                });
            }
            // Linux's smallest network header: IPv6 for TCPV6, else IPv4.
            let min = if gso == GsoKind::TcpV6 {
                wire::ipv6::HEADER_LEN
            } else {
                wire::ipv4::HEADER_LEN
            };
            if start < min {
                return Err(VirtioError::CsumStartTooSmall {
                    csum_start: self.csum_start,
                    min: min as u16,
                });
            }
            // (checksum offset, smallest transport header) per GSO kind.
            let l4 = match gso {
                GsoKind::None => None,
                GsoKind::TcpV4 | GsoKind::TcpV6 => {
                    Some((wire::tcp::CHECKSUM_OFFSET, wire::tcp::HEADER_LEN))
                }
                GsoKind::Udp | GsoKind::UdpL4 => {
                    Some((wire::udp::CHECKSUM_OFFSET, wire::udp::HEADER_LEN))
                }
            };
            if let Some((expected, header_len)) = l4 {
                if expected != self.csum_offset {
                    return Err(VirtioError::CsumOffsetMismatch {
                        csum_offset: self.csum_offset,
                        expected,
                    });
                }
                if start + header_len > packet.len() {
                    return Err(VirtioError::TransportHeaderOutOfBounds {
                        csum_start: self.csum_start,
                        header_len,
                        packet_len: packet.len(),
                    });
                }
            }
            if gso == GsoKind::UdpL4 {
                // Linux counts from the end of the UDP header at csum_start,
                // whatever hdr_len says; in bounds, checked just above.
                let payload_len = packet.len().saturating_sub(start + wire::udp::HEADER_LEN);
                if payload_len > usize::from(self.gso_size) * UDP_MAX_SEGMENTS {
                    return Err(VirtioError::TooManyUdpSegments {
                        payload_len,
                        gso_size: self.gso_size,
                    });
                }
            }
            Some((start, offset))
        } else {
            None
        };
        Ok(Offload {
            gso,
            ecn,
            gso_size: self.gso_size,
            needs_csum,
            data_valid: self.flags & flags::DATA_VALID != 0,
        })
    }
}

fn le16(b: &[u8], at: &crate::wire::Field) -> u16 {
    u16::from_le_bytes([b[at.start], b[at.start + 1]])
}

fn put_le16(b: &mut [u8], at: &crate::wire::Field, v: u16) {
    b[at.start..at.start + 2].copy_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_gso() -> VirtioNetHdr {
        VirtioNetHdr {
            flags: flags::NEEDS_CSUM,
            gso_type: gso::TCPV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: None,
        }
    }

    #[test]
    fn round_trips_both_forms() {
        let mut h = tcp_gso();
        let mut buf = [0u8; 12];
        assert_eq!(h.encode(&mut buf), Ok(10));
        assert_eq!(buf[..10], [1, 1, 54, 0, 0xa8, 0x05, 34, 0, 16, 0]);
        assert_eq!(VirtioNetHdr::decode(&buf), Ok(h));
        h.num_buffers = Some(3);
        assert_eq!(h.encode(&mut buf), Ok(12));
        assert_eq!(VirtioNetHdr::decode_mrg(&buf), Ok(h));
        assert!(h.encode(&mut [0; 11]).is_err());
        assert!(VirtioNetHdr::decode(&buf[..9]).is_err());
    }

    #[test]
    fn accepts_a_good_gso_header() {
        let off = tcp_gso().validate(&[0; 100]).unwrap();
        assert_eq!(off.gso, GsoKind::TcpV4);
        assert_eq!(off.needs_csum, Some((34, 16)));
    }

    #[test]
    fn rejects_each_bad_field() {
        let p = [0u8; 100];
        let bad = |f: fn(&mut VirtioNetHdr)| {
            let mut h = tcp_gso();
            f(&mut h);
            h.validate(&p).unwrap_err()
        };
        assert_eq!(bad(|h| h.flags |= 4), VirtioError::UnknownFlags(5));
        assert_eq!(bad(|h| h.gso_type = 2), VirtioError::UnknownGsoType(2));
        assert_eq!(
            bad(|h| h.gso_type = gso::UDP_L4 | gso::ECN),
            VirtioError::EcnWithoutTcp(0x85)
        );
        assert_eq!(bad(|h| h.flags = 0), VirtioError::GsoWithoutNeedsCsum);
        assert_eq!(bad(|h| h.gso_size = 0), VirtioError::ZeroGsoSize);
        assert!(matches!(
            bad(|h| h.hdr_len = 101),
            VirtioError::HdrLenTooLarge { .. }
        ));
        assert!(matches!(
            bad(|h| h.csum_start = 83),
            VirtioError::CsumOutOfBounds { .. }
        ));
        assert_eq!(
            bad(|h| h.csum_offset = 6),
            VirtioError::CsumOffsetMismatch {
                csum_offset: 6,
                expected: 16
            }
        );
    }

    /// A UDP_L4 header for an IPv4/UDP packet (csum_start 20).
    fn udp_gso(gso_size: u16) -> VirtioNetHdr {
        VirtioNetHdr {
            flags: flags::NEEDS_CSUM,
            gso_type: gso::UDP_L4,
            hdr_len: 28,
            gso_size,
            csum_start: 20,
            csum_offset: 6,
            num_buffers: None,
        }
    }

    #[test]
    fn udp_l4_allows_at_most_128_segments() {
        // 20 IP + 8 UDP header bytes, then the payload.
        let packet = |payload: usize| vec![0u8; 28 + payload];
        let ok = udp_gso(1).validate(&packet(UDP_MAX_SEGMENTS)).unwrap();
        assert_eq!(ok.gso, GsoKind::UdpL4);
        assert_eq!(
            udp_gso(1).validate(&packet(UDP_MAX_SEGMENTS + 1)),
            Err(VirtioError::TooManyUdpSegments {
                payload_len: 129,
                gso_size: 1
            })
        );
        // 128 full segments of 1000, then one byte more.
        assert!(udp_gso(1000).validate(&packet(128_000)).is_ok());
        assert_eq!(
            udp_gso(1000).validate(&packet(128_001)),
            Err(VirtioError::TooManyUdpSegments {
                payload_len: 128_001,
                gso_size: 1000
            })
        );
        // Counted from csum_start + 8, as Linux does, not from hdr_len.
        let mut h = udp_gso(1);
        h.hdr_len = 20;
        assert!(matches!(
            h.validate(&packet(129)),
            Err(VirtioError::TooManyUdpSegments { .. })
        ));
        h.csum_start = 21;
        assert!(h.validate(&packet(129)).is_ok());
        // TCP has no such limit.
        let mut t = tcp_gso();
        t.gso_size = 1;
        assert!(t.validate(&[0; 54 + 1000]).is_ok());
    }

    #[test]
    fn gso_by_frags_is_refused_for_every_gso_type() {
        let p = [0u8; 100];
        let mut t = tcp_gso();
        t.gso_size = GSO_BY_FRAGS;
        assert_eq!(t.validate(&p), Err(VirtioError::GsoSizeByFrags));
        assert_eq!(
            udp_gso(GSO_BY_FRAGS).validate(&p),
            Err(VirtioError::GsoSizeByFrags)
        );
        t.gso_size = GSO_BY_FRAGS - 1;
        assert!(t.validate(&p).is_ok());
        // Not a GSO packet: gso_size is not looked at.
        let none = VirtioNetHdr {
            gso_size: GSO_BY_FRAGS,
            ..VirtioNetHdr::default()
        };
        assert!(none.validate(&p).is_ok());
    }

    #[test]
    fn csum_start_must_leave_room_for_an_ip_header() {
        let p = [0u8; 100];
        let none = |csum_start| VirtioNetHdr {
            flags: flags::NEEDS_CSUM,
            csum_start,
            csum_offset: 6,
            ..VirtioNetHdr::default()
        };
        assert_eq!(
            none(19).validate(&p),
            Err(VirtioError::CsumStartTooSmall {
                csum_start: 19,
                min: 20
            })
        );
        assert!(none(0).validate(&p).is_err());
        assert_eq!(none(20).validate(&p).unwrap().needs_csum, Some((20, 6)));
        // TCPV6 needs an IPv6 header's 40 bytes; TCPV4 and UDP_L4 only 20.
        let mut t = tcp_gso();
        t.gso_type = gso::TCPV6;
        t.csum_start = 39;
        assert_eq!(
            t.validate(&p),
            Err(VirtioError::CsumStartTooSmall {
                csum_start: 39,
                min: 40
            })
        );
        t.csum_start = 40;
        assert!(t.validate(&p).is_ok());
        t.gso_type = gso::TCPV4;
        t.csum_start = 20;
        assert!(t.validate(&p).is_ok());
        assert!(udp_gso(100).validate(&p).is_ok());
        // Without NEEDS_CSUM there is no csum_start to check.
        let plain = VirtioNetHdr::default();
        assert!(plain.validate(&[]).is_ok());
    }

    #[test]
    fn gso_needs_a_whole_transport_header_at_csum_start() {
        // TCP: the checksum field fits (20 + 16 + 2 = 38) but not 20 bytes
        // of header.
        let mut t = tcp_gso();
        t.csum_start = 20;
        t.hdr_len = 0;
        assert_eq!(
            t.validate(&[0; 39]),
            Err(VirtioError::TransportHeaderOutOfBounds {
                csum_start: 20,
                header_len: 20,
                packet_len: 39
            })
        );
        assert!(t.validate(&[0; 40]).is_ok());
        // A non-GSO packet needs only the checksum field.
        t.gso_type = gso::NONE;
        assert!(t.validate(&[0; 38]).is_ok());
        // UDP: the checksum field ends with the header.
        let mut u = udp_gso(100);
        u.hdr_len = 0;
        assert!(u.validate(&[0; 28]).is_ok());
        assert!(matches!(
            u.validate(&[0; 27]),
            Err(VirtioError::CsumOutOfBounds { .. })
        ));
    }

    #[test]
    fn new_errors_display() {
        let shown = [
            VirtioError::GsoSizeByFrags.to_string(),
            VirtioError::TooManyUdpSegments {
                payload_len: 129,
                gso_size: 1,
            }
            .to_string(),
            VirtioError::CsumStartTooSmall {
                csum_start: 19,
                min: 20,
            }
            .to_string(),
            VirtioError::TransportHeaderOutOfBounds {
                csum_start: 20,
                header_len: 20,
                packet_len: 39,
            }
            .to_string(),
        ];
        assert_eq!(
            shown,
            [
                "gso_size 0xffff is the reserved GSO_BY_FRAGS",
                "129 payload bytes at gso_size 1 exceed 128 segments",
                "csum_start 19 below the minimum 20",
                "20-byte transport header at 20 beyond packet length 39",
            ]
        );
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let h = VirtioNetHdr {
            flags: flags::NEEDS_CSUM,
            csum_start: u16::MAX,
            csum_offset: u16::MAX,
            ..VirtioNetHdr::default()
        };
        assert!(h.validate(&[]).is_err());
        // The largest UDP_L4 gso_size times 128 fits any usize we run on.
        let u = VirtioNetHdr {
            gso_size: GSO_BY_FRAGS - 1,
            ..udp_gso(1)
        };
        assert!(u.validate(&[0; 65535]).is_ok());
    }
}
