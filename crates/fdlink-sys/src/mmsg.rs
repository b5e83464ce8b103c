//! Batched datagram I/O: `recvmmsg(2)` and `sendmmsg(2)` over header and
//! iovec arrays allocated once and reused for every call.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::io::{MetaBufs, RecvInfo, retry_eintr};

/// The most packets one batched call moves, unless the caller asks for fewer.
pub const DEFAULT_BATCH: usize = 64;

/// Parts of one outgoing packet, written back to back: typically a virtio-net
/// header, a link header and the payload. Empty parts are skipped.
pub type PacketParts<'a> = [&'a [u8]; 3];

/// Reusable state for `recvmmsg(2)`.
///
/// The header and iovec arrays are allocated once; each call points them at
/// the caller's buffers, which are only borrowed for that call. Made with
/// [`RecvMmsg::with_packet_meta`], it also owns one address buffer and one
/// control-message buffer per datagram, to report each packet's metadata.
pub struct RecvMmsg {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    /// Empty, or one entry per header: see [`RecvMmsg::with_packet_meta`].
    meta: Vec<MetaBufs>,
}

// SAFETY: the raw pointers inside the headers are only written and read during
// a `recv` call, which borrows the target buffers (and owns the metadata
// buffers) for its whole duration; they are never dereferenced between calls,
// so moving the arrays to another thread cannot create a dangling access.
unsafe impl Send for RecvMmsg {}

impl std::fmt::Debug for RecvMmsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvMmsg")
            .field("capacity", &self.hdrs.len())
            .field("packet_meta", &!self.meta.is_empty())
            .finish()
    }
}

impl RecvMmsg {
    /// Preallocates room for `capacity` datagrams per call (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        RecvMmsg {
            // SAFETY: all-zero mmsghdr and iovec values are valid (null
            // pointers, zero lengths); they are filled before each call.
            hdrs: vec![unsafe { std::mem::zeroed() }; capacity],
            // SAFETY: as above.
            iovs: vec![unsafe { std::mem::zeroed() }; capacity],
            meta: Vec::new(),
        }
    }

    /// Like [`RecvMmsg::new`], and each call also reads every datagram's
    /// metadata into [`RecvInfo::checksum`] and [`RecvInfo::outgoing`], as
    /// [`crate::io::recv_one_meta`] does (see [`crate::io`]): the packet
    /// type of the sender's `sockaddr_ll` and the `tpacket_auxdata` control
    /// message of an `AF_PACKET` socket with `PACKET_AUXDATA` on.
    ///
    /// Preallocates an address buffer and a 256-byte control buffer per
    /// datagram, reused by every call.
    pub fn with_packet_meta(capacity: usize) -> Self {
        let mut rx = RecvMmsg::new(capacity);
        rx.meta = vec![MetaBufs::new(); rx.hdrs.len()];
        rx
    }

    /// Whether calls read each datagram's metadata
    /// ([`RecvMmsg::with_packet_meta`]).
    pub fn packet_meta(&self) -> bool {
        !self.meta.is_empty()
    }

    /// How many datagrams one call can receive.
    pub fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// Receives up to `min(capacity, bufs.len(), infos.len())` datagrams
    /// without blocking, one per buffer, and returns how many arrived.
    ///
    /// `infos[i]` tells datagram `i`'s full length and whether it was
    /// truncated (`MSG_TRUNC`), so a packet larger than its buffer is never
    /// mistaken for a whole one; with [`RecvMmsg::with_packet_meta`] also its
    /// checksum state and whether it is outgoing, otherwise the defaults.
    /// Returns `WouldBlock` when nothing is queued.
    /// A zero-length datagram is returned as such: on a `SOCK_SEQPACKET`
    /// socket it means the peer has closed.
    pub fn recv<B: AsMut<[u8]>>(
        &mut self,
        fd: BorrowedFd<'_>,
        bufs: &mut [B],
        infos: &mut [RecvInfo],
    ) -> io::Result<usize> {
        let n = self.hdrs.len().min(bufs.len()).min(infos.len());
        if n == 0 {
            return Ok(0);
        }
        for (i, buf) in bufs[..n].iter_mut().enumerate() {
            let buf = buf.as_mut();
            self.iovs[i] = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
        }
        let iovs = self.iovs.as_mut_ptr();
        for (i, hdr) in self.hdrs[..n].iter_mut().enumerate() {
            // SAFETY: all-zero msghdr is valid; only iov fields are set.
            hdr.msg_hdr = unsafe { std::mem::zeroed() };
            // SAFETY: i < n <= iovs.len(), so the pointer stays in bounds.
            hdr.msg_hdr.msg_iov = unsafe { iovs.add(i) };
            hdr.msg_hdr.msg_iovlen = 1;
            hdr.msg_len = 0;
        }
        // With metadata, each header also points at its own address and
        // control buffers, at full size (the kernel shrank the lengths last
        // time). `meta` is not resized while the pointers are in use.
        for (hdr, meta) in self.hdrs[..n].iter_mut().zip(&mut self.meta) {
            meta.attach(&mut hdr.msg_hdr);
        }
        let got = retry_eintr(|| {
            // SAFETY: hdrs[..n] each point at one iovec describing a live,
            // exclusively borrowed buffer and, with metadata, at the name
            // and control buffers `self.meta` owns, with their sizes; the
            // kernel writes at most those sizes into each and fills
            // msg_len/msg_flags/msg_namelen/msg_controllen.
            let rc = unsafe {
                libc::recvmmsg(
                    fd.as_raw_fd(),
                    self.hdrs.as_mut_ptr(),
                    n as libc::c_uint,
                    libc::MSG_TRUNC | libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            crate::cvt(rc).map(|rc| rc as usize)
        })?;
        for (i, ((info, hdr), iov)) in infos
            .iter_mut()
            .zip(&self.hdrs)
            .zip(&self.iovs)
            .take(got)
            .enumerate()
        {
            let len = hdr.msg_len as usize;
            *info = RecvInfo::new(
                len,
                hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || len > iov.iov_len,
            );
            if let Some(meta) = self.meta.get(i) {
                let (checksum, outgoing) = meta.parse(&hdr.msg_hdr);
                *info = info.with_checksum(checksum).with_outgoing(outgoing);
            }
        }
        Ok(got)
    }
}

/// Reusable state for `sendmmsg(2)`.
pub struct SendMmsg {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
}

// SAFETY: as for RecvMmsg, the pointers are only meaningful during one `send`
// call that borrows the packets for its duration.
unsafe impl Send for SendMmsg {}

impl std::fmt::Debug for SendMmsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendMmsg")
            .field("capacity", &self.hdrs.len())
            .finish()
    }
}

