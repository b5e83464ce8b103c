//! Following a device's own changes: a thread that watches the kernel's
//! netlink announcements for the device and brings the endpoint's MTU (and,
//! for `AF_PACKET`, its MAC) along, until the endpoint is dropped.

use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use fdlink_sys::netlink::{LinkChange, LinkWatch};
use fdlink_sys::wait::{Interest, PollFd, StopEvent};

use crate::link::MacAddr;
use crate::setup;
use crate::shared::Shared;

/// The running follower of one endpoint.
#[derive(Debug)]
pub(crate) struct Follower {
    stop: Arc<StopEvent>,
    handle: Option<JoinHandle<()>>,
}

impl Follower {
    /// Starts following `watch`'s device for `shared`; with `follow_mac`,
    /// the device's MAC becomes the endpoint's too (`AF_PACKET`: the
    /// endpoint speaks with the interface's address; a TAP's MAC is the
    /// kernel's side, not ours).
    pub(crate) fn start(
        shared: Arc<Shared>,
        watch: LinkWatch,
        follow_mac: bool,
    ) -> io::Result<Follower> {
        let stop = Arc::new(StopEvent::new()?);
        let thread_stop = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("fdlink-follow".into())
            .spawn(move || run(&shared, watch, follow_mac, &thread_stop))?;
        Ok(Follower {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        // A failed signal can only mean the counter is saturated, which
        // leaves it signalled anyway.
        let _ = self.stop.signal();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

fn run(shared: &Shared, mut watch: LinkWatch, follow_mac: bool, stop: &StopEvent) {
    loop {
        let mut set = [
            PollFd::new(watch.as_fd(), Interest::Read),
            PollFd::new(stop.as_fd(), Interest::Read),
        ];
        if fdlink_sys::wait::poll(&mut set, None).is_err() || set[1].any() {
            return;
        }
        loop {
            match watch.next_change() {
                Ok(Some(change)) => {
                    if !apply(shared, change, follow_mac) {
                        return;
                    }
                }
                Ok(None) => break,
                // The watch failed; the endpoint goes on without it.
                Err(_) => return,
            }
        }
    }
}

/// Applies one announcement; false once the device is gone (its reads
/// report the closure).
fn apply(shared: &Shared, change: LinkChange, follow_mac: bool) -> bool {
    if change.removed {
        return false;
    }
    if let Some(mtu) = change.mtu
        && mtu != shared.config().mtu()
    {
        // An MTU the endpoint cannot take (fixed buffers too small) is
        // left as it was: sends stay bounded by the old one.
        let _ = setup::set_mtu(shared, mtu);
    }
    if follow_mac
        && let Some(mac) = change.address.map(MacAddr)
        && shared.config().link_address() != Some(mac)
        && !mac.is_multicast()
    {
        shared.config().set_link_address(Some(mac));
    }
    true
}
