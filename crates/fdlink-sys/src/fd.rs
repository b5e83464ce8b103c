//! Facts about a descriptor: non-blocking mode, socket or not, family, type.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::cvt;

/// The address family of a socket descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Domain {
    /// `AF_UNIX`: a socketpair or a named Unix socket.
    Unix,
    /// `AF_PACKET`: a link-layer socket bound to an interface.
    Packet,
    /// `AF_INET`.
    Inet,
    /// `AF_INET6`.
    Inet6,
    /// Any other family, by number.
    Other(i32),
}

/// The type of a socket descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SocketType {
    /// `SOCK_STREAM`: no packet boundaries; unusable as a link.
    Stream,
    /// `SOCK_DGRAM`.
    Datagram,
    /// `SOCK_SEQPACKET`.
    SeqPacket,
    /// `SOCK_RAW` (AF_PACKET raw sockets).
    Raw,
    /// Any other type, by number.
    Other(i32),
}

/// What kind of object a descriptor refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FdKind {
    /// A socket of the given family and type.
    Socket {
        /// Address family (`SO_DOMAIN`).
        domain: Domain,
        /// Socket type (`SO_TYPE`).
        socket_type: SocketType,
    },
    /// A character device (a TUN/TAP queue is one).
    CharDevice,
    /// Anything else (pipe, regular file, ...).
    Other,
}

impl FdKind {
    /// True for sockets, where `recvmmsg`/`sendmmsg` apply.
    pub fn is_socket(&self) -> bool {
        matches!(self, FdKind::Socket { .. })
    }
}

/// Puts the descriptor in non-blocking mode (`O_NONBLOCK`).
///
/// The flag lives on the open file description, so it is shared with every
/// duplicate of the descriptor.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL on a valid, borrowed descriptor takes no pointer.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    if flags & libc::O_NONBLOCK == 0 {
        // SAFETY: F_SETFL with an integer argument on a valid descriptor.
        cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    }
    Ok(())
}

/// Tells what the descriptor is: `fstat` for the file type, then
/// `SO_DOMAIN`/`SO_TYPE` for sockets.
pub fn fd_kind(fd: BorrowedFd<'_>) -> io::Result<FdKind> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a full `struct stat` into the pointer on success;
    // we only read it after checking the return value.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat returned 0, so the struct is initialised.
    let mode = unsafe { st.assume_init() }.st_mode & libc::S_IFMT;
    match mode {
        libc::S_IFSOCK => {
            let domain = match getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)? {
                libc::AF_UNIX => Domain::Unix,
                libc::AF_PACKET => Domain::Packet,
                libc::AF_INET => Domain::Inet,
                libc::AF_INET6 => Domain::Inet6,
                other => Domain::Other(other),
            };
            let socket_type = match getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)? {
                libc::SOCK_STREAM => SocketType::Stream,
                libc::SOCK_DGRAM => SocketType::Datagram,
                libc::SOCK_SEQPACKET => SocketType::SeqPacket,
                libc::SOCK_RAW => SocketType::Raw,
                other => SocketType::Other(other),
            };
            Ok(FdKind::Socket {
                domain,
                socket_type,
            })
        }
        libc::S_IFCHR => Ok(FdKind::CharDevice),
        _ => Ok(FdKind::Other),
    }
}

/// Reads an integer socket option.
pub fn getsockopt_int(fd: BorrowedFd<'_>, level: i32, name: i32) -> io::Result<i32> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len point to live locals of the sizes passed.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok(value)
}

/// Sets an integer socket option.
pub fn setsockopt_int(fd: BorrowedFd<'_>, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: the pointer and length describe a live c_int.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Creates a connected `AF_UNIX` socketpair of the given type, close-on-exec.
///
/// `socket_type` must be [`SocketType::SeqPacket`] or [`SocketType::Datagram`]
/// for a packet link; other values are passed through.
pub fn socketpair(
    socket_type: SocketType,
) -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let ty = match socket_type {
        SocketType::Stream => libc::SOCK_STREAM,
        SocketType::Datagram => libc::SOCK_DGRAM,
        SocketType::SeqPacket => libc::SOCK_SEQPACKET,
        SocketType::Raw => libc::SOCK_RAW,
        SocketType::Other(n) => n,
    };
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds has room for the two descriptors socketpair writes.
    cvt(unsafe { libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) })?;
    // SAFETY: socketpair succeeded, so both descriptors are open and owned by
    // nobody else.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn socketpair_kinds_are_reported() {
        let (a, _b) = socketpair(SocketType::SeqPacket).unwrap();
        assert_eq!(
            fd_kind(a.as_fd()).unwrap(),
            FdKind::Socket {
                domain: Domain::Unix,
                socket_type: SocketType::SeqPacket
            }
        );
        let (c, _d) = socketpair(SocketType::Datagram).unwrap();
        assert_eq!(
            fd_kind(c.as_fd()).unwrap(),
            FdKind::Socket {
                domain: Domain::Unix,
                socket_type: SocketType::Datagram
            }
        );
    }

    #[test]
    fn pipe_is_not_a_socket() {
        let (r, _w) = std::io::pipe().unwrap();
        assert!(!fd_kind(r.as_fd()).unwrap().is_socket());
    }

    #[test]
    fn nonblocking_is_set() {
        let (a, _b) = socketpair(SocketType::Datagram).unwrap();
        set_nonblocking(a.as_fd()).unwrap();
        let mut buf = [0u8; 4];
        let err = std::io::Read::read(&mut std::fs::File::from(a), &mut buf).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    }
}
