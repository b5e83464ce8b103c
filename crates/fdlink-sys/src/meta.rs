//! What a receive learns of one packet besides its bytes: its length and
//! truncation, and on `AF_PACKET` sockets the kernel's checksum state and
//! whether this host sent it. Shared by the one-packet and batched
//! receives ([`crate::io`], [`crate::mmsg`]) and the ring ([`crate::ring`]).

use crate::abi::{TP_STATUS_CSUM_VALID, TP_STATUS_CSUMNOTREADY};

/// What the kernel says about a received packet's transport (TCP/UDP)
/// checksum. It is a property of each packet, not of the device: on one
/// interface, locally sent packets can be partial while forwarded ones are
/// unverified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RxChecksum {
    /// No information: the kernel said nothing (`PACKET_AUXDATA` off, not
    /// an `AF_PACKET` socket, no checksum offload on the path) or the packet
    /// may carry any checksum, good or bad. Verify it.
    #[default]
    Unknown,
    /// The checksum was never computed (`TP_STATUS_CSUMNOTREADY`; the
    /// kernel's `CHECKSUM_PARTIAL`): a local sender relied on checksum
    /// offload, so the checksum field holds only the pseudo-header sum.
    /// Complete it; verifying it would fail.
    Partial,
    /// The device or the kernel verified the checksum
    /// (`TP_STATUS_CSUM_VALID`, Linux 4.1; the kernel's
    /// `CHECKSUM_UNNECESSARY`).
    Valid,
}

impl RxChecksum {
    /// The checksum state in a `tp_status` word, from `tpacket_auxdata` or a
    /// ring slot. The kernel sets at most one of the two bits; should both
    /// be set, `Partial` wins, as the field then cannot be verified.
    pub(crate) fn from_tp_status(status: u32) -> RxChecksum {
        if status & TP_STATUS_CSUMNOTREADY != 0 {
            RxChecksum::Partial
        } else if status & TP_STATUS_CSUM_VALID != 0 {
            RxChecksum::Valid
        } else {
            RxChecksum::Unknown
        }
    }
}

/// The result of receiving one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RecvInfo {
    /// The datagram's full length, which may exceed the buffer.
    pub len: usize,
    /// The datagram did not fit in the buffer; only its head was stored.
    pub truncated: bool,
    /// The transport checksum's state, from the `tpacket_auxdata` control
    /// message of an `AF_PACKET` socket with `PACKET_AUXDATA` on (see the
    /// module docs). Always [`RxChecksum::Unknown`] from receive calls that
    /// do not read metadata ([`crate::io::recv_one`], [`crate::mmsg::RecvMmsg::new`]).
    pub checksum: RxChecksum,
    /// The frame is one this host transmitted on the interface (packet type
    /// `PACKET_OUTGOING` in the `sockaddr_ll` address): an `AF_PACKET`
    /// socket sees the frames other sockets and the host's own stack send,
    /// unless `PACKET_IGNORE_OUTGOING` is on
    /// ([`crate::packet::ignore_outgoing`]). Always `false` from receive
    /// calls that do not read metadata.
    pub outgoing: bool,
}

impl RecvInfo {
    /// A datagram of `len` bytes, truncated or not, with no metadata
    /// ([`RxChecksum::Unknown`], not outgoing).
    pub fn new(len: usize, truncated: bool) -> Self {
        RecvInfo {
            len,
            truncated,
            checksum: RxChecksum::Unknown,
            outgoing: false,
        }
    }

    /// The same, with [`RecvInfo::checksum`] set to `checksum`.
    pub fn with_checksum(mut self, checksum: RxChecksum) -> Self {
        self.checksum = checksum;
        self
    }

    /// The same, with [`RecvInfo::outgoing`] set to `outgoing`.
    pub fn with_outgoing(mut self, outgoing: bool) -> Self {
        self.outgoing = outgoing;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tp_status_bits_map_to_checksum_states() {
        const TP_STATUS_USER: u32 = 1;
        assert_eq!(
            RxChecksum::from_tp_status(TP_STATUS_USER),
            RxChecksum::Unknown
        );
        assert_eq!(
            RxChecksum::from_tp_status(TP_STATUS_USER | TP_STATUS_CSUMNOTREADY),
            RxChecksum::Partial
        );
        assert_eq!(
            RxChecksum::from_tp_status(TP_STATUS_USER | TP_STATUS_CSUM_VALID),
            RxChecksum::Valid
        );
        assert_eq!(
            RxChecksum::from_tp_status(TP_STATUS_CSUMNOTREADY | TP_STATUS_CSUM_VALID),
            RxChecksum::Partial,
            "a partial checksum field cannot be verified, whatever else is said"
        );
        assert_eq!(RxChecksum::default(), RxChecksum::Unknown);
    }
}
