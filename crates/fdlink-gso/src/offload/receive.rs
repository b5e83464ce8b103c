//! The receive half of the offloading endpoint: virtio headers decoded and
//! checked, checksums completed or verified, super-packets handed up whole
//! or split — each frame's verdict given before it counts as delivered.

use fdlink_core::{Batch, Closed, DropReason, RxChecksum};

use super::{OffloadEndpoint, Verified, decode_header, segment_arena, verify_transport};
use crate::complete::complete_checksum;
use crate::segment::{SegmentBuf, segment_with_hdr};
use crate::virtio::GsoKind;
use crate::wire::{PacketLayout, proto};

/// What is known of a received packet's transport checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChecksumState {
    /// Known good: verified or completed here, vouched for by the kernel
    /// (`DATA_VALID`), or computed here for a segment split from a
    /// super-packet.
    Verified,
    /// From the local kernel with only the pseudo-header seed in the
    /// checksum field (`NEEDS_CSUM`), left so because
    /// [`super::OffloadConfig::complete_partial`] is off. Its bytes are the
    /// sender's own, so a stack that does not verify may take it.
    Partial,
    /// Not checked: [`super::OffloadConfig::verify_rx`] is off, or the
    /// packet is not TCP or UDP (the stack checks its own protocols).
    Unverified,
}

/// Where a received packet's bytes are.
#[derive(Debug, Clone, Copy)]
enum Source {
    Batch(usize),
    Segment(usize),
}

#[derive(Debug, Clone, Copy)]
pub(super) struct RxItem {
    source: Source,
    gso_size: u16,
    checksum: ChecksumState,
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
#[non_exhaustive]
pub struct RxPacket<'a> {
    /// The link frame: link header (if any) and network packet.
    pub frame: &'a [u8],
    /// Segment size of a super-packet handed up whole; `None` for a plain
    /// packet.
    pub gso_size: Option<u16>,
    /// What is known of its transport checksum.
    pub checksum: ChecksumState,
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

    /// Keeps the packets not yet taken for which `keep` returns true, in
    /// order, and forgets the others: for a layer that handles some
    /// packets itself before a stack sees the rest.
    pub fn retain(&mut self, mut keep: impl FnMut(RxPacket<'_>) -> bool) {
        let mut kept = self.next;
        for k in self.next..self.items.len() {
            let item = self.items[k];
            if keep(self.packet(item)) {
                self.items[kept] = item;
                kept += 1;
            }
        }
        self.items.truncate(kept);
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
            checksum: item.checksum,
            queue: item.queue as usize,
        }
    }

    fn clear(&mut self) {
        self.items.clear();
        self.segments.clear();
        self.next = 0;
    }
}

impl OffloadEndpoint {
    /// Receive state sized for this endpoint.
    pub fn receiver(&self) -> Receiver {
        let batch = self.endpoint.new_batch();
        let capacity = batch.capacity();
        Receiver {
            batch,
            segments: segment_arena(),
            items: Vec::with_capacity(capacity * 4),
            next: 0,
        }
    }

    /// Reads what is queued (on `queue`, or on every channel) into `rx`,
    /// applying receive offloads. Returns how many packets are ready.
    ///
    /// A frame the offloads refuse (a lying virtio header, a bad checksum)
    /// is counted under its [`DropReason`] by the endpoint's receive
    /// itself, so `frames_read == rx_packets + inbound drops` holds here
    /// too; `rx_packets` counts frames, and a super-packet split here
    /// yields several packets from one frame.
    ///
    /// # Errors
    /// [`Closed`] once the channel(s) closed and everything queued was
    /// received.
    pub fn recv(&self, rx: &mut Receiver, queue: Option<usize>) -> Result<usize, Closed> {
        rx.clear();
        let Receiver {
            batch,
            segments,
            items,
            ..
        } = rx;
        self.endpoint.recv_batch_checked(queue, batch, |batch, i| {
            self.prepare(batch, i, segments, items)
        })?;
        Ok(rx.items.len())
    }

