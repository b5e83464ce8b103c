//! Software segmentation (TSO and USO) of TCP and UDP super-packets.
//!
//! The output matches what Linux produces when it segments a super-packet in
//! software (see `KERNEL-NOTES.md`), except that TTL / hop limit are kept
//! (we are not forwarding):
//! - IPv4: total length and header checksum per segment, ID = super-packet
//!   ID + i (also with DF), options copied; IPv6: payload length, extension
//!   headers copied;
//! - TCP: sequence number advances by `gso_size`; CWR only on the first
//!   segment, FIN and PSH only on the last, other flags on all; checksum
//!   computed in full;
//! - UDP: each datagram gets its own header with its length and a full
//!   checksum (a computed 0 is sent as `0xffff`).
//!
//! Segments are written into a reusable [`SegmentBuf`] arena: after warm-up
//! no allocation happens per segment.

use core::fmt;

use crate::complete;
use crate::virtio::{GsoKind, VirtioError, VirtioNetHdr};
use crate::wire::{IpVersion, PacketLayout, WireError, ipv4, ipv6, proto, set_u16, tcp, udp};

/// A reusable arena of packets: one byte vector plus the end offset of each
/// packet.
#[derive(Debug, Clone, Default)]
pub struct SegmentBuf {
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl SegmentBuf {
    /// An empty arena.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty arena with room for `bytes` bytes and `packets` packets.
    #[must_use]
    pub fn with_capacity(bytes: usize, packets: usize) -> Self {
        Self {
            data: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(packets),
        }
    }

    /// Forgets all packets, keeping the capacity.
    pub fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
    }

    /// Number of packets.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are no packets.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Total bytes of all packets.
    pub fn total_bytes(&self) -> usize {
        self.data.len()
    }

    /// The `i`-th packet.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.data[start..end])
    }

    /// The `i`-th packet, mutably.
    pub fn get_mut(&mut self, i: usize) -> Option<&mut [u8]> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&mut self.data[start..end])
    }

    /// Iterates over the packets in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        (0..self.len()).map(|i| self.get(i).unwrap_or_default())
    }

    /// Appends a packet made of `parts` and returns its start offset.
    pub(crate) fn push_parts(&mut self, parts: &[&[u8]]) -> usize {
        let start = self.data.len();
        for part in parts {
            self.data.extend_from_slice(part);
        }
        self.ends.push(self.data.len());
        start
    }

    /// Drops packets so that `len` remain.
    fn truncate(&mut self, len: usize) {
        self.ends.truncate(len);
        let bytes = self.ends.last().copied().unwrap_or(0);
        self.data.truncate(bytes);
    }
}

/// Why a packet could not be segmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SegmentError {
    /// The IP packet or its transport header is malformed.
    Wire(WireError),
    /// The virtio header is invalid on its own.
    Virtio(VirtioError),
    /// The transport protocol is neither TCP nor UDP.
    NotTcpOrUdp(u8),
    /// The packet is an IP fragment.
    Fragment,
    /// `gso_size` is zero.
    ZeroGsoSize,
    /// The `gso_type` does not match the packet (IP version or protocol).
    GsoTypeMismatch {
        /// The header's kind.
        gso: GsoKind,
        /// The packet's IP version.
        version: IpVersion,
        /// The packet's transport protocol.
        protocol: u8,
    },
    /// `csum_start` is not the transport header offset.
    CsumStartMismatch {
        /// The header's `csum_start`.
        csum_start: usize,
        /// The transport header offset found by parsing.
        l4_offset: usize,
    },
    /// Legacy UDP fragmentation offload (`gso_type` UDP) is not supported.
    UnsupportedUfo,
}

impl fmt::Display for SegmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Wire(e) => write!(f, "malformed packet: {e}"),
            Self::Virtio(e) => write!(f, "invalid virtio header: {e}"),
            Self::NotTcpOrUdp(p) => write!(f, "protocol {p} is neither TCP nor UDP"),
            Self::Fragment => f.write_str("cannot segment an IP fragment"),
            Self::ZeroGsoSize => f.write_str("gso_size is zero"),
            Self::GsoTypeMismatch {
                gso,
                version,
                protocol,
            } => write!(
                f,
                "gso_type {gso:?} does not match an {version:?} packet of protocol {protocol}"
            ),
            Self::CsumStartMismatch {
                csum_start,
                l4_offset,
            } => write!(
                f,
                "csum_start {csum_start} is not the transport offset {l4_offset}"
            ),
            Self::UnsupportedUfo => f.write_str("UDP fragmentation offload is not supported"),
        }
    }
}

