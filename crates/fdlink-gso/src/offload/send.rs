//! The send half of the offloading endpoint: pooled buffers a stack writes
//! into, host or software segmentation per packet, and the fallback to
//! software when the kernel refuses an offload at run time.

use std::io;

use fdlink_core::{DropReason, OutPacket, SendOutcome};

use super::{GsoKinds, OffloadEndpoint, recycle, segment_arena, with_hash, write_seed};
use crate::complete::complete_checksum;
use crate::gro::Coalescer;
use crate::segment::{SegmentBuf, segment};
use crate::virtio::{self, GsoKind, VirtioNetHdr, gso};
use crate::wire::{IpVersion, PacketLayout, proto};

/// What a queued packet became once its offloads were applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum TxState {
    /// Not prepared yet.
    #[default]
    Queued,
    /// Leaves as it is, with its virtio header when the link has them.
    Whole,
    /// Leaves as the software segments in this range of the arena.
    Segments(usize, usize),
    /// Dropped before the link, for this reason.
    Refused(DropReason),
}

#[derive(Debug, Clone, Copy, Default)]
struct TxItem {
    len: usize,
    gso_size: u16,
    hash: Option<u32>,
    state: TxState,
}

/// Send state for one thread: pooled frame buffers a stack writes into,
/// flushed as one batch by [`OffloadEndpoint::flush`].
#[derive(Debug)]
pub struct Sender {
    buffers: Vec<Vec<u8>>,
    items: Vec<TxItem>,
    vnet_headers: Vec<[u8; virtio::HDR_LEN_MRG]>,
    segments: SegmentBuf,
    out: Vec<OutPacket<'static>>,
    /// For each packet handed to the endpoint, the item it came from.
    out_items: Vec<usize>,
    /// Items whose host super-packet the kernel refused: sent again in
    /// software.
    retry: Vec<usize>,
}

impl Sender {
    /// Packets queued for the next flush.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The frames queued for the next flush, in order, as the stack wrote
    /// them (link header included, offloads not applied yet).
    pub fn frames(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.items
            .iter()
            .zip(&self.buffers)
            .map(|(item, buf)| &buf[..item.len])
    }

    /// True when the queue is full: flush before queueing more.
    pub fn is_full(&self) -> bool {
        self.items.len() == self.buffers.len()
    }

    /// The buffer for the next packet, `len` bytes long (link header
    /// included). Write the frame, then [`Sender::commit`] it.
    ///
    /// # Panics
    /// When the queue is full.
    pub fn next_buffer(&mut self, len: usize) -> &mut [u8] {
        let buf = &mut self.buffers[self.items.len()];
        if buf.len() < len {
            // Only a frame beyond the configured maximum grows a buffer.
            buf.resize(len, 0);
        }
        &mut buf[..len]
    }

    /// Queues the frame written into [`Sender::next_buffer`]: `gso_size`
    /// asks for segmentation into payloads of that size, `hash` picks the
    /// channel.
    ///
    /// # Panics
    /// When the queue is full.
    pub fn commit(&mut self, len: usize, gso_size: Option<u16>, hash: Option<u32>) {
        assert!(!self.is_full(), "commit on a full sender: flush first");
        self.items.push(TxItem {
            len,
            gso_size: gso_size.unwrap_or(0),
            hash,
            state: TxState::Queued,
        });
    }
}

/// Send state for [`OffloadEndpoint::send_coalesced`]: the coalescer and
/// the encoded headers of its outputs.
#[derive(Debug, Default)]
pub struct GroSender {
    gro: Coalescer,
    headers: Vec<[u8; virtio::HDR_LEN_MRG]>,
    /// Outputs of kinds the kernel does not take, segmented again.
    segments: SegmentBuf,
    out: Vec<OutPacket<'static>>,
    retry: Vec<usize>,
}

impl GroSender {
    /// A sender with a default [`Coalescer`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A sender with the given coalescer (for its configuration).
    pub fn with_coalescer(gro: Coalescer) -> Self {
        GroSender {
            gro,
            ..Self::default()
        }
    }
}

/// True for the error a kernel gives a virtio header it will not take
/// (`virtio_net_hdr_to_skb` refusing it): the write's `EINVAL`.
fn is_offload_refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc_einval())
}

/// `EINVAL` on Linux (every architecture).
const fn libc_einval() -> i32 {
    22
}

/// The segmentation kind a TCP or UDP packet would go out as.
fn gso_kind(layout: &PacketLayout) -> GsoKind {
    match (layout.l4_protocol, layout.version) {
        (proto::TCP, IpVersion::V4) => GsoKind::TcpV4,
        (proto::TCP, IpVersion::V6) => GsoKind::TcpV6,
        (proto::UDP, _) => GsoKind::UdpL4,
        _ => GsoKind::None,
    }
}

