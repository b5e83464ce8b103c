//! A fault-injecting [`PacketIo`]: wraps any packet object and, following a
//! script or a seeded random schedule, drops, truncates or corrupts packets,
//! or fails a call with `EINTR`, `EAGAIN`, a hard error or end of file, on
//! receive and on send — also in the middle of a batch.
//!
//! Every fault injected is counted, so a test can check the endpoint's
//! statistics against what the channel really handed over:
//! [`FaultCounts::recv_ok`] frames reached the endpoint, each of which it must
//! deliver or count as dropped.
//!
//! ```
//! use std::sync::Arc;
//! use fdlink_core::{memory_pair, PacketIo};
//! use fdlink_tests::faults::{Fault, FaultyIo, Plan};
//!
//! let (a, b) = memory_pair(8);
//! let a = Arc::new(FaultyIo::new(a).recv_plan(Plan::script([Fault::Pass, Fault::Interrupted])));
//! b.send(&[&[0x45; 20]]).unwrap();
//! b.send(&[&[0x45; 20]]).unwrap();
//! let mut buf = [0u8; 64];
//! assert_eq!(a.recv(&mut buf).unwrap(), 20);
//! assert_eq!(a.recv(&mut buf).unwrap_err().kind(), std::io::ErrorKind::Interrupted);
//! assert_eq!(a.recv(&mut buf).unwrap(), 20);
//! assert_eq!(a.counts().recv_ok, 2);
//! ```

use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use fdlink_core::PacketIo;

/// What one call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The call goes through unchanged.
    Pass,
    /// Receive: one packet is lost before the caller sees it (the next one
    /// is returned instead). Send: the packet is reported sent but never
    /// arrives.
    Drop,
    /// Receive: the packet is reported longer than the buffer (only its
    /// head was copied), as a kernel reports `MSG_TRUNC`. Send: only the
    /// first half of the packet arrives.
    Truncate,
    /// One byte of the packet is flipped.
    Corrupt,
    /// The call fails with [`io::ErrorKind::Interrupted`] (`EINTR`) and
    /// does nothing.
    Interrupted,
    /// The call fails with [`io::ErrorKind::WouldBlock`] (`EAGAIN`) and
    /// does nothing.
    WouldBlock,
    /// The call fails with `EIO`. Sticky unless
    /// [`FaultyIo::transient_errors`]: every later call fails the same way.
    HardError,
    /// Receive: [`io::ErrorKind::UnexpectedEof`]; send:
    /// [`io::ErrorKind::BrokenPipe`]. Sticky unless
    /// [`FaultyIo::transient_errors`].
    Eof,
}

impl Fault {
    /// Every fault, for seeded schedules and exhaustive scripts.
    pub const ALL: [Fault; 8] = [
        Fault::Pass,
        Fault::Drop,
        Fault::Truncate,
        Fault::Corrupt,
        Fault::Interrupted,
        Fault::WouldBlock,
        Fault::HardError,
        Fault::Eof,
    ];

    /// True for the faults that end a channel (when sticky).
    pub fn is_fatal(self) -> bool {
        matches!(self, Fault::HardError | Fault::Eof)
    }
}

/// Which fault each call gets.
#[derive(Debug, Clone)]
pub enum Plan {
    /// Call `n` gets entry `n`; calls past the end pass.
    Script(Vec<Fault>),
    /// Each call draws a fault: `rates` are `(fault, per-mille)` pairs, the
    /// rest of the mille passes. Deterministic for a given seed.
    Seeded {
        /// The generator state (xorshift64*), never zero.
        state: u64,
        /// Fault rates in per-mille; their sum should stay below 1000.
        rates: Vec<(Fault, u16)>,
    },
}

impl Plan {
    /// Every call passes.
    pub fn none() -> Plan {
        Plan::Script(Vec::new())
    }

    /// An explicit script, one fault per call, then passes.
    pub fn script(faults: impl IntoIterator<Item = Fault>) -> Plan {
        Plan::Script(faults.into_iter().collect())
    }

    /// `pass` passing calls, then `fault` once, then passes: a fault in the
    /// middle of a batch.
    pub fn after(pass: usize, fault: Fault) -> Plan {
        let mut v = vec![Fault::Pass; pass];
        v.push(fault);
        Plan::Script(v)
    }

    /// A seeded random schedule.
    pub fn seeded(seed: u64, rates: &[(Fault, u16)]) -> Plan {
        Plan::Seeded {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            rates: rates.to_vec(),
        }
    }
}

