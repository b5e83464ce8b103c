//! TUN/TAP devices: open or attach by name, virtio-net offloads, and
//! interface facts (index, MTU, MAC address) by name.
//!
//! Kernel features used, and what happens where they are missing:
//!
//! - `IFF_NO_PI` is always set: every read returns exactly one packet and
//!   every write takes exactly one packet, with no 4-byte protocol prefix.
//! - `IFF_VNET_HDR` (Linux 2.6.27) when [`TunConfig::vnet_hdr`] is set: each
//!   packet is preceded by a virtio-net header, 10 bytes unless changed with
//!   [`set_vnet_hdr_size`].
//! - `IFF_MULTI_QUEUE` (Linux 3.8) when [`TunConfig::multi_queue`] is set:
//!   one descriptor per queue. A kernel without it rejects the open with
//!   `EINVAL`, which is returned as is.
//! - `TUNSETOFFLOAD`: checksum and TCP segmentation offloads (Linux 2.6.27),
//!   UDP segmentation offload `USO4`/`USO6` (Linux 6.2). [`set_offload`]
//!   retries without USO where the kernel rejects it and returns the set the
//!   kernel accepted.
//!
//! All descriptors are opened with `O_CLOEXEC`. They are blocking unless
//! [`TunConfig::nonblocking`] is set.
//!
//! Interface names and indices are per network namespace: a device is created
//! in, and [`if_index`](crate::netdev::if_index), [`if_mtu`](crate::netdev::if_mtu)
//! and [`if_hwaddr`](crate::netdev::if_hwaddr) look names up in, the
//! network namespace of the calling thread.

use std::fmt;
use std::fs::OpenOptions;
use std::io;
use std::ops::{BitAnd, BitOr, BitOrAssign, Sub};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::cvt;
use crate::netdev::IfReq;

/// Path of the TUN/TAP clone device.
const TUN_CLONE_DEVICE: &str = "/dev/net/tun";

// Flags of `struct ifreq.ifr_flags` for TUNSETIFF (linux/if_tun.h). Plain
// bit values, the same on every architecture; defined here so that an older
// `libc` does not limit us.
const IFF_TUN: libc::c_short = 0x0001;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

// TUNSETOFFLOAD argument bits (linux/if_tun.h). USO4/USO6 are missing from
// Debian 12's 6.1 headers.
const TUN_F_CSUM: u32 = 0x01;
const TUN_F_TSO4: u32 = 0x02;
const TUN_F_TSO6: u32 = 0x04;
const TUN_F_TSO_ECN: u32 = 0x08;
const TUN_F_USO4: u32 = 0x20;
const TUN_F_USO6: u32 = 0x40;

/// Link-layer kind of a TUN/TAP device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TunKind {
    /// Layer 3 (`IFF_TUN`): packets start with the IP header.
    Tun,
    /// Layer 2 (`IFF_TAP`): frames start with the Ethernet header.
    Tap,
}

/// How to open or attach a TUN/TAP device; a builder ending in
/// [`TunConfig::open`].
///
/// ```no_run
/// use fdlink_sys::tun::TunConfig;
/// let dev = TunConfig::tun().name("fdl0").vnet_hdr(true).open()?;
/// println!("{} has {} queue(s)", dev.name(), dev.fds().len());
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunConfig {
    name: String,
    kind: TunKind,
    vnet_hdr: bool,
    multi_queue: bool,
    queues: usize,
    nonblocking: bool,
}

impl TunConfig {
    /// A configuration for a device of `kind`: kernel-chosen name, no
    /// virtio-net header, one queue, blocking descriptors.
    pub fn new(kind: TunKind) -> TunConfig {
        TunConfig {
            name: String::new(),
            kind,
            vnet_hdr: false,
            multi_queue: false,
            queues: 1,
            nonblocking: false,
        }
    }

    /// Shorthand for `TunConfig::new(TunKind::Tun)`.
    pub fn tun() -> TunConfig {
        TunConfig::new(TunKind::Tun)
    }

    /// Shorthand for `TunConfig::new(TunKind::Tap)`.
    pub fn tap() -> TunConfig {
        TunConfig::new(TunKind::Tap)
    }

    /// The interface name: an existing device of that name is attached to
    /// (its kind, `vnet_hdr` and `multi_queue` flags must match), otherwise a
    /// new one is created. Empty (the default) lets the kernel pick
    /// `tunN`/`tapN`. At most 15 bytes. A name containing `%d` is a template
    /// the kernel fills in.
    pub fn name(mut self, name: impl Into<String>) -> TunConfig {
        self.name = name.into();
        self
    }

