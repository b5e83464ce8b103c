//! What `/proc/self` says about sockets and memory mappings.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

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

/// The calling thread's CPU time so far: `/proc/thread-self/schedstat`
/// (nanoseconds on a CPU), or `utime + stime` of `/proc/thread-self/stat`
/// (clock ticks, 100 per second) where schedstat is missing.
pub fn thread_cpu_time() -> Duration {
    if let Ok(s) = std::fs::read_to_string("/proc/thread-self/schedstat")
        && let Some(ns) = s.split_whitespace().next().and_then(|v| v.parse().ok())
    {
        return Duration::from_nanos(ns);
    }
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("/proc/thread-self/stat");
    // The command name may hold spaces and parentheses: fields are counted
    // from after its closing parenthesis (field 3, the state, comes first).
    let rest = &stat[stat.rfind(')').expect("stat format") + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}
