//! A memory-mapped receive ring for an AF_PACKET socket (`PACKET_RX_RING`).
//!
//! The kernel copies each received frame into a slot of a ring shared with
//! this process and flips the slot's status word to "user"; the reader
//! consumes slots in order and flips them back. No system call per frame.
//!
//! # Why `TPACKET_V2`
//!
//! The ring uses `TPACKET_V2` (Linux 2.6.27), not `TPACKET_V3`. V3 hands
//! whole blocks to the reader only when a block is full or its retire timer
//! (at least a millisecond, by default derived from the link speed) expires:
//! at low packet rates every frame waits for the timer, which adds
//! milliseconds to each round trip of a userspace TCP stack. V2 hands over
//! every frame as soon as it is written. What V2 costs is fixed-size slots:
//! a slot must hold the largest frame expected (with `PACKET_VNET_HDR` and
//! GSO, 64 KiB plus headers), or longer frames are truncated — reported by
//! [`RingFrame::is_truncated`], never silent.
//!
//! # Layout
//!
//! The ring is made of blocks, each a power-of-two number of pages of the
//! running kernel (`sysconf(_SC_PAGESIZE)`, so 4, 16 and 64 KiB pages all
//! work); a block holds a whole number of slots and a slot never crosses a
//! block. The ring is mapped once, in [`RxRing::new`], and unmapped when the
//! [`RxRing`] is dropped; the kernel frees the ring's memory when the socket
//! is closed (or when a new ring replaces it).
//!
//! # Virtio-net header
//!
//! When `PACKET_VNET_HDR` is on ([`crate::packet::set_vnet_hdr`], set
//! *before* the ring), the kernel writes the 10-byte virtio-net header just
//! before the MAC header of each slot; [`RingFrame::vnet_hdr`] returns it.
//! Kernels that predate virtio headers in rings (before mid-2016) leave no
//! room for it, and `vnet_hdr()` then returns `None`.

use std::io::{self, IoSlice};
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use std::time::Instant;

use crate::abi::{
    PACKET_OUTGOING, SOL_PACKET, TP_STATUS_CSUM_VALID, TP_STATUS_CSUMNOTREADY, VNET_HDR_LEN,
};
use crate::cvt;
use crate::meta::RxChecksum;

// SOL_PACKET options and ring constants (linux/if_packet.h); the same on
// every architecture.
const PACKET_RX_RING: libc::c_int = 5;
const PACKET_VERSION: libc::c_int = 10;
const TPACKET_V2: libc::c_int = 1;

const TP_STATUS_KERNEL: u32 = 0;
const TP_STATUS_USER: u32 = 1 << 0;
const TP_STATUS_LOSING: u32 = 1 << 2;
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;

/// Slot alignment (`TPACKET_ALIGNMENT`).
const TPACKET_ALIGNMENT: usize = 16;

/// Ethernet header plus one VLAN tag: what [`RingConfig::for_packet_len`]
/// adds to an IP packet length.
const ETH_VLAN_HLEN: usize = 18;

/// Largest block tried when choosing the layout, as a multiple of the
/// smallest block that holds one slot.
const MAX_BLOCK_GROWTH: usize = 64;

const fn tpacket_align(x: usize) -> usize {
    (x + TPACKET_ALIGNMENT - 1) & !(TPACKET_ALIGNMENT - 1)
}

/// `struct tpacket2_hdr`, at the start of every slot.
#[repr(C)]
#[derive(Clone, Copy)]
struct Tpacket2Hdr {
    tp_status: u32,
    tp_len: u32,
    tp_snaplen: u32,
    tp_mac: u16,
    tp_net: u16,
    tp_sec: u32,
    tp_nsec: u32,
    tp_vlan_tci: u16,
    tp_vlan_tpid: u16,
    tp_padding: [u8; 4],
}

/// `struct sockaddr_ll` as the kernel places it after the slot header.
#[repr(C)]
#[derive(Clone, Copy)]
struct SockaddrLl {
    sll_family: u16,
    sll_protocol: u16,
    sll_ifindex: i32,
    sll_hatype: u16,
    sll_pkttype: u8,
    sll_halen: u8,
    sll_addr: [u8; 8],
}

/// Offset of the `sockaddr_ll` in a slot.
const SLL_OFFSET: usize = tpacket_align(mem::size_of::<Tpacket2Hdr>());

