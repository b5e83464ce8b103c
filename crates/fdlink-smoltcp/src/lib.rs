//! fdlink-smoltcp: a batched, offloading smoltcp `phy::Device` over fdlink
//! endpoints.
//!
//! [`FdlinkDevice`] wraps a core [`fdlink_core::Endpoint`] in fdlink-gso's
//! offloading endpoint:
//!
//! - medium `Ip` for TUN and IP socketpairs, `Ethernet` for TAP, AF_PACKET
//!   and Ethernet-framed socketpairs; the MTU follows smoltcp's rule (an
//!   Ethernet MTU includes the 14-byte header);
//! - receive serves packets from one burst of reads; transmit tokens fill
//!   pooled buffers flushed as one batch per poll;
//! - smoltcp's segmentation offload is advertised, so it hands over 64 KiB
//!   TCP segments, which leave whole with a virtio header (TUN/TAP with
//!   `IFF_VNET_HDR`, or a socketpair whose both ends use virtio headers) or
//!   are segmented in software; received kernel TSO packets are handed to
//!   smoltcp whole;
//! - checksums are handled per packet by the link (completed, verified or
//!   vouched for by the kernel), and smoltcp is told not to verify TCP's;
//! - [`poll`] sleeps on the descriptors until input or smoltcp's next
//!   deadline, after checking for input for a bounded 50 µs without
//!   sleeping ([`DeviceConfig::busy_poll`]; zero turns it off);
//! - [`FdlinkDevice::per_queue`] gives one device per queue for one stack
//!   per core.
//!
//! # Opening a device
//!
//! One call from a device's name to a smoltcp device, with every offload
//! the kernel grants (see [`fdlink_core::Link`]); the `tun_offload` example
//! serves TCP echo this way in under 40 lines:
//!
//! ```no_run
//! use fdlink_core::{Link, Offload};
//! use fdlink_smoltcp::{DeviceConfig, FdlinkDevice};
//!
//! let device = FdlinkDevice::open(Link::tun("tun0").offload(Offload::Auto), DeviceConfig::default())?;
//! let per_core = FdlinkDevice::open_per_queue(Link::tun("tun1").queues(2), DeviceConfig::default())?;
//! # Ok::<(), fdlink_core::OpenError>(())
//! ```
//!
//! # Example
//!
//! ```
//! use fdlink_core::Link;
//! use fdlink_smoltcp::{DeviceConfig, FdlinkDevice};
//! use fdlink_sys::fd::{socketpair, SocketType};
//! use smoltcp::iface::{Config, Interface, SocketSet};
//! use smoltcp::wire::{HardwareAddress, IpCidr};
//!
//! let (a, _b) = socketpair(SocketType::SeqPacket)?;
//! let mut device = FdlinkDevice::open(Link::socket(a).mtu(1500), DeviceConfig::default())?;
//! let mut iface = Interface::new(
//!     Config::new(HardwareAddress::Ip),
//!     &mut device,
//!     smoltcp::time::Instant::now(),
//! );
//! iface.update_ip_addrs(|a| a.push(IpCidr::new(smoltcp::wire::IpAddress::v4(10, 0, 0, 1), 24)).unwrap());
//! let mut sockets = SocketSet::new(vec![]);
//! fdlink_smoltcp::poll(&mut iface, &mut device, &mut sockets, std::time::Duration::ZERO)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod device;
pub mod netstack;
mod poll;

pub use device::{DEFAULT_BUSY_POLL, DeviceConfig, FdlinkDevice, RxToken, TxToken};
pub use poll::{MAX_SLEEP, poll};
