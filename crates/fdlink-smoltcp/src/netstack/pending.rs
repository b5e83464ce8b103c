//! Connections held before their handshake for the application's
//! decision: [`PendingTcp`], and the [`Decision`] it hands the engine.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::stream::{self, TcpStream};
use super::wake::{Wake, Work};

/// The application's answer about a held connection.
#[derive(Debug)]
pub(crate) enum Decision {
    Accept(Arc<stream::Conn>),
    Refuse,
    /// Set by the engine: it stopped waiting and refused the connection.
    Expired,
}

/// A TCP connection waiting, before its handshake, for the application to
/// accept or refuse it ([`super::NetstackConfig::decide_before_handshake`]). Its
/// SYN is held meanwhile (up to 10 s, then refused); dropping it refuses.
#[derive(Debug)]
pub struct PendingTcp {
    id: usize,
    peer: SocketAddr,
    original_dst: SocketAddr,
    decision: Arc<Mutex<Option<Decision>>>,
    buffer: usize,
    wake: Arc<Wake>,
    decided: bool,
}

impl PendingTcp {
    pub(crate) fn new(
        id: usize,
        peer: SocketAddr,
        original_dst: SocketAddr,
        decision: Arc<Mutex<Option<Decision>>>,
        buffer: usize,
        wake: Arc<Wake>,
    ) -> Self {
        PendingTcp {
            id,
            peer,
            original_dst,
            decision,
            buffer,
            wake,
            decided: false,
        }
    }

    /// The peer on the link.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The address and port the peer wants.
    pub fn original_dst(&self) -> SocketAddr {
        self.original_dst
    }

    /// Accepts: the handshake goes on, and the stream is usable at once
    /// (reads wait for data; writes are sent once the connection is up; a
    /// handshake that fails ends it with `ConnectionRefused`, and so does
    /// an accept that comes after the netstack stopped waiting).
    pub fn accept(mut self) -> TcpStream {
        let conn = Arc::new(stream::Conn::new(
            self.id,
            self.peer,
            self.original_dst,
            self.buffer,
            Arc::clone(&self.wake),
        ));
        if !self.decide(Decision::Accept(Arc::clone(&conn))) {
            conn.lock().error = Some(io::ErrorKind::ConnectionRefused);
        }
        TcpStream::new(conn)
    }

    /// Refuses: the peer gets a reset.
    pub fn refuse(mut self) {
        self.decide(Decision::Refuse);
    }

    /// Hands the decision to the engine; false when it came too late (the
    /// engine refused the connection already).
    fn decide(&mut self, decision: Decision) -> bool {
        self.decided = true;
        let mut slot = self.decision.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(*slot, Some(Decision::Expired)) {
            return false;
        }
        *slot = Some(decision);
        drop(slot);
        self.wake.notify(Work::Decided(self.id));
        true
    }
}

impl Drop for PendingTcp {
    fn drop(&mut self) {
        if !self.decided {
            self.decide(Decision::Refuse);
        }
    }
}
