//! Property tests: the checksum against a naive RFC 1071 reference.

use fdlink_gso::checksum::{Checksum, checksum, sum, update_u16, update_u32};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

/// RFC 1071 one big-endian word at a time.
fn naive_sum(data: &[u8]) -> u16 {
    let mut acc: u32 = 0;
    for pair in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// 0x0000 and 0xffff are the same one's-complement number (±0).
fn ones(v: u16) -> u16 {
    if v == 0xffff { 0 } else { v }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/checksum_props.txt",
        ))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn sum_matches_naive(data in proptest::collection::vec(any::<u8>(), 0..3000), off in 0usize..16) {
        let off = off.min(data.len());
        prop_assert_eq!(sum(&data[off..]), naive_sum(&data[off..]));
        prop_assert_eq!(checksum(&data[off..]), !naive_sum(&data[off..]));
    }

    #[test]
    fn split_feeding_matches_naive(
        data in proptest::collection::vec(any::<u8>(), 0..2000),
        mut cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        for c in &mut cuts {
            *c %= data.len() + 1;
        }
        cuts.sort_unstable();
        let mut c = Checksum::new();
        let mut prev = 0;
        for &cut in cuts.iter().chain(std::iter::once(&data.len())) {
            c.add_bytes(&data[prev..cut]);
            prev = cut;
        }
        prop_assert_eq!(c.fold(), naive_sum(&data));
    }

    #[test]
    fn update_u16_matches_recompute(
        data in proptest::collection::vec(any::<u8>(), 2..200),
        at in any::<usize>(),
        new in any::<u16>(),
    ) {
        let mut data = data;
        let at = (at % (data.len() / 2)) * 2;
        let old = u16::from_be_bytes([data[at], data[at + 1]]);
        let before = checksum(&data);
        data[at..at + 2].copy_from_slice(&new.to_be_bytes());
        prop_assert_eq!(ones(update_u16(before, old, new)), ones(checksum(&data)));
    }

    #[test]
    fn update_u32_matches_recompute(
        data in proptest::collection::vec(any::<u8>(), 4..200),
        at in any::<usize>(),
        new in any::<u32>(),
    ) {
        let mut data = data;
        let at = (at % (data.len() / 2 - 1)) * 2;
        let old = u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
        let before = checksum(&data);
        data[at..at + 4].copy_from_slice(&new.to_be_bytes());
        prop_assert_eq!(ones(update_u32(before, old, new)), ones(checksum(&data)));
    }
}
