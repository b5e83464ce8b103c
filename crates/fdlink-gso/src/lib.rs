//! Offloads for fdlink link endpoints, without any I/O: Internet checksums,
//! `virtio_net_hdr` encoding and validation, software segmentation of TCP and
//! UDP super-packets (TSO/USO), checksum completion and receive coalescing
//! (GRO).
//!
//! Modules, one concept each:
//! - [`checksum`]: RFC 1071 sums with a wide accumulator, RFC 1624
//!   incremental updates, IPv4/IPv6 pseudo-header sums;
//! - [`virtio`]: the 10- and 12-byte `virtio_net_hdr`, validated against the
//!   packet it describes;
//! - [`wire`]: checked views of IPv4 (options), IPv6 (extension headers),
//!   TCP and UDP headers, and [`wire::PacketLayout`];
//! - [`segment`]: software GSO into a reusable [`segment::SegmentBuf`],
//!   matching what Linux produces;
//! - [`complete`]: completing `NEEDS_CSUM` checksums and verifying transport
//!   checksums;
//! - [`gro`]: coalescing consecutive segments into super-packets with the
//!   virtio header the TUN driver expects, the inverse of [`segment`];
//! - [`offload`]: the offloading endpoint over a core endpoint, opened in
//!   one call with [`offload::OffloadEndpoint::open`] from a
//!   [`fdlink_core::Link`] (host offloads for what the device took,
//!   software for the rest).
//!
//! Untrusted input never panics: every failure is a typed error.
//!
//! # Example
//!
//! Segment a 3000-byte TCP super-packet into 1000-byte segments, check
//! them, and coalesce them back:
//!
//! ```
//! use fdlink_gso::complete::verify_l4_checksum;
//! use fdlink_gso::gro::Coalescer;
//! use fdlink_gso::segment::{SegmentBuf, segment};
//! use fdlink_gso::virtio::gso;
//!
//! // IPv4 (20 bytes) + TCP (20 bytes, ACK|PSH) + 3000 bytes of payload.
//! let mut packet = vec![
//!     0x45, 0, 0x0b, 0xe0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
//!     0x30, 0x39, 0x00, 0x50, 0, 0, 0x03, 0xe8, 0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0,
//! ];
//! packet.extend((0..3000u32).map(|i| i as u8));
//!
//! let mut segments = SegmentBuf::new();
//! let n = segment(&packet, 0, 1000, &mut segments)?;
//! assert_eq!(n, 3);
//! for seg in segments.iter() {
//!     assert_eq!(seg.len(), 1040);
//!     assert!(verify_l4_checksum(seg));
//! }
//!
//! let mut gro = Coalescer::new();
//! for seg in segments.iter() {
//!     gro.push(seg);
//! }
//! gro.flush();
//! let (hdr, merged) = gro.get(0).unwrap();
//! assert_eq!(gro.len(), 1);
//! assert_eq!((hdr.gso_type, hdr.gso_size, hdr.csum_start), (gso::TCPV4, 1000, 20));
//! assert_eq!(merged[40..], packet[40..]);
//! # Ok::<(), fdlink_gso::segment::SegmentError>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod checksum;
pub mod complete;
pub mod gro;
pub mod offload;
pub mod segment;
pub mod virtio;
pub mod wire;
