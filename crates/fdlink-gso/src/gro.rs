//! Receive coalescing (GRO): merging consecutive TCP segments or UDP
//! datagrams of one flow into a super-packet with a virtio header, the form
//! the Linux TUN driver accepts on write (`IFF_VNET_HDR`).
//!
//! Coalescing is the exact inverse of [`segment`](crate::segment::segment):
//! segmenting an output with its `gso_size` gives back the input packets.
//! An output super-packet equals the original super-packet except that
//! - its transport checksum field holds the pseudo-header *seed* (folded,
//!   uncomplemented, full L4 length included), as `NEEDS_CSUM` requires;
//! - its IPv4 ID is the first segment's ID and its IPv4 header checksum is
//!   recomputed; its UDP length is the full L4 length;
//! - its TCP flags are the first segment's flags plus the last one's PSH.
//!
//! A run of segments may grow while each new packet
//! - has the same IP header as the first except length, ID (which must be
//!   the previous ID + 1) and checksum (IPv4), or payload length (IPv6),
//!   IPv4 options and IPv6 extension headers included;
//! - for TCP, has the same ports, acknowledgment number, header word
//!   (data offset, window), urgent pointer and options; a sequence number
//!   that continues the run; ACK-class flags (no SYN, FIN, RST or URG) equal
//!   to the first segment's, ignoring CWR (allowed on the first only) and PSH
//!   (which ends the run);
//! - for UDP, has the same ports;
//! - carries a nonempty payload no larger than the first one; a smaller one
//!   ends the run;
//! - keeps the super-packet within [`CoalescerConfig::max_len`] (and, for
//!   UDP, the segment count within [`CoalescerConfig::max_udp_segments`]).
//!
//! Everything else — and runs of a single packet — is passed through
//! unchanged with a plain header (`gso_type` NONE, no flags).

use crate::checksum;
use crate::complete::verify_l4_checksum;
use crate::virtio::{VirtioNetHdr, flags, gso};
use crate::wire::{
    IpVersion, PacketLayout, get_u16, get_u32, ipv4, ipv6, proto, set_u16, tcp, udp,
};

/// Coalescer limits and policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CoalescerConfig {
    /// Largest IP packet produced (at most 65535, the IPv4 limit).
    pub max_len: usize,
    /// Most UDP datagrams merged into one super-packet (Linux refuses more
    /// than 128 per UDP GSO packet, so [`Coalescer::with_config`] caps it
    /// there).
    pub max_udp_segments: usize,
    /// Verify each packet's transport (and IPv4 header) checksum before
    /// merging it, so that a corrupt packet is never hidden behind a
    /// checksum recomputed by the kernel. Packets that fail pass through.
    pub verify_checksums: bool,
}

impl Default for CoalescerConfig {
    fn default() -> Self {
        Self {
            max_len: 65535,
            max_udp_segments: 64,
            verify_checksums: true,
        }
    }
}

/// One finished output: its header and where its bytes are in the arena.
#[derive(Debug, Clone, Copy)]
struct Output {
    hdr: VirtioNetHdr,
    start: usize,
    end: usize,
}

/// The run being built, always the last packet in the arena.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// Arena offset of the super-packet.
    start: usize,
    /// Layout of the first packet (offsets relative to `start`).
    layout: PacketLayout,
    gso_size: usize,
    segments: usize,
    next_seq: u32,
    next_id: u16,
    /// A smaller or PSH segment was appended: nothing more can join.
    closed: bool,
    psh: bool,
}

/// Merges consecutive packets of a flow into super-packets.
///
/// Feed packets with [`push`](Self::push), call [`flush`](Self::flush)
/// at the end of a batch, read the outputs with [`iter`](Self::iter), then
/// [`clear`](Self::clear) to reuse the buffers.
///
/// ```
/// use fdlink_gso::gro::Coalescer;
///
/// let mut gro = Coalescer::new();
/// gro.push(&[0x45, 0, 0, 20, 0, 0, 0, 0, 64, 253, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
/// gro.flush();
/// let (hdr, bytes) = gro.get(0).unwrap();
/// assert_eq!(hdr.gso_type, 0); // not TCP or UDP: passed through
/// assert_eq!(bytes.len(), 20);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Coalescer {
    config: CoalescerConfig,
    data: Vec<u8>,
    outputs: Vec<Output>,
    run: Option<Run>,
}

