//! fdlink benchmarks (see `cargo xtask bench`).
//!
//! Every figure is measured together with its baseline in the same run and
//! reported as a ratio, so that figures from different machines compare:
//!
//! - [`micro`]: Internet checksum throughput next to `memcpy` of the same
//!   buffer, and the cost of software segmentation and receive coalescing
//!   of a 64 KiB TCP super-packet next to copying 64 KiB;
//! - [`pps`]: packets/s through a socketpair, endpoint dispatch modes
//!   against a bare `recvmmsg` loop;
//! - [`afpacket`] (root): `AF_PACKET` on a veth fed by a kernel UDP flood:
//!   per-packet, recvmmsg, mmap ring and a fanout group against bare `recvmmsg`;
//! - [`tcp`] (root): TCP bulk between the kernel and smoltcp over a TUN,
//!   fdlink with and without offloads against smoltcp's `TunTapInterface`;
//! - [`ceiling`] (root): an ACK-only responder on a TSO TUN and
//!   kernel-to-kernel TCP over veth;
//! - [`netstack`] (root): fdlink's netstack — echo throughput,
//!   connections/s, memory per idle connection — against netstack-smoltcp,
//!   ipstack and fdlink's own `echo` engine ([`stacks`]).
//!
//! The `bench` binary ([`cli`]) runs them all and writes `report.md` and
//! `report.svg`.
#![forbid(unsafe_code)]

pub mod afpacket;
pub mod ceiling;
pub mod cli;
pub mod kernel;
pub mod measure;
pub mod micro;
pub mod netstack;
pub mod pps;
pub mod report;
pub mod stacks;
pub mod tcp;

pub use micro::{MicroResult, run_micro};
