//! One engine per queue: a thread that owns a smoltcp interface, its
//! sockets and the queue's device, sees every packet before smoltcp does
//! (to open a socket for a SYN to any address, to take UDP and echo
//! requests itself, to refuse what the policy and the caps refuse), and
//! moves connection data between smoltcp and the application's rings.
//! Nothing else touches the engine's state; the application reaches it
//! through its [`Wake`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Waker;
use std::time::{Duration, Instant};

use fdlink_core::Closed;
use fdlink_sys::wait::{Interest, PollFd};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpListenEndpoint};

use super::config::NetstackConfig;
use super::incoming::Incoming;
use super::pending::{Decision, PendingTcp};
use super::ready::ReadyList;
use super::rewrite::{self, AckTrack};
use super::stats::{Counters, Refusal};
use super::stream::{Conn, TcpStream};
use super::udp::{Flow, UdpFlow};
use super::wake::{Wake, Work};
use super::wire::{self, Inbound};
use crate::FdlinkDevice;

/// The interface's own addresses, gateways of the default routes that let
/// smoltcp take packets for any destination: the IPv4 dummy address (RFC
/// 7600) and an address of the discard-only IPv6 prefix (RFC 6666). No
/// peer sends to them.
const OWN_V4: [u8; 4] = [192, 0, 0, 8];
const OWN_V6: [u16; 8] = [0x100, 0, 0, 0, 0, 0, 0, 1];

/// Batches received per turn before the engine looks at application work
/// again.
const BATCHES_PER_TURN: usize = 8;

/// The longest the engine sleeps without looking at its timers.
const MAX_SLEEP: Duration = Duration::from_millis(200);

/// How often idle UDP flows and undecided connections are looked for.
const EXPIRY_TICK: Duration = Duration::from_secs(1);

/// How long a connection waits for the application's decision.
const DECISION_TIMEOUT: Duration = Duration::from_secs(10);

/// What the engines share with the netstack handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: NetstackConfig,
    pub(crate) tcp: Incoming<TcpStream>,
    pub(crate) udp: Incoming<UdpFlow>,
    pub(crate) pending: Incoming<PendingTcp>,
}

/// Where a TCP connection is.
enum Phase {
    /// Its SYN waits for the application's decision.
    Held {
        syn: Vec<u8>,
        decision: Arc<std::sync::Mutex<Option<Decision>>>,
        since: Instant,
    },
    /// Handshake in progress; `conn` is the application's when it decided
    /// before the handshake.
    HalfOpen {
        handle: SocketHandle,
        conn: Option<Arc<Conn>>,
    },
    /// Handed to the application.
    Open {
        handle: Option<SocketHandle>,
        conn: Arc<Conn>,
        fin_sent: bool,
        /// When the last handle went away.
        orphaned: Option<Instant>,
    },
}

struct TcpEntry {
    peer: SocketAddr,
    dst: SocketAddr,
    phase: Phase,
    /// Puts this connection on the ready list when smoltcp wakes it.
    waker: Waker,
    acks: AckTrack,
}

struct UdpEntry {
    flow: Arc<Flow>,
    key: (SocketAddr, SocketAddr),
    last_active: Instant,
}

/// A slab: entries by stable index, holes reused.
struct Slab<T> {
    slots: Vec<Option<T>>,
    free: Vec<usize>,
}

impl<T> Slab<T> {
    fn new() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    fn insert(&mut self, value: T) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(value);
                i
            }
            None => {
                self.slots.push(Some(value));
                self.slots.len() - 1
            }
        }
    }

    fn next_index(&self) -> usize {
        self.free.last().copied().unwrap_or(self.slots.len())
    }

    fn remove(&mut self, i: usize) -> Option<T> {
        let value = self.slots.get_mut(i)?.take();
        if value.is_some() {
            self.free.push(i);
        }
        value
    }

    fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.slots.get_mut(i)?.as_mut()
    }
}

