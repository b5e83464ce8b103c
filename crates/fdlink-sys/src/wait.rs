//! Waiting for readiness: a data descriptor OR a stop event, with `ppoll(2)`.
//!
//! `poll` rather than `select`, which corrupts memory above descriptor 1024.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::cvt;

/// What to wait for on a descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// Data to read (`POLLIN`).
    Read,
    /// Room to write (`POLLOUT`).
    Write,
}

/// Why a wait returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Readiness {
    /// The descriptor is ready for the requested interest.
    Ready,
    /// The stop event was signalled.
    Stopped,
    /// The peer hung up (`POLLHUP`) and nothing is left to read.
    Hangup,
    /// The descriptor is in an error state (`POLLERR`/`POLLNVAL`).
    Error,
    /// The timeout passed.
    TimedOut,
}

/// A stop signal another thread can raise to wake a waiting reader: an
/// `eventfd`, closed when dropped.
#[derive(Debug)]
pub struct StopEvent {
    fd: OwnedFd,
}

impl StopEvent {
    /// Creates an unsignalled event (non-blocking, close-on-exec).
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes no pointers; on success it returns a new
        // descriptor that we take sole ownership of.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: fd was just created and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(StopEvent { fd })
    }

    /// Raises the event: every current and future wait returns
    /// [`Readiness::Stopped`] until [`StopEvent::reset`].
    pub fn signal(&self) -> io::Result<()> {
        match crate::io::write(self.fd.as_fd(), &1u64.to_ne_bytes()) {
            Ok(_) => Ok(()),
            // The counter is saturated: it is signalled already.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Clears the event so it can be reused.
    pub fn reset(&self) -> io::Result<()> {
        let mut buf = [0u8; 8];
        match crate::io::read(self.fd.as_fd(), &mut buf) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// True when signalled (does not clear it).
    pub fn is_signalled(&self) -> io::Result<bool> {
        let mut fds = [PollFd::new(self.fd.as_fd(), Interest::Read)];
        Ok(poll(&mut fds, Some(Duration::ZERO))? > 0)
    }
}

impl AsFd for StopEvent {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// One entry of a [`poll`] set.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct PollFd<'fd> {
    raw: libc::pollfd,
    _fd: std::marker::PhantomData<BorrowedFd<'fd>>,
}

impl std::fmt::Debug for PollFd<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollFd")
            .field("fd", &self.raw.fd)
            .field("events", &self.raw.events)
            .field("revents", &self.raw.revents)
            .finish()
    }
}

impl<'fd> PollFd<'fd> {
    /// Watches `fd` for `interest`.
    pub fn new(fd: BorrowedFd<'fd>, interest: Interest) -> Self {
        let events = match interest {
            Interest::Read => libc::POLLIN,
            Interest::Write => libc::POLLOUT,
        };
        PollFd {
            raw: libc::pollfd {
                fd: fd.as_raw_fd(),
                events,
                revents: 0,
            },
            _fd: std::marker::PhantomData,
        }
    }

    /// The descriptor is ready for the interest it was created with.
    pub fn is_ready(&self) -> bool {
        self.raw.revents & self.raw.events != 0
    }

    /// The peer hung up (`POLLHUP`, or `POLLRDHUP` where reported).
    pub fn is_hangup(&self) -> bool {
        self.raw.revents & libc::POLLHUP != 0
    }

    /// The descriptor is in an error state or invalid.
    pub fn is_error(&self) -> bool {
        self.raw.revents & (libc::POLLERR | libc::POLLNVAL) != 0
    }

    /// Anything at all was reported.
    pub fn any(&self) -> bool {
        self.raw.revents != 0
    }
}

/// `ppoll(2)` over `fds`; `None` waits forever. Returns how many entries
/// reported something. An interrupted wait (`EINTR`) resumes with the time
/// that is left.
pub fn poll(fds: &mut [PollFd<'_>], timeout: Option<Duration>) -> io::Result<usize> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        for fd in fds.iter_mut() {
            fd.raw.revents = 0;
        }
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let ts = left.map(|d| libc::timespec {
            tv_sec: d.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        });
        let ts_ptr = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: PollFd is repr(transparent) over pollfd, so the slice is a
        // valid pollfd array of fds.len() entries; ts_ptr is null or points at
        // a live timespec; a null signal mask leaves the mask unchanged.
        let rc = unsafe {
            libc::ppoll(
                fds.as_mut_ptr().cast(),
                fds.len() as libc::nfds_t,
                ts_ptr,
                std::ptr::null(),
            )
        };
        match cvt(rc) {
            Ok(n) => return Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Waits until `fd` is ready for `interest`, `stop` is signalled, or the
/// timeout passes (`None`: no timeout).
///
/// Readable data wins over a hangup, so a reader drains what the peer sent
/// before it closed; a stop wins over both.
pub fn wait(
    fd: BorrowedFd<'_>,
    interest: Interest,
    stop: Option<&StopEvent>,
    timeout: Option<Duration>,
) -> io::Result<Readiness> {
    let mut set = [
        PollFd::new(fd, interest),
        PollFd::new(stop.map_or(fd, |s| s.fd.as_fd()), Interest::Read),
    ];
    let watched = if stop.is_some() { 2 } else { 1 };
    if poll(&mut set[..watched], timeout)? == 0 {
        return Ok(Readiness::TimedOut);
    }
    Ok(if stop.is_some() && set[1].any() {
        Readiness::Stopped
    } else if set[0].is_ready() {
        Readiness::Ready
    } else if set[0].is_hangup() {
        Readiness::Hangup
    } else if set[0].is_error() {
        Readiness::Error
    } else {
        Readiness::TimedOut
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fd::{SocketType, socketpair};

    #[test]
    fn stop_wakes_a_waiter_and_reset_clears_it() {
        let (a, _b) = socketpair(SocketType::SeqPacket).unwrap();
        let stop = StopEvent::new().unwrap();
        assert_eq!(
            wait(
                a.as_fd(),
                Interest::Read,
                Some(&stop),
                Some(Duration::from_millis(10))
            )
            .unwrap(),
            Readiness::TimedOut
        );
        stop.signal().unwrap();
        stop.signal().unwrap();
        assert!(stop.is_signalled().unwrap());
        assert_eq!(
            wait(a.as_fd(), Interest::Read, Some(&stop), None).unwrap(),
            Readiness::Stopped
        );
        stop.reset().unwrap();
        assert!(!stop.is_signalled().unwrap());
    }

    #[test]
    fn data_then_hangup_is_reported_in_that_order() {
        let (a, b) = socketpair(SocketType::SeqPacket).unwrap();
        crate::io::write(b.as_fd(), b"last").unwrap();
        drop(b);
        assert_eq!(
            wait(a.as_fd(), Interest::Read, None, Some(Duration::ZERO)).unwrap(),
            Readiness::Ready
        );
        let mut buf = [0u8; 8];
        assert_eq!(crate::io::read(a.as_fd(), &mut buf).unwrap(), 4);
        // A SEQPACKET socket whose peer is gone stays readable (EOF) and
        // reports POLLHUP alongside.
        let mut set = [PollFd::new(a.as_fd(), Interest::Read)];
        poll(&mut set, Some(Duration::ZERO)).unwrap();
        assert!(set[0].is_hangup());
    }

    #[test]
    fn writable_socket_is_ready_for_write() {
        let (a, _b) = socketpair(SocketType::Datagram).unwrap();
        assert_eq!(
            wait(a.as_fd(), Interest::Write, None, Some(Duration::ZERO)).unwrap(),
            Readiness::Ready
        );
    }
}
