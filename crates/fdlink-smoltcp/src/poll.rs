//! Running a smoltcp interface over an [`FdlinkDevice`] without spinning.

use std::time::Duration;

use smoltcp::iface::{Interface, PollResult, SocketSet};
use smoltcp::time::Instant;

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
