//! mshot: capture the memory of remote Linux machines over SSH with LiME, and
//! analyse it. See ARCHITECTURE.md for the map; the layers, top to bottom:
//! `cli` -> `config` -> `capture` (orchestration) -> `transport` (SSH),
//! `remote` (target commands), `sink` (file), with `lime_stream` validating the
//! stream and `manifest`/`audit` recording it.

pub mod analyze_cmd;
pub mod audit;
pub mod capture;
pub mod cli;
pub mod config;
pub mod fleet;
pub mod kcore;
pub mod lime_stream;
pub mod manifest;
pub mod material;
pub mod material_load;
pub mod profile_cmd;
pub mod progress;
pub mod remote;
pub mod repository;
pub mod s3;
pub mod sanitize;
pub mod secret;
pub mod settings;
pub mod shell;
pub mod sink;
pub mod source;
pub mod transport;
pub mod upload;
