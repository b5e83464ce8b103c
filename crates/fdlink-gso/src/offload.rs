//! The offloading endpoint: a core [`Endpoint`] with virtio-net offloads in
//! both directions.
//!
//! Receive: each frame's virtio header is decoded and checked against the
//! frame; `NEEDS_CSUM` packets get their checksum completed (or are passed
//! up as partial, for a stack told not to verify), `DATA_VALID` is passed up
//! as verified, and a segmentation super-packet is handed up whole with its
//! segment size or split into MTU-sized packets. Without virtio headers,
//! transport checksums are verified here, per packet. A frame that fails is
//! dropped and counted in the endpoint's statistics by reason.
//!
//! Send: where the descriptor carries virtio headers (host GSO), each
//! super-packet leaves whole with a header whose `csum_start` comes from the
//! real link and IP header lengths (IPv4 options and IPv6 extension headers
//! included); otherwise it is segmented in software and every checksum
//! filled in.
//!
//! State that a thread mutates lives in a [`Receiver`] or [`Sender`] the
//! caller owns, so one endpoint can serve one stack per queue.

use fdlink_core::{Batch, Closed, DropReason, Endpoint, OutPacket, SendOutcome};

use crate::complete::{complete_checksum, verify_l4_checksum};
use crate::gro::Coalescer;
use crate::segment::{SegmentBuf, segment, segment_with_hdr};
use crate::virtio::{self, GsoKind, VirtioNetHdr, flags, gso};
use crate::wire::{IpVersion, PacketLayout, proto};

/// How the offloading endpoint treats checksums and super-packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct OffloadConfig {
    /// Hand received super-packets up whole (with their segment size)
    /// instead of splitting them.
    pub accept_large: bool,
    /// Complete `NEEDS_CSUM` checksums on receive. Off for a stack that is
    /// told not to verify checksums: the packet came from the local kernel
    /// and only carries the pseudo-header seed.
    pub complete_partial: bool,
    /// Verify TCP/UDP checksums of received packets that carry no virtio
    /// verdict (no header, or neither flag set).
    pub verify_rx: bool,
    /// The stack leaves outgoing TCP checksums to the link: fill them in
    /// (software) or ask the kernel to (host, `NEEDS_CSUM`).
    pub fill_tcp_checksums: bool,
}

impl Default for OffloadConfig {
    fn default() -> Self {
        OffloadConfig {
            accept_large: false,
            complete_partial: true,
            verify_rx: true,
            fill_tcp_checksums: false,
        }
    }
}

impl OffloadConfig {
    /// Sets [`OffloadConfig::accept_large`].
    pub fn accept_large(mut self, on: bool) -> Self {
        self.accept_large = on;
        self
    }

    /// Sets [`OffloadConfig::complete_partial`].
    pub fn complete_partial(mut self, on: bool) -> Self {
        self.complete_partial = on;
        self
    }

    /// Sets [`OffloadConfig::verify_rx`].
    pub fn verify_rx(mut self, on: bool) -> Self {
        self.verify_rx = on;
        self
    }

    /// Sets [`OffloadConfig::fill_tcp_checksums`].
    pub fn fill_tcp_checksums(mut self, on: bool) -> Self {
        self.fill_tcp_checksums = on;
        self
    }
}

/// A core endpoint with offloads.
#[derive(Debug)]
pub struct OffloadEndpoint {
    endpoint: Endpoint,
    config: OffloadConfig,
    link_len: usize,
    vnet_len: usize,
}

/// Where a received packet's bytes are.
#[derive(Debug, Clone, Copy)]
enum Source {
    Batch(usize),
    Segment(usize),
}

#[derive(Debug, Clone, Copy)]
struct RxItem {
    source: Source,
    gso_size: u16,
    checksum_ok: bool,
    queue: u16,
}

/// Receive state for one thread: the batch read from the kernel, the
/// segments split from it, and the packets ready for the stack.
#[derive(Debug)]
pub struct Receiver {
    batch: Batch,
    segments: SegmentBuf,
    items: Vec<RxItem>,
    next: usize,
}

/// One received packet, ready for a stack.
#[derive(Debug, Clone, Copy)]
pub struct RxPacket<'a> {
    /// The link frame: link header (if any) and network packet.
    pub frame: &'a [u8],
    /// Segment size of a super-packet handed up whole; `None` for a plain
    /// packet.
    pub gso_size: Option<u16>,
    /// The transport checksum is known good, or the packet came from the
    /// local kernel with only a pseudo-header seed to be completed.
    pub checksum_ok: bool,
    /// The channel it arrived on.
    pub queue: usize,
}

