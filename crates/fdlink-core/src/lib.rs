//! fdlink-core: a link endpoint over boundary-preserving packet descriptors.
//!
//! One read returns one packet on a TUN/TAP queue, an `AF_PACKET` socket,
//! one end of a `SOCK_SEQPACKET`/`SOCK_DGRAM` socketpair — or any
//! [`PacketIo`] object (the Wintun case). An [`Endpoint`] turns a set of
//! such channels into a link for a userspace TCP/IP stack:
//!
//! - receive by pulling batches ([`Endpoint::recv_batch`]) or by attaching
//!   a [`Dispatcher`] that reader threads hand batches to;
//! - send batches ([`Endpoint::send`]) with `sendmmsg` on sockets, on the
//!   channel each packet's flow hash picks;
//! - Ethernet framing, inbound checks (a bad frame is dropped and counted,
//!   the reader carries on), statistics with drops by [`DropReason`], a
//!   closed callback run exactly once with its [`CloseReason`].
//!
//! The core knows nothing of any stack; `fdlink-gso` adds offloads and
//! `fdlink-smoltcp` a smoltcp device.
//!
//! # Opening a link
//!
//! [`Link`] opens one in a single call, consistent by construction: the
//! device opened or attached, its offloads set and read back, its virtio
//! header length, MTU and MAC taken from the device itself.
//!
//! ```no_run
//! use fdlink_core::{DispatchMode, Link, Offload};
//!
//! let tun = Link::tun("tun0").queues(4).offload(Offload::Auto).open()?;
//! let nic = Link::af_packet("eth0").queues(2).mode(DispatchMode::Mmap).open()?;
//! # Ok::<(), fdlink_core::OpenError>(())
//! ```
//!
//! The long form, [`Endpoint::new`] over [`Options`], takes descriptors
//! you opened yourself; it asks the kernel what each one carries and
//! refuses options that disagree.
//!
//! # Example
//!
//! ```
//! use std::os::fd::AsFd;
//! use fdlink_core::{Link, OutPacket};
//! use fdlink_sys::fd::{socketpair, SocketType};
//!
//! let (ours, peer) = socketpair(SocketType::SeqPacket)?;
//! let endpoint = Link::socket(ours).mtu(1500).open()?;
//!
//! // The peer writes an IPv4 packet; we pull it.
//! let mut packet = [0u8; 28];
//! packet[0] = 0x45;
//! fdlink_sys::io::write(peer.as_fd(), &packet)?;
//! let mut batch = endpoint.new_batch();
//! assert_eq!(endpoint.recv_batch(&mut batch)?, 1);
//! assert_eq!(batch.get(0).unwrap().network(), &packet);
//!
//! // And send one back.
//! assert_eq!(endpoint.send(&[OutPacket::ip(&packet)]).sent, 1);
//! assert_eq!(endpoint.stats().tx_packets, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod batch;
mod caps;
mod channel;
mod closure;
mod dispatch;
mod endpoint;
mod follow;
pub mod link;
mod open;
mod options;
mod packet_io;
mod receive;
mod send;
mod setup;
mod shared;
mod stats;

pub use batch::{Batch, Packet};
pub use caps::{Capabilities, DeviceOffloads};
pub use closure::{CloseReason, Closed};
pub use dispatch::Dispatcher;
pub use endpoint::Endpoint;
pub use fdlink_sys::io::RxChecksum;
pub use link::{EtherType, MacAddr};
pub use open::{Link, Offload, OpenError};
pub use options::{
    ClosedCallback, DEFAULT_BATCH_SIZE, DEFAULT_GSO_MAX_SIZE, DEFAULT_MTU, DEFAULT_SEND_TIMEOUT,
    DispatchMode, MAX_BATCH_SIZE, Options, OptionsError,
};
pub use packet_io::{MemoryPacketIo, PacketIo, memory_pair};
pub use send::{OutPacket, SendOutcome};
pub use stats::{DropCounts, DropReason, StatsSnapshot};