    /// Link-layer kind, TUN (IP) or TAP (Ethernet).
    pub fn kind(mut self, kind: TunKind) -> TunConfig {
        self.kind = kind;
        self
    }

    /// Prefix every packet with a virtio-net header (`IFF_VNET_HDR`), needed
    /// for offloads ([`set_offload`]). Default off.
    pub fn vnet_hdr(mut self, on: bool) -> TunConfig {
        self.vnet_hdr = on;
        self
    }

    /// Open the device with `IFF_MULTI_QUEUE`, one descriptor per queue; the
    /// kernel spreads received flows over the queues by hash. Default off.
    pub fn multi_queue(mut self, on: bool) -> TunConfig {
        self.multi_queue = on;
        self
    }

    /// Number of queues (descriptors) to open, at least 1. More than one
    /// requires [`TunConfig::multi_queue`]. Default 1.
    pub fn queues(mut self, n: usize) -> TunConfig {
        self.queues = n;
        self
    }

    /// Open the descriptors with `O_NONBLOCK`: reads with nothing queued fail
    /// with `WouldBlock` instead of waiting. Default off (blocking).
    pub fn nonblocking(mut self, on: bool) -> TunConfig {
        self.nonblocking = on;
        self
    }

    /// Opens `/dev/net/tun` once per queue and attaches each descriptor to
    /// the device with `TUNSETIFF`.
    ///
    /// Errors: `InvalidInput` for a bad name, zero queues, or several
    /// queues without `multi_queue`; `EPERM` without `CAP_NET_ADMIN`;
    /// `EBUSY` when a single-queue device is already attached; `EINVAL` when
    /// an existing device's flags differ from the requested ones; `ENOENT`
    /// when `/dev/net/tun` is missing. Descriptors opened before a failure
    /// are closed.
    pub fn open(&self) -> io::Result<TunDevice> {
        if self.queues == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a TUN/TAP device needs at least one queue",
            ));
        }
        if self.queues > 1 && !self.multi_queue {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "several TUN/TAP queues need multi_queue(true)",
            ));
        }
        let mut flags = IFF_NO_PI;
        flags |= match self.kind {
            TunKind::Tun => IFF_TUN,
            TunKind::Tap => IFF_TAP,
        };
        if self.vnet_hdr {
            flags |= IFF_VNET_HDR;
        }
        if self.multi_queue {
            flags |= IFF_MULTI_QUEUE;
        }

        let mut name = self.name.clone();
        let mut fds = Vec::with_capacity(self.queues);
        for _ in 0..self.queues {
            let mut opts = OpenOptions::new();
            opts.read(true).write(true);
            // std opens with O_CLOEXEC already; it is spelled out here as the
            // documented guarantee.
            let mut custom = libc::O_CLOEXEC;
            if self.nonblocking {
                custom |= libc::O_NONBLOCK;
            }
            opts.custom_flags(custom);
            let fd = OwnedFd::from(opts.open(TUN_CLONE_DEVICE)?);

            let mut req = IfReq::new(&name)?;
            req.data.flags = flags;
            // SAFETY: `fd` is an open descriptor of /dev/net/tun; TUNSETIFF
            // reads and writes one `struct ifreq`, and `req` is a live,
            // exclusively borrowed value of exactly that size.
            cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) })?;
            // The kernel writes the actual name back (it matters when the
            // name was empty or a template); later queues attach to it.
            name = req.name();
            fds.push(fd);
        }
        Ok(TunDevice {
            name,
            kind: self.kind,
            vnet_hdr: self.vnet_hdr,
            fds,
        })
    }
}

/// An open TUN/TAP device: its interface name and one descriptor per queue.
///
/// Dropping it closes the descriptors; a non-persistent device disappears
/// with the last one.
#[derive(Debug)]
pub struct TunDevice {
    name: String,
    kind: TunKind,
    vnet_hdr: bool,
    fds: Vec<OwnedFd>,
}

impl TunDevice {
    /// The interface name the kernel assigned.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Link-layer kind.
    pub fn kind(&self) -> TunKind {
        self.kind
    }

    /// Whether packets carry a virtio-net header (`IFF_VNET_HDR`).
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// The queue descriptors, one per queue, in the order they were attached.
    pub fn fds(&self) -> &[OwnedFd] {
        &self.fds
    }

    /// Gives up the device for its queue descriptors.
    pub fn into_fds(self) -> Vec<OwnedFd> {
        self.fds
    }
}

/// Offload flags for [`set_offload`] (`TUN_F_*`): what the kernel may hand
/// to a reader unsegmented or with a partial checksum, flagged in the
/// virtio-net header.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct OffloadFlags(u32);