impl Receiver {
    /// Packets ready and not yet taken.
    pub fn len(&self) -> usize {
        self.items.len() - self.next
    }

    /// True when no packet is ready.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the next packet.
    pub fn pop(&mut self) -> Option<RxPacket<'_>> {
        let item = *self.items.get(self.next)?;
        self.next += 1;
        Some(self.packet(item))
    }

    /// The packets not yet taken, without taking them.
    pub fn iter(&self) -> impl Iterator<Item = RxPacket<'_>> + '_ {
        self.items[self.next..]
            .iter()
            .map(|&item| self.packet(item))
    }

    fn packet(&self, item: RxItem) -> RxPacket<'_> {
        let frame = match item.source {
            Source::Batch(i) => self.batch.get(i).map(|p| p.link_frame()),
            Source::Segment(j) => self.segments.get(j),
        }
        .unwrap_or_default();
        RxPacket {
            frame,
            gso_size: (item.gso_size > 0).then_some(item.gso_size),
            checksum_ok: item.checksum_ok,
            queue: item.queue as usize,
        }
    }

    fn clear(&mut self) {
        self.items.clear();
        self.segments.clear();
        self.next = 0;
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct TxItem {
    len: usize,
    gso_size: u16,
    hash: Option<u32>,
    /// Range of `Sender::segments` holding its software segments.
    segments: (usize, usize),
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
    pub fn commit(&mut self, len: usize, gso_size: Option<u16>, hash: Option<u32>) {
        self.items.push(TxItem {
            len,
            gso_size: gso_size.unwrap_or(0),
            hash,
            segments: (0, 0),
        });
    }
}

/// Send state for [`OffloadEndpoint::send_coalesced`]: the coalescer and
/// the encoded headers of its outputs.
#[derive(Debug, Default)]
pub struct GroSender {
    gro: Coalescer,
    headers: Vec<[u8; virtio::HDR_LEN_MRG]>,
    out: Vec<OutPacket<'static>>,
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

impl OffloadEndpoint {
    /// Wraps `endpoint`. Host offloads are used when it carries virtio
    /// headers ([`Endpoint::vnet_header_len`] > 0), software otherwise.
    pub fn new(endpoint: Endpoint, config: OffloadConfig) -> Self {
        let link_len = if endpoint.is_ethernet() { 14 } else { 0 };
        let vnet_len = endpoint.vnet_header_len();
        OffloadEndpoint {
            endpoint,
            config,
            link_len,
            vnet_len,
        }
    }

    /// The wrapped endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The configuration.
    pub fn config(&self) -> OffloadConfig {
        self.config
    }

    /// True when segmentation and checksums are left to the kernel.
    pub fn host_offload(&self) -> bool {
        self.vnet_len > 0
    }

    /// Receive state sized for this endpoint.
    pub fn receiver(&self) -> Receiver {
        let batch = self.endpoint.new_batch();
        let capacity = batch.capacity();
        Receiver {
            batch,
            segments: SegmentBuf::with_capacity(0, 0),
            items: Vec::with_capacity(capacity * 4),
            next: 0,
        }
    }

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
            segments: SegmentBuf::with_capacity(0, 0),
            out: Vec::with_capacity(capacity),
        }
    }

    /// Reads what is queued (on `queue`, or on every channel) into `rx`,
    /// applying receive offloads. Returns how many packets are ready.
    ///
    /// # Errors
    /// [`Closed`] once the channel(s) closed.
    pub fn recv(&self, rx: &mut Receiver, queue: Option<usize>) -> Result<usize, Closed> {
        rx.clear();
        match queue {
            Some(q) => self.endpoint.recv_batch_from(q, &mut rx.batch)?,
            None => self.endpoint.recv_batch(&mut rx.batch)?,
        };
        for i in 0..rx.batch.len() {
            if let Err(reason) = self.prepare(rx, i) {
                self.endpoint.count_drop(reason, 1);
            }
        }
        Ok(rx.items.len())
    }

    fn prepare(&self, rx: &mut Receiver, i: usize) -> Result<(), DropReason> {
        let Some(packet) = rx.batch.get(i) else {
            return Ok(());
        };
        let queue = packet.queue() as u16;
        let link_len = packet.link_header().len();
        let is_ip = packet
            .network()
            .first()
            .is_some_and(|b| matches!(b >> 4, 4 | 6))
            && packet.link_header().len() == self.link_len;
        let item = |source, gso_size, checksum_ok| RxItem {
            source,
            gso_size,
            checksum_ok,
            queue,
        };
        if self.vnet_len == 0 {
            let ok = !self.config.verify_rx || !is_ip || transport_checksum_ok(packet.network());
            if !ok {
                return Err(DropReason::BadChecksum);
            }
            rx.items.push(item(Source::Batch(i), 0, true));
            return Ok(());
        }
        let header =
            decode_header(packet.vnet_header()).map_err(|_| DropReason::InvalidVirtioHeader)?;
        let offload = header
            .validate(packet.link_frame())
            .map_err(|_| DropReason::InvalidVirtioHeader)?;
        if offload.gso != GsoKind::None && !self.config.accept_large {
            let before = rx.segments.len();
            segment_with_hdr(packet.link_frame(), link_len, &header, &mut rx.segments)
                .map_err(|_| DropReason::OffloadFailed)?;
            for j in before..rx.segments.len() {
                rx.items.push(item(Source::Segment(j), 0, true));
            }
            return Ok(());
        }
        let checksum_ok = match offload.needs_csum {
            Some((start, offset)) => {
                if self.config.complete_partial {
                    let vnet_len = self.vnet_len;
                    let frame = rx.batch.frame_mut(i).unwrap_or_default();
                    complete_checksum(&mut frame[vnet_len..], start, offset)
                        .map_err(|_| DropReason::InvalidVirtioHeader)?;
                }
                true
            }
            None if offload.data_valid => true,
            None => !self.config.verify_rx || !is_ip || transport_checksum_ok(packet.network()),
        };
        if !checksum_ok {
            return Err(DropReason::BadChecksum);
        }
        rx.items
            .push(item(Source::Batch(i), offload.gso_size, true));
        Ok(())
    }

    /// Sends what `tx` holds (on `queue`, or on the channel each packet's
    /// hash picks), applying send offloads, and empties it.
    pub fn flush(&self, tx: &mut Sender, queue: Option<usize>) -> SendOutcome {
        if tx.items.is_empty() {
            return SendOutcome::default();
        }
        tx.segments.clear();
        let mut failed = 0;
        for (i, item) in tx.items.iter_mut().enumerate() {
            let frame = &mut tx.buffers[i][..item.len];
            let prepared = if self.host_offload() {
                self.host_header(frame, item.gso_size, &mut tx.vnet_headers[i])
            } else {
                self.software(frame, item, &mut tx.segments)
            };
            if prepared.is_err() {
                // Marked empty: counted below, never sent.
                item.len = 0;
                item.segments = (0, 0);
                failed += 1;
            }
        }
        if failed > 0 {
            self.endpoint.count_drop(DropReason::OffloadFailed, failed);
        }
        let mut out = recycle(std::mem::take(&mut tx.out));
        for (i, item) in tx.items.iter().enumerate() {
            if item.len == 0 {
                continue;
            }
            if item.segments.1 > item.segments.0 {
                for j in item.segments.0..item.segments.1 {
                    let seg = tx.segments.get(j).unwrap_or_default();
                    out.push(with_hash(OutPacket::frame(seg), item.hash));
                }
            } else {
                let mut p = OutPacket::frame(&tx.buffers[i][..item.len]);
                if self.host_offload() {
                    p = p.with_vnet_header(&tx.vnet_headers[i][..self.vnet_len]);
                }
                out.push(with_hash(p, item.hash));
            }
        }
        let outcome = match queue {
            Some(q) => self.endpoint.send_on(q, &out),
            None => self.endpoint.send(&out),
        };
        tx.out = recycle(out);
        tx.items.clear();
        outcome
    }

    /// Sends IP packets from elsewhere (a forwarder's burst) with receive
    /// coalescing: consecutive segments of one TCP or UDP flow are merged
    /// into super-packets whose virtio header lets the kernel take them in
    /// one write each. Needs host offload and IP framing (a TUN with
    /// `IFF_VNET_HDR`); otherwise the packets are sent as they are.
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
        let mut out = recycle(std::mem::take(&mut tx.out));
        let outcome = {
            tx.gro.clear();
            for p in packets {
                tx.gro.push(p);
            }
            tx.gro.flush();
            tx.headers.resize(tx.gro.len(), [0; virtio::HDR_LEN_MRG]);
            let mut failed = 0;
            for ((hdr, packet), bytes) in tx.gro.iter().zip(tx.headers.iter_mut()) {
                let mut hdr = *hdr;
                hdr.num_buffers = (self.vnet_len == virtio::HDR_LEN_MRG).then_some(0);
                if hdr.encode(bytes).is_err() {
                    failed += 1;
                    continue;
                }
                out.push(OutPacket::frame(packet).with_vnet_header(&bytes[..self.vnet_len]));
            }
            if failed > 0 {
                self.endpoint.count_drop(DropReason::OffloadFailed, failed);
            }
            send(&out)
        };
        tx.out = recycle(out);
        outcome
    }

    /// Builds the virtio header for host offload and writes the
    /// pseudo-header seed where the kernel expects it.
    fn host_header(
        &self,
        frame: &mut [u8],
        gso_size: u16,
        out: &mut [u8; virtio::HDR_LEN_MRG],
    ) -> Result<(), ()> {
        let mut header = VirtioNetHdr {
            num_buffers: (self.vnet_len == virtio::HDR_LEN_MRG).then_some(0),
            ..VirtioNetHdr::default()
        };
        let layout = PacketLayout::parse_at(frame, self.link_len).ok();
        let transport =
            layout.filter(|l| !l.fragment && matches!(l.l4_protocol, proto::TCP | proto::UDP));
        match transport {
            Some(l) if gso_size > 0 => {
                header.gso_type = match (l.l4_protocol, l.version) {
                    (proto::TCP, IpVersion::V4) => gso::TCPV4,
                    (proto::TCP, IpVersion::V6) => gso::TCPV6,
                    _ => gso::UDP_L4,
                };
                header.gso_size = gso_size;
                header.hdr_len = (l.payload_offset) as u16;
                write_seed(frame, &l, &mut header)?;
            }
            Some(l) if l.l4_protocol == proto::TCP && self.config.fill_tcp_checksums => {
                write_seed(frame, &l, &mut header)?;
            }
            _ if gso_size > 0 => return Err(()),
            _ => {}
        }
        header.encode(out).map(|_| ()).map_err(|_| ())
    }

    /// Software offload: segment a super-packet, or fill a TCP checksum the
    /// stack left out.
    fn software(
        &self,
        frame: &mut [u8],
        item: &mut TxItem,
        segments: &mut SegmentBuf,
    ) -> Result<(), ()> {
        if item.gso_size > 0 {
            let before = segments.len();
            segment(frame, self.link_len, item.gso_size as usize, segments).map_err(|_| ())?;
            item.segments = (before, segments.len());
            return Ok(());
        }
        if !self.config.fill_tcp_checksums {
            return Ok(());
        }
        let Ok(layout) = PacketLayout::parse_at(frame, self.link_len) else {
            return Ok(());
        };
        if layout.fragment || layout.l4_protocol != proto::TCP {
            return Ok(());
        }
        let mut header = VirtioNetHdr::default();
        write_seed(frame, &layout, &mut header)?;
        complete_checksum(
            frame,
            header.csum_start as usize,
            header.csum_offset as usize,
        )
        .map(|_| ())
        .map_err(|_| ())
    }
}

