//! AF_PACKET sockets: a raw socket bound to one interface, fanout groups,
//! virtio-net headers, buffer sizes and statistics.
//!
//! Kernel features used, and what happens where they are missing:
//!
//! - `PACKET_VNET_HDR` (Linux 2.6.38): [`set_vnet_hdr`] returns the kernel's
//!   error (`ENOPROTOOPT`) where it is missing.
//! - `PACKET_FANOUT` (Linux 3.1) with `PACKET_FANOUT_FLAG_UNIQUEID`
//!   (Linux 4.12): [`join_fanout`] with no group id asks the kernel for an
//!   unused id. Kernels before 4.12 do not reject that flag, they ignore it
//!   and join group 0, so trying it on the caller's socket could put the
//!   socket in a group it did not create. Whether the kernel understands it
//!   is therefore found out once per process by trying it on two scratch
//!   sockets (see [`join_fanout`]), never from the kernel version; where it
//!   is missing, or rejected with `EINVAL`, or the scratch sockets cannot
//!   be opened (no `CAP_NET_RAW`), an id derived from the process id and a
//!   counter is used, which is not collision-free across processes.
//! - `PACKET_IGNORE_OUTGOING` (Linux 4.20): [`ignore_outgoing`] turns it on
//!   and returns `false` where it is missing (`ENOPROTOOPT`); discard frames
//!   whose packet type is `PACKET_OUTGOING` instead
//!   ([`crate::io::RecvInfo::outgoing`], [`crate::ring::RingFrame::is_outgoing`]).
//! - `PACKET_AUXDATA` (Linux 2.6.21) for the per-packet checksum state
//!   ([`set_auxdata`], read by [`crate::io::recv_one_meta`] and
//!   [`crate::mmsg::RecvMmsg::with_packet_meta`]); its `TP_STATUS_CSUM_VALID`
//!   bit needs Linux 4.1, before which verified packets read as
//!   [`crate::io::RxChecksum::Unknown`].
//! - `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE` need `CAP_NET_ADMIN`; without it the
//!   buffer setters fall back to `SO_RCVBUF`/`SO_SNDBUF`, which the kernel
//!   caps at `net.core.rmem_max`/`wmem_max`.
//!
//! Sockets are opened with `SOCK_CLOEXEC` and are blocking; make them
//! non-blocking with `fcntl` if needed.

use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU8, AtomicU16, Ordering};

use crate::abi::{PACKET_AUXDATA, SOL_PACKET};
use crate::cvt;
use crate::fd::setsockopt_int;

/// Protocol number that receives every EtherType (`ETH_P_ALL`), for
/// [`PacketSocket::open`].
pub const ETH_P_ALL: u16 = 0x0003;

// SOL_PACKET option names and values (linux/if_packet.h); the same on every
// architecture, defined here so that an older `libc` does not limit us.
const PACKET_STATISTICS: libc::c_int = 6;
const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_FANOUT: libc::c_int = 18;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

const PACKET_FANOUT_HASH: u32 = 0;
const PACKET_FANOUT_LB: u32 = 1;
const PACKET_FANOUT_CPU: u32 = 2;
const PACKET_FANOUT_ROLLOVER: u32 = 3;
const PACKET_FANOUT_RND: u32 = 4;
const PACKET_FANOUT_QM: u32 = 5;
const PACKET_FANOUT_FLAG_UNIQUEID: u32 = 0x2000;

/// How many consecutive fallback fanout ids [`join_fanout`] tries before it
/// gives up.
const FANOUT_FALLBACK_ATTEMPTS: u16 = 32;

/// EtherType of the scratch sockets that probe `PACKET_FANOUT_FLAG_UNIQUEID`:
/// IEEE "local experimental 2", which no standard protocol uses, so the
/// probe's sockets see (next to) no traffic while they live.
const FANOUT_PROBE_PROTOCOL: u16 = 0x88b6;

/// `getsockopt` of a plain-integer struct `T` (every bit pattern valid).
/// Returns the value and the length the kernel wrote.
fn getsockopt_pod<T: Copy + Default>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<(T, usize)> {
    let mut value = T::default();
    let mut len = mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: the pointer and length describe a live, exclusively borrowed
    // `T`; the kernel writes at most `len` bytes. Callers only instantiate
    // `T` with integers or structs of integers, valid for any bytes.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut T).cast(),
            &mut len,
        )
    })?;
    Ok((value, len as usize))
}

/// A raw AF_PACKET socket (`SOCK_RAW`) bound to one interface: reads return
/// whole link-layer frames starting at the MAC header (preceded by a
/// virtio-net header after [`set_vnet_hdr`]), writes take whole frames.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: u32,
    protocol: u16,
}