/// `TPACKET2_HDRLEN`: slot header plus `sockaddr_ll`, the kernel's minimum
/// slot size.
const TPACKET2_HDRLEN: usize = SLL_OFFSET + mem::size_of::<SockaddrLl>();

/// `struct tpacket_req`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct TpacketReq {
    tp_block_size: u32,
    tp_block_nr: u32,
    tp_frame_size: u32,
    tp_frame_nr: u32,
}

const _: () = assert!(mem::size_of::<Tpacket2Hdr>() == 32);
const _: () = assert!(TPACKET2_HDRLEN == 52);

/// Where the kernel puts the network header of a frame with a `mac_len`
/// byte MAC header when it writes a virtio header in front: tpacket_rcv's
/// `TPACKET_ALIGN(tp_hdrlen + max(16, mac_len)) + 10` (no `PACKET_RESERVE`).
fn vnet_net_offset(mac_len: usize) -> usize {
    tpacket_align(TPACKET2_HDRLEN + mac_len.max(16)) + VNET_HDR_LEN
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.to_owned())
}

/// The page size of the running kernel.
fn page_size() -> io::Result<usize> {
    // SAFETY: sysconf has no memory arguments.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|s| s.is_power_of_two())
        .ok_or_else(|| io::Error::other("sysconf(_SC_PAGESIZE) failed"))
}

/// Size and number of the ring's slots; see [`RxRing::new`] for how they are
/// laid out in blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RingConfig {
    /// Bytes per slot, including the 52-byte slot header, the padding before
    /// the MAC header and the virtio-net header. Rounded up to a multiple of
    /// 16.
    pub frame_size: usize,
    /// Minimum number of slots; the ring may get more to fill its last
    /// block.
    pub frame_count: usize,
}

impl RingConfig {
    /// `frame_count` slots of `frame_size` bytes each.
    pub fn new(frame_size: usize, frame_count: usize) -> RingConfig {
        RingConfig {
            frame_size,
            frame_count,
        }
    }

    /// Slots large enough that an IP packet of up to `max_ip_len` bytes
    /// behind an Ethernet header with one VLAN tag (and the virtio-net
    /// header when `vnet_hdr`) is never truncated. For GSO super-frames
    /// use 65535.
    pub fn for_packet_len(max_ip_len: usize, frame_count: usize, vnet_hdr: bool) -> RingConfig {
        // The kernel puts the network header at
        // TPACKET_ALIGN(TPACKET2_HDRLEN + max(16, mac_len)) (+ 10 with the
        // virtio header) and the MAC header just before it.
        let vnet = if vnet_hdr { VNET_HDR_LEN } else { 0 };
        let net_off = tpacket_align(TPACKET2_HDRLEN + ETH_VLAN_HLEN) + vnet;
        RingConfig::new(tpacket_align(net_off + max_ip_len), frame_count)
    }
}

impl Default for RingConfig {
    /// 256 slots for Ethernet frames with a 1500-byte MTU, no virtio header.
    fn default() -> RingConfig {
        RingConfig::for_packet_len(1500, 256, false)
    }
}

/// The block layout chosen for a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    block_size: usize,
    block_count: usize,
    frame_size: usize,
    frames_per_block: usize,
}

impl Layout {
    /// Blocks of a power-of-two number of pages holding whole slots; of the
    /// candidates up to [`MAX_BLOCK_GROWTH`] times the smallest, the one that
    /// maps the fewest bytes (the smaller block on a tie).
    fn choose(cfg: RingConfig, page: usize) -> io::Result<Layout> {
        if cfg.frame_count == 0 {
            return Err(invalid("a ring needs at least one frame"));
        }
        let frame_size = tpacket_align(cfg.frame_size);
        if frame_size <= tpacket_align(TPACKET2_HDRLEN + ETH_VLAN_HLEN) {
            return Err(invalid("ring frame size too small for the slot header"));
        }
        let min_block = frame_size
            .checked_next_power_of_two()
            .map(|b| b.max(page))
            .ok_or_else(|| invalid("ring frame size too large"))?;
        let mut best: Option<(usize, Layout)> = None;
        let mut block = min_block;
        while block <= min_block.saturating_mul(MAX_BLOCK_GROWTH) {
            let frames_per_block = block / frame_size;
            let block_count = cfg.frame_count.div_ceil(frames_per_block);
            if let Some(total) = block_count.checked_mul(block)
                && best.is_none_or(|(t, _)| total < t)
            {
                let layout = Layout {
                    block_size: block,
                    block_count,
                    frame_size,
                    frames_per_block,
                };
                best = Some((total, layout));
            }
            match block.checked_mul(2) {
                Some(b) => block = b,
                None => break,
            }
        }
        let (total, layout) = best.ok_or_else(|| invalid("ring too large"))?;
        // The kernel takes all four values as u32 and limits the total.
        if u32::try_from(total).is_err() || u32::try_from(layout.frame_count()).is_err() {
            return Err(invalid("ring too large"));
        }
        Ok(layout)
    }

