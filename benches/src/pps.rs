//! Scenario 1: packets/s through a `SOCK_SEQPACKET` socketpair. A sender
//! thread writes with `sendmmsg`; the receiver pulls with a bare
//! `recvmmsg` loop (the baseline) or through an [`Endpoint`] in per-packet or
//! recvmmsg dispatch. No privileges needed.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use fdlink_core::{DispatchMode, Endpoint, Options};
use fdlink_sys::fd::{SocketType, socketpair};
use fdlink_sys::io::RecvInfo;
use fdlink_sys::mmsg::{RecvMmsg, SendMmsg};
use fdlink_sys::wait::{self, Interest};

use crate::measure::{Meter, Plan, Sample, Summary, interleaved};
use crate::report::Row;

/// Packets per `recvmmsg`/`sendmmsg` and per endpoint batch.
pub const BATCH: usize = 64;
/// The largest packet (the endpoint's MTU).
const MTU: usize = 1500;
/// Longest single wait, so the deadline is noticed.
const WAIT_SLICE: Duration = Duration::from_millis(10);

/// How the receiver pulls packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receiver {
    /// `recvmmsg` straight into buffers, no endpoint.
    Bare,
    /// An endpoint pulled with `recv_batch`.
    Endpoint(DispatchMode),
}

/// An IPv4/UDP packet of `size` bytes (header checksum right).
pub fn ipv4_packet(size: usize) -> Vec<u8> {
    let mut p = vec![0u8; size];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(size as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[10, 0, 0, 1]);
    p[16..20].copy_from_slice(&[10, 0, 0, 2]);
    let c = fdlink_gso::checksum::checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p
}

