//! fdlink-sys link watches against the kernel, inside throwaway network
//! namespaces: `ip link set` changes arrive as `LinkChange`s. Needs root
//! (SKIP otherwise, failure on CI).

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use fdlink_sys::fd::setsockopt_int;
use fdlink_sys::netdev::{if_hwaddr, if_index};
use fdlink_sys::netlink::{LinkChange, LinkWatch};
use fdlink_sys::tun::TunConfig;
use fdlink_sys::wait::{Interest, PollFd, poll};
use fdlink_tests::netns::{Netns, is_cloexec, require_root};

const WAIT: Duration = Duration::from_secs(5);
const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x42];

/// Takes changes until one satisfies `want` and returns it, polling the
/// watch's descriptor in between. Panics after [`WAIT`], or on a removal
/// `want` does not accept, with the changes seen.
fn wait_change(
    watch: &mut LinkWatch,
    what: &str,
    want: impl Fn(&LinkChange) -> bool,
) -> LinkChange {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        while let Some(change) = watch.next_change().expect("next_change") {
            if want(&change) {
                return change;
            }
            assert!(
                !change.removed,
                "removed while waiting for {what}; seen before: {seen:?}"
            );
            seen.push(change);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no change with {what} within {WAIT:?}; seen: {seen:?}"
        );
        // Readable, or an error (ENOBUFS) pending: next_change looks.
        let mut fds = [PollFd::new(watch.as_fd(), Interest::Read)];
        poll(&mut fds, Some(left)).expect("poll");
    }
}

/// Nothing more is announced within a short while.
fn assert_quiet(watch: &mut LinkWatch) {
    let mut fds = [PollFd::new(watch.as_fd(), Interest::Read)];
    poll(&mut fds, Some(Duration::from_millis(200))).unwrap();
    assert_eq!(watch.next_change().unwrap(), None);
}

/// A watch of `dev`, opened inside `ns`.
fn watch_in(ns: &Netns, dev: &str) -> LinkWatch {
    ns.run(|| LinkWatch::new(if_index(dev)?))
        .unwrap()
        .unwrap_or_else(|e| panic!("watch {dev}: {e}"))
}

#[test]
fn veth_mtu_address_up_and_removal_are_followed() {
    if !require_root("veth_mtu_address_up_and_removal_are_followed") {
        return;
    }
    let ns = Netns::new("fdlnl").unwrap();
    ns.ip(&[
        "link", "add", "fdlnl0", "type", "veth", "peer", "name", "fdlnl1",
    ])
    .unwrap();
    let mut watch = watch_in(&ns, "fdlnl0");
    assert!(is_cloexec(&watch).unwrap(), "the netlink socket is CLOEXEC");

    let mac = ns.run(|| if_hwaddr("fdlnl0")).unwrap().unwrap();
    let first = wait_change(&mut watch, "the initial state", |_| true);
    assert_eq!(
        (first.mtu, first.address, first.up, first.removed),
        (Some(1500), mac, Some(false), false),
        "the first change is the state at subscription"
    );

    ns.ip(&["link", "set", "fdlnl0", "mtu", "9000"]).unwrap();
    wait_change(&mut watch, "mtu 9000", |c| c.mtu == Some(9000));

    ns.ip(&["link", "set", "fdlnl0", "address", "02:00:00:00:00:42"])
        .unwrap();
    let c = wait_change(&mut watch, "the new MAC", |c| c.address == Some(MAC));
    assert_eq!(c.mtu, Some(9000), "each change carries the whole state");

    ns.ip(&["link", "set", "fdlnl0", "up"]).unwrap();
    wait_change(&mut watch, "up", |c| c.up == Some(true));

    ns.ip(&["link", "del", "fdlnl0"]).unwrap();
    wait_change(&mut watch, "removed", |c| c.removed);
    assert_quiet(&mut watch);
    assert_eq!(watch.resyncs(), 0);
}

