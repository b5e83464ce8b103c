//! Soak: 10,000 attach/detach cycles, and 2,000 endpoints built and
//! dropped, leave descriptors (`/proc/self/fd`) and memory (`VmRSS`) flat.
//! Alone in its own binary so no other test opens descriptors meanwhile;
//! one test at a time.

use std::sync::Arc;
use std::sync::Mutex;

use fdlink_core::{Batch, Endpoint, Options};
use fdlink_sys::fd::{SocketType, socketpair};
use fdlink_tests::faults::{memory_kib, under_valgrind};
use fdlink_tests::netns::open_fd_count;

/// One test at a time: descriptor counts are process-wide.
static SERIAL: Mutex<()> = Mutex::new(());

fn report(what: &str, fds: (usize, usize), rss: (u64, u64)) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr().lock(),
        "soak-report {what}: fds {} -> {}, VmRSS {} -> {} KiB",
        fds.0,
        fds.1,
        rss.0,
        rss.1
    );
}

#[test]
fn ten_thousand_attach_detach_cycles_stay_flat() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (a, _peer) = socketpair(SocketType::SeqPacket).unwrap();
    let e = Endpoint::new(Options::new().fd(a).batch_size(8)).unwrap();
    let dispatcher = Arc::new(|_q: usize, _b: &mut Batch| {});
    // Warm up: thread stacks, allocator arenas.
    for _ in 0..200 {
        e.attach(dispatcher.clone()).unwrap();
        e.detach();
    }
    let fds = open_fd_count().unwrap();
    let (rss, _) = memory_kib().unwrap();
    for _ in 0..10_000 {
        e.attach(dispatcher.clone()).unwrap();
        e.detach();
    }
    let fds_after = open_fd_count().unwrap();
    let (rss_after, _) = memory_kib().unwrap();
    report("attach/detach x10000", (fds, fds_after), (rss, rss_after));
    assert_eq!(fds_after, fds, "descriptors leaked");
    assert!(
        under_valgrind() || rss_after <= rss + 4096,
        "VmRSS grew from {rss} to {rss_after} KiB over 10,000 cycles"
    );
}

#[test]
fn endpoints_built_and_dropped_stay_flat() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dispatcher = Arc::new(|_q: usize, _b: &mut Batch| {});
    let cycle = || {
        let (a, peer) = socketpair(SocketType::SeqPacket).unwrap();
        let e = Endpoint::new(Options::new().fd(a).batch_size(8)).unwrap();
        e.attach(dispatcher.clone()).unwrap();
        drop(peer);
        e.wait();
        drop(e);
    };
    for _ in 0..100 {
        cycle();
    }
    let fds = open_fd_count().unwrap();
    let (rss, _) = memory_kib().unwrap();
    for _ in 0..2_000 {
        cycle();
    }
    let fds_after = open_fd_count().unwrap();
    let (rss_after, _) = memory_kib().unwrap();
    report(
        "endpoint build/attach/close/drop x2000",
        (fds, fds_after),
        (rss, rss_after),
    );
    assert_eq!(fds_after, fds, "descriptors leaked");
    assert!(
        under_valgrind() || rss_after <= rss + 4096,
        "VmRSS grew from {rss} to {rss_after} KiB"
    );
}