    fn frame_count(&self) -> usize {
        self.block_count * self.frames_per_block
    }

    fn map_len(&self) -> usize {
        self.block_count * self.block_size
    }

    fn req(&self) -> TpacketReq {
        // Layout::choose checked that every value fits.
        TpacketReq {
            tp_block_size: self.block_size as u32,
            tp_block_nr: self.block_count as u32,
            tp_frame_size: self.frame_size as u32,
            tp_frame_nr: self.frame_count() as u32,
        }
    }

    /// Byte offset of slot `index` in the mapping.
    fn offset(&self, index: usize) -> usize {
        (index / self.frames_per_block) * self.block_size
            + (index % self.frames_per_block) * self.frame_size
    }
}

fn set_rx_ring(fd: BorrowedFd<'_>, req: &TpacketReq) -> io::Result<()> {
    // SAFETY: the pointer and length describe a live `tpacket_req`, which the
    // kernel only reads.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            SOL_PACKET,
            PACKET_RX_RING,
            (req as *const TpacketReq).cast(),
            mem::size_of::<TpacketReq>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

fn set_tpacket_v2(fd: BorrowedFd<'_>) -> io::Result<()> {
    let version = TPACKET_V2;
    // SAFETY: the pointer and length describe a live local `c_int`, which
    // the kernel only reads.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            SOL_PACKET,
            PACKET_VERSION,
            (&version as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// A `TPACKET_V2` receive ring mapped from an AF_PACKET socket.
///
/// Wait for frames with `poll`/`epoll` (`POLLIN`) on the socket, then take
/// frames with [`RxRing::next_frame`] or [`RxRing::drain`] until none is
/// left. Frames are returned to the kernel in order, when the [`RingFrame`]
/// is dropped; a frame that is never dropped (e.g. `mem::forget`) stalls the
/// ring, after which the kernel drops new frames.
///
/// Dropping the ring unmaps it. The mapping keeps the socket alive, so it
/// stays valid even if the descriptor is closed first.
#[derive(Debug)]
pub struct RxRing {
    map: NonNull<u8>,
    layout: Layout,
    head: usize,
    vnet_hdr: bool,
}

// SAFETY: the mapping is owned by this value alone (no other Rust value
// points into it; frames borrow the ring mutably), and nothing about it is
// tied to the thread that created it. The kernel side synchronises through
// the status words with atomics, from whatever thread the reader runs on.
unsafe impl Send for RxRing {}

impl RxRing {
    /// Attaches a `TPACKET_V2` receive ring to the AF_PACKET socket `fd`
    /// and maps it.
    ///
    /// Slots are `cfg.frame_size` rounded up to 16 bytes; blocks are the
    /// power-of-two number of pages (of the running kernel's page size) that
    /// maps the fewest bytes for `cfg.frame_count` slots. Whether frames
    /// carry a virtio-net header is read from the socket
    /// ([`crate::packet::vnet_hdr_enabled`]); it cannot change while the ring
    /// exists.
    ///
    /// A ring left on the socket by an earlier, dropped `RxRing` is
    /// replaced. Frames queued on the socket before the ring was attached
    /// stay readable with `recv`, not through the ring.
    ///
    /// Errors: `InvalidInput` for zero frames, a frame size below 96
    /// bytes, or a ring beyond 4 GiB; `EBUSY` while another `RxRing` maps
    /// the socket; `ENOPROTOOPT`/`ENOTSOCK` for a descriptor that is not an
    /// AF_PACKET socket; `ENOMEM` when the kernel cannot allocate the
    /// blocks.
    pub fn new(fd: BorrowedFd<'_>, cfg: RingConfig) -> io::Result<RxRing> {
        let layout = Layout::choose(cfg, page_size()?)?;
        let vnet_hdr = crate::packet::vnet_hdr_enabled(fd)?;

        match set_tpacket_v2(fd) {
            // A ring already exists. If it is unmapped (its RxRing was
            // dropped), an empty request frees it; if it is mapped, that
            // fails with EBUSY, which is reported.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                set_rx_ring(fd, &TpacketReq::default())?;
                set_tpacket_v2(fd)?;
            }
            other => other?,
        }
        set_rx_ring(fd, &layout.req())?;

        let len = layout.map_len();
        // SAFETY: a fresh shared mapping chosen by the kernel (null hint) of
        // the ring just attached; it overlaps no Rust-owned memory. The
        // result is checked against MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            let err = io::Error::last_os_error();
            // Free the unmapped ring so the socket can try again; the mmap
            // error is the one worth reporting.
            let _ = set_rx_ring(fd, &TpacketReq::default());
            return Err(err);
        }
        let map =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(RxRing {
            map,
            layout,
            head: 0,
            vnet_hdr,
        })
    }

    /// Bytes per slot (the configured size rounded up to 16).
    pub fn frame_size(&self) -> usize {
        self.layout.frame_size
    }

    /// Number of slots (at least the configured count).
    pub fn frame_count(&self) -> usize {
        self.layout.frame_count()
    }

    /// Bytes per block: a power-of-two multiple of the page size.
    pub fn block_size(&self) -> usize {
        self.layout.block_size
    }

    /// Number of blocks.
    pub fn block_count(&self) -> usize {
        self.layout.block_count
    }

    /// Bytes mapped (`block_size * block_count`).
    pub fn mapped_len(&self) -> usize {
        self.layout.map_len()
    }

    /// Whether frames carry a virtio-net header (`PACKET_VNET_HDR` was on
    /// when the ring was created).
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// The status word of slot `index`.
    fn status(&self, index: usize) -> &AtomicU32 {
        // SAFETY: `offset(index)` for index < frame_count lies inside the
        // mapping, at a 16-byte aligned slot start (page-aligned blocks,
        // 16-byte multiple slots), so the u32 there is aligned and valid for
        // the lifetime of `&self`. The kernel writes it concurrently, hence
        // the atomic; AtomicU32 has the layout of u32.
        unsafe {
            &*self
                .map
                .as_ptr()
                .add(self.layout.offset(index))
                .cast::<AtomicU32>()
        }
    }

    /// True if the next slot holds a frame, i.e. [`RxRing::next_frame`]
    /// would return one.
    pub fn is_ready(&self) -> bool {
        self.status(self.head).load(Ordering::Acquire) & TP_STATUS_USER != 0
    }

    /// The next received frame, or `None` if the kernel has not filled the
    /// next slot. The slot goes back to the kernel when the frame is
    /// dropped.
    pub fn next_frame(&mut self) -> Option<RingFrame<'_>> {
        // Acquire pairs with the kernel's write barrier before it sets
        // TP_STATUS_USER: the slot's contents are visible after this load.
        let status = self.status(self.head).load(Ordering::Acquire);
        if status & TP_STATUS_USER == 0 {
            return None;
        }
        let offset = self.layout.offset(self.head);
        // SAFETY: the slot lies inside the mapping and is 16-byte aligned
        // (see `status`); the kernel handed it to us (TP_STATUS_USER) and
        // does not write it until we store TP_STATUS_KERNEL, so plain reads
        // of the header and of the sockaddr_ll behind it do not race.
        let (hdr, sll) = unsafe {
            let slot = self.map.as_ptr().add(offset);
            (
                slot.cast::<Tpacket2Hdr>().read(),
                slot.add(SLL_OFFSET).cast::<SockaddrLl>().read(),
            )
        };
        // Clamp what the kernel reports to the slot, so the slices handed
        // out never leave it whatever the header says.
        let frame_size = self.layout.frame_size;
        let mac = usize::from(hdr.tp_mac).clamp(TPACKET2_HDRLEN, frame_size);
        let captured = (hdr.tp_snaplen as usize).min(frame_size - mac);
        // The kernel made room for (and wrote) the virtio header exactly when
        // it put the network header 10 bytes further than it would without
        // one, and the MAC header still inside the slot. A kernel that
        // ignores PACKET_VNET_HDR in rings leaves no room: then there is
        // no header, rather than one read from bytes it never wrote.
        let net = usize::from(hdr.tp_net);
        let mac_len = net.saturating_sub(usize::from(hdr.tp_mac));
        let has_vnet = self.vnet_hdr
            && net == vnet_net_offset(mac_len)
            && usize::from(hdr.tp_mac) <= frame_size;
        Some(RingFrame {
            ring: self,
            offset,
            mac,
            captured,
            has_vnet,
            status,
            hdr,
            sll,
        })
    }

    /// Passes up to `max` received frames to `f`, each returned to the
    /// kernel after `f` returns, and returns how many there were. Stops
    /// early when the next slot is empty.
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(&RingFrame<'_>)) -> usize {
        let mut n = 0;
        while n < max {
            let Some(frame) = self.next_frame() else {
                break;
            };
            f(&frame);
            n += 1;
        }
        n
    }
}

