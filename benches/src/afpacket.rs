//! Scenario 2: `AF_PACKET` on a veth end fed by the kernel. A UDP flood
//! from kernel sockets in a namespace leaves `va` and arrives on its peer
//! `vb`, where the receiver reads with a bare `recvmmsg` loop (the
//! baseline) or an [`Endpoint`] in per-packet, recvmmsg or mmap dispatch, or a
//! two-socket fanout group read by one thread per socket.

use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use fdlink_core::{DispatchMode, Endpoint, Options};
use fdlink_sys::mmsg::SendMmsg;
use fdlink_sys::wait::{self, Interest};
use fdlink_tests::veth::{VethPair, VethSpec};

use crate::measure::{Meter, Plan, Sample, Summary, interleaved};
use crate::pps::{BATCH, Received, receive_bare, receive_endpoint};
use crate::report::Row;

/// Receive buffer of every packet socket (bare and endpoint alike).
const RCVBUF: usize = 4 << 20;
/// UDP payload bytes (a 60-byte IP packet, a 74-byte frame).
const PAYLOAD: usize = 32;
/// Flows in the flood, so that a fanout group spreads them.
const FLOWS: u16 = 8;
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// How the frames are received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Bare,
    Single(DispatchMode),
    /// Two sockets in a hash fanout group, recvmmsg, a thread each.
    Fanout,
}

/// The namespace with the veth pair `va` (10.8.0.1) — `vb` (`MAC_B`).
fn setup() -> Result<VethPair, String> {
    VethPair::new(&VethSpec {
        prefix: "fdlb-pkt",
        a: "va",
        b: "vb",
        a_cidr: "10.8.0.1/24",
        b_ip: "10.8.0.2",
        mac_b: Some(MAC_B),
    })
    .map_err(|e| format!("af_packet setup: {e}"))
}

/// Floods 10.8.0.2 from `FLOWS` UDP sockets, round robin, until `stop`.
fn flood(stop: &AtomicBool) -> io::Result<u64> {
    let sockets = (0..FLOWS)
        .map(|i| {
            let s = UdpSocket::bind(("10.8.0.1", 40000 + i))?;
            s.connect(("10.8.0.2", 9))?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .collect::<io::Result<Vec<_>>>()?;
    let payload = [0x5au8; PAYLOAD];
    let mut tx = SendMmsg::new(BATCH);
    let mut sent = 0u64;
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let fd = sockets[i % sockets.len()].as_fd();
        i += 1;
        match tx.send(
            fd,
            std::iter::repeat_n([&payload[..], &[][..], &[][..]], BATCH),
        ) {
            Ok(n) => sent += n as u64,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait::wait(fd, Interest::Write, None, Some(Duration::from_millis(10)))?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

fn open_sockets(veth: &VethPair, n: usize) -> Result<Vec<OwnedFd>, String> {
    (0..n)
        .map(|_| {
            let s = veth.packet_socket()?;
            fdlink_sys::packet::set_recv_buffer(s.as_fd(), RCVBUF)?;
            Ok(s.into_fd())
        })
        .collect::<io::Result<_>>()
        .map_err(|e| format!("packet socket: {e}"))
}

fn measure(veth: &VethPair, mode: Mode, window: Duration) -> Result<Sample, String> {
    let fds = open_sockets(veth, if mode == Mode::Fanout { 2 } else { 1 })?;
    let ns = &veth.ns;
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        let sender = s.spawn(|| ns.run(|| flood(&stop)));
        let result = receive(fds, mode, window);
        stop.store(true, Ordering::Relaxed);
        let sent = sender.join().map_err(|_| "sender panicked".to_owned());
        let sample = result?;
        sent?
            .map_err(|e| format!("netns: {e}"))?
            .map_err(|e| format!("flood: {e}"))?;
        Ok(sample)
    })
}

fn receive(mut fds: Vec<OwnedFd>, mode: Mode, window: Duration) -> Result<Sample, String> {
    let options = |dispatch| {
        Options::new()
            .ethernet(true)
            .mtu(1500)
            .dispatch(dispatch)
            .batch_size(BATCH)
    };
    match mode {
        Mode::Bare => {
            let fd = fds.pop().ok_or("no socket")?;
            fdlink_sys::fd::set_nonblocking(fd.as_fd()).map_err(|e| e.to_string())?;
            let (got, meter) = receive_bare(fd.as_fd(), window)?;
            Ok(got.sample(&meter))
        }
        Mode::Single(dispatch) => {
            let ep =
                Endpoint::new(options(dispatch).fds(fds)).map_err(|e| format!("endpoint: {e}"))?;
            let (got, meter) = receive_endpoint(&ep, None, window)?;
            Ok(got.sample(&meter))
        }
        Mode::Fanout => {
            let ep = Endpoint::new(options(DispatchMode::Recvmmsg).fds(fds))
                .map_err(|e| format!("endpoint: {e}"))?;
            let outer = Meter::start();
            let results: Vec<Result<(Received, Meter), String>> = thread::scope(|s| {
                let handles: Vec<_> = (0..2)
                    .map(|q| {
                        let ep = &ep;
                        s.spawn(move || receive_endpoint(ep, Some(q), window))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err("reader panicked".into())))
                    .collect()
            });
            let mut total = Received::default();
            for r in results {
                // All flows may hash to one socket: an idle reader is fine.
                let got = match r {
                    Ok((got, _)) => got,
                    Err(e) if e.contains("nothing received") => Received::default(),
                    Err(e) => return Err(e),
                };
                total.packets += got.packets;
                total.wakeups += got.wakeups;
            }
            // Each reader counts over its own window of `window`.
            let mut sample = total.sample(&outer);
            sample.value = total.packets as f64 / window.as_secs_f64();
            Ok(sample)
        }
    }
}

/// Scenario 2, as root.
pub fn run(plan: &Plan) -> Result<Vec<Row>, String> {
    let veth = setup()?;
    let modes = [
        Mode::Bare,
        Mode::Single(DispatchMode::PerPacket),
        Mode::Single(DispatchMode::Recvmmsg),
        Mode::Single(DispatchMode::Mmap),
        Mode::Fanout,
    ];
    let samples = interleaved(plan.runs, &modes, |m| measure(&veth, m, plan.pps_window))?;
    let bare = Summary::of(&samples[0]);
    let names = ["per-packet", "recvmmsg", "mmap ring", "fanout 2×recvmmsg"];
    Ok(names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            Row::measured(
                "AF_PACKET veth pps",
                *name,
                "pkt/s",
                "bare recvmmsg",
                Summary::of(&samples[i + 1]),
                bare,
            )
        })
        .collect())
}
