//! Packets per second through a `SOCK_SEQPACKET` socketpair, no root needed.
//!
//! A sender thread writes IPv4-looking packets with `sendmmsg` batches as
//! fast as it can; the receiver pulls them three ways, side by side:
//!
//! - `bare`: a plain `recvmmsg` loop over [`fdlink_sys::mmsg::RecvMmsg`],
//!   without the endpoint — the baseline;
//! - `readv`: an [`Endpoint`] with [`DispatchMode::Readv`] (one `recvmsg`
//!   per packet), pulled with [`Endpoint::recv_batch`];
//! - `recvmmsg`: the same endpoint with [`DispatchMode::Recvmmsg`].
//!
//! For 64- and 1500-byte packets it prints one line per measurement, then
//! the ratio of the endpoint's `recvmmsg` mode to the bare loop:
//!
//! ```text
//! size=64 mode=bare pps=1234567
//! size=64 mode=readv pps=987654
//! size=64 mode=recvmmsg pps=1200000
//! size=64 recvmmsg/bare=0.97
//! ```
//!
//! It fails (non-zero exit) when a receiver got nothing or the endpoint
//! dropped a packet. Sender and receiver share the machine's cores, so
//! expect noise; the modes are interleaved so drift hits them alike.
//!
//! Usage: `socketpair_pps [--seconds S] [--batch N]` — `S` (default 3) is
//! the total run time, split evenly over the measurements.

use std::os::fd::{AsFd, OwnedFd};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fdlink_core::{DispatchMode, Endpoint, MAX_BATCH_SIZE, Options};
use fdlink_sys::fd::{SocketType, socketpair};
use fdlink_sys::io::RecvInfo;
use fdlink_sys::mmsg::{RecvMmsg, SendMmsg};
use fdlink_sys::wait::{self, Interest};

/// Packet sizes measured, in bytes (whole IPv4 packets).
const SIZES: [usize; 2] = [64, 1500];
/// The endpoint's MTU, and so the largest packet the bare loop takes too.
const MTU: usize = 1500;
/// Longest single wait, so a stop request or the deadline is noticed soon.
const WAIT_SLICE: Duration = Duration::from_millis(10);

const USAGE: &str = "usage: socketpair_pps [--seconds S] [--batch N]";

/// How the receiver pulls packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `recvmmsg` without the endpoint.
    Bare,
    /// The endpoint in one of its dispatch modes.
    Endpoint(DispatchMode),
}

impl Mode {
    /// Interleaved in this order for each size.
    const ALL: [Mode; 3] = [
        Mode::Bare,
        Mode::Endpoint(DispatchMode::Readv),
        Mode::Endpoint(DispatchMode::Recvmmsg),
    ];

    fn name(self) -> String {
        match self {
            Mode::Bare => "bare".to_owned(),
            Mode::Endpoint(dispatch) => dispatch.to_string(),
        }
    }
}

#[derive(Debug)]
struct Args {
    seconds: f64,
    batch: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seconds: 3.0,
        batch: 64,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value\n{USAGE}"));
        match flag.as_str() {
            "--seconds" => {
                let v = value()?;
                args.seconds = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0)
                    .ok_or(format!("--seconds: {v:?} is not a positive number"))?;
            }
            "--batch" => {
                let v = value()?;
                args.batch = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_BATCH_SIZE).contains(n))
                    .ok_or(format!("--batch: {v:?} is not in 1..={MAX_BATCH_SIZE}"))?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(args)
}

/// A minimal IPv4 header (UDP, 10.0.0.1 -> 10.0.0.2, checksum right)
/// followed by zeros, `size` bytes in all.
fn ipv4_packet(size: usize) -> Vec<u8> {
    let mut p = vec![0u8; size];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(size as u16).to_be_bytes());
    p[8] = 64; // TTL
    p[9] = 17; // UDP
    p[12..16].copy_from_slice(&[10, 0, 0, 1]);
    p[16..20].copy_from_slice(&[10, 0, 0, 2]);
    let sum = p[..20]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    let folded = (folded & 0xffff) + (folded >> 16);
    p[10..12].copy_from_slice(&(!(folded as u16)).to_be_bytes());
    p
}

/// The sending thread; stopped and joined when finished or dropped.
struct Sender {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<std::io::Result<u64>>>,
}

