//! Why a link closed, and the error a receive or a wait returns once it
//! has: the types every layer reports closure with.

use std::fmt;
use std::io;

/// Why a channel, and so the endpoint, closed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer closed: end of file, a zero-length SEQPACKET message, or a
    /// refused or broken write.
    PeerClosed,
    /// The descriptor reported a hang-up with nothing left to read.
    Hangup,
    /// The device is gone: the TUN/TAP was deleted (or its queue detached),
    /// or the interface an `AF_PACKET` socket was bound to.
    DeviceRemoved,
    /// A fatal error.
    Error {
        /// Its kind.
        kind: io::ErrorKind,
        /// The OS error number, when there is one.
        os_error: Option<i32>,
    },
}

impl CloseReason {
    pub(crate) fn from_error(e: &io::Error) -> Self {
        CloseReason::Error {
            kind: e.kind(),
            os_error: e.raw_os_error(),
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::PeerClosed => f.write_str("peer closed"),
            CloseReason::Hangup => f.write_str("hang-up"),
            CloseReason::DeviceRemoved => f.write_str("the device was removed"),
            CloseReason::Error {
                os_error: Some(code),
                ..
            } => write!(f, "error: {}", io::Error::from_raw_os_error(*code)),
            CloseReason::Error { kind, .. } => write!(f, "error: {kind}"),
        }
    }
}

/// Returned by a receive or a wait ([`crate::Endpoint::recv_batch`],
/// [`crate::Endpoint::wait_readable`]) once the link has closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed(pub CloseReason);

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "endpoint closed: {}", self.0)
    }
}

impl std::error::Error for Closed {}
