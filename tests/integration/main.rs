//! Integration tests: real sshd, real QEMU guest.