/// One queue's engine.
pub(crate) struct Engine {
    device: FdlinkDevice,
    iface: Interface,
    sockets: SocketSet<'static>,
    wake: Arc<Wake>,
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    tcp: Slab<TcpEntry>,
    tcp_by_tuple: HashMap<(SocketAddr, SocketAddr), usize>,
    /// Connections smoltcp or the application woke since the last visit.
    ready: Arc<ReadyList>,
    visiting: Vec<usize>,
    udp: Slab<UdpEntry>,
    udp_by_tuple: HashMap<(SocketAddr, SocketAddr), usize>,
    work: Vec<Work>,
    /// Frames the engine built while the device was lent to the
    /// inspection (echo replies), sent right after it.
    replies: Vec<u8>,
    reply_ends: Vec<usize>,
    /// Bare ACKs made while inspecting (see [`rewrite`]), handed to smoltcp
    /// right after.
    salvaged: Vec<u8>,
    salvaged_ends: Vec<usize>,
    /// Segments with data and a FIN, split in two, handed to smoltcp after
    /// the received packets (see [`rewrite`]).
    split: Vec<u8>,
    split_ends: Vec<usize>,
    scratch: Vec<u8>,
    ident: u16,
    next_expiry: Instant,
}

fn smol_now() -> smoltcp::time::Instant {
    smoltcp::time::Instant::now()
}