impl OffloadEndpoint {
    /// Send state for up to `capacity` packets per flush, each buffer
    /// holding a link header plus a 64 KiB super-packet (or the MTU when
    /// `max_packet` says less).
    pub fn sender(&self, capacity: usize, max_packet: usize) -> Sender {
        let capacity = capacity.max(1);
        let buffer_size = self.link_len + max_packet;
        Sender {
            buffers: (0..capacity).map(|_| vec![0u8; buffer_size]).collect(),
            items: Vec::with_capacity(capacity),
            vnet_headers: vec![[0; virtio::HDR_LEN_MRG]; capacity],
            segments: segment_arena(),
            out: Vec::with_capacity(capacity),
            out_items: Vec::with_capacity(capacity),
            retry: Vec::new(),
        }
    }

    /// Sends what `tx` holds (on `queue`, or on the channel each packet's
    /// hash picks), applying send offloads, and empties it.
    ///
    /// The outcome counts frames: each packet handed in is either in it
    /// (sent or dropped) once or, when segmented in software, once per
    /// segment; a packet refused before the link (it cannot be segmented
    /// or given a virtio header, or exceeds
    /// [`fdlink_core::Endpoint::gso_max_size`]) is one drop. The
    /// endpoint's statistics count the same way, so the outcome's `sent`
    /// and `dropped` match what the flush added to `tx_packets` and the
    /// outbound drops.
    pub fn flush(&self, tx: &mut Sender, queue: Option<usize>) -> SendOutcome {
        if tx.items.is_empty() {
            return SendOutcome::default();
        }
        tx.segments.clear();
        let host = self.host_gso();
        let mut refused = 0;
        for (i, item) in tx.items.iter_mut().enumerate() {
            let frame = &mut tx.buffers[i][..item.len];
            item.state = self.prepare_send(
                frame,
                item.gso_size,
                host,
                &mut tx.vnet_headers[i],
                &mut tx.segments,
            );
            if let TxState::Refused(reason) = item.state {
                self.endpoint.count_send_drops(reason, 1);
                refused += 1;
            }
        }
        let mut outcome = self.send_prepared(tx, queue);
        outcome.dropped += refused;
        if !tx.retry.is_empty() {
            let again = self.resend_in_software(tx, queue);
            outcome.sent += again.sent;
            outcome.dropped += again.dropped;
        }
        tx.items.clear();
        outcome
    }

    /// Applies send offloads to one frame.
    fn prepare_send(
        &self,
        frame: &mut [u8],
        gso_size: u16,
        host: GsoKinds,
        vnet: &mut [u8; virtio::HDR_LEN_MRG],
        segments: &mut SegmentBuf,
    ) -> TxState {
        let ip_len = frame.len().saturating_sub(self.link_len);
        let mtu = self.endpoint.mtu() as usize;
        if gso_size > 0 && ip_len > mtu && ip_len > self.gso_max_size() {
            return TxState::Refused(DropReason::Oversized);
        }
        let layout = PacketLayout::parse_at(frame, self.link_len).ok();
        let kind = layout.as_ref().map_or(GsoKind::None, gso_kind);
        let in_software = gso_size > 0 && !host.contains(GsoKinds::of(kind));
        let prepared = if self.host_offload() && !in_software {
            self.host_header(frame, layout.as_ref(), gso_size, vnet)
                .map(|()| TxState::Whole)
        } else if gso_size > 0 {
            let before = segments.len();
            segment(frame, self.link_len, gso_size as usize, segments)
                .map(|_| TxState::Segments(before, segments.len()))
                .map_err(|_| ())
        } else {
            self.fill_checksum(frame, layout.as_ref())
                .map(|()| TxState::Whole)
        };
        prepared.unwrap_or(TxState::Refused(DropReason::TxOffloadFailed))
    }

    /// Hands the prepared packets to the endpoint; super-packets the
    /// kernel refuses are kept in `tx.retry` instead of being dropped.
    fn send_prepared(&self, tx: &mut Sender, queue: Option<usize>) -> SendOutcome {
        let Sender {
            buffers,
            items,
            vnet_headers,
            segments,
            out,
            out_items,
            retry,
        } = tx;
        retry.clear();
        out_items.clear();
        let mut packets = recycle(std::mem::take(out));
        for (i, item) in items.iter().enumerate() {
            match item.state {
                TxState::Whole => {
                    let mut p = OutPacket::frame(&buffers[i][..item.len]);
                    if self.host_offload() {
                        p = p.with_vnet_header(&vnet_headers[i][..self.vnet_len]);
                    }
                    packets.push(with_hash(p, item.hash));
                    out_items.push(i);
                }
                TxState::Segments(start, end) => {
                    for j in start..end {
                        let seg = segments.get(j).unwrap_or_default();
                        packets.push(with_hash(OutPacket::frame(seg), item.hash));
                        out_items.push(i);
                    }
                }
                TxState::Queued | TxState::Refused(_) => {}
            }
        }
        let outcome = self.endpoint.send_with(queue, &packets, |k, e| {
            let i = out_items[k];
            let host_super_packet = items[i].gso_size > 0 && items[i].state == TxState::Whole;
            let take_back = self.host_offload() && host_super_packet && is_offload_refused(e);
            if take_back {
                retry.push(i);
            }
            take_back
        });
        *out = recycle(packets);
        outcome
    }

