//! Shared helpers for fdlink integration tests and benchmarks: a smoltcp
//! echo server and its kernel clients ([`echo`]), namespaces
//! and kernel peers ([`netns`], [`veth`], [`tun`]), hand-built packets
//! ([`packet`]), a hand-played TCP receiver ([`tcp_peer`]), fault
//! injection ([`faults`]), `/proc` queries ([`procfs`]) and a test lock
//! ([`serial`]).
#![forbid(unsafe_code)]
pub mod echo;
pub mod faults;
pub mod netns;
pub mod packet;
pub mod procfs;
pub mod serial;
pub mod tcp_peer;
pub mod tun;
pub mod veth;