impl PacketSocket {
    /// Opens a raw AF_PACKET socket (`SOCK_CLOEXEC`, blocking) and binds it
    /// to interface `ifindex` for EtherType `protocol` (host byte order, e.g.
    /// [`ETH_P_ALL`]).
    ///
    /// The socket is created with protocol 0, which receives nothing, and
    /// the protocol is set by `bind`: so no frame from another interface is
    /// queued in the window between `socket` and `bind`.
    ///
    /// The interface index is resolved in the caller's network namespace
    /// (see [`crate::netdev::if_index`]); the socket belongs to the calling
    /// thread's namespace.
    ///
    /// Errors: `EPERM` without `CAP_NET_RAW`; `ENODEV` for an unknown index;
    /// `InvalidInput` for an index above `i32::MAX`.
    pub fn open(ifindex: u32, protocol: u16) -> io::Result<PacketSocket> {
        let index = libc::c_int::try_from(ifindex).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "interface index out of range")
        })?;
        // SAFETY: socket() has no memory arguments; the result is checked.
        let raw =
            cvt(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) })?;
        // SAFETY: `raw` was just returned by socket() and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        // SAFETY: sockaddr_ll is a struct of integers; all-zero is valid.
        let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as libc::c_ushort;
        addr.sll_protocol = protocol.to_be();
        addr.sll_ifindex = index;
        // SAFETY: the pointer and length describe a live, initialised
        // sockaddr_ll, which bind() only reads.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        Ok(PacketSocket {
            fd,
            ifindex,
            protocol,
        })
    }

    /// The interface index the socket is bound to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The EtherType the socket receives (host byte order).
    pub fn protocol(&self) -> u16 {
        self.protocol
    }

    /// Gives up the socket for its descriptor.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for PacketSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for PacketSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl From<PacketSocket> for OwnedFd {
    fn from(sock: PacketSocket) -> OwnedFd {
        sock.fd
    }
}

/// Turns the virtio-net header (`PACKET_VNET_HDR`) on or off: with it, each
/// received frame is preceded by a 10-byte `struct virtio_net_hdr` (GSO and
/// checksum metadata, so GSO super-frames arrive unsegmented) and each sent
/// frame must be.
///
/// Must be set before a ring is attached ([`crate::ring::RxRing`]).
///
/// Errors: `EBUSY` when a ring is already attached; `EINVAL` on a
/// `SOCK_DGRAM` packet socket; `ENOPROTOOPT` on kernels before 2.6.38.
pub fn set_vnet_hdr(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    setsockopt_int(fd, SOL_PACKET, PACKET_VNET_HDR, libc::c_int::from(on))
}

/// Whether `PACKET_VNET_HDR` is on for the socket.
///
/// Errors: the kernel's, e.g. `ENOPROTOOPT` for a socket that is not
/// AF_PACKET.
pub fn vnet_hdr_enabled(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let (value, _) = getsockopt_pod::<libc::c_int>(fd, SOL_PACKET, PACKET_VNET_HDR)?;
    Ok(value != 0)
}

/// How a fanout group spreads received frames over its member sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FanoutMode {
    /// By flow hash (`PACKET_FANOUT_HASH`): a flow stays on one socket.
    Hash,
    /// Round robin (`PACKET_FANOUT_LB`).
    LoadBalance,
    /// By the receiving CPU (`PACKET_FANOUT_CPU`).
    Cpu,
    /// Fill one socket, then move to the next (`PACKET_FANOUT_ROLLOVER`).
    Rollover,
    /// Random (`PACKET_FANOUT_RND`).
    Random,
    /// By the device's receive queue (`PACKET_FANOUT_QM`).
    QueueMapping,
}

impl FanoutMode {
    fn bits(self) -> u32 {
        match self {
            FanoutMode::Hash => PACKET_FANOUT_HASH,
            FanoutMode::LoadBalance => PACKET_FANOUT_LB,
            FanoutMode::Cpu => PACKET_FANOUT_CPU,
            FanoutMode::Rollover => PACKET_FANOUT_ROLLOVER,
            FanoutMode::Random => PACKET_FANOUT_RND,
            FanoutMode::QueueMapping => PACKET_FANOUT_QM,
        }
    }
}

fn fanout_setsockopt(fd: BorrowedFd<'_>, id: u16, type_flags: u32) -> io::Result<()> {
    let arg = u32::from(id) | (type_flags << 16);
    setsockopt_int(fd, SOL_PACKET, PACKET_FANOUT, arg as libc::c_int)
}

