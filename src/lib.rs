//! mshot: capture the memory of remote Linux machines over SSH with LiME, and
//! analyse it. ARCHITECTURE.md has the map. The layers, each using only
//! those below it: `cli` (flags), `commands` (one entry point per command),
//! `fleet` and `capture` (orchestration), `pipeline` (sources, validation,
//! sinks) and `analysis`, then `transport` (SSH), `target` (remote commands)
//! and `repository`, and at the bottom `record` (manifest, audit) and `util`.

pub mod cli;
pub mod commands;

mod analysis;
mod capture;
mod fleet;
mod live;
mod pipeline;
mod record;
mod repository;
mod target;
mod transport;
mod util;