impl Drop for RxRing {
    fn drop(&mut self) {
        // SAFETY: `map`/`map_len` are exactly the mapping created in `new`,
        // unmapped only here; no frame borrows it (frames borrow the ring
        // mutably, so none outlives this `&mut self`).
        let ret = unsafe { libc::munmap(self.map.as_ptr().cast(), self.layout.map_len()) };
        debug_assert_eq!(ret, 0, "munmap of the rx ring failed");
    }
}

/// One received frame in the ring, borrowed from it; the slot goes back to
/// the kernel when this value is dropped.
///
/// The bytes borrow the frame, so they cannot be used after the slot was
/// handed back:
///
/// ```compile_fail
/// # fn f(ring: &mut fdlink_sys::ring::RxRing) {
/// let bytes = ring.next_frame().unwrap().data(); // frame dropped here...
/// println!("{}", bytes.len()); // ...so this does not compile
/// # }
/// ```
pub struct RingFrame<'a> {
    ring: &'a mut RxRing,
    offset: usize,
    mac: usize,
    captured: usize,
    has_vnet: bool,
    status: u32,
    hdr: Tpacket2Hdr,
    sll: SockaddrLl,
}

impl RingFrame<'_> {
    /// The slot's bytes from `start` to `start + len` (within the slot).
    fn slot_bytes(&self, start: usize, len: usize) -> &[u8] {
        debug_assert!(start + len <= self.ring.layout.frame_size);
        // SAFETY: `next_frame` clamped `start + len` to the slot, which lies
        // inside the mapping; the slot belongs to us until `drop` stores
        // TP_STATUS_KERNEL, and the returned slice borrows `self`, so it
        // cannot outlive that. The kernel does not write a user-owned slot.
        unsafe { std::slice::from_raw_parts(self.ring.map.as_ptr().add(self.offset + start), len) }
    }

    /// The captured bytes, starting at the MAC header (Ethernet for a TAP,
    /// veth or NIC).
    pub fn data(&self) -> &[u8] {
        self.slot_bytes(self.mac, self.captured)
    }

    /// The frame's length on the wire (`tp_len`); larger than
    /// `data().len()` when the slot was too small.
    pub fn original_len(&self) -> usize {
        self.hdr.tp_len as usize
    }

    /// True if the slot was too small and the frame is cut short
    /// (`tp_snaplen < tp_len`).
    pub fn is_truncated(&self) -> bool {
        self.captured < self.original_len()
    }

    /// The 10-byte virtio-net header the kernel wrote before the MAC header,
    /// when the socket had `PACKET_VNET_HDR` on (see the module docs).
    pub fn vnet_hdr(&self) -> Option<&[u8; VNET_HDR_LEN]> {
        if !self.has_vnet {
            return None;
        }
        self.slot_bytes(self.mac - VNET_HDR_LEN, VNET_HDR_LEN)
            .try_into()
            .ok()
    }

    /// The VLAN tag control information the device stripped, if any.
    pub fn vlan_tci(&self) -> Option<u16> {
        (self.status & TP_STATUS_VLAN_VALID != 0).then_some(self.hdr.tp_vlan_tci)
    }

    /// The packet carries a partial checksum that still has to be completed
    /// (`TP_STATUS_CSUMNOTREADY`, e.g. locally generated with checksum
    /// offload).
    pub fn checksum_not_ready(&self) -> bool {
        self.status & TP_STATUS_CSUMNOTREADY != 0
    }

    /// The device or the kernel verified the transport checksum
    /// (`TP_STATUS_CSUM_VALID`, Linux 4.1).
    pub fn checksum_valid(&self) -> bool {
        self.status & TP_STATUS_CSUM_VALID != 0
    }

    /// The transport checksum's state from the slot status, as
    /// [`crate::io::RecvInfo::checksum`] reports it for `recvmsg`:
    /// [`RxChecksum::Partial`] for [`RingFrame::checksum_not_ready`],
    /// [`RxChecksum::Valid`] for [`RingFrame::checksum_valid`],
    /// [`RxChecksum::Unknown`] otherwise. No socket option is needed: the
    /// ring always carries the status.
    pub fn checksum(&self) -> RxChecksum {
        RxChecksum::from_tp_status(self.status)
    }

    /// The socket dropped frames since its statistics were last read
    /// (`TP_STATUS_LOSING`); see [`crate::packet::packet_stats`].
    pub fn losing(&self) -> bool {
        self.status & TP_STATUS_LOSING != 0
    }

    /// Packet type from `sockaddr_ll.sll_pkttype`: 0 to this host, 1
    /// broadcast, 2 multicast, 3 to another host, 4 outgoing.
    pub fn packet_type(&self) -> u8 {
        self.sll.sll_pkttype
    }

    /// The frame is one this host transmitted on the interface (packet type
    /// `PACKET_OUTGOING`), as [`crate::io::RecvInfo::outgoing`] reports it
    /// for `recvmsg`.
    pub fn is_outgoing(&self) -> bool {
        self.sll.sll_pkttype == PACKET_OUTGOING
    }

    /// EtherType from `sockaddr_ll.sll_protocol`, in host byte order.
    pub fn protocol(&self) -> u16 {
        u16::from_be(self.sll.sll_protocol)
    }

    /// Index of the interface the frame was received on.
    pub fn ifindex(&self) -> u32 {
        u32::try_from(self.sll.sll_ifindex).unwrap_or(0)
    }

    /// Receive time stamp (since the Unix epoch, software clock).
    pub fn timestamp(&self) -> Duration {
        Duration::new(u64::from(self.hdr.tp_sec), self.hdr.tp_nsec)
    }
}

