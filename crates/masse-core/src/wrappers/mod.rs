//! Ready-made [`Wrapper`](crate::Wrapper)s.
//!
//! - [`Latency`] turns a stream into a slow link: fixed or jittered delay and
//!   an optional bandwidth cap, in both directions, without ever reordering
//!   bytes. For tests and demos of how an application copes with distance.
//! - [`Metered`] counts the bytes and streams that pass through it; its
//!   building block [`MeteredIo`] can be put around any stream to read the
//!   counts of that one stream when it closes.

mod latency;
mod metered;

pub use latency::{Latency, LatencyIo};
pub use metered::{Counters, MeterSnapshot, Metered, MeteredIo, StreamMeter};
