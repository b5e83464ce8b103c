//! A connection the application dropped must not outlive its linger when
//! the peer never finishes closing: a Linux client on the far side of a
//! TUN reads the netstack's FIN and then keeps its socket open forever
//! (CLOSE_WAIT), which leaves the netstack's side in FIN_WAIT_2. After
//! [`NetstackConfig::orphan_linger`] the netstack resets it, frees its
//! slot and the client learns of the reset.
//!
//! Root only (a SKIP line without root, a failure under `CI=true`). Only
//! 10.x addresses inside a namespace made here; every wait is bounded.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use fdlink_core::Link;
use fdlink_smoltcp::netstack::{Netstack, NetstackConfig};
use fdlink_tests::echo::connect;
use fdlink_tests::netns::{Netns, require_root};

const DEV: &str = "fdorph0";
const LINGER: Duration = Duration::from_secs(1);

/// Waits (10 s at most) until `done` holds.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_orphan_whose_peer_never_closes_is_reset_after_its_linger() {
    if !require_root("an_orphan_whose_peer_never_closes_is_reset_after_its_linger") {
        return;
    }
    let ns = Netns::new("fdorph").expect("namespace");
    let config = NetstackConfig::default().orphan_linger(LINGER);
    let netstack = ns
        .run(|| Netstack::open(Link::tun(DEV), config))
        .expect("enter the namespace")
        .expect("netstack on a TUN");
    ns.addr(DEV, "10.95.0.1/24").expect("address");
    ns.link_up(DEV).expect("link up");
    ns.ip(&["route", "add", "10.96.0.0/16", "dev", DEV])
        .expect("route");

    let far: SocketAddr = "10.96.7.8:8080".parse().unwrap();
    let mut client = connect(&ns, far).expect("connect through the TUN");
    let mut stream = netstack
        .accept_timeout(Duration::from_secs(5))
        .expect("netstack open")
        .expect("the connection is accepted");
    assert_eq!(stream.original_dst(), far);
    stream.write_all(b"bye").expect("write");
    drop(stream);

    // The client reads the data and the FIN, and never closes.
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut got = Vec::new();
    client.read_to_end(&mut got).expect("read to the FIN");
    assert_eq!(got, b"bye");
    let orphaned_at = Instant::now();
    let stats = netstack.stats();
    assert_eq!(
        (stats.tcp_active, stats.tcp_reset),
        (1, 0),
        "before its linger the orphan still waits for the peer's FIN"
    );

    wait_for("the orphan to be reset", || {
        netstack.stats().tcp_active == 0
    });
    assert!(
        orphaned_at.elapsed() >= LINGER / 2,
        "reset before its linger: {:?}",
        orphaned_at.elapsed()
    );
    assert_eq!(netstack.stats().tcp_reset, 1, "{}", netstack.stats());

    // The client's side learned it: Linux reports a reset met in
    // CLOSE_WAIT as EPIPE on the next write (a write there succeeds
    // otherwise, the client never shut its side); a reset drawn by the
    // write itself shows as ECONNRESET on the read after it.
    let mut byte = [0u8; 1];
    let error = client
        .write_all(b"x")
        .and_then(|()| client.read(&mut byte).map(|_| ()))
        .expect_err("the client's connection was reset");
    assert!(
        matches!(
            error.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        ),
        "the client's connection ended by {error:?}, not a reset"
    );
}