impl std::error::Error for SegmentError {}

impl From<WireError> for SegmentError {
    fn from(e: WireError) -> Self {
        Self::Wire(e)
    }
}

impl From<VirtioError> for SegmentError {
    fn from(e: VirtioError) -> Self {
        Self::Virtio(e)
    }
}

/// Segments a TCP or UDP super-packet into segments carrying at most
/// `gso_size` payload bytes each, appended to `out`. Returns the number of
/// segments appended (at least 1: a packet whose payload fits in one
/// segment comes out as a single packet with its checksums recomputed).
///
/// `packet` holds a `link_len`-byte link header (copied verbatim into every
/// segment) followed by an IP packet; bytes past the IP length are ignored.
/// The input transport checksum field is ignored (it may hold a
/// pseudo-header seed).
///
/// # Errors
/// [`SegmentError`] when the packet is not a TCP/UDP super-packet or
/// `gso_size` is 0; nothing is appended then.
pub fn segment(
    packet: &[u8],
    link_len: usize,
    gso_size: usize,
    out: &mut SegmentBuf,
) -> Result<usize, SegmentError> {
    let layout = PacketLayout::parse_at(packet, link_len)?;
    check_segmentable(&layout)?;
    if gso_size == 0 {
        return Err(SegmentError::ZeroGsoSize);
    }
    segment_layout(packet, &layout, gso_size, out)
}

/// Segments (or, for `gso_type` NONE, copies) a packet that arrived with a
/// virtio header, after checking the header against the parsed packet:
/// the header must [`validate`](VirtioNetHdr::validate), its `gso_type` must
/// match the IP version and protocol, and `csum_start` must be the real
/// transport offset (Linux silently drops the packet otherwise). A NONE
/// packet with `NEEDS_CSUM` gets its checksum completed.
///
/// # Errors
/// [`SegmentError`] describing the first inconsistency; nothing is appended
/// then.
pub fn segment_with_hdr(
    packet: &[u8],
    link_len: usize,
    hdr: &VirtioNetHdr,
    out: &mut SegmentBuf,
) -> Result<usize, SegmentError> {
    let offload = hdr.validate(packet)?;
    if offload.gso == GsoKind::None {
        let start = out.len();
        out.push_parts(&[packet]);
        if let Some((csum_start, csum_offset)) = offload.needs_csum {
            let seg = out.get_mut(start).unwrap_or_default();
            if complete::complete_checksum(seg, csum_start, csum_offset).is_err() {
                // validate() checked the bounds; keep the arena consistent
                // anyway.
                out.truncate(start);
                return Err(VirtioError::CsumOutOfBounds {
                    csum_start: hdr.csum_start,
                    csum_offset: hdr.csum_offset,
                    packet_len: packet.len(),
                }
                .into());
            }
        }
        return Ok(1);
    }
    let layout = PacketLayout::parse_at(packet, link_len)?;
    check_segmentable(&layout)?;
    let is_tcp = layout.l4_protocol == proto::TCP;
    let matches = match offload.gso {
        GsoKind::Udp => return Err(SegmentError::UnsupportedUfo),
        GsoKind::UdpL4 => !is_tcp,
        GsoKind::TcpV4 => is_tcp && layout.version == IpVersion::V4,
        GsoKind::TcpV6 => is_tcp && layout.version == IpVersion::V6,
        GsoKind::None => true,
    };
    if !matches {
        return Err(SegmentError::GsoTypeMismatch {
            gso: offload.gso,
            version: layout.version,
            protocol: layout.l4_protocol,
        });
    }
    if let Some((csum_start, _)) = offload.needs_csum
        && csum_start != layout.l4_offset
    {
        return Err(SegmentError::CsumStartMismatch {
            csum_start,
            l4_offset: layout.l4_offset,
        });
    }
    segment_layout(packet, &layout, usize::from(offload.gso_size), out)
}

