//! Raw Linux syscalls for fdlink: the only crate of the workspace with
//! `unsafe` code, kept thin so every block can be checked by eye.
//!
//! What it offers, each in its own module:
//!
//! - [`fd`]: descriptor facts (socket or not, family, type) and non-blocking
//!   mode.
//! - [`io`]: one-packet I/O (`read`/`readv`/`write`/`writev`,
//!   `recvmsg`/`sendmsg`), `EINTR` retried, `EAGAIN` as
//!   [`std::io::ErrorKind::WouldBlock`], truncation reported; per-packet
//!   metadata of `AF_PACKET` sockets ([`io::RxChecksum`], outgoing frames)
//!   with [`io::recv_one_meta`].
//! - [`mmsg`]: `recvmmsg`/`sendmmsg` over preallocated, reused arrays, with
//!   the same metadata from [`mmsg::RecvMmsg::with_packet_meta`].
//! - [`wait`]: readiness of a data descriptor *or* a stop `eventfd`, with
//!   `ppoll` (never `select`).
//! - [`tun`]: TUN/TAP devices, multi-queue, virtio-net headers and offloads.
//! - [`packet`]: `AF_PACKET` sockets, fanout groups, virtio-net headers.
//! - [`ring`]: the `AF_PACKET` mmap receive ring.
//! - [`netdev`]: an interface's index, MTU and MAC address, by name.
//! - [`netlink`]: an interface's own changes (MTU, MAC address, up,
//!   removal) as the kernel announces them on a `NETLINK_ROUTE` socket.
//!
//! # Kernel features and fallbacks
//!
//! Features are probed by trying them where they are set up, never assumed
//! and never read off the kernel version:
//!
//! - TUN offloads: the set the kernel accepts is returned to the caller
//!   (UDP segmentation offload, Linux 6.2+, is dropped quietly when
//!   refused).
//! - Fanout group ids: chosen by the kernel (`PACKET_FANOUT_FLAG_UNIQUEID`,
//!   Linux 4.12) where two scratch sockets show it understands the flag
//!   (older kernels ignore it rather than refuse it); derived from the
//!   process id otherwise, or when the probe cannot run (no
//!   `CAP_NET_RAW`).
//! - Outgoing frames: [`packet::ignore_outgoing`] turns
//!   `PACKET_IGNORE_OUTGOING` (Linux 4.20) on and returns `false` where the
//!   kernel lacks it; the caller then drops frames marked outgoing
//!   ([`io::RecvInfo::outgoing`], [`ring::RingFrame::is_outgoing`]).
//! - Checksum state: with `PACKET_AUXDATA` on ([`packet::set_auxdata`]),
//!   each packet says whether its checksum is partial or was verified
//!   ([`io::RxChecksum`]); where the kernel says nothing (no auxdata,
//!   `TP_STATUS_CSUM_VALID` before Linux 4.1, other sockets) it reads
//!   `Unknown`, meaning "verify it yourself".
//! - Ring sizes follow the running kernel's page size.
//! - Link announcements (`RTMGRP_LINK` on `NETLINK_ROUTE`, every kernel
//!   fdlink runs on): a socket that overflows loses announcements, so on
//!   the kernel's `ENOBUFS` (or a datagram too large for the buffer) the
//!   watch asks for the interface's state with `RTM_GETLINK` and reports
//!   it; a kernel that answers `ENODEV` reports a removal.
//!
//! # Opening a device
//!
//! [`tun::TunConfig`] opens or creates a TUN/TAP in one expression; the
//! whole link, consistent with what the kernel granted, is
//! `fdlink_core::Link`'s job on top:
//!
//! ```no_run
//! use std::os::fd::AsFd;
//! use fdlink_sys::tun::{set_offload, tun_info, OffloadFlags, TunConfig};
//!
//! let dev = TunConfig::tun().name("tun0").vnet_hdr(true).multi_queue(true).queues(2).open()?;
//! let wanted = OffloadFlags::CSUM | OffloadFlags::TSO4 | OffloadFlags::TSO6;
//! let granted = set_offload(dev.fds()[0].as_fd(), wanted)?;
//! assert_eq!(tun_info(dev.fds()[0].as_fd())?.vnet_hdr_len, 10);
//! # let _ = granted;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Example
//!
//! ```
//! use std::os::fd::AsFd;
//! use fdlink_sys::{fd, mmsg};
//!
//! let (a, b) = fd::socketpair(fd::SocketType::SeqPacket)?;
//! fd::set_nonblocking(a.as_fd())?;
//! let mut tx = mmsg::SendMmsg::new(4);
//! tx.send(b.as_fd(), [[&b"hello"[..], &[][..], &[][..]]])?;
//!
//! let mut rx = mmsg::RecvMmsg::new(4);
//! let mut bufs = vec![vec![0u8; 1500]; 4];
//! let mut infos = [fdlink_sys::io::RecvInfo::default(); 4];
//! let n = rx.recv(a.as_fd(), &mut bufs, &mut infos)?;
//! assert_eq!((n, infos[0].len), (1, 5));
//! # Ok::<(), std::io::Error>(())
//! ```
#![warn(missing_docs)]

pub mod abi;
pub mod fd;
pub mod io;
mod meta;
pub mod mmsg;
pub mod netdev;
pub mod netlink;
pub mod packet;
pub mod ring;
pub mod tun;
pub mod wait;

/// Turns a `-1` return into the thread's `errno` as an [`std::io::Error`].
pub(crate) fn cvt(rc: libc::c_int) -> std::io::Result<libc::c_int> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// [`cvt`] for calls that return a byte count.
pub(crate) fn cvt_size(rc: libc::ssize_t) -> std::io::Result<usize> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}
