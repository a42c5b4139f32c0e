//! memimage: the synchronous analysis core of mshot.
//!
//! Pipeline (each layer only talks to the one below it):
//!
//! ```text
//!  bytes (mmap) ─▶ format::PhysicalMemory ─▶ memory::VirtualMemory (x86-64, AArch64)
//!                                                  │
//!  profile bytes ─▶ profile::Profile ──────────▶ kernel::Kernel (banner, KASLR, DTB)
//!                                                  │
//!                                           plugins::run ─▶ Vec<Row>
//! ```
//!
//! Invariants: no I/O, no environment access, no async: callers hand in
//! byte slices and get plain values back, so everything here can be fuzzed.

// Beyond the workspace's lints: image data decides nothing here by panicking.
#![deny(clippy::panic)]
#![warn(clippy::indexing_slicing)]

pub mod format;

pub use format::{FormatError, ImageFormat, PhysicalMemory};
pub mod memory;
#[doc(hidden)]
pub mod synth;

pub use memory::{Aarch64Paging, Granule, MemoryError, PagingMode, VirtualMemory};
pub mod profile;

pub use profile::{Profile, ProfileError};
pub mod kernel;
pub mod material;

pub use kernel::{Kernel, KernelError};
pub mod plugins;

pub use plugins::{Options, PluginError, Row, Value, run_plugin};
