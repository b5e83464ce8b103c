//! fdlink-sys (in progress).
#![warn(missing_docs)]

pub mod packet;
pub mod ring;
pub mod tun;
