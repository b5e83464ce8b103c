//! [`Batch`]: a reusable set of receive buffers and the packets they hold.

use fdlink_sys::io::RxChecksum;

use crate::link::EtherType;

/// Where one received packet sits in its buffer and what it is.
#[derive(Debug, Clone, Copy, Default)]
struct PacketMeta {
    len: usize,
    queue: u16,
    vnet_len: u8,
    link_len: u8,
    protocol: EtherType,
    checksum: RxChecksum,
}

/// A batch of received packets in buffers allocated once and reused.
///
/// Filled by [`crate::Endpoint::recv_batch`] or handed to a
/// [`crate::Dispatcher`]; filling clears it first, so a packet must be
/// consumed before the next fill.
#[derive(Debug)]
pub struct Batch {
    bufs: Vec<Box<[u8]>>,
    metas: Vec<PacketMeta>,
    len: usize,
    pub(crate) infos: Vec<fdlink_sys::io::RecvInfo>,
    pub(crate) mmsg: Option<fdlink_sys::mmsg::RecvMmsg>,
    /// The size of every buffer.
    buffer_size: usize,
}

impl Batch {
    /// A batch of `capacity` buffers of `buffer_size` bytes each. Prefer
    /// [`crate::Endpoint::new_batch`], which sizes them for the endpoint.
    pub fn new(capacity: usize, buffer_size: usize) -> Self {
        let capacity = capacity.max(1);
        Batch {
            bufs: (0..capacity)
                .map(|_| vec![0u8; buffer_size].into_boxed_slice())
                .collect(),
            metas: vec![PacketMeta::default(); capacity],
            len: 0,
            infos: vec![Default::default(); capacity],
            mmsg: None,
            buffer_size,
        }
    }

    /// How many packets the batch holds now.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when it holds no packet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many packets it can hold.
    pub fn capacity(&self) -> usize {
        self.bufs.len()
    }

    /// Grows every buffer to `size` bytes when they are smaller (the MTU
    /// was raised since the batch was made). Allocates only then.
    pub(crate) fn fit_buffers(&mut self, size: usize) {
        if self.buffer_size < size {
            for buf in &mut self.bufs {
                *buf = vec![0u8; size].into_boxed_slice();
            }
            self.buffer_size = size;
        }
    }

    /// Forgets every packet (buffers are kept).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Packet `i`, if present.
    pub fn get(&self, i: usize) -> Option<Packet<'_>> {
        (i < self.len).then(|| Packet {
            frame: &self.bufs[i][..self.metas[i].len],
            meta: self.metas[i],
        })
    }

    /// The packets, in arrival order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Packet<'_>> + '_ {
        (0..self.len).map(|i| Packet {
            frame: &self.bufs[i][..self.metas[i].len],
            meta: self.metas[i],
        })
    }

    /// Packet `i`'s whole frame (virtio header, link header, network
    /// packet), writable: for in-place checksum completion.
    pub fn frame_mut(&mut self, i: usize) -> Option<&mut [u8]> {
        (i < self.len).then(|| &mut self.bufs[i][..self.metas[i].len])
    }

    /// Free slots, and the room each can take.
    pub(crate) fn free_slots(&self) -> usize {
        self.bufs.len() - self.len
    }

    /// The buffers from the first free slot on, with their info slots.
    pub(crate) fn free_buffers(&mut self) -> (&mut [Box<[u8]>], &mut [fdlink_sys::io::RecvInfo]) {
        (&mut self.bufs[self.len..], &mut self.infos[self.len..])
    }

    /// Keeps the frame just read into free slot `offset` (0 = first free)
    /// as the next packet, moving its buffer (not its bytes) into place.
    #[allow(clippy::too_many_arguments)] // one frame's facts, set in one place
    pub(crate) fn commit(
        &mut self,
        offset: usize,
        len: usize,
        queue: usize,
        vnet_len: usize,
        link_len: usize,
        protocol: EtherType,
        checksum: RxChecksum,
    ) {
        let slot = self.len + offset;
        self.bufs.swap(self.len, slot);
        self.metas[self.len] = PacketMeta {
            len,
            queue: queue as u16,
            vnet_len: vnet_len as u8,
            link_len: link_len as u8,
            protocol,
            checksum,
        };
        self.len += 1;
    }

    /// Takes back the last [`Batch::commit`]: its buffer returns to the
    /// head of the free area, which the frames still to be classified do
    /// not occupy (they sit past the offset it was committed from).
    pub(crate) fn uncommit_last(&mut self) {
        self.len -= 1;
    }
}

/// One received packet, borrowed from its [`Batch`].
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    frame: &'a [u8],
    meta: PacketMeta,
}

impl<'a> Packet<'a> {
    /// The whole frame as read: virtio header, link header, network packet.
    pub fn frame(&self) -> &'a [u8] {
        self.frame
    }

    /// The virtio-net header (empty unless the endpoint uses one).
    pub fn vnet_header(&self) -> &'a [u8] {
        &self.frame[..self.meta.vnet_len as usize]
    }

    /// The frame after the virtio header: link header and network packet.
    pub fn link_frame(&self) -> &'a [u8] {
        &self.frame[self.meta.vnet_len as usize..]
    }

    /// The link header (empty for IP framing).
    pub fn link_header(&self) -> &'a [u8] {
        let start = self.meta.vnet_len as usize;
        &self.frame[start..start + self.meta.link_len as usize]
    }

    /// The network-layer packet (IP, ARP, ...).
    pub fn network(&self) -> &'a [u8] {
        &self.frame[self.meta.vnet_len as usize + self.meta.link_len as usize..]
    }

    /// What the frame carries.
    pub fn protocol(&self) -> EtherType {
        self.meta.protocol
    }

    /// The channel (queue) it arrived on.
    pub fn queue(&self) -> usize {
        self.meta.queue as usize
    }

    /// What the kernel said of its transport checksum: known on
    /// `AF_PACKET` channels without a virtio-net header (from
    /// `PACKET_AUXDATA`, which the endpoint turns on), where a packet the
    /// local kernel sent arrives with only a partial checksum;
    /// [`RxChecksum::Unknown`] elsewhere (a virtio-net header carries its
    /// own flags).
    pub fn kernel_checksum(&self) -> RxChecksum {
        self.meta.checksum
    }
}
