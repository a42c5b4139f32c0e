//! Integration tests: real sshd, real QEMU guest.

// The harness unwraps: a failed set-up step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod analyze_cli;
mod architecture;
mod fleet;
mod fleet_flags;
mod harness_smoke;
mod lab_arm64;
mod lab_capture;
mod lab_fleet;
mod lab_guest;
mod lab_live;
mod lab_material;
mod lab_repository;
mod lab_sources;
mod lab_testkit;
mod lab_triage;
mod lab_triage_arm64;
mod repository;
mod repository_trust;
mod s3_capture;
mod s3_material;
mod s3_upload;
mod s3_verify;
mod ssh_capture;
mod support;