/// A small deterministic generator (xorshift64*).
fn next_random(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

#[derive(Debug)]
struct PlanState {
    plan: Plan,
    calls: usize,
    /// Random state for picking corrupted bytes.
    noise: u64,
}

impl PlanState {
    fn new(plan: Plan) -> Self {
        PlanState {
            plan,
            calls: 0,
            noise: 0x1234_5678_9abc_def1,
        }
    }

    fn next(&mut self) -> (Fault, u64) {
        let n = self.calls;
        self.calls += 1;
        let noise = next_random(&mut self.noise);
        let fault = match &mut self.plan {
            Plan::Script(v) => v.get(n).copied().unwrap_or(Fault::Pass),
            Plan::Seeded { state, rates } => {
                let mut roll = (next_random(state) % 1000) as u16;
                let mut pick = Fault::Pass;
                for &(fault, rate) in rates.iter() {
                    if roll < rate {
                        pick = fault;
                        break;
                    }
                    roll -= rate;
                }
                pick
            }
        };
        (fault, noise)
    }
}

/// Counters of what the wrapper did, by direction and fault.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FaultCounts {
    /// `recv` calls.
    pub recv_calls: u64,
    /// `recv` calls that returned a frame (`Ok`): what the caller must
    /// account for.
    pub recv_ok: u64,
    /// Frames lost before the caller saw them.
    pub recv_dropped: u64,
    /// Frames reported as truncated.
    pub recv_truncated: u64,
    /// Frames returned with a flipped byte.
    pub recv_corrupted: u64,
    /// `recv` calls failed with `Interrupted`.
    pub recv_interrupted: u64,
    /// `recv` calls failed with an injected `WouldBlock`.
    pub recv_would_block: u64,
    /// `recv` calls failed with an injected (or sticky) hard error.
    pub recv_errors: u64,
    /// `recv` calls failed with an injected (or sticky) end of file.
    pub recv_eof: u64,
    /// `send` calls.
    pub send_calls: u64,
    /// Packets that reached the inner object (possibly cut or corrupted).
    pub send_ok: u64,
    /// Packets reported sent but lost.
    pub send_dropped: u64,
    /// Packets cut in half.
    pub send_truncated: u64,
    /// Packets sent with a flipped byte.
    pub send_corrupted: u64,
    /// `send` calls failed with `Interrupted`.
    pub send_interrupted: u64,
    /// `send` calls failed with an injected `WouldBlock`.
    pub send_would_block: u64,
    /// `send` calls failed with an injected (or sticky) hard error.
    pub send_errors: u64,
    /// `send` calls failed with an injected (or sticky) broken pipe.
    pub send_eof: u64,
    /// `wait_readable` calls failed with an injected error.
    pub wait_faults: u64,
}

