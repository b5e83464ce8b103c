//! Fuzz target `offload_rx`: the offloading endpoint's receive path with
//! virtio-net headers (honest or lying) and without, over an in-memory
//! pair. Frames go in one at a time: each yields packets for the stack or
//! exactly one counted drop, never both, never neither; and the core
//! accounting holds.
//!
//! `PROPTEST_CASES=N` sets the cases (`cargo xtask fuzz --cases N`).

mod fuzz_gen;

use fdlink_core::{Endpoint, MacAddr, Options, PacketIo, memory_pair};
use fdlink_gso::offload::{OffloadConfig, OffloadEndpoint};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy)]
struct Setup {
    ethernet: bool,
    vnet: bool,
    accept_large: bool,
    complete_partial: bool,
    verify_rx: bool,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(ethernet, vnet, accept_large, complete_partial, verify_rx)| Setup {
                ethernet,
                vnet,
                accept_large,
                complete_partial,
                verify_rx,
            },
        )
}

fn run(s: Setup, frames: &[Vec<u8>]) -> Result<(), TestCaseError> {
    let (ours, peer) = memory_pair(4);
    let mut options = Options::new()
        .packet_io(ours)
        .ethernet(s.ethernet)
        .batch_size(2);
    if s.ethernet {
        options = options.link_address(MacAddr(fuzz_gen::OWN_MAC));
    }
    if s.vnet {
        options = options.vnet_header_len(10);
    }
    let endpoint = Endpoint::new(options).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let config = OffloadConfig::default()
        .accept_large(s.accept_large)
        .complete_partial(s.complete_partial)
        .verify_rx(s.verify_rx);
    let link = OffloadEndpoint::new(endpoint, config);
    let mut rx = link.receiver();
    for f in frames {
        let f = if s.vnet { &f[..] } else { &f[10..] };
        let before = link.endpoint().stats();
        peer.send(&[f])
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let n = link
            .recv(&mut rx, None)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let after = link.endpoint().stats();
        prop_assert_eq!(after.frames_read, before.frames_read + 1);
        let dropped = after.drops.inbound() - before.drops.inbound();
        prop_assert!(
            (n > 0 && dropped == 0) || (n == 0 && dropped == 1),
            "a frame gave {} packets and {} drops ({})",
            n,
            dropped,
            after
        );
        prop_assert_eq!(rx.len(), n);
        let mut taken = 0;
        while let Some(p) = rx.pop() {
            taken += 1;
            prop_assert!(p.frame.len() <= f.len().max(65535 + 14));
            if s.accept_large {
                // Whole: exactly the frame after the virtio header.
                let body = if s.vnet { &f[10..] } else { f };
                prop_assert!(p.frame.len() == body.len());
            }
        }
        prop_assert_eq!(taken, n);
        if s.accept_large || !s.vnet {
            prop_assert!(n <= 1);
        }
    }
    drop(peer);
    let s = link.endpoint().stats();
    // The offload layer's verdict is part of the receive: every frame read
    // is delivered or dropped, once.
    prop_assert_eq!(s.frames_read, s.rx_packets + s.drops.inbound(), "{}", s);
    prop_assert!(
        link.recv(&mut rx, None).is_err(),
        "closed once the peer is gone"
    );
    Ok(())
}

#[test]
fn offload_rx() {
    let strategy = (
        setup(),
        any::<bool>().prop_flat_map(|eth| {
            (
                Just(eth),
                proptest::collection::vec(fuzz_gen::vnet_frame(eth), 1..8),
            )
        }),
    );
    fuzz_gen::fuzz(file!(), "offload_rx", strategy, |(mut s, (eth, frames))| {
        s.ethernet = eth;
        run(s, &frames)
    });
}