    /// Segments in software the super-packets the kernel refused, switches
    /// their kinds to software for good, and sends the segments.
    fn resend_in_software(&self, tx: &mut Sender, queue: Option<usize>) -> SendOutcome {
        tx.segments.clear();
        let mut failed = 0;
        let mut ranges = Vec::with_capacity(tx.retry.len());
        for &i in &tx.retry {
            let item = tx.items[i];
            let frame = &tx.buffers[i][..item.len];
            if let Ok(layout) = PacketLayout::parse_at(frame, self.link_len) {
                self.fall_back_to_software(gso_kind(&layout));
            }
            let before = tx.segments.len();
            match segment(
                frame,
                self.link_len,
                item.gso_size as usize,
                &mut tx.segments,
            ) {
                Ok(_) => ranges.push((before, tx.segments.len(), item.hash)),
                Err(_) => failed += 1,
            }
        }
        if failed > 0 {
            self.endpoint
                .count_send_drops(DropReason::TxOffloadFailed, failed as u64);
        }
        let mut packets = recycle(std::mem::take(&mut tx.out));
        for (start, end, hash) in ranges {
            for j in start..end {
                let seg = tx.segments.get(j).unwrap_or_default();
                packets.push(with_hash(OutPacket::frame(seg), hash));
            }
        }
        let mut outcome = match queue {
            Some(q) => self.endpoint.send_on(q, &packets),
            None => self.endpoint.send(&packets),
        };
        outcome.dropped += failed;
        tx.out = recycle(packets);
        tx.retry.clear();
        outcome
    }