impl SendMmsg {
    /// Preallocates room for `capacity` datagrams per call (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let parts = std::mem::size_of::<PacketParts<'_>>() / std::mem::size_of::<&[u8]>();
        SendMmsg {
            // SAFETY: all-zero mmsghdr and iovec values are valid.
            hdrs: vec![unsafe { std::mem::zeroed() }; capacity],
            // SAFETY: as above.
            iovs: vec![unsafe { std::mem::zeroed() }; capacity * parts],
        }
    }

    /// How many datagrams one call can send.
    pub fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// Sends up to `capacity` packets from `packets` without blocking (with
    /// `MSG_NOSIGNAL`) and returns how many the kernel took, in order.
    ///
    /// Fewer than offered means the socket buffer filled up (or the next
    /// packet failed): the caller resumes after the ones sent. An error is
    /// returned only when not even the first packet was sent; `WouldBlock`
    /// then means the send buffer is full.
    pub fn send<'a, I>(&mut self, fd: BorrowedFd<'_>, packets: I) -> io::Result<usize>
    where
        I: IntoIterator<Item = PacketParts<'a>>,
    {
        let iovs = self.iovs.as_mut_ptr();
        let mut n = 0;
        let mut iov_used = 0;
        for parts in packets.into_iter().take(self.hdrs.len()) {
            let first = iov_used;
            for part in parts.iter().filter(|p| !p.is_empty()) {
                self.iovs[iov_used] = libc::iovec {
                    iov_base: part.as_ptr() as *mut libc::c_void,
                    iov_len: part.len(),
                };
                iov_used += 1;
            }
            let hdr = &mut self.hdrs[n];
            // SAFETY: all-zero msghdr is valid; only iov fields are set.
            hdr.msg_hdr = unsafe { std::mem::zeroed() };
            // SAFETY: first <= iov_used <= iovs.len(), in bounds.
            hdr.msg_hdr.msg_iov = unsafe { iovs.add(first) };
            hdr.msg_hdr.msg_iovlen = iov_used - first;
            hdr.msg_len = 0;
            n += 1;
        }
        if n == 0 {
            return Ok(0);
        }
        retry_eintr(|| {
            // SAFETY: hdrs[..n] point at iovecs that describe slices borrowed
            // for 'a, which outlives this call; the kernel only reads them.
            let rc = unsafe {
                libc::sendmmsg(
                    fd.as_raw_fd(),
                    self.hdrs.as_mut_ptr(),
                    n as libc::c_uint,
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            crate::cvt(rc).map(|rc| rc as usize)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fd::{SocketType, socketpair};
    use std::os::fd::AsFd;

    #[test]
    fn batch_round_trip_with_truncation() {
        let (a, b) = socketpair(SocketType::SeqPacket).unwrap();
        let mut tx = SendMmsg::new(8);
        let big = [9u8; 300];
        let sent = tx
            .send(
                b.as_fd(),
                [
                    [&b"ab"[..], &b""[..], &b"cd"[..]],
                    [&[][..], &big[..], &[][..]],
                    [&b"x"[..], &[][..], &[][..]],
                ],
            )
            .unwrap();
        assert_eq!(sent, 3);
        let mut rx = RecvMmsg::new(8);
        let mut bufs = vec![vec![0u8; 64]; 8];
        let mut infos = [RecvInfo::default(); 8];
        let got = rx.recv(a.as_fd(), &mut bufs, &mut infos).unwrap();
        assert_eq!(got, 3);
        assert_eq!(infos[0], RecvInfo::new(4, false));
        assert_eq!(&bufs[0][..4], b"abcd");
        assert_eq!(infos[1], RecvInfo::new(300, true));
        assert_eq!(infos[2], RecvInfo::new(1, false));
        let err = rx.recv(a.as_fd(), &mut bufs, &mut infos).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn closed_seqpacket_peer_reads_as_zero_length() {
        let (a, b) = socketpair(SocketType::SeqPacket).unwrap();
        drop(b);
        let mut rx = RecvMmsg::new(4);
        let mut bufs = vec![vec![0u8; 64]; 4];
        let mut infos = [RecvInfo::default(); 4];
        let got = rx.recv(a.as_fd(), &mut bufs, &mut infos).unwrap();
        assert!(got >= 1);
        assert_eq!(infos[0].len, 0);
    }

    #[test]
    fn packet_meta_on_another_socket_reads_as_none_call_after_call() {
        // SO_PASSCRED: every datagram comes with an SCM_CREDENTIALS control
        // message, which the metadata parse skips; no sockaddr_ll, so
        // nothing is outgoing.
        let (a, b) = socketpair(SocketType::Datagram).unwrap();
        crate::fd::setsockopt_int(a.as_fd(), libc::SOL_SOCKET, libc::SO_PASSCRED, 1).unwrap();
        assert!(!RecvMmsg::new(4).packet_meta());
        let mut rx = RecvMmsg::with_packet_meta(4);
        assert!(rx.packet_meta());
        assert_eq!(rx.capacity(), 4);
        assert!(format!("{rx:?}").contains("packet_meta: true"));
        let mut tx = SendMmsg::new(4);
        let mut bufs = vec![vec![0u8; 16]; 4];
        for round in 0..3u8 {
            let big = [round; 40];
            let pkts = [[&big[..16], &[][..], &[][..]], [&big[..], &[][..], &[][..]]];
            assert_eq!(tx.send(b.as_fd(), pkts).unwrap(), 2);
            let mut infos = [RecvInfo::new(99, true)
                .with_checksum(crate::io::RxChecksum::Valid)
                .with_outgoing(true); 4];
            assert_eq!(rx.recv(a.as_fd(), &mut bufs, &mut infos).unwrap(), 2);
            assert_eq!(infos[0], RecvInfo::new(16, false), "round {round}");
            assert_eq!(infos[1], RecvInfo::new(40, true), "round {round}");
            assert_eq!(bufs[1], [round; 16]);
        }
    }

    #[test]
    fn capacity_limits_one_call() {
        let (a, b) = socketpair(SocketType::Datagram).unwrap();
        let mut tx = SendMmsg::new(2);
        let pkts = (0..5).map(|_| [&b"p"[..], &[][..], &[][..]]);
        assert_eq!(tx.send(b.as_fd(), pkts).unwrap(), 2);
        let mut rx = RecvMmsg::new(1);
        let mut bufs = vec![vec![0u8; 8]; 4];
        let mut infos = [RecvInfo::default(); 4];
        assert_eq!(rx.recv(a.as_fd(), &mut bufs, &mut infos).unwrap(), 1);
    }
}