/// Creates a new fanout group with a kernel-chosen id
/// (`PACKET_FANOUT_FLAG_UNIQUEID`) and returns the id the socket is in, read
/// back with `getsockopt(PACKET_FANOUT)`.
fn join_unique_fanout(fd: BorrowedFd<'_>, mode: FanoutMode) -> io::Result<u16> {
    fanout_setsockopt(fd, 0, mode.bits() | PACKET_FANOUT_FLAG_UNIQUEID)?;
    // getsockopt(PACKET_FANOUT) returns id | type << 16 | flags << 24.
    let (value, _) = getsockopt_pod::<u32>(fd, SOL_PACKET, PACKET_FANOUT)?;
    Ok((value & 0xffff) as u16)
}

/// A raw AF_PACKET socket for [`FANOUT_PROBE_PROTOCOL`] on every interface
/// of the calling thread's namespace. A nonzero protocol at `socket` time
/// makes it live at once, as a fanout member must be.
fn probe_socket() -> io::Result<OwnedFd> {
    let protocol = libc::c_int::from(FANOUT_PROBE_PROTOCOL.to_be());
    // SAFETY: socket() has no memory arguments; the result is checked.
    let raw = cvt(unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol,
        )
    })?;
    // SAFETY: `raw` was just returned by socket() and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Tries `PACKET_FANOUT_FLAG_UNIQUEID` on two scratch sockets, closed on
/// return: a kernel that understands the flag puts them in two new groups
/// with different ids; one that ignores it (before Linux 4.12) puts both in
/// group 0, or refuses with `EINVAL` when a group 0 with other parameters
/// exists. `Ok(answer)` when that tells, the error otherwise (`EPERM`
/// without `CAP_NET_RAW`, out of descriptors or memory).
fn probe_fanout_uniqueid() -> io::Result<bool> {
    let refused = |e: &io::Error| e.raw_os_error() == Some(libc::EINVAL);
    let (a, b) = (probe_socket()?, probe_socket()?);
    let first = match join_unique_fanout(a.as_fd(), FanoutMode::Hash) {
        Err(e) if refused(&e) => return Ok(false),
        other => other?,
    };
    let second = match join_unique_fanout(b.as_fd(), FanoutMode::Hash) {
        Err(e) if refused(&e) => return Ok(false),
        other => other?,
    };
    Ok(first != second)
}

/// Whether the kernel understands `PACKET_FANOUT_FLAG_UNIQUEID`, by
/// [`probe_fanout_uniqueid`]. The answer is remembered for the process; a
/// probe that could not tell is not, so a later call tries again.
fn fanout_uniqueid_supported() -> bool {
    const UNKNOWN: u8 = 0;
    const NO: u8 = 1;
    const YES: u8 = 2;
    static SUPPORTED: AtomicU8 = AtomicU8::new(UNKNOWN);
    match SUPPORTED.load(Ordering::Relaxed) {
        YES => true,
        NO => false,
        _ => match probe_fanout_uniqueid() {
            Ok(yes) => {
                SUPPORTED.store(if yes { YES } else { NO }, Ordering::Relaxed);
                yes
            }
            Err(_) => false,
        },
    }
}

/// Makes the socket a member of a fanout group and returns the group id.
///
/// With `Some(id)` the socket joins group `id`, creating it if it does not
/// exist. With `None` a new group is created: the kernel picks an unused id
/// (`PACKET_FANOUT_FLAG_UNIQUEID`, Linux 4.12), read back with
/// `getsockopt(PACKET_FANOUT)`.
///
/// Whether the kernel has that flag is found out by trying it, once per
/// process, on two scratch `AF_PACKET` sockets (for a local experimental
/// EtherType, closed right after): older kernels ignore the flag instead
/// of rejecting it, so trying it on `fd` itself could leave `fd` in group 0,
/// for good. Where the flag is missing, the kernel rejects it with `EINVAL`
/// anyway, or the probe cannot run (it needs `CAP_NET_RAW`, which a process
/// handed an open socket may lack), an id is derived from the process id and
/// a per-process counter, trying further ids while the kernel rejects them;
/// such an id may collide with a group of another process with the same
/// mode, device and protocol, which the socket would then silently join.
/// Further sockets join the returned id with `Some(id)` and the same `mode`.
///
/// The socket must be bound (see [`PacketSocket::open`]); every member must
/// use the same mode, interface and protocol. A socket joins at most one
/// group, for its lifetime.
///
/// Errors: `EINVAL` for an unbound socket or a group whose mode, interface
/// or protocol differ; `EALREADY` if the socket is already in a group;
/// `ENOSPC` when the group is full (256 members by default).
pub fn join_fanout(fd: BorrowedFd<'_>, mode: FanoutMode, group: Option<u16>) -> io::Result<u16> {
    if let Some(id) = group {
        fanout_setsockopt(fd, id, mode.bits())?;
        return Ok(id);
    }
    if fanout_uniqueid_supported() {
        match join_unique_fanout(fd, mode) {
            Ok(id) => return Ok(id),
            // A kernel (or sandbox filter) that refuses the flag after all.
            // Any other cause of EINVAL reappears in the fallback below.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    static COUNTER: AtomicU16 = AtomicU16::new(0);
    let pid = std::process::id() as u16;
    let mut last = None;
    for _ in 0..FANOUT_FALLBACK_ATTEMPTS {
        // Every attempt takes a fresh counter value, so no later call of
        // this process reuses an id this one created.
        let id = pid.wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed));
        match fanout_setsockopt(fd, id, mode.bits()) {
            Ok(()) => return Ok(id),
            // EINVAL: the id is taken by a group with other parameters (or
            // the socket is unbound, which every attempt will report).
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EINVAL)))
}

