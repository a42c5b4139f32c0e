//! The capture pipeline: a source gives the target's memory as a plain LiME
//! stream, the receive path validates and hashes it, and sinks store it.

pub mod lime;
pub mod sink;
pub mod source;
