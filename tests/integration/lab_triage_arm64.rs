//! `triage` end to end on arm64: the lab's arm64 guest (Debian's 6.12
//! cloud kernel under qemu-system-aarch64) captured with the project's test
//! rootkit loaded. It hooks three entries of `sys_call_table` (which arm64's
//! `invoke_syscall` reads: there is no generated dispatcher), hides itself,
//! registers a keyboard notifier, a netfilter hook and a tracepoint probe,
//! and leaves code in module space; the BPF and RWX helpers run beside it.
//! Every planted item must be found and named, and nothing else.

use crate::lab_guest::Setup;
use crate::lab_testkit::start_compromised_with;
use crate::lab_triage::{
    ARM64, EXIT_FINDINGS, assert_hook_addresses, assert_planted, assert_tracing, capture_triage,
};
use crate::support::{Need, prereq};

/// This file's guest port.
const PORT: u16 = 2403;
/// A small guest keeps the capture under TCG short.
const MEM_MIB: u32 = 256;

/// The hook answers kill(31337, 63) with 0: the patched table is live.
fn assert_magic_kill(setup: &Setup) {
    let out = setup
        .ssh("kill -63 31337 2>/dev/null; echo magic=$?; kill -0 31337 2>/dev/null; echo plain=$?");
    assert!(out.contains("magic=0"), "{out}");
    assert!(out.contains("plain=1"), "{out}");
}

#[test]
fn triage_names_the_test_rootkit_on_arm64() -> anyhow::Result<()> {
    if !prereq::check(&[
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::Netns,
        Need::TestUsers,
        Need::LabArm64,
    ]) {
        return Ok(());
    }
    let dir = prereq::arm64_lab_dir().map_err(anyhow::Error::msg)?;
    let setup = start_compromised_with(&dir, PORT, Some(MEM_MIB))?;
    assert_magic_kill(&setup);
    let dmesg = setup.ssh("dmesg");
    let bpf_log = setup.ssh("cat /run/bpf-helper.log");
    let out = tempfile::tempdir()?;
    let (image, rows, code) = capture_triage(&setup, out.path())?;
    assert_eq!(code, EXIT_FINDINGS);
    assert_planted(&rows, &dmesg, &ARM64);
    assert_hook_addresses(&image, &dmesg, &ARM64);
    assert_tracing(&image, &dmesg, &bpf_log);
    Ok(())
}
