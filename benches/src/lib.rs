//! fdlink benchmarks (see `cargo xtask bench`).
//!
//! [`micro`] holds the micro benchmarks: Internet checksum throughput next to
//! `memcpy` of the same buffer, and the cost of software segmentation and
//! receive coalescing of a 64 KiB TCP super-packet next to copying 64 KiB.
//! Every figure is measured together with its baseline in the same run and
//! reported as a ratio, so that figures from different machines compare.
#![forbid(unsafe_code)]

pub mod micro;

pub use micro::{MicroResult, run_micro};
