//! Building an endpoint's parts from its options: every check, each
//! descriptor's set-up (non-blocking, what its kind needs, the mmap ring,
//! `AF_PACKET` options and fanout), and the settings and capabilities that
//! follow.

use std::io;
use std::os::fd::AsFd;

use fdlink_sys::fd::{Domain, FdKind, SocketType};
use fdlink_sys::packet::FanoutMode;
use fdlink_sys::ring::{RingConfig, RxRing};

use crate::caps::{Capabilities, DeviceOffloads};
use crate::channel::{Channel, Io, RingRx};
use crate::link::{MAX_IP_PACKET, ethernet};
use crate::options::{
    ChannelSource, ClosedCallback, DispatchMode, MAX_BATCH_SIZE, Options, OptionsError,
};
use crate::shared::{Config, Shared};

/// Virtio-net header lengths a channel may carry: none, the plain header,
/// the mergeable-buffers form.
const VALID_VNET_LENS: [usize; 3] = [0, 10, 12];

/// What [`crate::Endpoint::new`] builds from its options.
pub(crate) struct Parts {
    pub(crate) channels: Vec<Channel>,
    pub(crate) config: Config,
    pub(crate) caps: Capabilities,
    pub(crate) closed: Option<ClosedCallback>,
}

/// Checks `options` as a whole and sets up every channel (see
/// [`crate::Endpoint::new`] for the errors).
pub(crate) fn build(options: Options) -> Result<Parts, OptionsError> {
    let o = options;
    if o.channels.is_empty() {
        return Err(OptionsError::NoChannels);
    }
    if o.mtu == 0 || o.mtu as usize > MAX_IP_PACKET {
        return Err(OptionsError::InvalidMtu(o.mtu));
    }
    if o.batch_size == 0 || o.batch_size > MAX_BATCH_SIZE {
        return Err(OptionsError::InvalidBatchSize(o.batch_size));
    }
    if let Some(mac) = o.link_address {
        if !o.ethernet {
            return Err(OptionsError::LinkAddressWithoutEthernet);
        }
        if mac.is_multicast() {
            return Err(OptionsError::MulticastLinkAddress(mac));
        }
    }
    if !VALID_VNET_LENS.contains(&o.vnet_header_len) {
        return Err(OptionsError::InvalidVnetHeaderLen(o.vnet_header_len));
    }
    if o.gso_max_size != 0 && !(o.mtu..=MAX_IP_PACKET as u32).contains(&o.gso_max_size) {
        return Err(OptionsError::InvalidGsoMaxSize {
            size: o.gso_max_size,
            mtu: o.mtu,
        });
    }
    let link_len = if o.ethernet { ethernet::HEADER_LEN } else { 0 };
    let min_frame = o.vnet_header_len + link_len + o.mtu as usize;
    if let Some(size) = o.receive_buffer_size
        && size < min_frame
    {
        return Err(OptionsError::ReceiveBufferTooSmall {
            size,
            needed: min_frame,
        });
    }

    let mut channels = Vec::with_capacity(o.channels.len());
    for (index, source) in o.channels.into_iter().enumerate() {
        let io = match source {
            ChannelSource::Io(_) if o.dispatch == DispatchMode::Mmap => {
                return Err(OptionsError::DispatchUnsupported {
                    channel: index,
                    mode: o.dispatch,
                    kind: "a packet object (mmap needs an AF_PACKET socket)",
                });
            }
            ChannelSource::Io(io) => Io::Object(io),
            ChannelSource::Fd(fd) => {
                let described = |source| OptionsError::Descriptor {
                    channel: index,
                    source,
                };
                let kind = fdlink_sys::fd::fd_kind(fd.as_fd()).map_err(described)?;
                check_kind(index, kind, o.dispatch)?;
                check_device(index, fd.as_fd(), kind, o.vnet_header_len, o.ethernet)?;
                fdlink_sys::fd::set_nonblocking(fd.as_fd()).map_err(described)?;
                Io::Fd { fd, kind }
            }
        };
        let channel =
            Channel::new(io, o.batch_size).map_err(|source| OptionsError::Descriptor {
                channel: index,
                source,
            })?;
        channels.push(channel);
    }
    let max_frame = o.receive_buffer_size.unwrap_or(max_frame_for(
        &channels,
        o.mtu,
        o.vnet_header_len,
        link_len,
    ));
    for (index, channel) in channels.iter_mut().enumerate() {
        if channel.is_packet_socket()
            && let Some(fd) = channel.fd()
        {
            configure_packet_socket(fd, o.vnet_header_len, o.batch_size * max_frame).map_err(
                |source| OptionsError::Descriptor {
                    channel: index,
                    source,
                },
            )?;
        }
        if channel.is_plain_socket()
            && let Some(fd) = channel.fd()
        {
            grow_send_buffer(fd, o.batch_size * max_frame).map_err(|source| {
                OptionsError::Descriptor {
                    channel: index,
                    source,
                }
            })?;
        }
        if o.dispatch == DispatchMode::Mmap
            && let Io::Fd { fd, .. } = &channel.io
        {
            if o.vnet_header_len > 0 {
                check_ring_vnet_header(index, fdlink_sys::ring::rings_carry_vnet_header())?;
            }
            let ring = attach_ring(
                fd.as_fd(),
                o.vnet_header_len,
                link_len,
                max_frame,
                o.batch_size,
            )
            .map_err(|source| OptionsError::Descriptor {
                channel: index,
                source,
            })?;
            channel.ring = Some(RingRx::new(ring, o.vnet_header_len));
        }
    }
    join_fanout_group(&channels)?;

    let caps = Capabilities::empty()
        .with(Capabilities::RESOLUTION_REQUIRED, o.ethernet)
        .with(
            Capabilities::GSO,
            o.vnet_header_len > 0 && o.gso_max_size > o.mtu,
        );
    let max_frame_follows_mtu = o.receive_buffer_size.is_none();
    Ok(Parts {
        channels,
        config: Config::new(
            o.mtu,
            o.ethernet,
            o.link_address,
            o.vnet_header_len,
            max_frame,
            !max_frame_follows_mtu,
            o.batch_size,
            o.dispatch,
            o.send_timeout,
            o.gso_max_size,
            o.device_offloads.unwrap_or(if o.vnet_header_len > 0 {
                DeviceOffloads::ALL
            } else {
                DeviceOffloads::NONE
            }),
        ),
        caps,
        closed: o.closed,
    })
}

