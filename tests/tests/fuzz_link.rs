//! Fuzz target `link`: arbitrary frames through a core [`Endpoint`] over an
//! in-memory packet pair, Ethernet on and off, with and without a link
//! address and a virtio header. Every frame is delivered or counted:
//! `frames_read == rx_packets + inbound drops`, and each delivered packet
//! is the frame it was read from.
//!
//! `PROPTEST_CASES=N` sets the cases (`cargo xtask fuzz --cases N`).

mod fuzz_gen;

use fdlink_core::{Endpoint, MacAddr, Options, PacketIo, memory_pair};
use fuzz_gen::OWN_MAC;
use proptest::prelude::*;

/// Pushes `frames` through a fresh endpoint and checks the accounting.
fn run(frames: &[Vec<u8>], ethernet: bool, own: bool, vnet: usize) -> Result<(), TestCaseError> {
    let (ours, peer) = memory_pair(frames.len().max(1));
    let mut options = Options::new()
        .packet_io(ours)
        .ethernet(ethernet)
        .vnet_header_len(vnet)
        .batch_size(4);
    if ethernet && own {
        options = options.link_address(MacAddr(OWN_MAC));
    }
    let endpoint = Endpoint::new(options).map_err(|e| TestCaseError::fail(e.to_string()))?;
    for f in frames {
        peer.send(&[f])
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
    drop(peer);
    let mut batch = endpoint.new_batch();
    let mut delivered = Vec::new();
    // Bounded: each call reads at least one frame or reports closure.
    for _ in 0..frames.len() + 2 {
        match endpoint.recv_batch(&mut batch) {
            Ok(_) => delivered.extend(batch.iter().map(|p| p.frame().to_vec())),
            Err(_) => break,
        }
    }
    prop_assert!(
        endpoint.is_closed(),
        "the pair was dropped: endpoint must close"
    );
    let s = endpoint.stats();
    prop_assert_eq!(s.frames_read, frames.len() as u64, "{}", s);
    prop_assert_eq!(s.frames_read, s.rx_packets + s.drops.inbound(), "{}", s);
    prop_assert_eq!(s.rx_packets, delivered.len() as u64);
    // Delivered frames are input frames, unchanged and in order.
    let mut input = frames.iter();
    for d in &delivered {
        prop_assert!(input.any(|f| f == d), "delivered frame not from the input");
    }
    for p in &delivered {
        let body = &p[vnet..];
        if ethernet {
            prop_assert!(body.len() >= 14);
            if own {
                let dst = &body[..6];
                prop_assert!(dst == OWN_MAC || dst[0] & 1 == 1, "foreign MAC delivered");
            }
        } else {
            prop_assert!(matches!(body.first().map(|b| b >> 4), Some(4 | 6)));
        }
    }
    Ok(())
}

fn frames(ethernet: bool, max: usize) -> impl Strategy<Value = Vec<Vec<u8>>> {
    proptest::collection::vec(fuzz_gen::link_frame(ethernet), 1..max)
}

#[test]
fn link_ethernet() {
    fuzz_gen::fuzz(
        file!(),
        "link_ethernet",
        (frames(true, 12), any::<bool>()),
        |(f, own)| run(&f, true, own, 0),
    );
}

#[test]
fn link_ip() {
    fuzz_gen::fuzz(file!(), "link_ip", frames(false, 12), |f| {
        run(&f, false, false, 0)
    });
}

/// Frames behind (honest or lying) virtio headers: the core endpoint only
/// strips them; fuzz_offload checks what the offload layer does with them.
#[test]
fn link_vnet() {
    let strategy = (
        proptest::collection::vec(fuzz_gen::vnet_frame(false), 1..6),
        proptest::collection::vec(fuzz_gen::vnet_frame(true), 1..6),
    );
    fuzz_gen::fuzz(file!(), "link_vnet", strategy, |(ip, eth)| {
        run(&ip, false, false, 10)?;
        run(&eth, true, true, 10)
    });
}
