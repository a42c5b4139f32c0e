//! What every layer may use: secrets that never print, terminal-safe text,
//! progress output.

pub mod fs;
pub mod progress;
pub mod sanitize;
pub mod secret;