impl OffloadFlags {
    /// Checksum offload (`TUN_F_CSUM`): packets may carry a partial checksum
    /// (`VIRTIO_NET_HDR_F_NEEDS_CSUM`). Required by every other flag.
    pub const CSUM: OffloadFlags = OffloadFlags(TUN_F_CSUM);
    /// TCP over IPv4 segmentation offload (`TUN_F_TSO4`).
    pub const TSO4: OffloadFlags = OffloadFlags(TUN_F_TSO4);
    /// TCP over IPv6 segmentation offload (`TUN_F_TSO6`).
    pub const TSO6: OffloadFlags = OffloadFlags(TUN_F_TSO6);
    /// TSO with the ECN CWR bit (`TUN_F_TSO_ECN`); needs `TSO4` or `TSO6`.
    pub const TSO_ECN: OffloadFlags = OffloadFlags(TUN_F_TSO_ECN);
    /// UDP over IPv4 segmentation offload (`TUN_F_USO4`, Linux 6.2).
    /// Kernels so far accept USO only with both `USO4` and `USO6`.
    pub const USO4: OffloadFlags = OffloadFlags(TUN_F_USO4);
    /// UDP over IPv6 segmentation offload (`TUN_F_USO6`, Linux 6.2).
    pub const USO6: OffloadFlags = OffloadFlags(TUN_F_USO6);

    const ALL: u32 = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_USO4 | TUN_F_USO6;
    const NAMES: [(OffloadFlags, &'static str); 6] = [
        (OffloadFlags::CSUM, "CSUM"),
        (OffloadFlags::TSO4, "TSO4"),
        (OffloadFlags::TSO6, "TSO6"),
        (OffloadFlags::TSO_ECN, "TSO_ECN"),
        (OffloadFlags::USO4, "USO4"),
        (OffloadFlags::USO6, "USO6"),
    ];

    /// No offloads.
    pub const fn empty() -> OffloadFlags {
        OffloadFlags(0)
    }

    /// The raw `TUN_F_*` bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// The flags of `bits` this crate knows; other bits are dropped.
    pub const fn from_bits_truncate(bits: u32) -> OffloadFlags {
        OffloadFlags(bits & OffloadFlags::ALL)
    }

    /// True if no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// True if every flag of `other` is set in `self`.
    pub const fn contains(self, other: OffloadFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// True if any flag of `other` is set in `self`.
    pub const fn intersects(self, other: OffloadFlags) -> bool {
        self.0 & other.0 != 0
    }
}

impl BitOr for OffloadFlags {
    type Output = OffloadFlags;
    fn bitor(self, rhs: OffloadFlags) -> OffloadFlags {
        OffloadFlags(self.0 | rhs.0)
    }
}

impl BitOrAssign for OffloadFlags {
    fn bitor_assign(&mut self, rhs: OffloadFlags) {
        self.0 |= rhs.0;
    }
}

impl BitAnd for OffloadFlags {
    type Output = OffloadFlags;
    fn bitand(self, rhs: OffloadFlags) -> OffloadFlags {
        OffloadFlags(self.0 & rhs.0)
    }
}

impl Sub for OffloadFlags {
    type Output = OffloadFlags;
    /// The flags of `self` that are not in `rhs`.
    fn sub(self, rhs: OffloadFlags) -> OffloadFlags {
        OffloadFlags(self.0 & !rhs.0)
    }
}

impl fmt::Debug for OffloadFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OffloadFlags(")?;
        let mut first = true;
        for (flag, name) in OffloadFlags::NAMES {
            if self.contains(flag) {
                if !first {
                    write!(f, " | ")?;
                }
                write!(f, "{name}")?;
                first = false;
            }
        }
        if first {
            write!(f, "empty")?;
        }
        write!(f, ")")
    }
}

/// Sets the device's offloads (`TUNSETOFFLOAD`) and returns the set the
/// kernel accepted.
///
/// The kernel accepts a set whole or rejects it with `EINVAL`. When it
/// rejects a set containing `USO4`/`USO6` (kernels before 6.2, or only one
/// of the two requested), this retries once without them, so the result may
/// lack USO: check it, never assume. An empty `flags` resets the device to no
/// offloads; do that when offloads are not wanted, because the state is
/// device-wide (shared by all queues) and survives on a persistent device.
/// Offloaded packets only reach a reader that opened the device with
/// `IFF_VNET_HDR`.
///
/// Errors: `InvalidInput` if a segmentation flag is asked for without
/// `CSUM`, or `TSO_ECN` without `TSO4`/`TSO6` (the kernel would reject
/// those); otherwise the kernel's error, e.g. `EBADFD` for a descriptor not
/// attached to a device, `ENOTTY` for one that is not a TUN/TAP.
pub fn set_offload(fd: BorrowedFd<'_>, flags: OffloadFlags) -> io::Result<OffloadFlags> {
    let segmentation =
        OffloadFlags::TSO4 | OffloadFlags::TSO6 | OffloadFlags::USO4 | OffloadFlags::USO6;
    if flags.intersects(segmentation | OffloadFlags::TSO_ECN) && !flags.contains(OffloadFlags::CSUM)
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TUN segmentation offloads need OffloadFlags::CSUM",
        ));
    }
    if flags.contains(OffloadFlags::TSO_ECN)
        && !flags.intersects(OffloadFlags::TSO4 | OffloadFlags::TSO6)
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "OffloadFlags::TSO_ECN needs TSO4 or TSO6",
        ));
    }
    match tun_set_offload(fd, flags) {
        Ok(()) => Ok(flags),
        Err(e)
            if e.raw_os_error() == Some(libc::EINVAL)
                && flags.intersects(OffloadFlags::USO4 | OffloadFlags::USO6) =>
        {
            let fallback = flags - (OffloadFlags::USO4 | OffloadFlags::USO6);
            tun_set_offload(fd, fallback)?;
            Ok(fallback)
        }
        Err(e) => Err(e),
    }
}