fn check_segmentable(layout: &PacketLayout) -> Result<(), SegmentError> {
    if layout.fragment {
        return Err(SegmentError::Fragment);
    }
    match layout.l4_protocol {
        proto::TCP | proto::UDP => Ok(()),
        p => Err(SegmentError::NotTcpOrUdp(p)),
    }
}

/// The segmentation proper; `layout` was parsed from `packet`, which is a
/// TCP or UDP packet, and `gso_size > 0`.
fn segment_layout(
    packet: &[u8],
    layout: &PacketLayout,
    gso_size: usize,
    out: &mut SegmentBuf,
) -> Result<usize, SegmentError> {
    // The pseudo-header without its length; each segment adds its own.
    let pseudo = layout
        .pseudo_header(packet, 0)
        .ok_or(WireError::Truncated)?;
    let headers = &packet[..layout.payload_offset];
    let payload = &packet[layout.payload_offset..layout.end()];
    let count = payload.len().div_ceil(gso_size).max(1);
    let is_tcp = layout.l4_protocol == proto::TCP;
    let (first_seq, flags, first_id) = original_fields(packet, layout);
    for (i, chunk) in chunks(payload, gso_size).enumerate() {
        let start = out.data.len();
        out.push_parts(&[headers, chunk]);
        let seg = &mut out.data[start..];
        let l4_len = layout.l4_header_len + chunk.len();
        let ident = first_id.wrapping_add(i as u16);
        write_ip_header(&mut seg[layout.ip_offset..], layout, l4_len, ident);
        let l4 = &mut seg[layout.l4_offset..];
        let mut c = pseudo;
        c.add_u32(l4_len as u32);
        if is_tcp {
            let mut f = flags;
            if i > 0 {
                f &= !tcp::flags::CWR;
            }
            if i + 1 < count {
                f &= !(tcp::flags::FIN | tcp::flags::PSH);
            }
            if let Ok(mut t) = tcp::Packet::new_checked(l4) {
                t.set_seq_number(first_seq.wrapping_add((i * gso_size) as u32));
                t.set_flags(f);
                t.set_checksum(0);
                c.add_bytes(t.as_bytes());
                t.set_checksum(c.finish());
            }
        } else if let Ok(mut u) = udp::Packet::new_checked(l4) {
            u.set_len(l4_len as u16);
            u.set_checksum(0);
            c.add_bytes(u.as_bytes());
            u.set_checksum(match c.finish() {
                0 => 0xffff,
                csum => csum,
            });
        }
    }
    Ok(count)
}

/// `payload` in pieces of `size` bytes, or one empty piece if it is empty.
fn chunks(payload: &[u8], size: usize) -> impl Iterator<Item = &[u8]> {
    let empty: &[u8] = &[];
    payload
        .chunks(size)
        .chain(payload.is_empty().then_some(empty))
}

/// TCP sequence number and flags (0 for UDP) and IPv4 ID (0 for IPv6).
fn original_fields(packet: &[u8], layout: &PacketLayout) -> (u32, u8, u16) {
    let l4 = &packet[layout.l4_offset..layout.end()];
    let (seq, flags) = match tcp::Packet::new_checked(l4) {
        Ok(t) if layout.l4_protocol == proto::TCP => (t.seq_number(), t.flags()),
        _ => (0, 0),
    };
    let id = match ipv4::Packet::new_checked(&packet[layout.ip_offset..]) {
        Ok(p) => p.ident(),
        Err(_) => 0,
    };
    (seq, flags, id)
}