impl Coalescer {
    /// A coalescer with the default configuration.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A coalescer with `config` (`max_len` is capped at 65535 and
    /// `max_udp_segments` at [`crate::virtio::UDP_MAX_SEGMENTS`], the most
    /// Linux takes in one UDP super-packet).
    #[must_use]
    pub fn with_config(mut config: CoalescerConfig) -> Self {
        config.max_len = config.max_len.min(65535);
        config.max_udp_segments = config.max_udp_segments.min(crate::virtio::UDP_MAX_SEGMENTS);
        Self {
            config,
            ..Self::default()
        }
    }

    /// Feeds one IP packet (no link header). Never fails: a packet that
    /// cannot be merged becomes an output of its own.
    pub fn push(&mut self, packet: &[u8]) {
        let Some(layout) = self.coalescable(packet) else {
            self.finish_run();
            self.pass_through(packet);
            return;
        };
        if let Some(run) = self.run
            && self.can_join(&run, packet, &layout)
        {
            self.join(packet, &layout);
            return;
        }
        self.finish_run();
        self.start_run(packet, layout);
    }

    /// Finishes the open run, if any, so that every pushed packet is in
    /// an output.
    pub fn flush(&mut self) {
        self.finish_run();
    }

    /// Number of finished outputs.
    pub fn len(&self) -> usize {
        self.outputs.len()
    }

    /// Whether there are no finished outputs.
    pub fn is_empty(&self) -> bool {
        self.outputs.is_empty()
    }

    /// The `i`-th finished output: its virtio header and IP packet.
    pub fn get(&self, i: usize) -> Option<(&VirtioNetHdr, &[u8])> {
        let o = self.outputs.get(i)?;
        Some((&o.hdr, &self.data[o.start..o.end]))
    }

    /// Iterates over the finished outputs.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&VirtioNetHdr, &[u8])> + '_ {
        self.outputs
            .iter()
            .map(|o| (&o.hdr, &self.data[o.start..o.end]))
    }

    /// Drops all outputs and any open run, keeping the buffers.
    pub fn clear(&mut self) {
        self.data.clear();
        self.outputs.clear();
        self.run = None;
    }

    /// The layout of `packet` if it may take part in a run.
    fn coalescable(&self, packet: &[u8]) -> Option<PacketLayout> {
        let layout = PacketLayout::parse(packet).ok()?;
        let ok = !layout.fragment
            && layout.ip_len == packet.len()
            && layout.payload_len() > 0
            && layout.ip_len <= self.config.max_len
            && match layout.l4_protocol {
                proto::TCP => {
                    let f = packet[layout.l4_offset + tcp::field::FLAGS];
                    let bad = tcp::flags::SYN | tcp::flags::FIN | tcp::flags::RST | tcp::flags::URG;
                    f & bad == 0
                }
                proto::UDP => {
                    let ulen = get_u16(&packet[layout.l4_offset..], &udp::field::LENGTH);
                    usize::from(ulen) == layout.l4_len()
                }
                _ => false,
            };
        let verified = !self.config.verify_checksums
            || (verify_l4_checksum(packet)
                && (layout.version == IpVersion::V6
                    || checksum::checksum(&packet[..layout.ip_header_len]) == 0));
        (ok && verified).then_some(layout)
    }

    fn can_join(&self, run: &Run, packet: &[u8], layout: &PacketLayout) -> bool {
        let first = &self.data[run.start..];
        let f = &run.layout;
        let payload_len = layout.payload_len();
        let run_len = self.data.len() - run.start;
        if run.closed
            || layout.version != f.version
            || layout.l4_protocol != f.l4_protocol
            || layout.ip_header_len != f.ip_header_len
            || layout.l4_header_len != f.l4_header_len
            || payload_len > run.gso_size
            || run_len + payload_len > self.config.max_len
        {
            return false;
        }
        let same = |a: core::ops::Range<usize>| first[a.clone()] == packet[a];
        let ip_same = match f.version {
            IpVersion::V4 => {
                same(0..ipv4::field::LENGTH.start)
                    && same(ipv4::field::FLG_OFF.start..ipv4::field::CHECKSUM.start)
                    && same(ipv4::field::CHECKSUM.end..f.ip_header_len)
                    && get_u16(packet, &ipv4::field::IDENT) == run.next_id
            }
            IpVersion::V6 => {
                same(ipv6::field::VER_TC_FLOW) && same(ipv6::field::NXT_HDR..f.ip_header_len)
            }
        };
        if !ip_same {
            return false;
        }
        let l4 = f.l4_offset;
        let at = |r: core::ops::Range<usize>| r.start + l4..r.end + l4;
        match f.l4_protocol {
            proto::TCP => {
                let flags_at = l4 + tcp::field::FLAGS;
                let mask = !(tcp::flags::CWR | tcp::flags::PSH);
                same(at(tcp::field::SRC_PORT.start..tcp::field::SEQ_NUM.start))
                    && get_u32(&packet[l4..], &tcp::field::SEQ_NUM) == run.next_seq
                    && same(at(tcp::field::ACK_NUM.start..tcp::field::FLAGS))
                    && packet[flags_at] & tcp::flags::CWR == 0
                    && packet[flags_at] & mask == first[flags_at] & mask
                    && same(at(tcp::field::WINDOW))
                    && same(tcp::field::URGENT.start + l4..f.payload_offset)
            }
            _ => {
                run.segments < self.config.max_udp_segments
                    && same(at(udp::field::SRC_PORT.start..udp::field::LENGTH.start))
            }
        }
    }

    fn start_run(&mut self, packet: &[u8], layout: PacketLayout) {
        let start = self.data.len();
        self.data.extend_from_slice(packet);
        let l4 = &packet[layout.l4_offset..];
        let payload_len = layout.payload_len();
        let (next_seq, psh) = if layout.l4_protocol == proto::TCP {
            let seq = get_u32(l4, &tcp::field::SEQ_NUM).wrapping_add(payload_len as u32);
            (seq, l4[tcp::field::FLAGS] & tcp::flags::PSH != 0)
        } else {
            (0, false)
        };
        let next_id = match layout.version {
            IpVersion::V4 => get_u16(packet, &ipv4::field::IDENT).wrapping_add(1),
            IpVersion::V6 => 0,
        };
        self.run = Some(Run {
            start,
            layout,
            gso_size: payload_len,
            segments: 1,
            next_seq,
            next_id,
            closed: psh,
            psh,
        });
    }

    fn join(&mut self, packet: &[u8], layout: &PacketLayout) {
        let Some(run) = self.run.as_mut() else {
            return;
        };
        let payload = &packet[layout.payload_offset..];
        self.data.extend_from_slice(payload);
        run.segments += 1;
        run.next_id = run.next_id.wrapping_add(1);
        run.next_seq = run.next_seq.wrapping_add(payload.len() as u32);
        if layout.l4_protocol == proto::TCP {
            run.psh = packet[layout.l4_offset + tcp::field::FLAGS] & tcp::flags::PSH != 0;
        }
        run.closed = run.psh || payload.len() < run.gso_size;
    }

    fn pass_through(&mut self, packet: &[u8]) {
        let start = self.data.len();
        self.data.extend_from_slice(packet);
        self.outputs.push(Output {
            hdr: VirtioNetHdr::default(),
            start,
            end: self.data.len(),
        });
    }

    /// Turns the open run into an output.
    fn finish_run(&mut self) {
        let Some(run) = self.run.take() else {
            return;
        };
        let end = self.data.len();
        let mut hdr = VirtioNetHdr::default();
        if run.segments > 1 {
            hdr = seal(&mut self.data[run.start..end], &run);
        }
        self.outputs.push(Output {
            hdr,
            start: run.start,
            end,
        });
    }
}

