//! A storm of signals while readers and senders wait: every `ppoll` the
//! endpoint makes is interrupted (EINTR) over and over, and nothing may be
//! lost, closed or miscounted because of it.
//!
//! The handler comes from `signal-hook`, whose safe registration is the
//! only way to install one without `unsafe` in this crate. Non-blocking
//! reads and writes never sleep, so the waits are where EINTR lands.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fdlink_core::{Batch, CloseReason, Endpoint, Options, OutPacket};
use fdlink_sys::fd::{SocketType, socketpair};
use fdlink_tests::packet::tagged_ipv4;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const PACKETS: usize = 20_000;

/// Sends SIGUSR1 to this process every 50 µs until dropped; counts the
/// handler's runs through the flag it sets.
struct Storm {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
    seen: Arc<AtomicBool>,
}

impl Storm {
    fn start() -> Storm {
        let seen = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGUSR1, Arc::clone(&seen))
            .expect("install SIGUSR1 handler");
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let (s, n) = (Arc::clone(&stop), Arc::clone(&sent));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                kill(Pid::this(), Signal::SIGUSR1).expect("kill");
                n.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(50));
            }
        });
        Storm {
            stop,
            sent,
            thread: Some(thread),
            seen,
        }
    }
}

impl Drop for Storm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn push_readers_and_blocked_senders_survive_a_signal_storm() {
    let storm = Storm::start();
    let (ours, peer) = socketpair(SocketType::SeqPacket).unwrap();
    let closes = Arc::new(Mutex::new(Vec::<CloseReason>::new()));
    let c = Arc::clone(&closes);
    let receiver = Endpoint::new(
        Options::new()
            .fd(ours)
            .on_closed(move |r| c.lock().unwrap().push(r)),
    )
    .unwrap();
    let delivered = Arc::new(AtomicUsize::new(0));
    let d = Arc::clone(&delivered);
    receiver
        .attach(Arc::new(move |_q: usize, b: &mut Batch| {
            d.fetch_add(b.len(), Ordering::SeqCst);
            // A slow consumer, so the sender's buffer fills and it waits.
            std::thread::sleep(Duration::from_micros(200));
        }))
        .unwrap();

    // The sender's waits for room (POLLOUT) are interrupted as well; its
    // send timeout is long, so nothing should be dropped.
    let sender = Endpoint::new(
        Options::new()
            .fd(peer)
            .send_timeout(Duration::from_secs(10)),
    )
    .unwrap();
    let packet = tagged_ipv4(64, 7);
    let burst: Vec<_> = (0..64).map(|_| OutPacket::ip(&packet)).collect();
    let mut sent = 0;
    let mut dropped = 0;
    while sent + dropped < PACKETS {
        let out = sender.send(&burst);
        sent += out.sent;
        dropped += out.dropped;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while delivered.load(Ordering::SeqCst) < sent {
        assert!(
            Instant::now() < deadline,
            "delivered {} of {sent}",
            delivered.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    receiver.detach();
    let signals = storm.sent.load(Ordering::Relaxed);
    assert!(storm.seen.load(Ordering::Relaxed), "no signal was handled");
    drop(storm);

    assert_eq!(dropped, 0, "a long send timeout rides out every EINTR");
    assert_eq!(delivered.load(Ordering::SeqCst), sent);
    let s = receiver.stats();
    assert_eq!(s.frames_read, s.rx_packets + s.drops.inbound());
    assert_eq!(s.rx_packets as usize, sent);
    assert!(closes.lock().unwrap().is_empty(), "EINTR closed the link");
    assert!(
        signals > 100,
        "the storm sent only {signals} signals; the test proves nothing"
    );
    assert_eq!(sender.stats().tx_packets as usize, sent);
}
