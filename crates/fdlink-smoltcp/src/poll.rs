//! Running a smoltcp interface over an [`FdlinkDevice`] without spinning.

use std::time::Duration;

use smoltcp::iface::{Config, Interface, PollResult, SocketSet};
use smoltcp::time::Instant;
use smoltcp::wire::HardwareAddress;

use fdlink_core::Closed;

use crate::device::FdlinkDevice;

/// The longest a [`poll`] sleeps when smoltcp has no deadline: bounds how
/// late a caller's own work (new data to send) is noticed.
pub const MAX_SLEEP: Duration = Duration::from_millis(100);

/// Polls the interface once, flushes what it queued, and then, unless
/// smoltcp has more to do right away, sleeps on the link's descriptors until
/// input arrives, smoltcp's next deadline, or `max_sleep` (whichever comes
/// first). Returns whether smoltcp processed any packet.
///
/// With `max_sleep` of zero it never sleeps (busy polling).
///
/// When the link's MTU changed ([`fdlink_core::Endpoint::set_mtu`], or a
/// device followed with [`fdlink_core::Link::follow_device`]), the
/// interface is made again first with the same hardware address, IP
/// addresses, routes and any-address setting: smoltcp reads a device's MTU
/// only when an interface is made, and new connections should see the new
/// MSS. Sockets live in `sockets` and carry on; the neighbour cache starts
/// afresh.
///
/// ```
/// use std::time::Duration;
/// use fdlink_core::{CloseReason, Link};
/// use fdlink_smoltcp::{DeviceConfig, FdlinkDevice, poll};
/// use fdlink_sys::fd::{socketpair, SocketType};
/// use smoltcp::iface::{Config, Interface, SocketSet};
/// use smoltcp::wire::HardwareAddress;
///
/// let (ours, peer) = socketpair(SocketType::SeqPacket)?;
/// let mut device = FdlinkDevice::open(Link::socket(ours), DeviceConfig::default())?;
/// let now = smoltcp::time::Instant::now();
/// let mut iface = Interface::new(Config::new(HardwareAddress::Ip), &mut device, now);
/// let mut sockets = SocketSet::new(vec![]);
/// drop(peer); // the link dies: the loop ends with its reason
/// let closed = loop {
///     if let Err(closed) = poll(&mut iface, &mut device, &mut sockets, Duration::from_millis(100)) {
///         break closed;
///     }
/// };
/// assert_eq!(closed.0, CloseReason::PeerClosed);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`Closed`], with the link's [`fdlink_core::CloseReason`], once the link
/// (the device's queue) has closed and smoltcp has processed everything
/// that arrived before the closure: end the loop then. It is returned at
/// once, without sleeping, on every later call.
pub fn poll(
    iface: &mut Interface,
    device: &mut FdlinkDevice,
    sockets: &mut SocketSet<'_>,
    max_sleep: Duration,
) -> Result<bool, Closed> {
    if device.interface_mtu_stale() {
        follow_mtu(iface, device);
    }
    let now = Instant::now();
    let changed = iface.poll(now, device, sockets) == PollResult::SocketStateChanged;
    device.flush();
    if changed {
        return Ok(changed);
    }
    device.check_open()?;
    if max_sleep.is_zero() {
        return Ok(changed);
    }
    let delay = iface
        .poll_delay(Instant::now(), sockets)
        .map(|d| Duration::from_micros(d.total_micros()))
        .unwrap_or(max_sleep)
        .min(max_sleep);
    if !delay.is_zero() {
        device.wait(Some(delay))?;
    }
    Ok(changed)
}

/// Makes `iface` again over `device`, keeping what the application set.
fn follow_mtu(iface: &mut Interface, device: &mut FdlinkDevice) {
    // `Interface::hardware_addr` panics on an IP-medium interface (a TUN).
    let hardware = if device.endpoint().is_ethernet() {
        iface.hardware_addr()
    } else {
        HardwareAddress::Ip
    };
    let mut config = Config::new(hardware);
    // A fresh seed, as a new interface would get (TCP initial sequence
    // numbers and ephemeral ports come from it).
    config.random_seed = seed();
    let mut fresh = Interface::new(config, device, Instant::now());
    let addrs = iface.ip_addrs().to_vec();
    fresh.update_ip_addrs(|a| {
        a.clear();
        for cidr in addrs {
            let _ = a.push(cidr);
        }
    });
    let mut routes = None;
    iface.routes_mut().update(|r| routes = Some(r.clone()));
    if let Some(routes) = routes {
        fresh.routes_mut().update(|r| *r = routes);
    }
    fresh.set_any_ip(iface.any_ip());
    *iface = fresh;
    device.interface_rebuilt();
}

/// A seed from the clock and the process id.
fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}