    /// Sends IP packets from elsewhere (a forwarder's burst) with receive
    /// coalescing: consecutive segments of one TCP or UDP flow are merged
    /// into super-packets whose virtio header lets the kernel take them in
    /// one write each. Needs host offload and IP framing (a TUN with
    /// `IFF_VNET_HDR`); otherwise the packets are sent as they are.
    ///
    /// The outcome counts the packets written: a coalesced super-packet
    /// is one. A super-packet of a kind the kernel does not take (or
    /// refuses at run time) is segmented back and sent as its segments.
    pub fn send_coalesced<'p>(
        &self,
        tx: &mut GroSender,
        packets: impl IntoIterator<Item = &'p [u8]>,
        queue: Option<usize>,
    ) -> SendOutcome {
        let send = |out: &[OutPacket<'_>]| match queue {
            Some(q) => self.endpoint.send_on(q, out),
            None => self.endpoint.send(out),
        };
        if !self.host_offload() || self.link_len != 0 {
            let mut out = recycle(std::mem::take(&mut tx.out));
            out.extend(packets.into_iter().map(OutPacket::frame));
            let outcome = send(&out);
            tx.out = recycle(out);
            return outcome;
        }
        tx.gro.clear();
        for p in packets {
            tx.gro.push(p);
        }
        tx.gro.flush();
        let mut outcome = self.send_gro_outputs(tx, queue);
        if !tx.retry.is_empty() {
            let again = self.resegment_gro(tx, queue);
            outcome.sent += again.sent;
            outcome.dropped += again.dropped;
        }
        outcome
    }

    /// Sends the coalescer's outputs: super-packets of kinds the kernel
    /// takes with their virtio header, the others as software segments.
    fn send_gro_outputs(&self, tx: &mut GroSender, queue: Option<usize>) -> SendOutcome {
        let GroSender {
            gro,
            headers,
            segments,
            out: out_store,
            retry,
        } = tx;
        let mut out = recycle(std::mem::take(out_store));
        let host = self.host_gso();
        headers.resize(gro.len(), [0; virtio::HDR_LEN_MRG]);
        segments.clear();
        retry.clear();
        let mut origin = Vec::with_capacity(gro.len());
        let mut failed = 0;
        for (k, ((hdr, packet), bytes)) in gro.iter().zip(headers.iter_mut()).enumerate() {
            let kind = GsoKind::from_raw(hdr.gso_type).map_or(GsoKind::None, |(k, _)| k);
            if kind != GsoKind::None && !host.contains(GsoKinds::of(kind)) {
                let before = segments.len();
                if segment(packet, 0, hdr.gso_size as usize, segments).is_err() {
                    failed += 1;
                    continue;
                }
                // Segments are appended after the loop, once the arena is
                // complete; remember which output they stand for.
                origin.push((k, Some((before, segments.len()))));
                continue;
            }
            let mut hdr = *hdr;
            hdr.num_buffers = (self.vnet_len == virtio::HDR_LEN_MRG).then_some(0);
            if hdr.encode(bytes).is_err() {
                failed += 1;
                continue;
            }
            origin.push((k, None));
        }
        let mut out_origin = Vec::with_capacity(origin.len());
        for &(k, range) in &origin {
            match range {
                None => {
                    let (_, packet) = gro.get(k).unwrap_or((&VirtioNetHdr::default(), &[]));
                    out.push(
                        OutPacket::frame(packet).with_vnet_header(&headers[k][..self.vnet_len]),
                    );
                    out_origin.push(Some(k));
                }
                Some((start, end)) => {
                    for j in start..end {
                        out.push(OutPacket::frame(segments.get(j).unwrap_or_default()));
                        out_origin.push(None);
                    }
                }
            }
        }
        if failed > 0 {
            self.endpoint
                .count_send_drops(DropReason::TxOffloadFailed, failed as u64);
        }
        let mut outcome = self.endpoint.send_with(queue, &out, |i, e| {
            let Some(k) = out_origin[i] else {
                return false;
            };
            let super_packet = gro.get(k).is_some_and(|(h, _)| h.gso_type != gso::NONE);
            let take_back = super_packet && is_offload_refused(e);
            if take_back {
                retry.push(k);
            }
            take_back
        });
        outcome.dropped += failed;
        *out_store = recycle(out);
        outcome
    }

    /// Segments in software the coalesced super-packets the kernel refused
    /// and sends the segments.
    fn resegment_gro(&self, tx: &mut GroSender, queue: Option<usize>) -> SendOutcome {
        tx.segments.clear();
        let mut failed = 0;
        for &k in &tx.retry {
            let Some((hdr, packet)) = tx.gro.get(k) else {
                continue;
            };
            if let Some((kind, _)) = GsoKind::from_raw(hdr.gso_type) {
                self.fall_back_to_software(kind);
            }
            if segment(packet, 0, hdr.gso_size as usize, &mut tx.segments).is_err() {
                failed += 1;
            }
        }
        if failed > 0 {
            self.endpoint
                .count_send_drops(DropReason::TxOffloadFailed, failed as u64);
        }
        let mut out = recycle(std::mem::take(&mut tx.out));
        out.extend(tx.segments.iter().map(OutPacket::frame));
        let mut outcome = match queue {
            Some(q) => self.endpoint.send_on(q, &out),
            None => self.endpoint.send(&out),
        };
        outcome.dropped += failed;
        tx.out = recycle(out);
        tx.retry.clear();
        outcome
    }

    /// Builds the virtio header for host offload and writes the
    /// pseudo-header seed where the kernel expects it.
    fn host_header(
        &self,
        frame: &mut [u8],
        layout: Option<&PacketLayout>,
        gso_size: u16,
        out: &mut [u8; virtio::HDR_LEN_MRG],
    ) -> Result<(), ()> {
        let mut header = VirtioNetHdr {
            num_buffers: (self.vnet_len == virtio::HDR_LEN_MRG).then_some(0),
            ..VirtioNetHdr::default()
        };
        let transport =
            layout.filter(|l| !l.fragment && matches!(l.l4_protocol, proto::TCP | proto::UDP));
        match transport {
            Some(l) if gso_size > 0 => {
                header.gso_type = gso_kind(l).to_raw();
                header.gso_size = gso_size;
                header.hdr_len = l.payload_offset as u16;
                write_seed(frame, l, &mut header)?;
            }
            Some(l) if l.l4_protocol == proto::TCP && self.config.fill_tcp_checksums => {
                write_seed(frame, l, &mut header)?;
            }
            _ if gso_size > 0 => return Err(()),
            _ => {}
        }
        header.encode(out).map(|_| ()).map_err(|_| ())
    }

    /// Software offload for a packet that is not segmented: fill in a TCP
    /// checksum the stack left out.
    fn fill_checksum(&self, frame: &mut [u8], layout: Option<&PacketLayout>) -> Result<(), ()> {
        if !self.config.fill_tcp_checksums {
            return Ok(());
        }
        let Some(layout) = layout else {
            return Ok(());
        };
        if layout.fragment || layout.l4_protocol != proto::TCP {
            return Ok(());
        }
        let mut header = VirtioNetHdr::default();
        write_seed(frame, layout, &mut header)?;
        complete_checksum(
            frame,
            header.csum_start as usize,
            header.csum_offset as usize,
        )
        .map(|_| ())
        .map_err(|_| ())
    }
}
