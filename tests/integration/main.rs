//! Integration tests: real sshd, real QEMU guest.
mod harness_smoke;
mod support;
mod ssh_capture;