#[derive(Debug, Default)]
struct Counters {
    recv_calls: AtomicU64,
    recv_ok: AtomicU64,
    recv_dropped: AtomicU64,
    recv_truncated: AtomicU64,
    recv_corrupted: AtomicU64,
    recv_interrupted: AtomicU64,
    recv_would_block: AtomicU64,
    recv_errors: AtomicU64,
    recv_eof: AtomicU64,
    send_calls: AtomicU64,
    send_ok: AtomicU64,
    send_dropped: AtomicU64,
    send_truncated: AtomicU64,
    send_corrupted: AtomicU64,
    send_interrupted: AtomicU64,
    send_would_block: AtomicU64,
    send_errors: AtomicU64,
    send_eof: AtomicU64,
    wait_faults: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

/// A [`PacketIo`] that injects faults into another one.
///
/// Share it with [`std::sync::Arc`] to read [`FaultyIo::counts`] while the
/// endpoint owns a handle.
#[derive(Debug)]
pub struct FaultyIo<P> {
    inner: P,
    recv_plan: Mutex<PlanState>,
    send_plan: Mutex<PlanState>,
    wait_plan: Mutex<PlanState>,
    transient: bool,
    /// A sticky fatal fault per direction (recv, send).
    dead_recv: Mutex<Option<Fault>>,
    dead_send: Mutex<Option<Fault>>,
    counters: Counters,
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<P: PacketIo> FaultyIo<P> {
    /// Wraps `inner`; every call passes until plans are set.
    pub fn new(inner: P) -> Self {
        FaultyIo {
            inner,
            recv_plan: Mutex::new(PlanState::new(Plan::none())),
            send_plan: Mutex::new(PlanState::new(Plan::none())),
            wait_plan: Mutex::new(PlanState::new(Plan::none())),
            transient: false,
            dead_recv: Mutex::new(None),
            dead_send: Mutex::new(None),
            counters: Counters::default(),
        }
    }

    /// Faults for `recv` calls.
    pub fn recv_plan(self, plan: Plan) -> Self {
        *lock(&self.recv_plan) = PlanState::new(plan);
        self
    }

    /// Faults for `send` calls.
    pub fn send_plan(self, plan: Plan) -> Self {
        *lock(&self.send_plan) = PlanState::new(plan);
        self
    }

    /// Faults for `wait_readable` calls: only [`Fault::Interrupted`],
    /// [`Fault::HardError`] and [`Fault::Eof`] apply there (as errors of
    /// the wait itself); the others pass.
    pub fn wait_plan(self, plan: Plan) -> Self {
        *lock(&self.wait_plan) = PlanState::new(plan);
        self
    }

    /// Hard errors and end of file fail only the call they hit, instead of
    /// every later one.
    pub fn transient_errors(mut self, on: bool) -> Self {
        self.transient = on;
        self
    }

    /// The wrapped object.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// What was injected so far.
    pub fn counts(&self) -> FaultCounts {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Relaxed);
        FaultCounts {
            recv_calls: l(&c.recv_calls),
            recv_ok: l(&c.recv_ok),
            recv_dropped: l(&c.recv_dropped),
            recv_truncated: l(&c.recv_truncated),
            recv_corrupted: l(&c.recv_corrupted),
            recv_interrupted: l(&c.recv_interrupted),
            recv_would_block: l(&c.recv_would_block),
            recv_errors: l(&c.recv_errors),
            recv_eof: l(&c.recv_eof),
            send_calls: l(&c.send_calls),
            send_ok: l(&c.send_ok),
            send_dropped: l(&c.send_dropped),
            send_truncated: l(&c.send_truncated),
            send_corrupted: l(&c.send_corrupted),
            send_interrupted: l(&c.send_interrupted),
            send_would_block: l(&c.send_would_block),
            send_errors: l(&c.send_errors),
            send_eof: l(&c.send_eof),
            wait_faults: l(&c.wait_faults),
        }
    }

    /// True once a sticky fatal fault has hit receive.
    pub fn recv_is_dead(&self) -> bool {
        lock(&self.dead_recv).is_some()
    }

    fn recv_fault(&self, fault: Fault) -> io::Error {
        let c = &self.counters;
        match fault {
            Fault::Eof => {
                bump(&c.recv_eof);
                io::ErrorKind::UnexpectedEof.into()
            }
            _ => {
                bump(&c.recv_errors);
                eio()
            }
        }
    }

    fn send_fault(&self, fault: Fault) -> io::Error {
        let c = &self.counters;
        match fault {
            Fault::Eof => {
                bump(&c.send_eof);
                io::ErrorKind::BrokenPipe.into()
            }
            _ => {
                bump(&c.send_errors);
                eio()
            }
        }
    }

    fn ok_frame(&self, n: usize) -> io::Result<usize> {
        bump(&self.counters.recv_ok);
        Ok(n)
    }
}

impl<P: PacketIo> PacketIo for FaultyIo<P> {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let c = &self.counters;
        bump(&c.recv_calls);
        if let Some(fault) = *lock(&self.dead_recv) {
            return Err(self.recv_fault(fault));
        }
        let (fault, noise) = lock(&self.recv_plan).next();
        match fault {
            Fault::Pass => {
                let n = self.inner.recv(buf)?;
                self.ok_frame(n)
            }
            Fault::Drop => {
                // Lose one packet, then serve the next as usual.
                self.inner.recv(buf)?;
                bump(&c.recv_dropped);
                let n = self.inner.recv(buf)?;
                self.ok_frame(n)
            }
            Fault::Truncate => {
                let n = self.inner.recv(buf)?;
                bump(&c.recv_truncated);
                // Longer than the buffer: only the head was stored.
                self.ok_frame(n.max(buf.len()) + 1 + (noise % 64) as usize)
            }
            Fault::Corrupt => {
                let n = self.inner.recv(buf)?;
                let stored = n.min(buf.len());
                if stored > 0 {
                    buf[(noise as usize) % stored] ^= 1 << ((noise >> 32) % 8);
                    bump(&c.recv_corrupted);
                }
                self.ok_frame(n)
            }
            Fault::Interrupted => {
                bump(&c.recv_interrupted);
                Err(io::ErrorKind::Interrupted.into())
            }
            Fault::WouldBlock => {
                bump(&c.recv_would_block);
                Err(io::ErrorKind::WouldBlock.into())
            }
            Fault::HardError | Fault::Eof => {
                if !self.transient {
                    *lock(&self.dead_recv) = Some(fault);
                }
                Err(self.recv_fault(fault))
            }
        }
    }