/// The largest frame a receive buffer must take on these channels: the
/// MTU's, or a 64 KiB super-packet's where frames carry virtio headers and
/// on `AF_PACKET` sockets even without (a tap sees the kernel's GSO and GRO
/// frames whole, which only a virtio header would describe).
pub(crate) fn max_frame_for(
    channels: &[Channel],
    mtu: u32,
    vnet_len: usize,
    link_len: usize,
) -> usize {
    let largest_packet = if vnet_len > 0 || channels.iter().any(Channel::is_packet_socket) {
        MAX_IP_PACKET
    } else {
        mtu as usize
    };
    vnet_len + link_len + largest_packet
}

/// Bytes of receive ring per channel the endpoint aims for when slots are
/// large (virtio-net header and 64 KiB super-frames); never fewer slots
/// than one batch.
const RING_BYTES_BUDGET: usize = 8 << 20;

/// Attaches and maps a receive ring to AF_PACKET socket `fd`: slots for the
/// endpoint's largest frame, four batches of them (fewer for large slots,
/// down to one batch). The socket's virtio-net header setting was checked
/// against the endpoint's already.
pub(crate) fn attach_ring(
    fd: std::os::fd::BorrowedFd<'_>,
    vnet_len: usize,
    link_len: usize,
    max_frame: usize,
    batch_size: usize,
) -> io::Result<RxRing> {
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
/// [`MIN_SOCKET_BUFFER`]..=[`MAX_SOCKET_BUFFER`], never shrinking one the
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
    let wanted = batch_bytes.clamp(MIN_SOCKET_BUFFER, MAX_SOCKET_BUFFER);
    // The kernel reports twice what was asked (its bookkeeping).
    if fdlink_sys::packet::recv_buffer(fd)? < 2 * wanted {
        fdlink_sys::packet::set_recv_buffer(fd, wanted)?;
    }
    Ok(())
}

/// Grows a socket channel's send buffer (a socketpair's end) to hold a
/// batch of the largest frames, within
/// [`MIN_SOCKET_BUFFER`]..=[`MAX_SOCKET_BUFFER`], never shrinking one the
/// caller set larger. On a socketpair the sender's buffer is all the link
/// holds: the default (about 200 KiB, three 64 KiB super-frames) fills in a
/// burst, and a stack on each end then waits in its sends for the other to
/// read — both lose packets when the wait runs out, and two TCP stacks over
/// such a link back off for seconds. Unprivileged, the kernel caps the size
/// at `net.core.wmem_max`.
fn grow_send_buffer(fd: std::os::fd::BorrowedFd<'_>, batch_bytes: usize) -> io::Result<()> {
    let wanted = batch_bytes.clamp(MIN_SOCKET_BUFFER, MAX_SOCKET_BUFFER);
    if fdlink_sys::packet::send_buffer(fd)? < 2 * wanted {
        fdlink_sys::packet::set_send_buffer(fd, wanted)?;
    }
    Ok(())
}

