//! What `/proc/self` says about sockets and memory mappings.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;

/// The inode of the socket (or any file) behind `fd`.
pub fn inode(fd: BorrowedFd<'_>) -> u64 {
    std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .unwrap()
        .ino()
}

/// How many lines of /proc/self/maps map the socket with inode `ino`.
pub fn socket_mappings(ino: u64) -> usize {
    let needle = format!("socket:[{ino}]");
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.ends_with(&needle))
        .count()
}

/// The kernel's page size, without `unsafe`: /proc/self/smaps reports that
/// of the first mapping as "KernelPageSize: 4 kB".
pub fn page_size() -> usize {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let kb: usize = smaps
        .lines()
        .find_map(|l| l.strip_prefix("KernelPageSize:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("KernelPageSize in smaps");
    kb * 1024
}