impl std::fmt::Debug for RingFrame<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingFrame")
            .field("captured", &self.captured)
            .field("original_len", &self.original_len())
            .field("vnet_hdr", &self.vnet_hdr())
            .field("status", &format_args!("{:#x}", self.status))
            .field("packet_type", &self.packet_type())
            .field("checksum", &self.checksum())
            .finish()
    }
}

impl Drop for RingFrame<'_> {
    fn drop(&mut self) {
        let ring = &mut *self.ring;
        // Release orders our reads of the slot before the kernel may reuse
        // it.
        ring.status(ring.head)
            .store(TP_STATUS_KERNEL, Ordering::Release);
        ring.head = (ring.head + 1) % ring.layout.frame_count();
    }
}

/// EtherType of the probe frame: IEEE "local experimental 1", which no
/// standard protocol uses.
const PROBE_ETHERTYPE: u16 = 0x88b5;

/// How long the probe waits for its frame to come round the loopback.
const PROBE_WAIT: Duration = Duration::from_millis(200);

/// Whether this kernel writes virtio-net headers into `TPACKET_V2` ring
/// slots of a socket with `PACKET_VNET_HDR` (kernels before that support
/// leave no room and write none). Probed by trying, once per process: a
/// frame sent on the loopback interface of the calling thread's network
/// namespace is received through a scratch ring with `PACKET_VNET_HDR`.
///
/// `None` when it cannot tell (the loopback is down, no `CAP_NET_RAW`): a
/// ring frame then still says for itself whether it carries a header
/// ([`RingFrame::vnet_hdr`]), so none is ever made up.
pub fn rings_carry_vnet_header() -> Option<bool> {
    static ANSWER: OnceLock<bool> = OnceLock::new();
    if let Some(&answer) = ANSWER.get() {
        return Some(answer);
    }
    let answer = probe_ring_vnet_header().ok().flatten()?;
    Some(*ANSWER.get_or_init(|| answer))
}

