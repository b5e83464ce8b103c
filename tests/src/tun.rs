//! TUN/TAP devices in a [`Netns`], and raw I/O on their descriptors with a
//! virtio-net header.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use fdlink_gso::virtio::{self, VirtioNetHdr};
use fdlink_sys::tun::{OffloadFlags, TunConfig, TunDevice, set_offload};

use crate::netns::{Netns, wait_readable};

/// A read buffer's size for any TUN packet plus its virtio header.
pub const BUF_LEN: usize = 65536 + virtio::HDR_LEN + 64;

/// Opens `config` inside `ns` (panicking with `what` if that fails) and,
/// with nonempty `offloads`, turns them on with [`require_offloads`].
pub fn open_in(ns: &Netns, config: TunConfig, offloads: OffloadFlags, what: &str) -> TunDevice {
    let dev = ns
        .run(|| config.open())
        .expect("enter netns")
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    if !offloads.is_empty() {
        require_offloads(dev.fds()[0].as_fd(), offloads);
    }
    dev
}

/// `TUNSETOFFLOAD(want)` on `fd`; panics unless the kernel took all of it.
pub fn require_offloads(fd: BorrowedFd<'_>, want: OffloadFlags) {
    let got = set_offload(fd, want).expect("TUNSETOFFLOAD");
    assert!(got.contains(want), "offloads {got:?} lack {want:?}");
}

/// The 10-byte encoding of `hdr`.
pub fn encode_hdr(hdr: &VirtioNetHdr) -> [u8; virtio::HDR_LEN] {
    let mut out = [0u8; virtio::HDR_LEN];
    hdr.encode(&mut out).expect("encode virtio header");
    out
}

/// A plain header: no offload, checksum complete.
pub fn plain_hdr() -> VirtioNetHdr {
    VirtioNetHdr::default()
}

/// Writes one packet with its virtio header to a TUN descriptor; a short
/// write fails the test.
pub fn tun_write(fd: BorrowedFd<'_>, hdr: &VirtioNetHdr, packet: &[u8]) -> io::Result<()> {
    let h = encode_hdr(hdr);
    let n = fdlink_sys::io::writev(fd, &[IoSlice::new(&h), IoSlice::new(packet)])?;
    assert_eq!(n, h.len() + packet.len(), "short write to the TUN");
    Ok(())
}

/// Reads packets from `fd` (without a virtio header) for which `accept`
/// holds until `count` were read or `timeout` passed, then keeps reading for
/// `linger` to catch extra ones.
pub fn collect(
    fd: BorrowedFd<'_>,
    count: usize,
    timeout: Duration,
    linger: Duration,
    mut accept: impl FnMut(&[u8]) -> bool,
) -> io::Result<Vec<Vec<u8>>> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = vec![0u8; BUF_LEN];
    let mut linger_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let end = linger_until.unwrap_or(deadline);
        if now >= end {
            return Ok(out);
        }
        if !wait_readable(fd, end - now)? {
            continue;
        }
        let n = fdlink_sys::io::read(fd, &mut buf)?;
        if accept(&buf[..n]) {
            out.push(buf[..n].to_vec());
            if out.len() >= count && linger_until.is_none() {
                linger_until = Some(Instant::now() + linger);
            }
        }
    }
}
