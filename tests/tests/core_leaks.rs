//! Attach/detach cycles must not leak descriptors (the stop eventfd) or
//! threads. Alone in its own test binary so no other test opens descriptors
//! meanwhile.

use std::sync::Arc;

use fdlink_core::{Batch, Endpoint, Options};
use fdlink_sys::fd::{SocketType, socketpair};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

#[test]
fn thousand_attach_detach_cycles_leave_descriptors_unchanged() {
    let (a, peer) = socketpair(SocketType::SeqPacket).unwrap();
    let e = Endpoint::new(Options::new().fd(a)).unwrap();
    let dispatcher = Arc::new(|_q: usize, _b: &mut Batch| {});
    e.attach(dispatcher.clone()).unwrap();
    e.detach();
    let before = open_fds();
    for _ in 0..1000 {
        e.attach(dispatcher.clone()).unwrap();
        e.detach();
    }
    assert_eq!(open_fds(), before);
    drop(e);
    drop(peer);
    assert_eq!(
        open_fds(),
        before - 3,
        "dropping the endpoint closes its descriptor and its closed event"
    );
}