#[test]
fn tun_mtu_change_and_close_are_followed() {
    if !require_root("tun_mtu_change_and_close_are_followed") {
        return;
    }
    let ns = Netns::new("fdlnl").unwrap();
    let dev = ns
        .run(|| TunConfig::tun().name("fdlnltun0").open())
        .unwrap()
        .expect("open TUN inside the namespace");
    let mut watch = watch_in(&ns, "fdlnltun0");
    let first = wait_change(&mut watch, "the initial state", |_| true);
    assert_eq!((first.mtu, first.address), (Some(1500), None));

    ns.ip(&["link", "set", "fdlnltun0", "mtu", "9000"]).unwrap();
    let c = wait_change(&mut watch, "mtu 9000", |c| c.mtu == Some(9000));
    assert_eq!(c.address, None, "a TUN device has no MAC address");
    ns.link_up("fdlnltun0").unwrap();
    wait_change(&mut watch, "up", |c| c.up == Some(true));

    // The last descriptor of a non-persistent TUN takes the device along.
    drop(dev);
    wait_change(&mut watch, "removed", |c| c.removed);
}

#[test]
fn leaving_a_bridge_is_not_a_removal() {
    if !require_root("leaving_a_bridge_is_not_a_removal") {
        return;
    }
    let ns = Netns::new("fdlnl").unwrap();
    ns.veth("fdlnl0", "fdlnl1").unwrap();
    ns.ip(&["link", "add", "fdlnlbr", "type", "bridge"])
        .unwrap();
    let mut watch = watch_in(&ns, "fdlnl0");
    wait_change(&mut watch, "the initial state", |_| true);

    // Joining and leaving send AF_BRIDGE NEWLINK and DELLINK messages
    // about the port; the marker MTU after them must come with no removal.
    ns.ip(&["link", "set", "fdlnl0", "master", "fdlnlbr"])
        .unwrap();
    ns.ip(&["link", "set", "fdlnl0", "nomaster"]).unwrap();
    ns.ip(&["link", "set", "fdlnl0", "mtu", "1400"]).unwrap();
    wait_change(&mut watch, "mtu 1400", |c| c.mtu == Some(1400));
}

#[test]
fn an_overflowed_socket_resyncs_the_state() {
    if !require_root("an_overflowed_socket_resyncs_the_state") {
        return;
    }
    let ns = Netns::new("fdlnl").unwrap();
    ns.veth("fdlnl0", "fdlnl1").unwrap();
    ns.veth("fdlnl2", "fdlnl3").unwrap();
    let mut watch = watch_in(&ns, "fdlnl0");
    wait_change(&mut watch, "the initial state", |_| true);
    // The smallest receive buffer the kernel allows (it rounds 1 up to
    // SOCK_MIN_RCVBUF, about 2 KiB): a couple of announcements fill it.
    setsockopt_int(watch.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, 1).unwrap();

    // One `ip` process: 100 changes of another interface, the watched
    // interface's in the middle. The socket is full long before it, and the
    // kernel delivers nothing more until it has been drained, so 1280 can
    // only come from the state the watch asks for.
    let mut batch = String::new();
    for i in 0..100 {
        if i == 50 {
            batch.push_str("link set fdlnl0 mtu 1280\n");
        }
        let mtu = if i % 2 == 0 { 1400 } else { 1500 };
        batch.push_str(&format!("link set fdlnl2 mtu {mtu}\n"));
    }
    let path = std::env::temp_dir().join(format!("fdlnl-batch-{}", std::process::id()));
    std::fs::write(&path, batch).unwrap();
    let result = ns.ip(&["-batch", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    result.unwrap();

    let c = wait_change(&mut watch, "mtu 1280", |c| c.mtu == Some(1280));
    assert!(!c.removed);
    assert!(
        watch.resyncs() >= 1,
        "the kernel reported no overflow (resyncs {})",
        watch.resyncs()
    );
    assert_quiet(&mut watch);

    // After the resync the socket delivers announcements again.
    ns.ip(&["link", "set", "fdlnl0", "mtu", "1300"]).unwrap();
    wait_change(&mut watch, "mtu 1300", |c| c.mtu == Some(1300));
}

#[test]
fn a_watch_of_a_missing_interface_reports_a_removal() {
    if !require_root("a_watch_of_a_missing_interface_reports_a_removal") {
        return;
    }
    let ns = Netns::new("fdlnl").unwrap();
    ns.ip(&[
        "link", "add", "fdlnl0", "type", "veth", "peer", "name", "fdlnl1",
    ])
    .unwrap();
    let index = ns.run(|| if_index("fdlnl0")).unwrap().unwrap();
    ns.ip(&["link", "del", "fdlnl0"]).unwrap();
    let mut watch = ns.run(|| LinkWatch::new(index)).unwrap().unwrap();
    let c = wait_change(&mut watch, "removed", |c| c.removed);
    assert_eq!((c.mtu, c.address, c.up), (None, None, None));
}