fn tun_set_offload(fd: BorrowedFd<'_>, flags: OffloadFlags) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long of
    // flags), so no memory is passed; an unrelated descriptor only yields an
    // error.
    cvt(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            flags.bits() as libc::c_ulong,
        )
    })?;
    Ok(())
}

/// Sets the size of the virtio-net header on a device opened with
/// `IFF_VNET_HDR` (`TUNSETVNETHDRSZ`): 10 for `struct virtio_net_hdr` (the
/// default), 12 for the mergeable-buffers form. Applies to every queue.
///
/// Errors: `InvalidInput` below 10 bytes or above `i32::MAX`; the kernel's
/// error otherwise (`EBADFD` when not attached, `ENOTTY` for a non-TUN fd).
pub fn set_vnet_hdr_size(fd: BorrowedFd<'_>, size: usize) -> io::Result<()> {
    let size = match libc::c_int::try_from(size) {
        Ok(s) if size >= crate::abi::VNET_HDR_LEN => s,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("virtio-net header size {size} out of range (at least 10)"),
            ));
        }
    };
    // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer, which
    // points to a live local `c_int`.
    cvt(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETVNETHDRSZ,
            &size as *const libc::c_int,
        )
    })?;
    Ok(())
}

/// Reads the virtio-net header size of a TUN/TAP device
/// (`TUNGETVNETHDRSZ`). The value is kept even when the descriptor was
/// opened without `IFF_VNET_HDR`, in which case no header is used.
///
/// Errors: the kernel's (`EBADFD` when not attached, `ENOTTY` for a non-TUN
/// fd).
pub fn vnet_hdr_size(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut size: libc::c_int = 0;
    // SAFETY: TUNGETVNETHDRSZ writes one `int` through the pointer, which
    // points to a live, exclusively borrowed local `c_int`.
    cvt(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNGETVNETHDRSZ,
            &mut size as *mut libc::c_int,
        )
    })?;
    usize::try_from(size).map_err(|_| io::Error::other("kernel returned a negative header size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offload_flags_debug_and_ops() {
        let f = OffloadFlags::CSUM | OffloadFlags::TSO4 | OffloadFlags::USO6;
        assert_eq!(format!("{f:?}"), "OffloadFlags(CSUM | TSO4 | USO6)");
        assert_eq!(
            format!("{:?}", OffloadFlags::empty()),
            "OffloadFlags(empty)"
        );
        assert_eq!((f - OffloadFlags::USO6).bits(), TUN_F_CSUM | TUN_F_TSO4);
        assert!(f.contains(OffloadFlags::CSUM | OffloadFlags::TSO4));
        assert!(!f.contains(OffloadFlags::TSO6));
        assert_eq!(OffloadFlags::from_bits_truncate(0xffff_ffff).bits(), 0x6f);
    }

    #[test]
    fn config_rejects_bad_queue_counts() {
        let zero = TunConfig::tun().queues(0).open().err().map(|e| e.kind());
        assert_eq!(zero, Some(io::ErrorKind::InvalidInput));
        let multi = TunConfig::tun().queues(2).open().err().map(|e| e.kind());
        assert_eq!(multi, Some(io::ErrorKind::InvalidInput));
    }
}
