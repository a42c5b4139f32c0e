//! mshot library