/// Writes `packet` on `fd` in `sendmmsg` batches until `stop`.
pub fn flood(fd: BorrowedFd<'_>, packet: &[u8], stop: &AtomicBool) -> io::Result<u64> {
    let mut tx = SendMmsg::new(BATCH);
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        match tx.send(fd, std::iter::repeat_n([packet, &[][..], &[][..]], BATCH)) {
            Ok(n) => sent += n as u64,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait::wait(fd, Interest::Write, None, Some(WAIT_SLICE))?;
            }
            // The receiver is done and closed its end.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                ) =>
            {
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

/// Counts what a receive loop got.
#[derive(Debug, Default, Clone, Copy)]
pub struct Received {
    /// Packets.
    pub packets: u64,
    /// Receive calls that returned at least one packet.
    pub wakeups: u64,
}

impl Received {
    /// The sample for a window measured by `meter`.
    pub fn sample(self, meter: &Meter) -> Sample {
        let mut s = Sample::new(0.0, meter);
        s.value = self.packets as f64 / s.wall;
        s.per_wakeup = Some(self.packets as f64 / self.wakeups.max(1) as f64);
        s
    }
}

/// The baseline: a bare `recvmmsg` loop on `fd` (non-blocking) for
/// `window`, counted from the first packet. Returns the count and the
/// meter started at the first packet.
pub fn receive_bare(fd: BorrowedFd<'_>, window: Duration) -> Result<(Received, Meter), String> {
    let mut rx = RecvMmsg::new(BATCH);
    let mut bufs = vec![vec![0u8; 2048]; BATCH];
    let mut infos = vec![RecvInfo::default(); BATCH];
    let mut got = Received::default();
    let mut meter: Option<Meter> = None;
    let idle = Meter::start();
    loop {
        if let Some(m) = &meter {
            if m.elapsed() >= window {
                return Ok((got, *m));
            }
        } else if idle.elapsed() > Duration::from_secs(5) {
            return Err("bare: nothing received in 5 s".into());
        }
        match rx.recv(fd, &mut bufs, &mut infos) {
            Ok(n) if n > 0 => {
                if meter.is_none() {
                    meter = Some(Meter::start());
                    continue;
                }
                got.packets += n as u64;
                got.wakeups += 1;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait::wait(fd, Interest::Read, None, Some(WAIT_SLICE))
                    .map_err(|e| format!("bare: wait: {e}"))?;
            }
            Err(e) => return Err(format!("bare: recvmmsg: {e}")),
        }
    }
}

/// Pulls batches from `endpoint` (queue `queue`, or all) for `window`,
/// counted from the first batch.
pub fn receive_endpoint(
    endpoint: &Endpoint,
    queue: Option<usize>,
    window: Duration,
) -> Result<(Received, Meter), String> {
    let mut batch = endpoint.new_batch();
    let mut got = Received::default();
    let mut meter: Option<Meter> = None;
    let idle = Meter::start();
    loop {
        if let Some(m) = &meter {
            if m.elapsed() >= window {
                return Ok((got, *m));
            }
        } else if idle.elapsed() > Duration::from_secs(5) {
            return Err("endpoint: nothing received in 5 s".into());
        }
        let n = match queue {
            Some(q) => endpoint.recv_batch_from(q, &mut batch),
            None => endpoint.recv_batch(&mut batch),
        }
        .map_err(|e| format!("endpoint: {e}"))?;
        if n == 0 {
            match queue {
                Some(q) => endpoint.wait_readable_on(q, Some(WAIT_SLICE)),
                None => endpoint.wait_readable(Some(WAIT_SLICE)),
            }
            .map_err(|e| format!("endpoint: wait: {e}"))?;
        } else if meter.is_none() {
            meter = Some(Meter::start());
        } else {
            got.packets += n as u64;
            got.wakeups += 1;
        }
    }
}

/// Runs the receiver over the socket `ours` while `start_sender` floods
/// the other side.
pub fn measure_socket(
    ours: OwnedFd,
    receiver: Receiver,
    window: Duration,
    options: impl FnOnce(Options) -> Options,
    start_sender: impl FnOnce(&AtomicBool) -> io::Result<u64> + Send,
) -> Result<Sample, String> {
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        let sender = s.spawn(|| start_sender(&stop));
        let result = match receiver {
            Receiver::Bare => fdlink_sys::fd::set_nonblocking(ours.as_fd())
                .map_err(|e| e.to_string())
                .and_then(|()| receive_bare(ours.as_fd(), window)),
            Receiver::Endpoint(mode) => Endpoint::new(options(
                Options::new().fd(ours).dispatch(mode).batch_size(BATCH),
            ))
            .map_err(|e| format!("endpoint: {e}"))
            .and_then(|ep| receive_endpoint(&ep, None, window)),
        };
        stop.store(true, Ordering::Relaxed);
        let sent = sender.join().map_err(|_| "sender panicked".to_owned());
        let (got, meter) = result?;
        sent?.map_err(|e| format!("sender: {e}"))?;
        Ok(got.sample(&meter))
    })
}

/// Scenario 1: 64 B and 1500 B, per-packet and recvmmsg against bare recvmmsg.
pub fn run(plan: &Plan) -> Result<Vec<Row>, String> {
    let receivers = [
        Receiver::Bare,
        Receiver::Endpoint(DispatchMode::PerPacket),
        Receiver::Endpoint(DispatchMode::Recvmmsg),
    ];
    let mut rows = Vec::new();
    for size in [64usize, 1500] {
        let packet = ipv4_packet(size);
        let samples = interleaved(plan.runs, &receivers, |r| {
            let (ours, peer) =
                socketpair(SocketType::SeqPacket).map_err(|e| format!("socketpair: {e}"))?;
            measure_socket(
                ours,
                r,
                plan.pps_window,
                |o| o.mtu(MTU as u32),
                |stop| flood(peer.as_fd(), &packet, stop),
            )
        })?;
        let bare = Summary::of(&samples[0]);
        for (i, name) in [(1, "per-packet"), (2, "recvmmsg")] {
            rows.push(Row::measured(
                "socketpair pps",
                format!("{size} B {name}"),
                "pkt/s",
                "bare recvmmsg",
                Summary::of(&samples[i]),
                bare,
            ));
        }
    }
    Ok(rows)
}