/// Rewrites the merged packet's headers and returns its virtio header.
fn seal(packet: &mut [u8], run: &Run) -> VirtioNetHdr {
    let l = &run.layout;
    let ip_len = packet.len();
    let l4_len = ip_len - l.l4_offset;
    match l.version {
        IpVersion::V4 => {
            set_u16(packet, &ipv4::field::LENGTH, ip_len as u16);
            if let Ok(mut p) = ipv4::Packet::new_checked(&mut packet[..]) {
                p.fill_checksum();
            }
        }
        IpVersion::V6 => {
            set_u16(
                packet,
                &ipv6::field::PAYLOAD_LEN,
                (ip_len - ipv6::HEADER_LEN) as u16,
            );
        }
    }
    let seed = l.pseudo_header(packet, l4_len).map_or(0, |c| c.fold());
    let is_tcp = l.l4_protocol == proto::TCP;
    let l4 = &mut packet[l.l4_offset..];
    let (gso_type, csum_offset) = if is_tcp {
        let mut ty = match l.version {
            IpVersion::V4 => gso::TCPV4,
            IpVersion::V6 => gso::TCPV6,
        };
        if l4[tcp::field::FLAGS] & tcp::flags::CWR != 0 {
            ty |= gso::ECN;
        }
        if run.psh {
            l4[tcp::field::FLAGS] |= tcp::flags::PSH;
        }
        set_u16(l4, &tcp::field::CHECKSUM, seed);
        (ty, tcp::CHECKSUM_OFFSET)
    } else {
        set_u16(l4, &udp::field::LENGTH, l4_len as u16);
        set_u16(l4, &udp::field::CHECKSUM, seed);
        (gso::UDP_L4, udp::CHECKSUM_OFFSET)
    };
    VirtioNetHdr {
        flags: flags::NEEDS_CSUM,
        gso_type,
        hdr_len: l.payload_offset as u16,
        gso_size: run.gso_size as u16,
        csum_start: l.l4_offset as u16,
        csum_offset,
        num_buffers: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::{SegmentBuf, segment};

    /// IPv4 + TCP (flags `tcp_flags`) with `payload` bytes.
    fn tcp_v4(payload: usize, tcp_flags: u8) -> Vec<u8> {
        let total = 40 + payload;
        let mut p = vec![
            0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, //
            0, 1, 0, 2, 0, 0, 0, 9, 0, 0, 0, 1, 0x50, tcp_flags, 1, 0, 0, 0, 0, 0,
        ];
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p.resize(total, 0x5c);
        p
    }

    fn segments(p: &[u8], mss: usize) -> SegmentBuf {
        let mut out = SegmentBuf::new();
        segment(p, 0, mss, &mut out).unwrap();
        out
    }

    #[test]
    fn merges_a_run_and_sets_the_tun_header() {
        let segs = segments(&tcp_v4(3000, tcp::flags::ACK), 1000);
        let mut gro = Coalescer::new();
        segs.iter().for_each(|s| gro.push(s));
        gro.flush();
        assert_eq!(gro.len(), 1);
        let (hdr, bytes) = gro.get(0).unwrap();
        assert_eq!(bytes.len(), 3040);
        assert_eq!(
            (hdr.flags, hdr.gso_type, hdr.gso_size, hdr.hdr_len),
            (flags::NEEDS_CSUM, gso::TCPV4, 1000, 40)
        );
    }

    #[test]
    fn corrupt_segment_is_not_merged() {
        let segs = segments(&tcp_v4(3000, tcp::flags::ACK), 1000);
        let mut gro = Coalescer::new();
        gro.push(segs.get(0).unwrap());
        let mut bad = segs.get(1).unwrap().to_vec();
        bad[100] ^= 1;
        gro.push(&bad);
        gro.push(segs.get(2).unwrap());
        gro.flush();
        assert_eq!(gro.len(), 3);
        assert!(gro.iter().all(|(h, _)| h.gso_type == gso::NONE));
        assert_eq!(gro.get(1).unwrap().1, &bad[..]);
    }

    #[test]
    fn fin_segments_pass_through() {
        let segs = segments(&tcp_v4(2000, tcp::flags::ACK | tcp::flags::FIN), 1000);
        let mut gro = Coalescer::new();
        segs.iter().for_each(|s| gro.push(s));
        gro.flush();
        // The first segment has no FIN but runs alone; the FIN one passes.
        assert_eq!(gro.len(), 2);
        assert!(gro.iter().all(|(h, _)| h.gso_type == gso::NONE));
    }

    #[test]
    fn max_len_bounds_the_super_packet() {
        let config = CoalescerConfig {
            max_len: 2100,
            ..CoalescerConfig::default()
        };
        let segs = segments(&tcp_v4(4000, tcp::flags::ACK), 1000);
        let mut gro = Coalescer::with_config(config);
        segs.iter().for_each(|s| gro.push(s));
        gro.flush();
        assert_eq!(gro.len(), 2);
        assert!(gro.iter().all(|(_, b)| b.len() <= 2100));
    }

    #[test]
    fn udp_runs_stop_at_the_kernels_segment_limit() {
        // 300 datagrams of 10 bytes: Linux refuses a UDP super-packet of more
        // than 128 segments, so the coalescer never builds one, whatever it
        // is configured with.
        let config = CoalescerConfig {
            max_udp_segments: 1000,
            ..CoalescerConfig::default()
        };
        let mut udp = vec![
            0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, //
            0, 1, 0, 2, 0, 0, 0, 0,
        ];
        let total = 28 + 3000;
        udp[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        udp[24..26].copy_from_slice(&((total - 20) as u16).to_be_bytes());
        udp.resize(total, 0x5c);
        let segs = segments(&udp, 10);
        assert_eq!(segs.len(), 300);
        let mut gro = Coalescer::with_config(config);
        segs.iter().for_each(|s| gro.push(s));
        gro.flush();
        let counts: Vec<usize> = gro.iter().map(|(_, b)| (b.len() - 28) / 10).collect();
        assert_eq!(counts.iter().sum::<usize>(), 300, "{counts:?}");
        assert!(
            counts.iter().all(|&n| n <= crate::virtio::UDP_MAX_SEGMENTS),
            "{counts:?}"
        );
        for (hdr, bytes) in gro.iter() {
            assert!(hdr.validate(bytes).is_ok(), "the kernel would take it");
        }
    }
}
