//! [`PacketIo`]: any object that reads and writes whole packets, and an
//! in-memory pair of them for tests.
//!
//! This is the Wintun case of the reference design: where no descriptor
//! exists (a Windows Wintun session, a vhost ring, a test double), the
//! endpoint drives an object instead, with the same batching, statistics
//! and closure rules as for descriptors.

use std::io;
use std::sync::Mutex;
use std::time::Duration;

use crossbeam::channel::{self, Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};

/// A boundary-preserving packet object: one `recv` returns exactly one
/// packet, one `send` writes exactly one.
///
/// Methods take `&self`: one reader thread and any number of senders use the
/// object at once, as with a descriptor.
///
/// # Readiness is level-triggered
///
/// [`PacketIo::wait_readable`] reports a state, not an event: while `recv`
/// would return a packet or report the closure, it returns `true` at once,
/// however long that packet has been queued and whether or not an earlier
/// wait already reported it. It may return `true` spuriously (the next
/// `recv` then says `WouldBlock`), but never `false` while a packet waits.
///
/// The endpoint relies on this: it may stop reading before the queue is
/// empty (a full batch, a `WouldBlock` or `Interrupted` in the middle of
/// one) and wait again, expecting that wait to return at once. An object
/// that signals only new arrivals (edge-triggered) would leave the reader
/// asleep with packets queued; such an object must keep the level itself,
/// for instance by remembering that it reported readiness until a `recv`
/// finds its queue empty.
pub trait PacketIo: Send + Sync + 'static {
    /// Receives one packet into `buf` without blocking and returns its full
    /// length. A length above `buf.len()` means the packet did not fit: only
    /// its head was stored, and the endpoint drops it as truncated.
    ///
    /// # Errors
    /// [`io::ErrorKind::WouldBlock`] (or [`io::ErrorKind::Interrupted`])
    /// when no packet was taken: the endpoint tries again later;
    /// [`io::ErrorKind::UnexpectedEof`] when the peer has closed; any other
    /// error is fatal for the channel.
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize>;

    /// Sends one packet made of `parts` back to back (empty parts allowed).
    ///
    /// # Errors
    /// [`io::ErrorKind::WouldBlock`] or [`io::ErrorKind::Interrupted`] when
    /// the packet was not taken (retried until the send timeout);
    /// [`io::ErrorKind::BrokenPipe`] when the peer has closed.
    fn send(&self, parts: &[&[u8]]) -> io::Result<()>;

    /// Blocks until a packet may be ready or `timeout` passes; returns
    /// whether one may be ready. Returns `true` at once while a packet is
    /// queued or the peer has closed (level-triggered, see above). Reader
    /// threads call it with short timeouts and check for a stop request in
    /// between.
    fn wait_readable(&self, timeout: Duration) -> io::Result<bool>;
}

/// A shared object is a packet object too: the caller keeps a handle.
impl<T: PacketIo> PacketIo for std::sync::Arc<T> {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        (**self).recv(buf)
    }

    fn send(&self, parts: &[&[u8]]) -> io::Result<()> {
        (**self).send(parts)
    }

    fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        (**self).wait_readable(timeout)
    }
}

/// One end of an in-memory [`PacketIo`] pair, made by [`memory_pair`].
///
/// Packets are queued (up to the capacity given) until the other end reads
/// them; dropping one end closes the pair for the other, which first reads
/// what is still queued. Each packet is one heap allocation: this is a test
/// double, not a fast path.
#[derive(Debug)]
pub struct MemoryPacketIo {
    tx: Sender<Vec<u8>>,
    rx: Receiver<Vec<u8>>,
    /// A packet taken off the queue by `wait_readable`, served next.
    peeked: Mutex<Option<Vec<u8>>>,
}

