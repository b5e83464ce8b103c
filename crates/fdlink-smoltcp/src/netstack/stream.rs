//! A TCP connection as the application holds it: [`TcpStream`], blocking
//! `Read`/`Write` (and, with the `tokio` feature, `AsyncRead`/`AsyncWrite`)
//! over two byte rings the engine fills and drains. The lock of a
//! connection is held only to copy bytes, never across an engine poll; the
//! rings' capacity is the back-pressure — a reader that stops reading
//! closes the window the peer sees.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::Waker;
#[cfg(feature = "tokio")]
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::deadline::wait;
use super::ring::ByteRing;
use super::wake::{Wake, Work};

/// A connection's state shared by its handles and its engine.
#[derive(Debug)]
pub(crate) struct Conn {
    id: usize,
    peer: SocketAddr,
    original_dst: SocketAddr,
    state: Mutex<ConnState>,
    readable: Condvar,
    writable: Condvar,
    wake: Arc<Wake>,
    /// The engine could not move all of smoltcp's received data into the
    /// full receive ring: a read that frees room must wake it.
    rx_blocked: AtomicBool,
    handles: AtomicUsize,
}

/// What the engine and the handles share under the lock.
#[derive(Debug)]
pub(crate) struct ConnState {
    pub(crate) rx: ByteRing,
    pub(crate) tx: ByteRing,
    /// The peer finished sending and everything it sent is in `rx`.
    pub(crate) eof: bool,
    /// The connection ended abnormally (reset, timeout): every operation
    /// fails with this.
    pub(crate) error: Option<io::ErrorKind>,
    /// The application shut the write half down.
    pub(crate) write_shut: bool,
    /// Every handle is gone.
    pub(crate) dropped: bool,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
}

