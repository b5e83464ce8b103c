//! A netstack for VPN clients and tun2socks-style proxies: every TCP
//! connection and UDP flow routed into a link — to any address and port —
//! surfaces as a [`TcpStream`] or a [`UdpFlow`] that knows its original
//! destination, so the application can forward it.
//!
//! - One engine per queue, each a thread that owns a smoltcp interface in
//!   any-address mode and the queue's device; the kernel's flow hash keeps
//!   a connection on one queue, so engines share nothing per connection.
//! - TCP: a SYN to an unknown address and port gets a socket made on
//!   demand; once the handshake completes the connection comes out of
//!   [`Netstack::accept`]. With [`NetstackConfig::decide_before_handshake`]
//!   it comes out of [`Netstack::accept_pending`] first, and the
//!   application accepts it or refuses it (a reset) — a proxy refuses what
//!   its upstream refuses.
//! - Data crosses between engine and application through fixed byte rings
//!   per direction, without an allocation per packet and without a lock
//!   held across a poll; a reader that stops reading closes the window.
//! - UDP never reaches smoltcp: datagrams are taken at the device, grouped
//!   into flows by source and original destination (expired when idle),
//!   and replies are built there, leaving from the original destination.
//! - ICMP echo requests to any address are answered (unless turned off).
//! - Caps on half-open and established connections and on UDP flows; a
//!   refused SYN gets a reset and a counter, never a socket.
//! - Packets to loopback, unspecified, multicast, broadcast and link-local
//!   destinations are refused and counted unless the policy allows them
//!   ([`DestinationPolicy`]).
//!
//! The link must carry IP packets (a TUN, an IP socketpair, a packet
//! object); Ethernet links are refused.
//!
//! # Limits
//!
//! - Fragmented UDP datagrams are not reassembled; they go to smoltcp,
//!   which drops them.
//! - smoltcp 0.14 drops the acknowledgment of a segment outside a closed
//!   receive window, and takes a FIN behind data it cut off at its window's
//!   edge; the engine rewrites such segments before smoltcp sees them
//!   ([`NetstackStats::tcp_acks_salvaged`]), so an echo-like connection
//!   neither stalls nor ends a few bytes short.
//! - With a smoltcp stack on the link's other end (not the kernel), a
//!   transfer can stop: our scaled window rounds down, which may leave a
//!   few bytes of that stack's last segment outside it, and when our
//!   window then closes, smoltcp's sender trades its retransmission timer
//!   for a zero-window probe and forgets both once the window reopens, so
//!   those bytes are never sent again. Kernel peers retransmit them. A
//!   `tcp_buffer` up to 64 KiB (no window scaling) avoids the rounding.
//!
//! # tun2socks in 30 lines
//!
//! Forwarding every connection and flow to its original destination is a
//! copy each way (the `tunproxy` example is the complete version, with a
//! SOCKS5 upstream and refusing what the upstream refuses):
//!
//! ```no_run
//! use std::io::copy;
//! use std::net::{Shutdown, TcpStream, UdpSocket};
//! use fdlink_core::Link;
//! use fdlink_smoltcp::netstack::{Netstack, NetstackConfig};
//!
//! let netstack = std::sync::Arc::new(Netstack::open(Link::tun("tun0").queues(2), NetstackConfig::default())?);
//! let udp = netstack.clone();
//! std::thread::spawn(move || while let Ok(flow) = udp.accept_udp() {
//!     std::thread::spawn(move || -> std::io::Result<()> {
//!         let upstream = UdpSocket::bind("0.0.0.0:0")?;
//!         upstream.connect(flow.original_dst())?;
//!         let mut buf = vec![0u8; 65536];
//!         loop {
//!             let n = flow.recv(&mut buf, None)?;
//!             upstream.send(&buf[..n])?;
//!             let n = upstream.recv(&mut buf)?; // one reply per datagram, for brevity
//!             flow.send(&buf[..n], None)?;
//!         }
//!     });
//! });
//! loop {
//!     let client = netstack.accept()?; // client.peer_addr(), client.original_dst()
//!     std::thread::spawn(move || -> std::io::Result<()> {
//!         let upstream = TcpStream::connect(client.original_dst())?; // or your SOCKS5 upstream
//!         let (c, u) = (client.try_clone()?, upstream.try_clone()?);
//!         let up = std::thread::spawn(move || copy(&mut &c, &mut &u).and_then(|_| u.shutdown(Shutdown::Write)));
//!         copy(&mut &upstream, &mut &client)?;
//!         client.shutdown(Shutdown::Write)?;
//!         up.join().expect("copy thread")
//!     });
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # An echo server for any address
//!
//! ```no_run
//! use std::io::{Read, Write};
//! use fdlink_core::Link;
//! use fdlink_smoltcp::netstack::{Netstack, NetstackConfig};
//!
//! let netstack = Netstack::open(Link::tun("tun0").queues(2), NetstackConfig::default())?;
//! loop {
//!     let mut stream = netstack.accept()?;
//!     println!("{} wants {}", stream.peer_addr(), stream.original_dst());
//!     std::thread::spawn(move || {
//!         let mut buf = [0u8; 16 << 10];
//!         while let Ok(n) = stream.read(&mut buf) {
//!             if n == 0 || stream.write_all(&buf[..n]).is_err() {
//!                 break;
//!             }
//!         }
//!     });
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod config;
mod deadline;
mod engine;
mod incoming;
mod pending;
mod policy;
mod ready;
mod rewrite;
mod ring;
mod stats;
mod stream;
mod udp;
mod wake;
mod wire;

