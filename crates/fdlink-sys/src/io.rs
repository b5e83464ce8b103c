//! One-packet I/O: read/readv/write/writev and recvmsg/sendmsg.
//!
//! `EINTR` is retried here, so callers never see it; `EAGAIN` surfaces as
//! [`std::io::ErrorKind::WouldBlock`]. Socket writes use `MSG_NOSIGNAL`, so a
//! closed peer is an `EPIPE` error rather than a process-killing `SIGPIPE`.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::cvt_size;

/// The result of receiving one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RecvInfo {
    /// The datagram's full length, which may exceed the buffer.
    pub len: usize,
    /// The datagram did not fit in the buffer; only its head was stored.
    pub truncated: bool,
}

impl RecvInfo {
    /// A datagram of `len` bytes, truncated or not.
    pub fn new(len: usize, truncated: bool) -> Self {
        RecvInfo { len, truncated }
    }
}

/// Calls `f` until it fails with something other than `EINTR`.
pub(crate) fn retry_eintr<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// `read(2)`: one packet from a TUN/TAP queue or a packet socket.
///
/// A TUN queue silently truncates a packet larger than the buffer; callers
/// that must detect that pass a buffer one byte larger than the largest
/// packet they accept and treat a full buffer as truncation.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    retry_eintr(|| {
        // SAFETY: buf is a live, writable slice of buf.len() bytes.
        cvt_size(unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
    })
}

/// `readv(2)`: one packet scattered over several buffers.
pub fn readv(fd: BorrowedFd<'_>, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
    let count = bufs.len().min(libc::c_int::MAX as usize) as libc::c_int;
    retry_eintr(|| {
        // SAFETY: IoSliceMut is ABI-compatible with `struct iovec` on Unix
        // and every slice is live and writable for the call.
        cvt_size(unsafe { libc::readv(fd.as_raw_fd(), bufs.as_ptr().cast(), count) })
    })
}

/// `write(2)`: one packet.
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    retry_eintr(|| {
        // SAFETY: buf is a live slice of buf.len() bytes.
        cvt_size(unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) })
    })
}

/// `writev(2)`: one packet gathered from several buffers (for example a
/// virtio header, a link header and a payload).
pub fn writev(fd: BorrowedFd<'_>, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    let count = bufs.len().min(libc::c_int::MAX as usize) as libc::c_int;
    retry_eintr(|| {
        // SAFETY: IoSlice is ABI-compatible with `struct iovec` on Unix and
        // every slice is live for the call.
        cvt_size(unsafe { libc::writev(fd.as_raw_fd(), bufs.as_ptr().cast(), count) })
    })
}

/// `recvmsg(2)` of one datagram with `MSG_TRUNC`, so truncation is reported
/// instead of silently cutting the packet.
pub fn recv_one(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<RecvInfo> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    retry_eintr(|| {
        // SAFETY: an all-zero msghdr is valid (no name, no control data).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        // SAFETY: msg points at one iovec that describes the live buffer.
        let len = cvt_size(unsafe {
            libc::recvmsg(
                fd.as_raw_fd(),
                &mut msg,
                libc::MSG_TRUNC | libc::MSG_DONTWAIT,
            )
        })?;
        Ok(RecvInfo {
            len,
            truncated: msg.msg_flags & libc::MSG_TRUNC != 0 || len > buf.len(),
        })
    })
}

/// `sendmsg(2)` of one datagram gathered from several buffers, with
/// `MSG_NOSIGNAL`.
pub fn send_one(fd: BorrowedFd<'_>, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    retry_eintr(|| {
        // SAFETY: an all-zero msghdr is valid (no name, no control data).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = bufs.len();
        // SAFETY: IoSlice is ABI-compatible with iovec; sendmsg only reads
        // through the pointers, which are live for the call.
        cvt_size(unsafe {
            libc::sendmsg(
                fd.as_raw_fd(),
                &msg,
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fd::{SocketType, socketpair};
    use std::os::fd::AsFd;

    #[test]
    fn recv_one_reports_truncation_and_real_length() {
        let (a, b) = socketpair(SocketType::SeqPacket).unwrap();
        send_one(b.as_fd(), &[IoSlice::new(&[7u8; 100])]).unwrap();
        let mut buf = [0u8; 40];
        let info = recv_one(a.as_fd(), &mut buf).unwrap();
        assert_eq!(info, RecvInfo::new(100, true));
        assert_eq!(buf, [7u8; 40]);
    }

    #[test]
    fn gathered_write_arrives_as_one_packet() {
        let (a, b) = socketpair(SocketType::Datagram).unwrap();
        writev(b.as_fd(), &[IoSlice::new(b"head"), IoSlice::new(b"-body")]).unwrap();
        let mut head = [0u8; 3];
        let mut rest = [0u8; 16];
        let n = readv(
            a.as_fd(),
            &mut [IoSliceMut::new(&mut head), IoSliceMut::new(&mut rest)],
        )
        .unwrap();
        assert_eq!(n, 9);
        assert_eq!(&head, b"hea");
        assert_eq!(&rest[..6], b"d-body");
    }

    #[test]
    fn send_to_closed_seqpacket_peer_is_epipe_not_sigpipe() {
        let (a, b) = socketpair(SocketType::SeqPacket).unwrap();
        drop(b);
        let err = send_one(a.as_fd(), &[IoSlice::new(b"x")]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
    }
}