impl Conn {
    pub(crate) fn new(
        id: usize,
        peer: SocketAddr,
        original_dst: SocketAddr,
        buffer: usize,
        wake: Arc<Wake>,
    ) -> Self {
        Conn {
            id,
            peer,
            original_dst,
            state: Mutex::new(ConnState {
                rx: ByteRing::new(buffer),
                tx: ByteRing::new(buffer),
                eof: false,
                error: None,
                write_shut: false,
                dropped: false,
                read_waker: None,
                write_waker: None,
            }),
            readable: Condvar::new(),
            writable: Condvar::new(),
            wake,
            rx_blocked: AtomicBool::new(false),
            handles: AtomicUsize::new(1),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The engine found the receive ring full with more data to come.
    pub(crate) fn set_rx_blocked(&self) {
        self.rx_blocked.store(true, Ordering::Release);
    }

    /// The engine moved bytes in or out, or the state changed: wake the
    /// handles that wait. Call after releasing `state`.
    pub(crate) fn notify(&self, state: &mut ConnState, readable: bool, writable: bool) {
        if readable {
            if let Some(w) = state.read_waker.take() {
                w.wake();
            }
            self.readable.notify_all();
        }
        if writable {
            if let Some(w) = state.write_waker.take() {
                w.wake();
            }
            self.writable.notify_all();
        }
    }

    /// Reads into `buf`: `Ready(Ok(0))` at end of stream; `Pending` after
    /// registering `waker` (or, for a blocking read, returning `None` to
    /// wait on the condvar).
    fn try_read(&self, state: &mut ConnState, buf: &mut [u8]) -> Option<io::Result<usize>> {
        if let Some(kind) = state.error {
            return Some(Err(kind.into()));
        }
        if buf.is_empty() {
            return Some(Ok(0));
        }
        if state.rx.is_empty() {
            return state.eof.then_some(Ok(0));
        }
        let n = state.rx.read(buf);
        if self.rx_blocked.swap(false, Ordering::AcqRel) {
            self.wake.notify(Work::Tcp(self.id));
        }
        Some(Ok(n))
    }

    fn try_write(&self, state: &mut ConnState, buf: &[u8]) -> Option<io::Result<usize>> {
        if let Some(kind) = state.error {
            return Some(Err(kind.into()));
        }
        if state.write_shut {
            return Some(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if buf.is_empty() {
            return Some(Ok(0));
        }
        if state.tx.room() == 0 {
            return None;
        }
        let was_empty = state.tx.is_empty();
        let n = state.tx.write(buf);
        if was_empty {
            self.wake.notify(Work::Tcp(self.id));
        }
        Some(Ok(n))
    }

    fn read_blocking(&self, buf: &mut [u8], timeout: Option<Duration>) -> io::Result<usize> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut state = self.lock();
        loop {
            if let Some(result) = self.try_read(&mut state, buf) {
                return result;
            }
            state = wait(&self.readable, state, deadline)?;
        }
    }

    fn write_blocking(&self, buf: &[u8], timeout: Option<Duration>) -> io::Result<usize> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut state = self.lock();
        loop {
            if let Some(result) = self.try_write(&mut state, buf) {
                return result;
            }
            state = wait(&self.writable, state, deadline)?;
        }
    }

    #[cfg(feature = "tokio")]
    fn poll_read_into(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut state = self.lock();
        match self.try_read(&mut state, buf) {
            Some(result) => Poll::Ready(result),
            None => {
                state.read_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    #[cfg(feature = "tokio")]
    fn poll_write_from(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut state = self.lock();
        match self.try_write(&mut state, buf) {
            Some(result) => Poll::Ready(result),
            None => {
                state.write_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Waits until everything written has left the send ring.
    fn flush_blocking(&self) -> io::Result<()> {
        let mut state = self.lock();
        loop {
            if let Some(kind) = state.error {
                return Err(kind.into());
            }
            if state.tx.is_empty() {
                return Ok(());
            }
            state = wait(&self.writable, state, None)?;
        }
    }

    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        let mut state = self.lock();
        if let Some(kind) = state.error {
            return Err(kind.into());
        }
        if matches!(how, Shutdown::Write | Shutdown::Both) && !state.write_shut {
            state.write_shut = true;
            drop(state);
            self.wake.notify(Work::Tcp(self.id));
        }
        Ok(())
    }

    fn handle_dropped(&self) {
        if self.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.lock().dropped = true;
            self.wake.notify(Work::Tcp(self.id));
        }
    }
}

/// A TCP connection a peer on the link opened to any address, handed to
/// the application by [`crate::netstack::Netstack::accept`].
///
/// Reads and writes block (up to the timeouts set); `&TcpStream` reads and
/// writes too, so one thread can read while another writes (a proxy
/// copying both ways), and [`TcpStream::try_clone`] gives another handle.
/// The connection closes gracefully (FIN after everything written) when
/// the last handle is dropped; [`TcpStream::shutdown`] half-closes it.
#[derive(Debug)]
pub struct TcpStream {
    conn: Arc<Conn>,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

impl TcpStream {
    pub(crate) fn new(conn: Arc<Conn>) -> Self {
        TcpStream {
            conn,
            read_timeout: None,
            write_timeout: None,
        }
    }

    /// The peer on the link that opened the connection.
    pub fn peer_addr(&self) -> SocketAddr {
        self.conn.peer
    }

    /// The address and port the peer connected to: the original
    /// destination, which a proxy forwards to.
    pub fn original_dst(&self) -> SocketAddr {
        self.conn.original_dst
    }

    /// Shuts the write half down (a FIN follows what was written; reads go
    /// on), or both. Shutting the read half alone does nothing: what the
    /// peer sends is dropped with the last handle.
    ///
    /// # Errors
    /// The connection's error, when it was reset.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.conn.shutdown(how)
    }

    /// Another handle to the same connection.
    pub fn try_clone(&self) -> io::Result<TcpStream> {
        self.conn.handles.fetch_add(1, Ordering::AcqRel);
        Ok(TcpStream {
            conn: Arc::clone(&self.conn),
            read_timeout: self.read_timeout,
            write_timeout: self.write_timeout,
        })
    }

    /// How long a read waits for data (`None`: no limit); a read that
    /// waits longer fails with `TimedOut`.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout = timeout;
    }

    /// How long a write waits for room (`None`: no limit).
    pub fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.write_timeout = timeout;
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        self.conn.handle_dropped();
    }
}

impl Read for TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.conn.read_blocking(buf, self.read_timeout)
    }
}

impl Read for &TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.conn.read_blocking(buf, self.read_timeout)
    }
}

impl Write for TcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.conn.write_blocking(buf, self.write_timeout)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.conn.flush_blocking()
    }
}

impl Write for &TcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.conn.write_blocking(buf, self.write_timeout)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.conn.flush_blocking()
    }
}

#[cfg(feature = "tokio")]
impl tokio::io::AsyncRead for TcpStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let space = buf.initialize_unfilled();
        match self.conn.poll_read_into(cx, space) {
            Poll::Ready(Ok(n)) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(feature = "tokio")]
impl tokio::io::AsyncWrite for TcpStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.conn.poll_write_from(cx, buf)
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written bytes are the engine's to send; nothing to wait for.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(self.conn.shutdown(Shutdown::Write))
    }
}