/// The least buffer a socket channel gets (receive for `AF_PACKET`, send
/// for the others).
const MIN_SOCKET_BUFFER: usize = 1 << 20;
/// The most buffer a socket channel asks for.
const MAX_SOCKET_BUFFER: usize = 16 << 20;

/// Puts every AF_PACKET socket of the endpoint in one hash fanout group
/// when there are several, unless the first is in a group already.
pub(crate) fn join_fanout_group(channels: &[Channel]) -> Result<(), OptionsError> {
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

/// Refuses a ring with virtio-net headers on a kernel whose rings carry
/// none (`kernel_writes_them`: the probe's answer; `None`, it could not
/// tell, lets each frame say for itself and frames without one be dropped
/// and counted): frames would otherwise come with a zeroed header.
fn check_ring_vnet_header(
    channel: usize,
    kernel_writes_them: Option<bool>,
) -> Result<(), OptionsError> {
    match kernel_writes_them {
        Some(false) => Err(OptionsError::RingWithoutVirtioHeader { channel }),
        _ => Ok(()),
    }
}

/// Refuses a descriptor whose device disagrees with the options: a TUN/TAP
/// or `AF_PACKET` socket whose virtio-net header setting is not the one the
/// options give (every frame would be misread and dropped), or a TUN with
/// Ethernet framing, a TAP without. Asks the kernel (`TUNGETIFF`,
/// `PACKET_VNET_HDR`); a character device that is no TUN/TAP is left be.
fn check_device(
    channel: usize,
    fd: std::os::fd::BorrowedFd<'_>,
    kind: FdKind,
    vnet_len: usize,
    ethernet: bool,
) -> Result<(), OptionsError> {
    let device_vnet_len = match kind {
        FdKind::CharDevice => match fdlink_sys::tun::tun_info(fd) {
            Ok(info) => {
                let device_ethernet = info.kind == fdlink_sys::tun::TunKind::Tap;
                if device_ethernet != ethernet {
                    return Err(OptionsError::FramingMismatch {
                        channel,
                        device: if device_ethernet { "a TAP" } else { "a TUN" },
                    });
                }
                info.vnet_hdr_len
            }
            Err(_) => return Ok(()),
        },
        FdKind::Socket {
            domain: Domain::Packet,
            ..
        } => match fdlink_sys::packet::vnet_hdr_enabled(fd) {
            Ok(true) => crate::link::VNET_HDR_LEN,
            Ok(false) => 0,
            Err(source) => return Err(OptionsError::Descriptor { channel, source }),
        },
        _ => return Ok(()),
    };
    if device_vnet_len != vnet_len {
        return Err(OptionsError::VnetHeaderMismatch {
            channel,
            device: device_vnet_len,
            options: vnet_len,
        });
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

/// [`crate::Endpoint::set_mtu`]: the new MTU, and the receive buffer size
/// that follows it (unless the caller fixed it).
pub(crate) fn set_mtu(shared: &Shared, mtu: u32) -> Result<(), OptionsError> {
    if mtu == 0 || mtu as usize > MAX_IP_PACKET {
        return Err(OptionsError::InvalidMtu(mtu));
    }
    let config = shared.config();
    let headers = config.vnet_len + config.link_len();
    let max_frame = if config.fixed_max_frame {
        let size = config.max_frame();
        if size < headers + mtu as usize {
            return Err(OptionsError::ReceiveBufferTooSmall {
                size,
                needed: headers + mtu as usize,
            });
        }
        size
    } else {
        max_frame_for(shared.channels(), mtu, config.vnet_len, config.link_len())
    };
    config.set_mtu(mtu, max_frame);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_whose_rings_carry_no_virtio_header_is_refused_at_set_up() {
        assert!(matches!(
            check_ring_vnet_header(3, Some(false)),
            Err(OptionsError::RingWithoutVirtioHeader { channel: 3 })
        ));
        assert!(check_ring_vnet_header(0, Some(true)).is_ok());
        // Cannot tell: each frame says for itself.
        assert!(check_ring_vnet_header(0, None).is_ok());
    }
}
