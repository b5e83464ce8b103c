//! [`NetstackConfig`]: buffers, caps, timers and policy of a netstack.

use std::time::Duration;

use super::policy::DestinationPolicy;
use crate::DeviceConfig;

/// How a [`super::Netstack`] runs: buffers, caps, timers and policy.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NetstackConfig {
    /// smoltcp's buffer per TCP connection, each way: the window the peer
    /// sees. Default 256 KiB.
    pub tcp_buffer: usize,
    /// The ring between engine and application per TCP connection, each
    /// way. Default 64 KiB.
    pub stream_buffer: usize,
    /// Bytes of datagrams (and their two-byte lengths) queued per UDP
    /// flow, each way. Default 64 KiB.
    pub udp_buffer: usize,
    /// Most TCP handshakes in progress at once, per queue. Default 1024.
    pub max_half_open: usize,
    /// Most TCP connections (half-open included), per queue. Default
    /// 16384.
    pub max_connections: usize,
    /// Most UDP flows, per queue. Default 4096.
    pub max_udp_flows: usize,
    /// A UDP flow without a datagram either way for this long ends.
    /// Default 60 s.
    pub udp_idle: Duration,
    /// Keep-alive probes on idle TCP connections, so a peer that vanished
    /// is noticed. Default every 30 s.
    pub keep_alive: Option<Duration>,
    /// A connection whose data goes unacknowledged this long is reset.
    /// Default 60 s.
    pub tcp_timeout: Option<Duration>,
    /// Once every handle of a connection is gone, how long it may take to
    /// finish closing (the last data acknowledged, the peer's FIN) before
    /// it is reset — so a peer that never closes cannot hold it forever.
    /// Default 60 s, Linux's `tcp_fin_timeout`.
    pub orphan_linger: Duration,
    /// Answer ICMP echo requests to any address. Default on.
    pub icmp_echo: bool,
    /// Which special destinations are allowed. Default none.
    pub policy: DestinationPolicy,
    /// New connections wait for the application's decision
    /// ([`super::Netstack::accept_pending`]) before their handshake. Default off.
    pub decide_before_handshake: bool,
    /// The smoltcp device of each queue.
    pub device: DeviceConfig,
}

impl Default for NetstackConfig {
    fn default() -> Self {
        NetstackConfig {
            tcp_buffer: 256 << 10,
            stream_buffer: 64 << 10,
            udp_buffer: 64 << 10,
            max_half_open: 1024,
            max_connections: 16384,
            max_udp_flows: 4096,
            udp_idle: Duration::from_secs(60),
            keep_alive: Some(Duration::from_secs(30)),
            tcp_timeout: Some(Duration::from_secs(60)),
            orphan_linger: Duration::from_secs(60),
            icmp_echo: true,
            policy: DestinationPolicy::strict(),
            decide_before_handshake: false,
            device: DeviceConfig::default(),
        }
    }
}

impl NetstackConfig {
    /// Sets both TCP buffers per connection, each way:
    /// [`NetstackConfig::tcp_buffer`] and [`NetstackConfig::stream_buffer`].
    pub fn buffers(mut self, tcp: usize, stream: usize) -> Self {
        self.tcp_buffer = tcp.max(1024);
        self.stream_buffer = stream.max(1024);
        self
    }

    /// Sets the caps per queue: half-open and all TCP connections, UDP
    /// flows.
    pub fn caps(mut self, half_open: usize, connections: usize, udp_flows: usize) -> Self {
        self.max_half_open = half_open;
        self.max_connections = connections;
        self.max_udp_flows = udp_flows;
        self
    }

    /// Sets [`NetstackConfig::udp_idle`].
    pub fn udp_idle(mut self, idle: Duration) -> Self {
        self.udp_idle = idle;
        self
    }

    /// Sets [`NetstackConfig::orphan_linger`].
    pub fn orphan_linger(mut self, linger: Duration) -> Self {
        self.orphan_linger = linger;
        self
    }

    /// Sets [`NetstackConfig::icmp_echo`].
    pub fn icmp_echo(mut self, on: bool) -> Self {
        self.icmp_echo = on;
        self
    }

    /// Sets [`NetstackConfig::policy`].
    pub fn policy(mut self, policy: DestinationPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets [`NetstackConfig::decide_before_handshake`].
    pub fn decide_before_handshake(mut self, on: bool) -> Self {
        self.decide_before_handshake = on;
        self
    }

    /// Sets [`NetstackConfig::device`].
    pub fn device(mut self, device: DeviceConfig) -> Self {
        self.device = device;
        self
    }
}