/// Rewrites the IP length fields (and, for IPv4, ID and checksum) of a
/// segment whose transport length is `l4_len`. `ip` starts at the IP header
/// copied from the super-packet.
fn write_ip_header(ip: &mut [u8], layout: &PacketLayout, l4_len: usize, ident: u16) {
    let ip_len = layout.ip_header_len + l4_len;
    match layout.version {
        IpVersion::V4 => {
            // Shrink the copied total length first so that the view checks.
            set_u16(ip, &ipv4::field::LENGTH, ip_len as u16);
            if let Ok(mut p) = ipv4::Packet::new_checked(&mut ip[..ip_len]) {
                p.set_ident(ident);
                p.fill_checksum();
            }
        }
        IpVersion::V6 => {
            set_u16(
                ip,
                &ipv6::field::PAYLOAD_LEN,
                (ip_len - ipv6::HEADER_LEN) as u16,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::{flags, gso};

    /// IPv4 + UDP with `payload` bytes.
    fn udp_v4(payload: usize) -> Vec<u8> {
        let total = 28 + payload;
        let mut p = vec![
            0x45, 0, 0, 0, 0, 7, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2, 0, 0, 0,
            0,
        ];
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[24..26].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        p.resize(total, 0xab);
        p
    }

    fn udp_hdr() -> VirtioNetHdr {
        VirtioNetHdr {
            flags: flags::NEEDS_CSUM,
            gso_type: gso::UDP_L4,
            hdr_len: 28,
            gso_size: 100,
            csum_start: 20,
            csum_offset: 6,
            num_buffers: None,
        }
    }

    #[test]
    fn udp_datagrams_get_their_own_headers() {
        let mut out = SegmentBuf::new();
        assert_eq!(segment(&udp_v4(250), 0, 100, &mut out), Ok(3));
        let lens: Vec<usize> = out.iter().map(<[u8]>::len).collect();
        assert_eq!(lens, [128, 128, 78]);
        let ids: Vec<u8> = out.iter().map(|s| s[5]).collect();
        assert_eq!(ids, [7, 8, 9]);
        assert!(out.iter().all(crate::complete::verify_l4_checksum));
    }

    #[test]
    fn errors_leave_the_arena_unchanged() {
        let mut out = SegmentBuf::new();
        segment(&udp_v4(10), 0, 4, &mut out).unwrap();
        let before = (out.len(), out.total_bytes());
        assert_eq!(
            segment(&udp_v4(10), 0, 0, &mut out),
            Err(SegmentError::ZeroGsoSize)
        );
        let mut icmp = udp_v4(10);
        icmp[9] = 1;
        assert_eq!(
            segment(&icmp, 0, 4, &mut out),
            Err(SegmentError::NotTcpOrUdp(1))
        );
        let mut frag = udp_v4(10);
        frag[6] = 0x20;
        assert_eq!(segment(&frag, 0, 4, &mut out), Err(SegmentError::Fragment));
        assert_eq!((out.len(), out.total_bytes()), before);
    }

    #[test]
    fn header_must_match_the_packet() {
        let mut out = SegmentBuf::new();
        let p = udp_v4(250);
        assert_eq!(segment_with_hdr(&p, 0, &udp_hdr(), &mut out), Ok(3));
        let mut h = udp_hdr();
        h.csum_start = 24;
        h.csum_offset = 6;
        assert!(matches!(
            segment_with_hdr(&p, 0, &h, &mut out),
            Err(SegmentError::CsumStartMismatch { .. })
        ));
        let mut h = udp_hdr();
        h.gso_type = gso::TCPV4;
        h.csum_offset = 16;
        assert!(matches!(
            segment_with_hdr(&p, 0, &h, &mut out),
            Err(SegmentError::GsoTypeMismatch { .. })
        ));
        let mut h = udp_hdr();
        h.gso_type = gso::UDP;
        assert_eq!(
            segment_with_hdr(&p, 0, &h, &mut out),
            Err(SegmentError::UnsupportedUfo)
        );
    }

    #[test]
    fn plain_needs_csum_packet_is_completed() {
        let mut p = udp_v4(30);
        let seed = crate::checksum::pseudo_header_ipv4([10, 0, 0, 1], [10, 0, 0, 2], 17, 38);
        p[26..28].copy_from_slice(&seed.fold().to_be_bytes());
        let mut h = udp_hdr();
        h.gso_type = gso::NONE;
        h.gso_size = 0;
        let mut out = SegmentBuf::new();
        assert_eq!(segment_with_hdr(&p, 0, &h, &mut out), Ok(1));
        assert!(crate::complete::verify_l4_checksum(out.get(0).unwrap()));
    }
}
