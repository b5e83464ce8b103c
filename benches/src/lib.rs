//! fdlink benchmarks (see `cargo xtask bench`).
#![forbid(unsafe_code)]
