//! Checks and set-up of channels at construction: what each descriptor
//! supports, the mmap ring of an `AF_PACKET` channel, and the fanout group
//! that several `AF_PACKET` channels join.

use std::io;

use fdlink_sys::fd::{Domain, FdKind, SocketType};
use fdlink_sys::packet::FanoutMode;
use fdlink_sys::ring::{RingConfig, RxRing};

use crate::channel::{Channel, Io};
use crate::options::{DispatchMode, OptionsError};

/// Bytes of receive ring per channel the endpoint aims for when slots are
/// large (virtio-net header and 64 KiB super-frames); never fewer slots
/// than one batch.
const RING_BYTES_BUDGET: usize = 8 << 20;

/// Attaches and maps a receive ring to AF_PACKET socket `fd`: slots for the
/// endpoint's largest frame, four batches of them (fewer for large slots,
/// down to one batch).
pub(crate) fn attach_ring(
    fd: std::os::fd::BorrowedFd<'_>,
    vnet_len: usize,
    link_len: usize,
    max_frame: usize,
    batch_size: usize,
) -> io::Result<RxRing> {
    let vnet_on = fdlink_sys::packet::vnet_hdr_enabled(fd)?;
    if vnet_on != (vnet_len > 0) || vnet_len > crate::link::VNET_HDR_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the socket's PACKET_VNET_HDR is {} but the endpoint's virtio header length is {vnet_len} \
                 (an AF_PACKET ring carries a 10-byte header exactly when PACKET_VNET_HDR is on)",
                if vnet_on { "on" } else { "off" }
            ),
        ));
    }
    let max_ip = max_frame.saturating_sub(vnet_len + link_len);
    let probe = RingConfig::for_packet_len(max_ip, 1, vnet_len > 0);
    let count = (4 * batch_size)
        .min(RING_BYTES_BUDGET / probe.frame_size.max(1))
        .max(batch_size);
    RxRing::new(fd, RingConfig::for_packet_len(max_ip, count, vnet_len > 0))
}

/// Sets up an `AF_PACKET` channel for a link endpoint: frames this host
/// sends are not read back (`PACKET_IGNORE_OUTGOING`; where the kernel
/// lacks it, the reads mark them and the endpoint drops them as
/// [`crate::DropReason::Outgoing`]), and, without a virtio-net header, each
/// frame's checksum state comes with it (`PACKET_AUXDATA`): a packet the
/// local kernel sent across a veth carries only a partial checksum, which
/// cannot be verified, only completed.
///
/// Its receive buffer grows to hold a batch of the largest frames (within
/// [`MIN_PACKET_RCVBUF`]..=[`MAX_PACKET_RCVBUF`], never shrinking one the
/// caller set larger): with the default (about 200 KiB) three 64 KiB
/// super-frames fill it, and the kernel drops the rest of a burst before
/// the reader wakes.
pub(crate) fn configure_packet_socket(
    fd: std::os::fd::BorrowedFd<'_>,
    vnet_len: usize,
    batch_bytes: usize,
) -> io::Result<()> {
    fdlink_sys::packet::ignore_outgoing(fd)?;
    if vnet_len == 0 {
        fdlink_sys::packet::set_auxdata(fd, true)?;
    }
    let wanted = batch_bytes.clamp(MIN_PACKET_RCVBUF, MAX_PACKET_RCVBUF);
    // The kernel reports twice what was asked (its bookkeeping).
    if fdlink_sys::packet::recv_buffer(fd)? < 2 * wanted {
        fdlink_sys::packet::set_recv_buffer(fd, wanted)?;
    }
    Ok(())
}

/// The least receive buffer an `AF_PACKET` channel gets.
const MIN_PACKET_RCVBUF: usize = 1 << 20;
/// The most receive buffer an `AF_PACKET` channel asks for.
const MAX_PACKET_RCVBUF: usize = 16 << 20;

/// Puts every AF_PACKET socket of the endpoint in one hash fanout group
/// when there are several, unless the first is in a group already.
pub(crate) fn join_fanout_group(channels: &[Channel]) -> Result<(), OptionsError> {
    use std::os::fd::AsFd;
    let sockets: Vec<(usize, std::os::fd::BorrowedFd<'_>)> = channels
        .iter()
        .enumerate()
        .filter_map(|(i, c)| match &c.io {
            Io::Fd {
                fd,
                kind:
                    FdKind::Socket {
                        domain: Domain::Packet,
                        ..
                    },
            } => Some((i, fd.as_fd())),
            _ => None,
        })
        .collect();
    if sockets.len() < 2 {
        return Ok(());
    }
    let mut group = None;
    for &(channel, fd) in &sockets {
        match fdlink_sys::packet::join_fanout(fd, FanoutMode::Hash, group) {
            Ok(id) => group = Some(id),
            // The first socket is in a group already: the caller set up
            // its own fanout; leave it.
            Err(e) if group.is_none() && fdlink_sys::packet::is_already_in_fanout_group(&e) => {
                return Ok(());
            }
            Err(source) => return Err(OptionsError::Descriptor { channel, source }),
        }
    }
    Ok(())
}

pub(crate) fn check_kind(
    channel: usize,
    kind: FdKind,
    mode: DispatchMode,
) -> Result<(), OptionsError> {
    match kind {
        FdKind::Socket {
            socket_type: SocketType::Stream,
            ..
        } => Err(OptionsError::NotPacketOriented { channel }),
        FdKind::Socket {
            domain: Domain::Packet,
            ..
        } => Ok(()),
        _ if mode == DispatchMode::Mmap => Err(OptionsError::DispatchUnsupported {
            channel,
            mode,
            kind: if kind.is_socket() {
                "not an AF_PACKET socket (the mmap ring is AF_PACKET's)"
            } else {
                "not a socket (a TUN/TAP device reads one packet per read)"
            },
        }),
        FdKind::Socket { .. } => Ok(()),
        _ if mode == DispatchMode::Recvmmsg => Err(OptionsError::DispatchUnsupported {
            channel,
            mode,
            kind: "not a socket (a TUN/TAP device reads one packet per read)",
        }),
        _ => Ok(()),
    }
}