/// True when `err`, from [`join_fanout`], says the socket is in a fanout
/// group already (`EALREADY`): someone set up its fanout before us.
pub fn is_already_in_fanout_group(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::EALREADY)
}

/// Stops the socket from receiving the frames its interface transmits
/// (`PACKET_IGNORE_OUTGOING`, Linux 4.20): those other sockets and the
/// host's own stack send there. (The kernel never loops a socket's own
/// transmissions back to that socket, nor to its fanout group.)
///
/// Errors: `ENOPROTOOPT` on kernels before 4.20; there, skip frames whose
/// packet type is `PACKET_OUTGOING` instead. [`ignore_outgoing`] does both.
pub fn set_ignore_outgoing(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    setsockopt_int(
        fd,
        SOL_PACKET,
        PACKET_IGNORE_OUTGOING,
        libc::c_int::from(on),
    )
}

/// Turns `PACKET_IGNORE_OUTGOING` on ([`set_ignore_outgoing`]) if the
/// kernel has it: `Ok(true)` when it took the option, `Ok(false)` when it
/// does not know it (`ENOPROTOOPT`, before Linux 4.20). After `false`, the
/// caller discards the frames marked outgoing itself
/// ([`crate::io::RecvInfo::outgoing`] from [`crate::io::recv_one_meta`] or
/// [`crate::mmsg::RecvMmsg::with_packet_meta`],
/// [`crate::ring::RingFrame::is_outgoing`]).
///
/// The kernel answers `ENOPROTOOPT` for a socket that is not `AF_PACKET`
/// too, which this also reports as `false`.
///
/// Errors: any other error of the kernel's (`ENOTSOCK` for a non-socket).
pub fn ignore_outgoing(fd: BorrowedFd<'_>) -> io::Result<bool> {
    match set_ignore_outgoing(fd, true) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Turns on `PACKET_AUXDATA`: `recvmsg` then returns a `tpacket_auxdata`
/// control message per frame (VLAN tag, original length, checksum status).
///
/// Errors: the kernel's (`ENOPROTOOPT` for a non-AF_PACKET socket).
pub fn set_auxdata(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    setsockopt_int(fd, SOL_PACKET, PACKET_AUXDATA, libc::c_int::from(on))
}

fn set_buffer(
    fd: BorrowedFd<'_>,
    force: libc::c_int,
    plain: libc::c_int,
    bytes: usize,
) -> io::Result<usize> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    match setsockopt_int(fd, libc::SOL_SOCKET, force, value) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            setsockopt_int(fd, libc::SOL_SOCKET, plain, value)?;
        }
        Err(e) => return Err(e),
    }
    let (actual, _) = getsockopt_pod::<libc::c_int>(fd, libc::SOL_SOCKET, plain)?;
    Ok(usize::try_from(actual).unwrap_or(0))
}