/// Two connected in-memory packet objects, each queueing up to `capacity`
/// packets towards the other.
pub fn memory_pair(capacity: usize) -> (MemoryPacketIo, MemoryPacketIo) {
    let (a_tx, b_rx) = channel::bounded(capacity.max(1));
    let (b_tx, a_rx) = channel::bounded(capacity.max(1));
    let end = |tx, rx| MemoryPacketIo {
        tx,
        rx,
        peeked: Mutex::new(None),
    };
    (end(a_tx, a_rx), end(b_tx, b_rx))
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed")
}

impl MemoryPacketIo {
    fn take(&self) -> io::Result<Vec<u8>> {
        if let Some(p) = self.peeked.lock().expect("peek lock").take() {
            return Ok(p);
        }
        match self.rx.try_recv() {
            Ok(p) => Ok(p),
            Err(TryRecvError::Empty) => Err(io::ErrorKind::WouldBlock.into()),
            Err(TryRecvError::Disconnected) => Err(closed()),
        }
    }
}

impl PacketIo for MemoryPacketIo {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let packet = self.take()?;
        let n = packet.len().min(buf.len());
        buf[..n].copy_from_slice(&packet[..n]);
        Ok(packet.len())
    }

    fn send(&self, parts: &[&[u8]]) -> io::Result<()> {
        let packet = parts.concat();
        match self.tx.try_send(packet) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(io::ErrorKind::WouldBlock.into()),
            Err(TrySendError::Disconnected(_)) => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }

    fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        let mut peeked = self.peeked.lock().expect("peek lock");
        if peeked.is_some() {
            return Ok(true);
        }
        match self.rx.recv_timeout(timeout) {
            Ok(p) => {
                *peeked = Some(p);
                Ok(true)
            }
            Err(RecvTimeoutError::Timeout) => Ok(false),
            // Readable: the next recv reports the closure.
            Err(RecvTimeoutError::Disconnected) => Ok(true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_moves_packets_and_reports_closure() {
        let (a, b) = memory_pair(4);
        a.send(&[b"ab", b"", b"cd"]).unwrap();
        assert!(b.wait_readable(Duration::from_secs(1)).unwrap());
        let mut buf = [0u8; 3];
        assert_eq!(b.recv(&mut buf).unwrap(), 4, "full length even when cut");
        assert_eq!(&buf, b"abc");
        assert_eq!(
            b.recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        drop(a);
        assert_eq!(
            b.recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        assert_eq!(
            b.send(&[b"x"]).unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
    }

    #[test]
    fn readiness_is_level_triggered() {
        let (a, b) = memory_pair(4);
        let now = Duration::ZERO;
        assert!(!b.wait_readable(now).unwrap(), "nothing queued");
        // Queued before the wait: seen without waiting.
        a.send(&[b"1"]).unwrap();
        a.send(&[b"2"]).unwrap();
        assert!(b.wait_readable(now).unwrap());
        // Reported once, still ready until it is read.
        assert!(b.wait_readable(now).unwrap());
        let mut buf = [0u8; 4];
        assert_eq!(b.recv(&mut buf).unwrap(), 1);
        assert_eq!(&buf[..1], b"1");
        // One packet left: ready again, with no new arrival.
        assert!(b.wait_readable(now).unwrap());
        assert_eq!(b.recv(&mut buf).unwrap(), 1);
        assert_eq!(&buf[..1], b"2");
        assert!(!b.wait_readable(now).unwrap(), "drained");
        // The closure is a level too: ready until and after it is read.
        a.send(&[b"3"]).unwrap();
        drop(a);
        assert!(b.wait_readable(now).unwrap());
        assert!(b.wait_readable(now).unwrap());
        assert_eq!(b.recv(&mut buf).unwrap(), 1);
        assert_eq!(&buf[..1], b"3");
        for _ in 0..2 {
            assert!(b.wait_readable(now).unwrap());
            assert_eq!(
                b.recv(&mut buf).unwrap_err().kind(),
                io::ErrorKind::UnexpectedEof
            );
        }
    }

    #[test]
    fn full_queue_would_block() {
        let (a, _b) = memory_pair(1);
        a.send(&[b"1"]).unwrap();
        assert_eq!(
            a.send(&[b"2"]).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }
}