fn with_hash(p: OutPacket<'_>, hash: Option<u32>) -> OutPacket<'_> {
    match hash {
        Some(h) => p.with_hash(h),
        None => p,
    }
}

/// Puts the pseudo-header seed in the transport checksum field and marks
/// the header `NEEDS_CSUM` with the real offsets.
fn write_seed(
    frame: &mut [u8],
    layout: &PacketLayout,
    header: &mut VirtioNetHdr,
) -> Result<(), ()> {
    let offset = layout.l4_checksum_offset().ok_or(())? as usize;
    let seed = layout
        .pseudo_header(frame, layout.l4_len())
        .ok_or(())?
        .fold();
    let at = layout.l4_offset + offset;
    frame
        .get_mut(at..at + 2)
        .ok_or(())?
        .copy_from_slice(&seed.to_be_bytes());
    header.flags |= flags::NEEDS_CSUM;
    header.csum_start = layout.l4_offset as u16;
    header.csum_offset = offset as u16;
    Ok(())
}

fn decode_header(bytes: &[u8]) -> Result<VirtioNetHdr, virtio::VirtioError> {
    if bytes.len() >= virtio::HDR_LEN_MRG {
        VirtioNetHdr::decode_mrg(bytes)
    } else {
        VirtioNetHdr::decode(bytes)
    }
}

/// TCP and UDP checksums verify; other protocols are left to the stack.
fn transport_checksum_ok(ip: &[u8]) -> bool {
    match PacketLayout::parse(ip) {
        Ok(l) if !l.fragment && matches!(l.l4_protocol, proto::TCP | proto::UDP) => {
            verify_l4_checksum(ip)
        }
        _ => true,
    }
}

/// Reuses a vector's allocation for borrows of another lifetime: it is
/// emptied first, and collecting an empty iterator of a same-layout type
/// keeps the allocation.
fn recycle<'a, 'b>(mut v: Vec<OutPacket<'a>>) -> Vec<OutPacket<'b>> {
    v.clear();
    v.into_iter()
        .map(|_| unreachable!("emptied above"))
        .collect()
}