impl Engine {
    pub(crate) fn new(
        mut device: FdlinkDevice,
        shared: Arc<Shared>,
        counters: Arc<Counters>,
        wake: Arc<Wake>,
    ) -> Self {
        device.set_manual_receive(true);
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = seed();
        let mut iface = Interface::new(config, &mut device, smol_now());
        iface.set_any_ip(true);
        let [a, b, c, d] = OWN_V4;
        let v4 = smoltcp::wire::Ipv4Address::new(a, b, c, d);
        let [e, f, g, h, i, j, k, l] = OWN_V6;
        let v6 = smoltcp::wire::Ipv6Address::new(e, f, g, h, i, j, k, l);
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(v4), 32));
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv6(v6), 128));
        });
        let _ = iface.routes_mut().add_default_ipv4_route(v4);
        let _ = iface.routes_mut().add_default_ipv6_route(v6);
        Engine {
            device,
            iface,
            sockets: SocketSet::new(Vec::new()),
            wake,
            shared,
            counters,
            tcp: Slab::new(),
            tcp_by_tuple: HashMap::new(),
            ready: Arc::new(ReadyList::default()),
            visiting: Vec::new(),
            udp: Slab::new(),
            udp_by_tuple: HashMap::new(),
            work: Vec::new(),
            replies: Vec::new(),
            reply_ends: Vec::new(),
            salvaged: Vec::new(),
            salvaged_ends: Vec::new(),
            split: Vec::new(),
            split_ends: Vec::new(),
            scratch: vec![0u8; 65536],
            ident: 0,
            next_expiry: Instant::now() + EXPIRY_TICK,
        }
    }

    /// Runs until stopped or the link closes; returns why it ended.
    pub(crate) fn run(mut self) -> Option<Closed> {
        let closed = loop {
            let mut work = std::mem::take(&mut self.work);
            self.wake.take(&mut work);
            let stop = work.contains(&Work::Stop);
            for w in work.drain(..) {
                self.on_work(w);
            }
            self.work = work;
            if stop {
                break None;
            }
            let mut closed = None;
            for _ in 0..BATCHES_PER_TURN {
                match self.device.fetch() {
                    Ok(0) => break,
                    Ok(_) => {
                        self.inspect();
                        self.iface
                            .poll(smol_now(), &mut self.device, &mut self.sockets);
                    }
                    Err(c) => {
                        closed = Some(c);
                        break;
                    }
                }
            }
            self.iface
                .poll(smol_now(), &mut self.device, &mut self.sockets);
            self.sync_tcp();
            self.iface
                .poll_egress(smol_now(), &mut self.device, &mut self.sockets);
            let now = Instant::now();
            if now >= self.next_expiry {
                self.expire(now);
                self.next_expiry = now + EXPIRY_TICK;
            }
            self.note_acks_sent();
            self.device.flush();
            if closed.is_some() {
                break closed;
            }
            self.sleep();
        };
        self.finish();
        closed
    }

    /// Sleeps until the link has input, the application has work, or a
    /// timer is due — after checking for input briefly without sleeping.
    fn sleep(&mut self) {
        if self.wake.is_pending() {
            return;
        }
        let delay = self
            .iface
            .poll_delay(smol_now(), &self.sockets)
            .map_or(MAX_SLEEP, |d| Duration::from_micros(d.total_micros()))
            .min(MAX_SLEEP)
            .min(self.next_expiry.saturating_duration_since(Instant::now()));
        if delay.is_zero() {
            return;
        }
        let spin_until = Instant::now() + self.shared.config.device.busy_poll.min(delay);
        loop {
            if self.wake.is_pending() || self.device.wait(Some(Duration::ZERO)).unwrap_or(true) {
                return;
            }
            if Instant::now() >= spin_until {
                break;
            }
            std::hint::spin_loop();
        }
        let queue = self.device.queue().unwrap_or(0);
        match self.device.endpoint().queue_fd(queue) {
            Some(fd) => {
                let mut set = [
                    PollFd::new(fd, Interest::Read),
                    PollFd::new(self.wake.as_fd(), Interest::Read),
                ];
                // A failing poll only makes the loop come round early.
                let _ = fdlink_sys::wait::poll(&mut set, Some(delay));
            }
            None => {
                // A packet object has no descriptor: wait on it in slices,
                // looking at the work in between.
                let until = Instant::now() + delay;
                while !self.wake.is_pending() {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    if self
                        .device
                        .wait(Some(left.min(Duration::from_millis(2))))
                        .unwrap_or(true)
                    {
                        break;
                    }
                }
            }
        }
    }

    fn on_work(&mut self, work: Work) {
        match work {
            Work::Tcp(id) => self.ready.push(id),
            Work::Udp(id) => self.send_udp(id),
            Work::Decided(id) => self.decided(id, false),
            Work::Stop => {}
        }
    }

    /// Gives every packet fetched its verdict before smoltcp sees it.
    fn inspect(&mut self) {
        let Engine {
            device,
            sockets,
            shared,
            counters,
            tcp,
            tcp_by_tuple,
            ready,
            udp,
            udp_by_tuple,
            wake,
            replies,
            reply_ends,
            salvaged,
            salvaged_ends,
            split,
            split_ends,
            ..
        } = self;
        let config = &shared.config;
        let now = Instant::now();
        device.retain_pending(|frame| match wire::classify(frame) {
            Inbound::Tcp {
                src,
                dst,
                syn,
                fin,
                seq,
                ack,
                payload_len,
            } => {
                if let Some(&id) = tcp_by_tuple.get(&(src, dst)) {
                    let Some(entry) = tcp.get_mut(id) else {
                        return true;
                    };
                    match &entry.phase {
                        // A held connection's SYN again: dropped.
                        Phase::Held { .. } => return false,
                        Phase::Open {
                            handle: Some(h), ..
                        } => {
                            let socket = sockets.get::<tcp::Socket<'_>>(*h);
                            if let Some(expected) =
                                entry.acks.salvage(seq, ack, payload_len, socket)
                                && rewrite::bare_ack(frame, expected, salvaged)
                            {
                                salvaged_ends.push(salvaged.len());
                            }
                        }
                        _ => {}
                    }
                    if fin && payload_len > 0 {
                        // Data and a FIN: in two, in this place (see
                        // [`rewrite`]).
                        if let Some(second) = rewrite::split_fin(frame, seq, payload_len, split) {
                            split_ends.push(second);
                            split_ends.push(split.len());
                            return false;
                        }
                    }
                    return true;
                }
                if let Err(kind) = config.policy.check(dst.ip()) {
                    counters.refused(Refusal::Destination(kind));
                    return false;
                }
                if !syn {
                    // smoltcp answers a stray segment with a reset.
                    return true;
                }
                let half_open = counters.tcp_half_open.load(Ordering::Relaxed) as usize;
                let active = counters.tcp_active.load(Ordering::Relaxed) as usize;
                if half_open >= config.max_half_open {
                    counters.refused(Refusal::HalfOpenCap);
                    // No listener: smoltcp answers with a reset.
                    return true;
                }
                if half_open + active >= config.max_connections {
                    counters.refused(Refusal::ConnectionCap);
                    return true;
                }
                Counters::add(&counters.tcp_half_open, 1);
                let id = tcp.next_index();
                let waker = ready.waker(id);
                if config.decide_before_handshake {
                    let decision = Arc::new(std::sync::Mutex::new(None));
                    tcp.insert(TcpEntry {
                        peer: src,
                        dst,
                        phase: Phase::Held {
                            syn: frame.to_vec(),
                            decision: Arc::clone(&decision),
                            since: now,
                        },
                        waker,
                        acks: AckTrack::default(),
                    });
                    tcp_by_tuple.insert((src, dst), id);
                    shared.pending.push(PendingTcp::new(
                        id,
                        src,
                        dst,
                        decision,
                        config.stream_buffer,
                        Arc::clone(wake),
                    ));
                    return false;
                }
                let handle = listen(sockets, config, dst, &waker);
                tcp.insert(TcpEntry {
                    peer: src,
                    dst,
                    phase: Phase::HalfOpen { handle, conn: None },
                    waker,
                    acks: AckTrack::default(),
                });
                tcp_by_tuple.insert((src, dst), id);
                // Looked at after the poll takes the SYN, even if smoltcp
                // drops it (and so never wakes the socket).
                ready.push(id);
                true
            }
            Inbound::Udp { src, dst, payload } => {
                if let Err(kind) = config.policy.check(dst.ip()) {
                    counters.refused(Refusal::Destination(kind));
                    return false;
                }
                let data = &frame[payload];
                let id = match udp_by_tuple.get(&(src, dst)) {
                    Some(&id) => id,
                    None => {
                        if udp_by_tuple.len() >= config.max_udp_flows {
                            counters.refused(Refusal::UdpFlowCap);
                            return false;
                        }
                        let id = udp.next_index();
                        let flow =
                            Arc::new(Flow::new(id, src, dst, config.udp_buffer, Arc::clone(wake)));
                        udp.insert(UdpEntry {
                            flow: Arc::clone(&flow),
                            key: (src, dst),
                            last_active: now,
                        });
                        udp_by_tuple.insert((src, dst), id);
                        Counters::add(&counters.udp_flows, 1);
                        Counters::add(&counters.udp_active, 1);
                        shared.udp.push(UdpFlow::new(flow));
                        id
                    }
                };
                if let Some(entry) = udp.get_mut(id) {
                    entry.last_active = now;
                    let delivered = entry.flow.lock().rx.push_datagram(data);
                    if delivered {
                        Counters::add(&counters.bytes_in, data.len() as u64);
                        entry.flow.notify();
                    } else {
                        Counters::add(&counters.udp_dropped, 1);
                    }
                }
                false
            }
            Inbound::EchoRequest { dst } => {
                if let Err(kind) = config.policy.check(dst) {
                    counters.refused(Refusal::Destination(kind));
                    return false;
                }
                if !config.icmp_echo {
                    return false;
                }
                let start = replies.len();
                replies.resize(start + frame.len(), 0);
                match wire::write_echo_reply(frame, &mut replies[start..]) {
                    Some(len) => {
                        replies.truncate(start + len);
                        reply_ends.push(replies.len());
                        Counters::add(&counters.icmp_echoes, 1);
                    }
                    None => replies.truncate(start),
                }
                false
            }
            Inbound::Other { dst } => match dst.map(|d| config.policy.check(d)) {
                Some(Err(kind)) => {
                    counters.refused(Refusal::Destination(kind));
                    false
                }
                _ => true,
            },
        });
        let mut start = 0;
        for &end in &self.reply_ends {
            let reply = &self.replies[start..end];
            self.device
                .transmit_frame(reply.len(), |out| out.copy_from_slice(reply));
            start = end;
        }
        self.replies.clear();
        self.reply_ends.clear();
        let mut start = 0;
        for &end in &self.salvaged_ends {
            self.device.inject(&self.salvaged[start..end]);
            start = end;
        }
        Counters::add(
            &self.counters.tcp_acks_salvaged,
            self.salvaged_ends.len() as u64,
        );
        self.salvaged.clear();
        self.salvaged_ends.clear();
        let mut start = 0;
        for &end in &self.split_ends {
            self.device.inject_after(&self.split[start..end]);
            start = end;
        }
        self.split.clear();
        self.split_ends.clear();
    }

    /// Notes the acknowledgment number each connection's last queued
    /// segment carries: where a salvaged ACK must start (see [`rewrite`]).
    fn note_acks_sent(&mut self) {
        let Engine {
            device,
            tcp,
            tcp_by_tuple,
            ..
        } = self;
        for frame in device.queued_frames() {
            if let Inbound::Tcp {
                src,
                dst,
                ack: Some(ack),
                ..
            } = wire::classify(frame)
                && let Some(&id) = tcp_by_tuple.get(&(dst, src))
                && let Some(entry) = tcp.get_mut(id)
            {
                entry.acks.sent(ack);
            }
        }
    }

    /// Moves data between smoltcp and the application for the
    /// connections that were woken; hands over new ones and retires
    /// finished ones.
    fn sync_tcp(&mut self) {
        let mut visiting = std::mem::take(&mut self.visiting);
        self.ready.take(&mut visiting);
        for &id in &visiting {
            let Some(entry) = self.tcp.get_mut(id) else {
                continue;
            };
            match &mut entry.phase {
                Phase::Held { .. } => {}
                Phase::HalfOpen { handle, .. } => {
                    let socket = self.sockets.get::<tcp::Socket<'_>>(*handle);
                    // smoltcp has seen the SYN by now (the poll after the
                    // inspection takes every packet). Still listening, it
                    // dropped the SYN, or a reset in SYN-RECEIVED put it
                    // back to listening, ready to take any other peer's SYN
                    // to this address; and a socket that took another
                    // peer's SYN is not this connection. Either way the
                    // handshake failed (the other peer, unanswered, sends
                    // its SYN again).
                    let ours = socket
                        .remote_endpoint()
                        .is_some_and(|r| SocketAddr::new(r.addr.into(), r.port) == entry.peer);
                    match socket.state() {
                        tcp::State::SynReceived if ours => {}
                        tcp::State::Listen
                        | tcp::State::SynReceived
                        | tcp::State::Closed
                        | tcp::State::TimeWait => self.half_open_failed(id),
                        _ if ours => self.promote(id),
                        _ => self.half_open_failed(id),
                    }
                }
                Phase::Open { .. } => self.sync_open(id),
            }
            self.rearm(id);
        }
        visiting.clear();
        self.visiting = visiting;
    }

    /// Asks smoltcp to wake connection `id` on its next event (a waker
    /// fires once).
    fn rearm(&mut self, id: usize) {
        let Some(entry) = self.tcp.get_mut(id) else {
            return;
        };
        let handle = match &entry.phase {
            Phase::HalfOpen { handle, .. } => *handle,
            Phase::Open {
                handle: Some(handle),
                ..
            } => *handle,
            _ => return,
        };
        let socket = self.sockets.get_mut::<tcp::Socket<'_>>(handle);
        socket.register_recv_waker(&entry.waker);
        socket.register_send_waker(&entry.waker);
    }

    /// A handshake failed (a reset, a timeout, a SYN smoltcp did not
    /// take): the socket goes, and an application that accepted the
    /// connection before its handshake learns it was refused.
    fn half_open_failed(&mut self, id: usize) {
        let Some(TcpEntry {
            phase: Phase::HalfOpen { handle, conn },
            ..
        }) = self.tcp.get_mut(id)
        else {
            return;
        };
        let (handle, conn) = (*handle, conn.take());
        self.sockets.remove(handle);
        Counters::sub(&self.counters.tcp_half_open, 1);
        if let Some(conn) = conn {
            let mut st = conn.lock();
            st.error = Some(std::io::ErrorKind::ConnectionRefused);
            conn.notify(&mut st, true, true);
        }
        self.retire(id);
    }

    /// A handshake completed: the connection goes to the application.
    fn promote(&mut self, id: usize) {
        let Some(entry) = self.tcp.get_mut(id) else {
            return;
        };
        let Phase::HalfOpen { handle, conn } = &mut entry.phase else {
            return;
        };
        let handle = *handle;
        let (conn, decided_before) = match conn.take() {
            Some(conn) => (conn, true),
            None => (
                Arc::new(Conn::new(
                    id,
                    entry.peer,
                    entry.dst,
                    self.shared.config.stream_buffer,
                    Arc::clone(&self.wake),
                )),
                false,
            ),
        };
        entry.phase = Phase::Open {
            handle: Some(handle),
            conn: Arc::clone(&conn),
            fin_sent: false,
            orphaned: None,
        };
        Counters::sub(&self.counters.tcp_half_open, 1);
        Counters::add(&self.counters.tcp_active, 1);
        Counters::add(&self.counters.tcp_accepted, 1);
        if !decided_before {
            self.shared.tcp.push(TcpStream::new(conn));
        }
        self.sync_open(id);
    }

    fn sync_open(&mut self, id: usize) {
        let Some(entry) = self.tcp.get_mut(id) else {
            return;
        };
        let Phase::Open {
            handle,
            conn,
            fin_sent,
            orphaned,
        } = &mut entry.phase
        else {
            return;
        };
        let Some(h) = *handle else {
            // The socket is gone; the entry waits for the handles.
            if conn.lock().dropped {
                Counters::sub(&self.counters.tcp_active, 1);
                self.retire(id);
            }
            return;
        };
        let socket = self.sockets.get_mut::<tcp::Socket<'_>>(h);
        let mut st = conn.lock();
        if st.dropped && orphaned.is_none() {
            *orphaned = Some(Instant::now());
        }
        let (mut readable, mut writable) = (false, false);
        // The peer's data into the receive ring (or away, once every
        // handle is gone).
        while socket.can_recv() {
            let moved = if st.dropped {
                socket.recv(|b| (b.len(), b.len()))
            } else {
                socket.recv(|b| {
                    let n = st.rx.write(b);
                    (n, n)
                })
            };
            match moved {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    Counters::add(&self.counters.bytes_in, n as u64);
                    readable = true;
                }
            }
        }
        if socket.can_recv() {
            conn.set_rx_blocked();
        }
        // The peer's FIN, and only that, is the end of the stream: a socket
        // that a reset, a timeout or an abort closed cannot receive either,
        // but that is an error the application must see.
        let peer_finished = matches!(
            socket.state(),
            tcp::State::CloseWait
                | tcp::State::LastAck
                | tcp::State::Closing
                | tcp::State::TimeWait
        );
        if !st.eof && peer_finished && socket.recv_queue() == 0 {
            st.eof = true;
            readable = true;
        }
        // The application's data into smoltcp.
        while !st.tx.is_empty() && socket.can_send() {
            match socket.send(|space| {
                let n = st.tx.read(space);
                (n, n)
            }) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    Counters::add(&self.counters.bytes_out, n as u64);
                    writable = true;
                }
            }
        }
        if !*fin_sent && (st.write_shut || st.dropped) && st.tx.is_empty() {
            socket.close();
            *fin_sent = true;
        }
        let state = socket.state();
        let finished = matches!(state, tcp::State::Closed)
            || (st.dropped && matches!(state, tcp::State::TimeWait));
        if finished {
            if state == tcp::State::Closed && !(*fin_sent && st.eof) && st.error.is_none() {
                // Neither side finished cleanly: a reset or a timeout.
                st.error = Some(std::io::ErrorKind::ConnectionReset);
                Counters::add(&self.counters.tcp_reset, 1);
            }
            readable = true;
            writable = true;
            self.sockets.remove(h);
            *handle = None;
        }
        let retire = finished && st.dropped;
        conn.notify(&mut st, readable, writable);
        drop(st);
        if retire {
            Counters::sub(&self.counters.tcp_active, 1);
            self.retire(id);
        }
    }

    fn retire(&mut self, id: usize) {
        if let Some(entry) = self.tcp.remove(id) {
            self.tcp_by_tuple.remove(&(entry.peer, entry.dst));
        }
    }

    /// The application decided on a held connection, or (`expired`) it
    /// waited too long, which refuses it. A wake-up that finds no decision
    /// is stale — an earlier connection's, whose place this one took — and
    /// changes nothing.
    fn decided(&mut self, id: usize, expired: bool) {
        let Some(entry) = self.tcp.get_mut(id) else {
            return;
        };
        let Phase::Held { syn, decision, .. } = &mut entry.phase else {
            return;
        };
        let decision = {
            let mut slot = decision.lock().unwrap_or_else(|e| e.into_inner());
            match slot.take() {
                Some(decision) => decision,
                None if expired => {
                    // Too late from now on: a later accept gets a refused
                    // stream (see `PendingTcp::accept`).
                    *slot = Some(Decision::Expired);
                    Decision::Refuse
                }
                None => return,
            }
        };
        let syn = std::mem::take(syn);
        match decision {
            Decision::Accept(conn) => {
                let handle = listen(
                    &mut self.sockets,
                    &self.shared.config,
                    entry.dst,
                    &entry.waker,
                );
                entry.phase = Phase::HalfOpen {
                    handle,
                    conn: Some(conn),
                };
                self.device.inject(&syn);
                // Looked at after the poll takes the SYN, even if smoltcp
                // drops it (and so never wakes the socket).
                self.ready.push(id);
            }
            Decision::Refuse | Decision::Expired => {
                self.counters.refused(Refusal::Application);
                Counters::sub(&self.counters.tcp_half_open, 1);
                // No listener: smoltcp answers the SYN with a reset.
                self.device.inject(&syn);
                self.retire(id);
            }
        }
    }

    /// Sends what a UDP flow's handle queued; retires a flow whose handle
    /// is gone.
    fn send_udp(&mut self, id: usize) {
        let Some(entry) = self.udp.get_mut(id) else {
            return;
        };
        let flow = Arc::clone(&entry.flow);
        let (peer, dst) = entry.key;
        let dropped = {
            let mut st = flow.lock();
            while let Some(len) = st.tx.pop_datagram(&mut self.scratch) {
                let payload = &self.scratch[..len];
                let total = wire::udp_len(dst, len);
                self.ident = self.ident.wrapping_add(1);
                let ident = self.ident;
                self.device.transmit_frame(total, |out| {
                    wire::write_udp(out, dst, peer, payload, ident);
                });
                Counters::add(&self.counters.bytes_out, len as u64);
                entry.last_active = Instant::now();
            }
            st.dropped
        };
        flow.notify();
        if dropped {
            self.retire_udp(id);
        }
    }

    fn retire_udp(&mut self, id: usize) {
        if let Some(entry) = self.udp.remove(id) {
            self.udp_by_tuple.remove(&entry.key);
            Counters::sub(&self.counters.udp_active, 1);
            entry.flow.lock().ended = true;
            entry.flow.notify();
        }
    }

    /// Ends idle UDP flows and refuses connections the application never
    /// decided on.
    fn expire(&mut self, now: Instant) {
        let idle = self.shared.config.udp_idle;
        let stale: Vec<usize> = (0..self.udp.slots.len())
            .filter(|&i| {
                self.udp.slots[i]
                    .as_ref()
                    .is_some_and(|e| now.duration_since(e.last_active) >= idle)
            })
            .collect();
        for id in stale {
            self.retire_udp(id);
        }
        let undecided: Vec<usize> = (0..self.tcp.slots.len())
            .filter(|&i| {
                matches!(
                    self.tcp.slots[i].as_ref().map(|e| &e.phase),
                    Some(Phase::Held { since, .. }) if now.duration_since(*since) >= DECISION_TIMEOUT
                )
            })
            .collect();
        for id in undecided {
            self.decided(id, true);
        }
        let linger = self.shared.config.orphan_linger;
        for entry in self.tcp.slots.iter().flatten() {
            if let Phase::Open {
                handle: Some(handle),
                orphaned: Some(since),
                ..
            } = &entry.phase
                && now.duration_since(*since) >= linger
            {
                // A peer that never finishes closing (never sends its FIN,
                // never takes the last data) must not hold the connection
                // forever: reset it. The socket's waker brings it to
                // `sync_open`, which retires it.
                self.sockets.get_mut::<tcp::Socket<'_>>(*handle).abort();
            }
        }
    }

    /// The engine ends: every connection and flow learns it.
    fn finish(&mut self) {
        for entry in self.tcp.slots.iter_mut().flatten() {
            let conn = match &entry.phase {
                Phase::Open { conn, .. } => Some(conn),
                Phase::HalfOpen { conn, .. } => conn.as_ref(),
                Phase::Held { .. } => None,
            };
            if let Some(conn) = conn {
                let mut st = conn.lock();
                if st.error.is_none() {
                    st.error = Some(std::io::ErrorKind::ConnectionAborted);
                }
                conn.notify(&mut st, true, true);
            }
        }
        for entry in self.udp.slots.iter().flatten() {
            entry.flow.lock().ended = true;
            entry.flow.notify();
        }
    }
}

/// A listening socket for one SYN to `dst`, with the netstack's buffers
/// and timers.
fn listen(
    sockets: &mut SocketSet<'static>,
    config: &NetstackConfig,
    dst: SocketAddr,
    waker: &Waker,
) -> SocketHandle {
    let mut socket = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0u8; config.tcp_buffer]),
        tcp::SocketBuffer::new(vec![0u8; config.tcp_buffer]),
    );
    socket.set_nagle_enabled(false);
    socket.set_keep_alive(config.keep_alive.map(to_smol));
    socket.set_timeout(config.tcp_timeout.map(to_smol));
    let endpoint = IpListenEndpoint {
        addr: Some(IpAddress::from(dst.ip())),
        port: dst.port(),
    };
    // A port of 0 cannot be listened on; such a SYN is answered with a
    // reset by smoltcp.
    let _ = socket.listen(endpoint);
    socket.register_recv_waker(waker);
    socket.register_send_waker(waker);
    sockets.add(socket)
}

fn to_smol(d: Duration) -> smoltcp::time::Duration {
    smoltcp::time::Duration::from_micros(d.as_micros() as u64)
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}