fn probe_ring_vnet_header() -> io::Result<Option<bool>> {
    let lo = crate::netdev::if_index("lo")?;
    let rx = crate::packet::PacketSocket::open(lo, PROBE_ETHERTYPE)?;
    crate::packet::set_vnet_hdr(rx.as_fd(), true)?;
    let mut ring = RxRing::new(rx.as_fd(), RingConfig::for_packet_len(128, 8, true))?;
    let tx = crate::packet::PacketSocket::open(lo, PROBE_ETHERTYPE)?;
    let mut frame = [0u8; 60];
    frame[12..14].copy_from_slice(&PROBE_ETHERTYPE.to_be_bytes());
    match crate::io::send_one(tx.as_fd(), &[IoSlice::new(&frame)]) {
        Ok(_) => {}
        // The loopback is down: nothing can come round.
        Err(e) if e.raw_os_error() == Some(libc::ENETDOWN) => return Ok(None),
        Err(e) => return Err(e),
    }
    let deadline = Instant::now() + PROBE_WAIT;
    loop {
        if let Some(frame) = ring.next_frame() {
            return Ok(Some(frame.vnet_hdr().is_some()));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        crate::wait::wait(rx.as_fd(), crate::wait::Interest::Read, None, Some(left))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_page_aligned_for_every_page_size() {
        for page in [4096, 16384, 65536] {
            for cfg in [
                RingConfig::default(),
                RingConfig::for_packet_len(65535, 64, true),
                RingConfig::new(128, 1),
                RingConfig::new(2048, 1000),
            ] {
                let l = Layout::choose(cfg, page).expect("layout");
                assert_eq!(l.block_size % page, 0, "{cfg:?} page {page}");
                assert!(l.block_size.is_power_of_two());
                assert!(l.frames_per_block >= 1);
                assert_eq!(l.frame_size % TPACKET_ALIGNMENT, 0);
                assert!(l.frame_size >= cfg.frame_size);
                assert!(l.frame_count() >= cfg.frame_count);
                assert!(l.frames_per_block * l.frame_size <= l.block_size);
                // The last slot ends inside the mapping.
                let last = l.offset(l.frame_count() - 1) + l.frame_size;
                assert!(last <= l.map_len());
            }
        }
    }

    #[test]
    fn layout_prefers_less_waste() {
        // 1600-byte slots: a 4 KiB block wastes 22 %, a 64 KiB block 2 %.
        let l = Layout::choose(RingConfig::new(1600, 256), 4096).expect("layout");
        assert!(l.map_len() <= 256 * 1600 * 105 / 100, "{l:?}");
    }

    #[test]
    fn layout_rejects_nonsense() {
        assert!(Layout::choose(RingConfig::new(2048, 0), 4096).is_err());
        assert!(Layout::choose(RingConfig::new(16, 8), 4096).is_err());
        assert!(Layout::choose(RingConfig::new(1 << 20, 1 << 13), 4096).is_err());
    }

    #[test]
    fn for_packet_len_fits_the_kernel_offsets() {
        // Ethernet (14-byte MAC header): the kernel puts the MAC header at
        // TPACKET_ALIGN(52 + 16) - 14 (+ 10 with vnet).
        let cfg = RingConfig::for_packet_len(1500, 1, false);
        assert!(cfg.frame_size >= 80 - 14 + 1514);
        let cfg = RingConfig::for_packet_len(1500, 1, true);
        assert!(cfg.frame_size >= 90 - 14 + 1514);
        // The offset that shows the kernel wrote a virtio header.
        assert_eq!(vnet_net_offset(14), 90);
        assert_eq!(vnet_net_offset(18), 90);
        assert_eq!(vnet_net_offset(30), 106);
        assert!(cfg.frame_size > vnet_net_offset(ETH_VLAN_HLEN));
    }

    #[test]
    fn this_kernel_writes_virtio_headers_into_ring_slots() {
        // Needs CAP_NET_RAW and an up loopback; without them the probe
        // cannot tell, which is its documented answer.
        if crate::packet::PacketSocket::open(1, PROBE_ETHERTYPE).is_err() {
            assert_eq!(rings_carry_vnet_header(), None);
            return;
        }
        assert_eq!(
            rings_carry_vnet_header(),
            Some(true),
            "Linux 6.x writes them"
        );
        assert_eq!(rings_carry_vnet_header(), Some(true), "remembered");
    }
}
