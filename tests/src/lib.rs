//! Shared helpers for fdlink integration tests (namespaces, kernel peers).
#![forbid(unsafe_code)]
pub mod faults;
pub mod netns;