impl Sender {
    /// Starts writing `size`-byte packets on `fd` in batches of `batch`.
    fn start(fd: OwnedFd, size: usize, batch: usize) -> Sender {
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let packet = ipv4_packet(size);
            let mut tx = SendMmsg::new(batch);
            let mut sent = 0u64;
            while !thread_stop.load(Ordering::Relaxed) {
                let packets = std::iter::repeat_n([&packet[..], &[][..], &[][..]], batch);
                match tx.send(fd.as_fd(), packets) {
                    Ok(n) => sent += n as u64,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        wait::wait(fd.as_fd(), Interest::Write, None, Some(WAIT_SLICE))?;
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(sent)
        });
        Sender {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops the thread, joins it and returns how many packets it sent.
    fn finish(mut self) -> Result<u64, String> {
        self.stop.store(true, Ordering::Relaxed);
        let handle = self.handle.take().expect("joined once");
        match handle.join() {
            Ok(Ok(sent)) => Ok(sent),
            Ok(Err(e)) => Err(format!("sender failed: {e}")),
            Err(_) => Err("sender panicked".to_owned()),
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Receives for `duration` and returns packets per second.
fn measure(mode: Mode, size: usize, batch: usize, duration: Duration) -> Result<f64, String> {
    let (ours, peer) = socketpair(SocketType::SeqPacket).map_err(|e| format!("socketpair: {e}"))?;
    match mode {
        Mode::Bare => {
            fdlink_sys::fd::set_nonblocking(ours.as_fd()).map_err(|e| e.to_string())?;
            let sender = Sender::start(peer, size, batch);
            let (received, elapsed) = receive_bare(&ours, batch, duration)?;
            sender.finish()?;
            rate(mode, size, received, elapsed)
        }
        Mode::Endpoint(dispatch) => {
            let endpoint = Endpoint::new(
                Options::new()
                    .fd(ours)
                    .mtu(MTU as u32)
                    .dispatch(dispatch)
                    .batch_size(batch),
            )
            .map_err(|e| format!("endpoint: {e}"))?;
            let sender = Sender::start(peer, size, batch);
            let (received, elapsed) = receive_endpoint(&endpoint, duration)?;
            sender.finish()?;
            let stats = endpoint.stats();
            if stats.rx_packets != stats.frames_read || stats.drops.inbound() != 0 {
                return Err(format!(
                    "size={size} mode={}: the endpoint dropped packets: {stats}",
                    mode.name()
                ));
            }
            if stats.rx_packets != received {
                return Err(format!(
                    "size={size} mode={}: received {received} but the endpoint counted {}",
                    mode.name(),
                    stats.rx_packets
                ));
            }
            rate(mode, size, received, elapsed)
        }
    }
}

fn rate(mode: Mode, size: usize, received: u64, elapsed: Duration) -> Result<f64, String> {
    if received == 0 {
        return Err(format!(
            "size={size} mode={}: no packet received",
            mode.name()
        ));
    }
    Ok(received as f64 / elapsed.as_secs_f64())
}

/// The baseline: `recvmmsg` straight into buffers, waiting when empty.
fn receive_bare(fd: &OwnedFd, batch: usize, duration: Duration) -> Result<(u64, Duration), String> {
    let mut rx = RecvMmsg::new(batch);
    // Sized as the endpoint sizes its buffers: MTU plus one byte of slack.
    let mut bufs = vec![vec![0u8; MTU + 1]; batch];
    let mut infos = vec![RecvInfo::default(); batch];
    let mut received = 0u64;
    let start = Instant::now();
    let deadline = start + duration;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok((received, now - start));
        }
        match rx.recv(fd.as_fd(), &mut bufs, &mut infos) {
            Ok(n) if n > 0 && infos[0].len == 0 => return Err("bare: peer closed".to_owned()),
            Ok(n) => received += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let left = (deadline - now).min(WAIT_SLICE);
                wait::wait(fd.as_fd(), Interest::Read, None, Some(left))
                    .map_err(|e| format!("bare: wait: {e}"))?;
            }
            Err(e) => return Err(format!("bare: recvmmsg: {e}")),
        }
    }
}

/// Pulls batches from the endpoint, waiting when empty.
fn receive_endpoint(endpoint: &Endpoint, duration: Duration) -> Result<(u64, Duration), String> {
    let mut batch = endpoint.new_batch();
    let mut received = 0u64;
    let start = Instant::now();
    let deadline = start + duration;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok((received, now - start));
        }
        match endpoint.recv_batch(&mut batch) {
            Ok(0) => {
                let left = (deadline - now).min(WAIT_SLICE);
                endpoint
                    .wait_readable(Some(left))
                    .map_err(|e| format!("endpoint: wait: {e}"))?;
            }
            Ok(n) => received += n as u64,
            Err(closed) => return Err(format!("endpoint: {closed}")),
        }
    }
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let measurements = SIZES.len() * Mode::ALL.len();
    let each = Duration::from_secs_f64(args.seconds / measurements as f64);
    println!(
        "# SOCK_SEQPACKET socketpair, batch={}, {:.2} s per measurement",
        args.batch,
        each.as_secs_f64()
    );
    for size in SIZES {
        let mut bare = 0.0;
        let mut recvmmsg = 0.0;
        for mode in Mode::ALL {
            let pps = measure(mode, size, args.batch, each)?;
            println!("size={size} mode={} pps={pps:.0}", mode.name());
            match mode {
                Mode::Bare => bare = pps,
                Mode::Endpoint(DispatchMode::Recvmmsg) => recvmmsg = pps,
                Mode::Endpoint(_) => {}
            }
        }
        println!("size={size} recvmmsg/bare={:.2}", recvmmsg / bare);
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("socketpair_pps: {why}");
            ExitCode::FAILURE
        }
    }
}
