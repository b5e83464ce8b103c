//! A UDP flow as the application holds it: [`UdpFlow`], the datagrams one
//! source sent to one original destination, and the replies that leave
//! from that destination. The datagrams wait in byte rings, so none costs
//! an allocation; a full ring drops (and counts) rather than grows.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::deadline::wait;
use super::ring::ByteRing;
use super::wake::{Wake, Work};

/// A flow's state shared by its handle and its engine.
#[derive(Debug)]
pub(crate) struct Flow {
    id: usize,
    peer: SocketAddr,
    original_dst: SocketAddr,
    state: Mutex<FlowState>,
    readable: Condvar,
    writable: Condvar,
    wake: Arc<Wake>,
    handles: AtomicUsize,
}

#[derive(Debug)]
pub(crate) struct FlowState {
    /// Datagrams from the peer.
    pub(crate) rx: ByteRing,
    /// Datagrams to the peer.
    pub(crate) tx: ByteRing,
    /// The flow expired (idle too long) or its link closed.
    pub(crate) ended: bool,
    pub(crate) dropped: bool,
}

impl Flow {
    pub(crate) fn new(
        id: usize,
        peer: SocketAddr,
        original_dst: SocketAddr,
        buffer: usize,
        wake: Arc<Wake>,
    ) -> Self {
        Flow {
            id,
            peer,
            original_dst,
            state: Mutex::new(FlowState {
                rx: ByteRing::new(buffer),
                tx: ByteRing::new(buffer),
                ended: false,
                dropped: false,
            }),
            readable: Condvar::new(),
            writable: Condvar::new(),
            wake,
            handles: AtomicUsize::new(1),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, FlowState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the handle's waits: datagrams arrived, room freed, or the flow
    /// ended.
    pub(crate) fn notify(&self) {
        self.readable.notify_all();
        self.writable.notify_all();
    }
}

/// The datagrams one source on the link sent to one original destination
/// (any address and port routed into the link), handed to the application
/// by [`crate::netstack::Netstack::accept_udp`]; replies leave from that
/// destination. The flow ends when idle longer than the netstack's UDP
/// idle time, or when the handle is dropped.
#[derive(Debug)]
pub struct UdpFlow {
    flow: Arc<Flow>,
}

impl UdpFlow {
    pub(crate) fn new(flow: Arc<Flow>) -> Self {
        UdpFlow { flow }
    }

    /// The source on the link.
    pub fn peer_addr(&self) -> SocketAddr {
        self.flow.peer
    }

    /// The address and port the datagrams were sent to.
    pub fn original_dst(&self) -> SocketAddr {
        self.flow.original_dst
    }

    /// Receives the next datagram into `buf`, waiting up to `timeout`
    /// (`None`: no limit); returns its length (a longer datagram is cut to
    /// `buf`).
    ///
    /// # Errors
    /// `TimedOut` when nothing came in time; `UnexpectedEof` once the flow
    /// ended (idle expiry, link closed) and nothing is left.
    pub fn recv(&self, buf: &mut [u8], timeout: Option<Duration>) -> io::Result<usize> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut state = self.flow.lock();
        loop {
            if let Some(len) = state.rx.pop_datagram(buf) {
                return Ok(len.min(buf.len()));
            }
            if state.ended {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            state = wait(&self.flow.readable, state, deadline)?;
        }
    }

    /// Sends `payload` to the peer, from the original destination. Waits
    /// for room in the flow's queue up to `timeout`.
    ///
    /// # Errors
    /// `InvalidInput` for a payload above 65507 bytes; `TimedOut` when the
    /// queue stayed full; `UnexpectedEof` once the flow ended.
    pub fn send(&self, payload: &[u8], timeout: Option<Duration>) -> io::Result<()> {
        if payload.len() > 65507 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a UDP payload above 65507 bytes",
            ));
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut state = self.flow.lock();
        loop {
            if state.ended {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let was_empty = state.tx.is_empty();
            if state.tx.push_datagram(payload) {
                drop(state);
                if was_empty {
                    self.flow.wake.notify(Work::Udp(self.flow.id));
                }
                return Ok(());
            }
            state = wait(&self.flow.writable, state, deadline)?;
        }
    }
}

impl Drop for UdpFlow {
    fn drop(&mut self) {
        if self.flow.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.flow.lock().dropped = true;
            self.flow.wake.notify(Work::Udp(self.flow.id));
        }
    }
}
