//! fdlink-core (in progress).
#![forbid(unsafe_code)]
#![warn(missing_docs)]
