//! The state an endpoint shares with its reader threads: its channels and
//! which of them are open, its settings, its statistics, and the closure,
//! reported once. The receive, send and dispatch paths reach it through
//! these methods only.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::batch::Batch;
use crate::caps::{Capabilities, DeviceOffloads};
use crate::channel::Channel;
use crate::closure::CloseReason;
use crate::link::{MacAddr, ethernet};
use crate::options::{ClosedCallback, DispatchMode};
use crate::stats::Stats;

/// An endpoint's settings. Most are fixed at construction; the MTU, the
/// largest frame a receive buffer takes and the link address may change
/// while the endpoint runs ([`crate::Endpoint::set_mtu`],
/// [`crate::Endpoint::set_link_address`]), so those are atomics.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) ethernet: bool,
    pub(crate) vnet_len: usize,
    pub(crate) batch_size: usize,
    pub(crate) dispatch: DispatchMode,
    pub(crate) send_timeout: Duration,
    pub(crate) gso_max_size: u32,
    /// What the device took of the offloads.
    pub(crate) device_offloads: DeviceOffloads,
    /// The receive buffer size was given by the caller: it does not follow
    /// the MTU.
    pub(crate) fixed_max_frame: bool,
    mtu: AtomicU32,
    max_frame: AtomicUsize,
    /// A MAC address in the low 48 bits, [`LINK_ADDRESS_SET`] when there
    /// is one.
    link_address: AtomicU64,
}

/// The bit of [`Config::link_address`] that says an address is set.
const LINK_ADDRESS_SET: u64 = 1 << 48;

impl Config {
    #[allow(clippy::too_many_arguments)] // the settings, checked by the caller
    pub(crate) fn new(
        mtu: u32,
        ethernet: bool,
        link_address: Option<MacAddr>,
        vnet_len: usize,
        max_frame: usize,
        fixed_max_frame: bool,
        batch_size: usize,
        dispatch: DispatchMode,
        send_timeout: Duration,
        gso_max_size: u32,
        device_offloads: DeviceOffloads,
    ) -> Self {
        Config {
            ethernet,
            vnet_len,
            batch_size,
            dispatch,
            send_timeout,
            gso_max_size,
            device_offloads,
            fixed_max_frame,
            mtu: AtomicU32::new(mtu),
            max_frame: AtomicUsize::new(max_frame),
            link_address: AtomicU64::new(encode_mac(link_address)),
        }
    }

    /// The MTU now.
    pub(crate) fn mtu(&self) -> u32 {
        self.mtu.load(Ordering::Relaxed)
    }

    /// The largest frame a receive buffer takes now (headers included).
    pub(crate) fn max_frame(&self) -> usize {
        self.max_frame.load(Ordering::Relaxed)
    }

    /// The link address now.
    pub(crate) fn link_address(&self) -> Option<MacAddr> {
        let v = self.link_address.load(Ordering::Relaxed);
        (v & LINK_ADDRESS_SET != 0).then(|| {
            let b = v.to_be_bytes();
            MacAddr([b[2], b[3], b[4], b[5], b[6], b[7]])
        })
    }

    /// The link header's length: 14 with Ethernet framing, else 0.
    pub(crate) fn link_len(&self) -> usize {
        if self.ethernet {
            ethernet::HEADER_LEN
        } else {
            0
        }
    }

    pub(crate) fn set_mtu(&self, mtu: u32, max_frame: usize) {
        // The buffers grow first, so a frame of the new size is never
        // refused as too large for them; they never shrink, so a frame the
        // device queued before a lowering is still taken whole, not counted
        // as truncated.
        self.max_frame.fetch_max(max_frame, Ordering::Relaxed);
        self.mtu.store(mtu, Ordering::Relaxed);
    }

    pub(crate) fn set_link_address(&self, mac: Option<MacAddr>) {
        self.link_address.store(encode_mac(mac), Ordering::Relaxed);
    }
}

fn encode_mac(mac: Option<MacAddr>) -> u64 {
    mac.map_or(0, |m| {
        let mut b = [0u8; 8];
        b[2..].copy_from_slice(&m.0);
        u64::from_be_bytes(b) | LINK_ADDRESS_SET
    })
}

/// State shared by the endpoint and its reader threads.
pub(crate) struct Shared {
    channels: Vec<Channel>,
    alive: Vec<AtomicBool>,
    config: Config,
    caps: Capabilities,
    stats: Stats,
    closed_callback: Mutex<Option<ClosedCallback>>,
    close_reason: OnceLock<CloseReason>,
    next_rx: AtomicUsize,
}

impl Shared {
    pub(crate) fn new(
        channels: Vec<Channel>,
        config: Config,
        caps: Capabilities,
        closed_callback: Option<ClosedCallback>,
    ) -> Self {
        let alive = channels.iter().map(|_| AtomicBool::new(true)).collect();
        Shared {
            channels,
            alive,
            config,
            caps,
            stats: Stats::default(),
            closed_callback: Mutex::new(closed_callback),
            close_reason: OnceLock::new(),
            next_rx: AtomicUsize::new(0),
        }
    }

    /// Channel `q`.
    ///
    /// # Panics
    /// When `q` is not below [`Shared::channel_count`].
    pub(crate) fn channel(&self, q: usize) -> &Channel {
        &self.channels[q]
    }

    pub(crate) fn channels(&self) -> &[Channel] {
        &self.channels
    }

    pub(crate) fn channel_count(&self) -> usize {
        self.channels.len()
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn caps(&self) -> Capabilities {
        self.caps
    }

    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The channel a receive over all channels starts with: they take
    /// turns, so one busy queue cannot starve the others.
    pub(crate) fn next_rx_start(&self) -> usize {
        let n = self.channels.len();
        if n > 1 {
            self.next_rx.fetch_add(1, Ordering::Relaxed) % n
        } else {
            0
        }
    }

    pub(crate) fn new_batch(&self) -> Batch {
        Batch::new(self.config.batch_size, self.config.max_frame() + 1)
    }

    pub(crate) fn is_alive(&self, q: usize) -> bool {
        self.alive[q].load(Ordering::Acquire)
    }

    pub(crate) fn all_closed(&self) -> bool {
        self.alive.iter().all(|a| !a.load(Ordering::Acquire))
    }

    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        self.close_reason.get().cloned()
    }

    /// Marks channel `q` closed and wakes whoever sleeps on it; the first
    /// closure of the endpoint runs the closed callback, exactly once.
    pub(crate) fn channel_closed(&self, q: usize, reason: CloseReason) {
        if !self.alive[q].swap(false, Ordering::AcqRel) {
            return;
        }
        // A failed signal can only mean the counter is saturated, which
        // leaves it signalled anyway.
        let _ = self.channels[q].closed_event.signal();
        if self.close_reason.set(reason.clone()).is_ok() {
            let callback = self
                .closed_callback
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(callback) = callback {
                callback(reason);
            }
        }
    }
}