use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use fdlink_core::{Closed, Endpoint, Link, OpenError, StatsSnapshot};

use crate::FdlinkDevice;
use engine::{Engine, Shared};
use incoming::Taken;
use stats::Counters;
use wake::{Wake, Work};

pub use config::NetstackConfig;
pub use pending::PendingTcp;
pub use policy::{DestinationPolicy, SpecialDestination};
pub use stats::{NetstackStats, Refusal};
pub use stream::TcpStream;
pub use udp::UdpFlow;

/// One engine as the netstack holds it.
#[derive(Debug)]
struct EngineHandle {
    wake: Arc<Wake>,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<Option<Closed>>>,
}

/// A netstack over a link: see the module documentation.
#[derive(Debug)]
pub struct Netstack {
    shared: Arc<Shared>,
    engines: Vec<EngineHandle>,
    link: Option<Arc<fdlink_gso::offload::OffloadEndpoint>>,
}

impl Netstack {
    /// Opens `link` ([`Link::open`]) and starts one engine per queue.
    ///
    /// # Errors
    /// What [`Link::open`] returns, or an `Io` error when the link carries
    /// Ethernet frames or an engine thread cannot start.
    pub fn open(link: Link, config: NetstackConfig) -> Result<Netstack, OpenError> {
        let endpoint = link.open()?;
        Netstack::new(endpoint, config).map_err(|source| OpenError::Io {
            what: "start the netstack".into(),
            source,
        })
    }