/// Sets the socket's receive buffer to `bytes` and returns the size the
/// kernel reports afterwards.
///
/// Uses `SO_RCVBUFFORCE` (needs `CAP_NET_ADMIN`, ignores
/// `net.core.rmem_max`) and falls back to `SO_RCVBUF` (capped by
/// `rmem_max`) on `EPERM`. The kernel doubles the value to account for its
/// bookkeeping, so the result is usually `2 * bytes` or `2 * rmem_max`. Works
/// on any socket, not only AF_PACKET.
///
/// Errors: the kernel's (`ENOTSOCK` for a non-socket).
pub fn set_recv_buffer(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<usize> {
    set_buffer(fd, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, bytes)
}

/// The interface the socket is bound to (`getsockname`'s `sll_ifindex`):
/// `None` for an unbound socket, and once that interface is gone — the
/// kernel resets the index to -1 when it unregisters the device. The way
/// to tell a deleted interface (closure) from one that is merely down
/// (`ENETDOWN` on a read too, but the socket works again once it is up).
///
/// Errors: the kernel's (`ENOTSOCK` for a non-socket).
pub fn bound_ifindex(fd: BorrowedFd<'_>) -> io::Result<Option<u32>> {
    // SAFETY: sockaddr_ll is a struct of integers; all-zero is valid.
    let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: the pointer and length describe a live, exclusively borrowed
    // sockaddr_ll; the kernel writes at most `len` bytes and updates `len`.
    cvt(unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut addr as *mut libc::sockaddr_ll).cast(),
            &mut len,
        )
    })?;
    Ok(u32::try_from(addr.sll_ifindex).ok().filter(|&i| i > 0))
}

/// The socket's receive buffer size as the kernel reports it
/// (`SO_RCVBUF`: twice what was asked for).
///
/// Errors: the kernel's (`ENOTSOCK` for a non-socket).
pub fn recv_buffer(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let (actual, _) = getsockopt_pod::<libc::c_int>(fd, libc::SOL_SOCKET, libc::SO_RCVBUF)?;
    Ok(usize::try_from(actual).unwrap_or(0))
}

/// The socket's send buffer as the kernel reports it (`SO_SNDBUF`: twice
/// what was set, for its bookkeeping).
///
/// Errors: the kernel's (`ENOTSOCK` for a non-socket).
pub fn send_buffer(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let (actual, _) = getsockopt_pod::<libc::c_int>(fd, libc::SOL_SOCKET, libc::SO_SNDBUF)?;
    Ok(usize::try_from(actual).unwrap_or(0))
}

/// Sets the socket's send buffer to `bytes` and returns the size the kernel
/// reports afterwards: like [`set_recv_buffer`] with
/// `SO_SNDBUFFORCE`/`SO_SNDBUF` and `net.core.wmem_max`.
///
/// Errors: the kernel's (`ENOTSOCK` for a non-socket).
pub fn set_send_buffer(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<usize> {
    set_buffer(fd, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, bytes)
}

/// Counters of an AF_PACKET socket since the previous read
/// ([`packet_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PacketStats {
    /// Frames that reached the socket, including the dropped ones.
    pub packets: u32,
    /// Frames dropped because the receive queue or ring was full.
    pub drops: u32,
}

/// `struct tpacket_stats` (the first two fields of `tpacket_stats_v3`).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct TpacketStats {
    tp_packets: u32,
    tp_drops: u32,
}

/// Reads and resets the socket's receive counters (`PACKET_STATISTICS`).
///
/// Errors: the kernel's (`ENOPROTOOPT` for a non-AF_PACKET socket).
pub fn packet_stats(fd: BorrowedFd<'_>) -> io::Result<PacketStats> {
    let (st, _) = getsockopt_pod::<TpacketStats>(fd, SOL_PACKET, PACKET_STATISTICS)?;
    Ok(PacketStats {
        packets: st.tp_packets,
        drops: st.tp_drops,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fanout_uniqueid_probe_agrees_with_the_group_flags() {
        // Needs CAP_NET_RAW for the scratch sockets; without it the probe
        // cannot tell, which is its documented answer.
        let supported = match probe_fanout_uniqueid() {
            Ok(yes) => yes,
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => return,
            Err(e) => panic!("probe: {e}"),
        };
        // A kernel that understands the flag consumes it; one that ignores
        // it (4.0 to 4.11) keeps it in the group's flags (value >> 24).
        let s = probe_socket().unwrap();
        match fanout_setsockopt(s.as_fd(), 0, PACKET_FANOUT_FLAG_UNIQUEID) {
            Ok(()) => {
                let (value, _) =
                    getsockopt_pod::<u32>(s.as_fd(), SOL_PACKET, PACKET_FANOUT).unwrap();
                let kept = value >> 24 & (PACKET_FANOUT_FLAG_UNIQUEID >> 8) != 0;
                assert!(
                    !(supported && kept),
                    "probe says yes, group flags {value:#x}"
                );
            }
            Err(e) => assert!(!supported, "probe says yes, the flag failed: {e}"),
        }
        assert_eq!(fanout_uniqueid_supported(), supported, "remembered");
    }

    #[test]
    fn fanout_argument_layout() {
        assert_eq!(FanoutMode::Hash.bits(), 0);
        assert_eq!(FanoutMode::QueueMapping.bits(), 5);
    }
}