    /// Gives packet `i` of `batch` its verdict: on success one or more
    /// items are ready for the stack; on error nothing was added.
    fn prepare(
        &self,
        batch: &mut Batch,
        i: usize,
        segments: &mut SegmentBuf,
        items: &mut Vec<RxItem>,
    ) -> Result<(), DropReason> {
        let Some(packet) = batch.get(i) else {
            return Ok(());
        };
        let queue = packet.queue() as u16;
        let link_len = packet.link_header().len();
        let is_ip = packet
            .network()
            .first()
            .is_some_and(|b| matches!(b >> 4, 4 | 6))
            && link_len == self.link_len;
        let item = |source, gso_size, checksum| RxItem {
            source,
            gso_size,
            checksum,
            queue,
        };
        let verify = |ip: &[u8]| -> Result<ChecksumState, DropReason> {
            if !self.config.verify_rx || !is_ip {
                return Ok(ChecksumState::Unverified);
            }
            match verify_transport(ip) {
                Verified::Good => Ok(ChecksumState::Verified),
                Verified::Bad => Err(DropReason::BadChecksum),
                Verified::NotTransport => Ok(ChecksumState::Unverified),
            }
        };
        if self.vnet_len == 0 {
            // Without a virtio header, an AF_PACKET channel still hears from
            // the kernel (PACKET_AUXDATA) which packets are partial or
            // verified; elsewhere it says nothing.
            let checksum = match packet.kernel_checksum() {
                RxChecksum::Valid => ChecksumState::Verified,
                RxChecksum::Partial if is_ip && self.config.complete_partial => {
                    let frame = batch.frame_mut(i).unwrap_or_default();
                    complete_partial(frame, link_len)?;
                    ChecksumState::Verified
                }
                RxChecksum::Partial => ChecksumState::Partial,
                RxChecksum::Unknown => verify(packet.network())?,
            };
            items.push(item(Source::Batch(i), 0, checksum));
            return Ok(());
        }
        let header =
            decode_header(packet.vnet_header()).map_err(|_| DropReason::InvalidVirtioHeader)?;
        let offload = header
            .validate(packet.link_frame())
            .map_err(|_| DropReason::InvalidVirtioHeader)?;
        if offload.gso != GsoKind::None && !self.config.accept_large {
            let before = segments.len();
            segment_with_hdr(packet.link_frame(), link_len, &header, segments)
                .map_err(|_| DropReason::OffloadFailed)?;
            for j in before..segments.len() {
                items.push(item(Source::Segment(j), 0, ChecksumState::Verified));
            }
            return Ok(());
        }
        let checksum = match offload.needs_csum {
            Some((start, offset)) if self.config.complete_partial => {
                let vnet_len = self.vnet_len;
                let frame = batch.frame_mut(i).unwrap_or_default();
                complete_checksum(&mut frame[vnet_len..], start, offset)
                    .map_err(|_| DropReason::InvalidVirtioHeader)?;
                ChecksumState::Verified
            }
            Some(_) => ChecksumState::Partial,
            None if offload.data_valid => ChecksumState::Verified,
            None => verify(packet.network())?,
        };
        items.push(item(Source::Batch(i), offload.gso_size, checksum));
        Ok(())
    }
}

/// Completes the partial TCP or UDP checksum of `frame` (a link header of
/// `link_len` bytes, then an IP packet) whose checksum field holds the
/// pseudo-header seed, as the kernel marks `TP_STATUS_CSUMNOTREADY`. Other
/// protocols carry no partial checksum and are left alone.
fn complete_partial(frame: &mut [u8], link_len: usize) -> Result<(), DropReason> {
    let layout = PacketLayout::parse_at(frame, link_len).map_err(|_| DropReason::ShortFrame)?;
    if layout.fragment || !matches!(layout.l4_protocol, proto::TCP | proto::UDP) {
        return Ok(());
    }
    let offset = layout.l4_checksum_offset().ok_or(DropReason::ShortFrame)? as usize;
    complete_checksum(frame, layout.l4_offset, offset)
        .map(|_| ())
        .map_err(|_| DropReason::OffloadFailed)
}