    /// Starts one engine per queue of `endpoint`.
    ///
    /// # Errors
    /// `InvalidInput` for an Ethernet link; a thread that cannot start.
    pub fn new(endpoint: Endpoint, config: NetstackConfig) -> io::Result<Netstack> {
        if endpoint.is_ethernet() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the netstack needs an IP link (a TUN, an IP socketpair, a packet object)",
            ));
        }
        let shared = Arc::new(Shared {
            config: config.clone(),
            tcp: incoming::Incoming::new(),
            udp: incoming::Incoming::new(),
            pending: incoming::Incoming::new(),
        });
        let devices = FdlinkDevice::per_queue(endpoint, config.device);
        let link = devices.first().map(FdlinkDevice::shared_link);
        let mut engines = Vec::with_capacity(devices.len());
        let live = Arc::new(std::sync::atomic::AtomicUsize::new(devices.len()));
        for (q, device) in devices.into_iter().enumerate() {
            let wake = Arc::new(Wake::new()?);
            let counters = Arc::new(Counters::default());
            let engine = Engine::new(
                device,
                Arc::clone(&shared),
                Arc::clone(&counters),
                Arc::clone(&wake),
            );
            let live = Arc::clone(&live);
            let shared_for_end = Arc::clone(&shared);
            let thread = std::thread::Builder::new()
                .name(format!("fdlink-netstack-{q}"))
                .spawn(move || {
                    let ended = engine.run();
                    // The last engine to end closes the queues: accept
                    // returns what is left, then the closure.
                    if live.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
                        shared_for_end.tcp.close();
                        shared_for_end.udp.close();
                        shared_for_end.pending.close();
                    }
                    ended
                })?;
            engines.push(EngineHandle {
                wake,
                counters,
                thread: Some(thread),
            });
        }
        Ok(Netstack {
            shared,
            engines,
            link,
        })
    }

    /// The next TCP connection, once its handshake completed; waits for
    /// one.
    ///
    /// # Errors
    /// `NotConnected` once every engine has ended (the link closed) and
    /// no connection is left.
    pub fn accept(&self) -> io::Result<TcpStream> {
        taken(self.shared.tcp.take(None))
    }

    /// [`Netstack::accept`] waiting at most `timeout`: `Ok(None)` when none
    /// came.
    ///
    /// # Errors
    /// As [`Netstack::accept`].
    pub fn accept_timeout(&self, timeout: Duration) -> io::Result<Option<TcpStream>> {
        optional(self.shared.tcp.take(Some(timeout)))
    }

    /// The next TCP connection waiting for a decision
    /// ([`NetstackConfig::decide_before_handshake`]); waits for one.
    ///
    /// # Errors
    /// As [`Netstack::accept`].
    pub fn accept_pending(&self) -> io::Result<PendingTcp> {
        taken(self.shared.pending.take(None))
    }

    /// The next new UDP flow; waits for one.
    ///
    /// # Errors
    /// As [`Netstack::accept`].
    pub fn accept_udp(&self) -> io::Result<UdpFlow> {
        taken(self.shared.udp.take(None))
    }

    /// [`Netstack::accept_udp`] waiting at most `timeout`.
    ///
    /// # Errors
    /// As [`Netstack::accept`].
    pub fn accept_udp_timeout(&self, timeout: Duration) -> io::Result<Option<UdpFlow>> {
        optional(self.shared.udp.take(Some(timeout)))
    }

    /// The link's own statistics: frames read and sent, and what it
    /// dropped, by reason (a full send buffer, a truncated frame, ...).
    pub fn link_stats(&self) -> StatsSnapshot {
        self.link
            .as_ref()
            .map(|l| l.endpoint().stats())
            .unwrap_or_default()
    }

    /// The counters of every queue, summed.
    pub fn stats(&self) -> NetstackStats {
        self.engines
            .iter()
            .map(|e| e.counters.snapshot())
            .fold(NetstackStats::default(), NetstackStats::merge)
    }

    /// The counters of each queue.
    pub fn queue_stats(&self) -> Vec<NetstackStats> {
        self.engines.iter().map(|e| e.counters.snapshot()).collect()
    }

    /// Whether every engine has ended (the link closed).
    pub fn is_closed(&self) -> bool {
        self.engines
            .iter()
            .all(|e| e.thread.as_ref().is_none_or(JoinHandle::is_finished))
    }
}

#[cfg(feature = "tokio")]
impl Netstack {
    /// [`Netstack::accept`] as a future.
    ///
    /// # Errors
    /// As [`Netstack::accept`].
    pub async fn accept_async(&self) -> io::Result<TcpStream> {
        std::future::poll_fn(|cx| self.shared.tcp.poll_take(cx))
            .await
            .ok_or_else(|| io::ErrorKind::NotConnected.into())
    }

    /// [`Netstack::accept_udp`] as a future.
    ///
    /// # Errors
    /// As [`Netstack::accept`].
    pub async fn accept_udp_async(&self) -> io::Result<UdpFlow> {
        std::future::poll_fn(|cx| self.shared.udp.poll_take(cx))
            .await
            .ok_or_else(|| io::ErrorKind::NotConnected.into())
    }
}

fn taken<T>(t: Taken<T>) -> io::Result<T> {
    match t {
        Taken::Item(item) => Ok(item),
        Taken::TimedOut => Err(io::ErrorKind::TimedOut.into()),
        Taken::Closed => Err(io::Error::new(
            io::ErrorKind::NotConnected,
            "the netstack's link closed",
        )),
    }
}

fn optional<T>(t: Taken<T>) -> io::Result<Option<T>> {
    match t {
        Taken::TimedOut => Ok(None),
        other => taken(other).map(Some),
    }
}

impl Drop for Netstack {
    /// Stops the engines and joins them; open streams and flows end with
    /// `ConnectionAborted` / end of file.
    fn drop(&mut self) {
        for engine in &self.engines {
            engine.wake.notify(Work::Stop);
        }
        for engine in &mut self.engines {
            if let Some(thread) = engine.thread.take() {
                let _ = thread.join();
            }
        }
    }
}