    fn send(&self, parts: &[&[u8]]) -> io::Result<()> {
        let c = &self.counters;
        bump(&c.send_calls);
        if let Some(fault) = *lock(&self.dead_send) {
            return Err(self.send_fault(fault));
        }
        let (fault, noise) = lock(&self.send_plan).next();
        match fault {
            Fault::Pass => {
                self.inner.send(parts)?;
                bump(&c.send_ok);
                Ok(())
            }
            Fault::Drop => {
                bump(&c.send_dropped);
                Ok(())
            }
            Fault::Truncate => {
                let whole = parts.concat();
                self.inner.send(&[&whole[..whole.len() / 2]])?;
                bump(&c.send_truncated);
                bump(&c.send_ok);
                Ok(())
            }
            Fault::Corrupt => {
                let mut whole = parts.concat();
                if !whole.is_empty() {
                    let at = (noise as usize) % whole.len();
                    whole[at] ^= 1 << ((noise >> 32) % 8);
                }
                self.inner.send(&[&whole])?;
                bump(&c.send_corrupted);
                bump(&c.send_ok);
                Ok(())
            }
            Fault::Interrupted => {
                bump(&c.send_interrupted);
                Err(io::ErrorKind::Interrupted.into())
            }
            Fault::WouldBlock => {
                bump(&c.send_would_block);
                Err(io::ErrorKind::WouldBlock.into())
            }
            Fault::HardError | Fault::Eof => {
                if !self.transient {
                    *lock(&self.dead_send) = Some(fault);
                }
                Err(self.send_fault(fault))
            }
        }
    }

    fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        if lock(&self.dead_recv).is_some() {
            // The next recv reports the closure.
            return Ok(true);
        }
        let (fault, _) = lock(&self.wait_plan).next();
        let injected = match fault {
            Fault::Interrupted => Some(io::Error::from(io::ErrorKind::Interrupted)),
            Fault::HardError => Some(eio()),
            Fault::Eof => Some(io::ErrorKind::UnexpectedEof.into()),
            _ => None,
        };
        if let Some(e) = injected {
            bump(&self.counters.wait_faults);
            return Err(e);
        }
        self.inner.wait_readable(timeout)
    }
}

/// Frames a closed-callback counter: how many times it ran, and the last
/// reason, for "exactly once" checks.
#[derive(Debug, Default)]
pub struct ClosedLog {
    calls: AtomicU64,
    reason: Mutex<Option<fdlink_core::CloseReason>>,
}

impl ClosedLog {
    /// A fresh log, shared with the callback.
    pub fn new() -> std::sync::Arc<ClosedLog> {
        std::sync::Arc::new(ClosedLog::default())
    }

    /// A callback for [`fdlink_core::Options::on_closed`] that records into
    /// `log`.
    pub fn callback(
        log: &std::sync::Arc<ClosedLog>,
    ) -> impl FnOnce(fdlink_core::CloseReason) + Send + 'static {
        let log = std::sync::Arc::clone(log);
        move |reason| {
            log.calls.fetch_add(1, Relaxed);
            *lock(&log.reason) = Some(reason);
        }
    }

    /// How many times the callback ran.
    pub fn calls(&self) -> u64 {
        self.calls.load(Relaxed)
    }

    /// The reason it was called with, if it was.
    pub fn reason(&self) -> Option<fdlink_core::CloseReason> {
        lock(&self.reason).clone()
    }
}

/// Checks the endpoint's receive accounting: every frame read was delivered
/// or counted as an inbound drop. Returns a description of the mismatch.
pub fn check_rx_accounting(stats: &fdlink_core::StatsSnapshot) -> Result<(), String> {
    if stats.frames_read == stats.rx_packets + stats.drops.inbound() {
        Ok(())
    } else {
        Err(format!(
            "frames_read {} != rx_packets {} + inbound drops {} ({stats})",
            stats.frames_read,
            stats.rx_packets,
            stats.drops.inbound()
        ))
    }
}

/// True when `cargo xtask valgrind` runs this test under memcheck, where
/// resident memory says nothing about leaks (memcheck's own leak check
/// does): memory bounds are skipped then, descriptor counts still checked.
pub fn under_valgrind() -> bool {
    std::env::var_os("FDLINK_UNDER_VALGRIND").is_some()
}

/// Resident and peak memory of this process in KiB (`VmRSS`, `VmHWM` of
/// `/proc/self/status`).
pub fn memory_kib() -> io::Result<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> io::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| io::Error::other(format!("no {name} in /proc/self/status")))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}
