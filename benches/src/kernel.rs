//! The kernel side of the TCP scenarios: a std `TcpStream` sender and a
//! `TcpListener` receiver, run on threads inside a namespace, and the
//! measurement window shared by every TCP scenario.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::measure::{Meter, Plan, Sample};

/// Bytes per `write` of the kernel sender and per `read` of the receiver.
const CHUNK: usize = 256 << 10;
/// How long the kernel peer waits for a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Shared state of one kernel peer.
#[derive(Debug, Default)]
pub struct Peer {
    /// The other side is ready: connect now.
    pub ready: AtomicBool,
    /// Stop sending or receiving.
    pub stop: AtomicBool,
    /// Bytes received so far (receiver only).
    pub bytes: AtomicU64,
}

/// A TCP port not used by an earlier run of this process, so no run meets
/// an old connection of the same 4-tuple.
pub fn next_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(20000);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn ignorable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Waits for `peer.ready`, connects to `addr` and writes until
/// `peer.stop`. Errors after the stop (the other side reset the
/// connection) are not errors.
pub fn send(addr: SocketAddr, peer: &Peer) -> io::Result<u64> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    while !peer.ready.load(Ordering::Acquire) {
        if peer.stop.load(Ordering::Relaxed) {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut stream = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline && !peer.stop.load(Ordering::Relaxed) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("connect {addr}: {e}"))),
        }
    };
    stream.set_write_timeout(Some(Duration::from_millis(100)))?;
    let buf = vec![0x5au8; CHUNK];
    let mut sent = 0u64;
    while !peer.stop.load(Ordering::Relaxed) {
        match stream.write(&buf) {
            Ok(n) => sent += n as u64,
            Err(e) if ignorable(&e) => {}
            Err(_) if peer.stop.load(Ordering::Relaxed) => break,
            Err(e) => return Err(io::Error::new(e.kind(), format!("write: {e}"))),
        }
    }
    Ok(sent)
}

/// Accepts one connection on `listener` and reads until `peer.stop`,
/// counting bytes in `peer.bytes`.
pub fn receive(listener: TcpListener, peer: &Peer) -> io::Result<u64> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let mut stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(_) if peer.stop.load(Ordering::Relaxed) => return Ok(0),
            Err(e) if ignorable(&e) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("accept: {e}"))),
        }
    };
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut buf = vec![0u8; CHUNK];
    while !peer.stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                peer.bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if ignorable(&e) => {}
            Err(_) if peer.stop.load(Ordering::Relaxed) => break,
            Err(e) => return Err(io::Error::new(e.kind(), format!("read: {e}"))),
        }
    }
    Ok(peer.bytes.load(Ordering::Relaxed))
}

/// A throughput window over a growing byte count: it opens `warmup` after
/// the first byte and closes `length` later.
#[derive(Debug)]
pub struct Window {
    warmup: Duration,
    length: Duration,
    first: Option<Instant>,
    open: Option<(Meter, u64)>,
    created: Instant,
}

impl Window {
    /// The TCP window of `plan`.
    pub fn new(plan: &Plan) -> Window {
        Window {
            warmup: plan.tcp_warmup,
            length: plan.tcp_window,
            first: None,
            open: None,
            created: Instant::now(),
        }
    }

    /// Feeds the byte count so far; returns the sample (Gbit/s) once the
    /// window has closed, or an error when no byte came in time.
    pub fn update(&mut self, bytes: u64) -> Result<Option<Sample>, String> {
        let now = Instant::now();
        match (&self.first, &self.open) {
            (None, _) if bytes > 0 => self.first = Some(now),
            (None, _) if now - self.created > CONNECT_TIMEOUT => {
                return Err(format!("no data within {CONNECT_TIMEOUT:?}"));
            }
            (Some(first), None) if now - *first >= self.warmup => {
                self.open = Some((Meter::start(), bytes));
            }
            (_, Some((meter, start))) if meter.elapsed() >= self.length => {
                let mut s = Sample::new(0.0, meter);
                s.value = (bytes - start) as f64 * 8.0 / s.wall / 1e9;
                return Ok(Some(s));
            }
            _ => {}
        }
        Ok(None)
    }
}
