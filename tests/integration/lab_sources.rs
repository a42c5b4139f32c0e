//! The stream sources on a real kernel: LiME with compression and its own
//! digest, /proc/kcore without any module, a corrupted byte caught by the
//! digest, and `--method auto` falling back to kcore when insmod refuses the
//! module or the guest enforces module signatures. Several checks share one
//! guest boot to keep CI time down.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::lab_guest::{Setup, analyze_json, lime_ranges, system_ram};
use crate::support::{self, Need};

/// Ports of this file's guests (issue 8's range).
const SOURCES_PORT: u16 = 2291;
const SIG_ENFORCE_PORT: u16 = 2292;
const LOCKDOWN_PORT: u16 = 2293;

fn manifest(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// (pid, ppid, comm) of every task in pslist rows (a JSON array).
fn pslist(rows: &serde_json::Value) -> BTreeSet<(u64, u64, String)> {
    rows.as_array()
        .expect("pslist rows")
        .iter()
        .map(|row| {
            (
                row["pid"].as_u64().unwrap(),
                row["ppid"].as_u64().unwrap(),
                row["comm"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A task that may exist in one of two captures a minute apart and not
/// the other: the lab-sleeper's `sleep`, a capture session's dropbear and
/// what it runs (`sh -c`, `dd`, `insmod`, `cat`), and kernel workers.
fn transient(&(_, ppid, ref comm): &(u64, u64, String)) -> bool {
    matches!(comm.as_str(), "sleep" | "dd" | "insmod" | "cat")
        || comm.starts_with("kworker/")
        || (matches!(comm.as_str(), "sh" | "dropbear") && ppid != 1)
}

/// Pids that listen on TCP port 22 (dropbear) in netstat rows.
fn ssh_listeners(rows: &serde_json::Value) -> BTreeSet<u64> {
    rows.as_array()
        .expect("netstat rows")
        .iter()
        .filter(|r| r["proto"] == "TCP" && r["local_port"] == 22 && r["state"] == "LISTEN")
        .filter_map(|r| r["pid"].as_u64())
        .collect()
}

/// Nothing of mshot's left on the target, checked with the OpenSSH client.
fn assert_nothing_left(setup: &Setup) {
    let after = setup.ssh("grep -c '^lime ' /proc/modules; ls -d /tmp/mshot.* 2>/dev/null | wc -l");
    assert_eq!(
        after.split_whitespace().collect::<Vec<_>>(),
        ["0", "0"],
        "{after}"
    );
}

#[test]
fn lime_compressed_with_digest_kcore_without_module_a_corrupted_byte_and_a_refused_insmod()
-> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::Netns,
        Need::TestUsers,
        Need::LabDir
    );
    let setup = Setup::start_with(SOURCES_PORT, "")?;
    let ram = system_ram(&setup.ssh("cat /proc/iomem"));
    let out_dir = tempfile::tempdir()?;
    let out = out_dir.path();

    // 1. LiME, compressed on the wire and stored as received, with LiME's digest.
    let output = setup
        .mshot(out)
        .args([
            "--method",
            "lime",
            "--compress",
            "--store-compressed",
            "--digest",
        ])
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "compressed capture failed: {stderr}"
    );
    let stored = out.join("guest.lime.zlib");
    let wire = std::fs::read(&stored)?;
    let mut plain = Vec::new();
    flate2::read::ZlibDecoder::new(&wire[..]).read_to_end(&mut plain)?;
    assert_eq!(lime_ranges(&plain), ram);
    let m = manifest(&out.join("guest.lime.zlib.json"));
    let source = &m["source"];
    let plain_sha = hex::encode(Sha256::digest(&plain));
    // The inflated image hashes to what LiME computed in the kernel.
    assert_eq!(source["digest"]["lime"], plain_sha.as_str(), "{source}");
    assert_eq!(source["digest"]["matches"], true);
    assert_eq!(m["image"]["sha256"], plain_sha.as_str());
    assert_eq!(m["image"]["bytes"], plain.len() as u64);
    assert_eq!(source["compressed"], true);
    assert_eq!(source["stored_as"], "zlib");
    assert_eq!(source["wire_bytes"], wire.len() as u64);
    assert_eq!(
        source["stored_sha256"],
        hex::encode(Sha256::digest(&wire)).as_str()
    );
    assert!(
        (wire.len() as u64) * 4 < plain.len() as u64,
        "compression saved little: {} of {}",
        wire.len(),
        plain.len()
    );
    assert!(
        m["lime_arguments"]
            .as_str()
            .unwrap()
            .contains("compress=1 digest=sha256")
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("LiME's own SHA-256 matches"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let lime_image = out.join("lime.lime");
    std::fs::write(&lime_image, &plain)?;
    drop(plain);
    // Its capture material, beside the plain image too, so both analyse alike.
    let material = std::fs::read_dir(out)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "material"))
        .expect("the LiME capture's material directory");
    std::os::unix::fs::symlink(&material, out.join("lime.material"))?;
    assert_nothing_left(&setup);

    // 2. /proc/kcore with no module at all: --method auto picks kcore and says why.
    let kcore_dir = out.join("kcore");
    std::fs::create_dir(&kcore_dir)?;
    // Analysed straight away from its own material, as a LiME capture is.
    let output = setup
        .mshot_without_module(&kcore_dir)
        .args(["--analyze", "pslist,pstree,netstat"])
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "kcore capture failed: {stderr}");
    // The method and why are in the summary; with no module asked for,
    // kcore is no fallback, so stderr does not warn.
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("method   kcore (") && l.contains("no LiME module was given")),
        "{stdout}"
    );
    assert!(!stderr.contains("method kcore"), "{stderr}");
    let image = std::fs::read(kcore_dir.join("guest.lime"))?;
    let ranges = lime_ranges(&image);
    // kcore serves whole pages: each range is iomem's, at most its partial last page short.
    assert_eq!(ranges.len(), ram.len());
    for (&(start, end), &(ram_start, ram_end)) in ranges.iter().zip(&ram) {
        assert_eq!(start, ram_start);
        assert!(
            end <= ram_end && ram_end - end < 4096,
            "{end:#x} vs {ram_end:#x}"
        );
    }
    let m = manifest(&kcore_dir.join("guest.json"));
    assert_eq!(m["source"]["method"], "kcore");
    assert_eq!(m["source"]["requested"], "auto");
    assert_eq!(
        m["image"]["sha256"],
        hex::encode(Sha256::digest(&image)).as_str()
    );
    assert!(m["source"]["digest"].is_null());
    let audit = m["audit"].as_array().unwrap();
    assert!(
        audit.iter().all(|a| {
            let c = a["command"].as_str().unwrap();
            !c.contains("insmod") && !c.contains("cat >")
        }),
        "kcore pushed or loaded something"
    );
    assert!(audit.iter().any(|a| {
        a["command"].as_str().unwrap().contains("dd if=/proc/kcore") && a["exit_status"] == 0
    }));
    let release = setup.lab.release();
    assert!(
        image
            .windows(release.len() + 14)
            .any(|w| w == format!("Linux version {release}").as_bytes()),
        "no kernel banner in the kcore image"
    );
    drop(image);
    // The plugins run on the kcore image exactly as on LiME's: same guest,
    // a minute apart, so the same long-lived tasks, while short ones (sleep,
    // the capture's own shell and dd) come and go.
    let read = |plugin: &str| -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_slice(&std::fs::read(
            kcore_dir.join(format!("guest.lime.{plugin}.json")),
        )?)?)
    };
    let from_kcore = pslist(&read("pslist")?);
    let from_lime = pslist(&analyze_json(&lime_image, &["pslist"])["pslist"]);
    for needed in ["init", "kthreadd", "dropbear", "httpd"] {
        assert!(
            from_kcore.iter().any(|(_, _, c)| c == needed),
            "{needed} missing (kcore)"
        );
        assert!(
            from_lime.iter().any(|(_, _, c)| c == needed),
            "{needed} missing (lime)"
        );
    }
    let only_one: Vec<_> = from_kcore
        .symmetric_difference(&from_lime)
        .filter(|t| !transient(t))
        .collect();
    assert!(
        from_kcore.len() > 20 && only_one.is_empty(),
        "long-lived tasks in one capture only: {only_one:?} ({} tasks from kcore, {} from LiME)",
        from_kcore.len(),
        from_lime.len(),
    );
    let tree = read("pstree")?;
    let tree_has = |pid: u64, ppid: u64| {
        tree.as_array()
            .unwrap()
            .iter()
            .any(|r| r["pid"] == pid && r["ppid"] == ppid)
    };
    assert!(tree_has(1, 0) && tree_has(2, 0), "{tree}");
    // dropbear's listening socket, owned by the same process in both.
    let listeners = ssh_listeners(&read("netstat")?);
    assert!(!listeners.is_empty(), "no port 22 listener from kcore");
    assert_eq!(
        listeners,
        ssh_listeners(&analyze_json(&lime_image, &["netstat"])["netstat"])
    );
    assert_nothing_left(&setup);

    // 3. A byte flipped on receipt: LiME's digest disagrees, the capture fails
    //    loudly, no image is kept and the manifest holds both hashes.
    let bad_dir = out.join("corrupt");
    std::fs::create_dir(&bad_dir)?;
    let output = setup
        .mshot(&bad_dir)
        .args([
            "--method",
            "lime",
            "--digest",
            "--test-corrupt-offset",
            "1048576",
        ])
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("DIGEST MISMATCH"), "{stderr}");
    assert!(!bad_dir.join("guest.lime").exists());
    assert!(!bad_dir.join("guest.lime.part").exists());
    let m = manifest(&bad_dir.join("guest.json"));
    let digest = &m["source"]["digest"];
    assert_eq!(digest["matches"], false, "{digest}");
    assert_ne!(digest["lime"], digest["mshot"]);
    assert_eq!(digest["lime"].as_str().unwrap().len(), 64);
    assert!(m["image"].is_null());
    assert_eq!(m["source"]["test_corrupt_offset"], 1048576);
    assert!(m["error"].as_str().unwrap().contains("DIGEST MISMATCH"));
    assert_eq!(m["cleanup"]["module_unloaded"], true, "{}", m["cleanup"]);
    assert_nothing_left(&setup);

    // 4. insmod itself refuses the module (a damaged section table that passes
    //    mshot's pre-flight checks): --method auto falls back to kcore and says so.
    let broken_dir = out.join("broken");
    std::fs::create_dir(&broken_dir)?;
    let mut module = std::fs::read(setup.lab.module())?;
    module[0x28..0x30].copy_from_slice(&(u64::MAX / 2).to_le_bytes()); // e_shoff
    let broken = out.join("broken.ko");
    std::fs::write(&broken, &module)?;
    let output = setup
        .mshot_without_module(&broken_dir)
        .arg("--module")
        .arg(&broken)
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("insmod refused the LiME module") && stderr.contains("method kcore"),
        "{stderr}"
    );
    let m = manifest(&broken_dir.join("guest.json"));
    assert_eq!(m["source"]["method"], "kcore");
    let audit = m["audit"].as_array().unwrap();
    assert!(audit.iter().any(|a| {
        a["command"].as_str().unwrap().starts_with("insmod ") && a["exit_status"] != 0
    }));
    let image = std::fs::read(broken_dir.join("guest.lime"))?;
    assert_eq!(lime_ranges(&image).len(), ram.len());
    assert_eq!(m["image"]["bytes"], image.len() as u64);
    assert_nothing_left(&setup);
    Ok(())
}

#[test]
fn auto_falls_back_to_kcore_when_the_kernel_enforces_module_signatures() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::Netns,
        Need::TestUsers,
        Need::LabDir
    );
    let setup = Setup::start_with(SIG_ENFORCE_PORT, "module.sig_enforce=1")?;
    assert_eq!(
        setup
            .ssh("cat /sys/module/module/parameters/sig_enforce")
            .trim(),
        "Y"
    );
    let ram = system_ram(&setup.ssh("cat /proc/iomem"));
    let out_dir = tempfile::tempdir()?;
    let refused_dir = tempfile::tempdir()?;

    // --method lime is refused before anything is pushed, with the reason.
    let output = setup
        .mshot(refused_dir.path())
        .args(["--method", "lime"])
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("sig_enforce") && stderr.contains("--method kcore"),
        "{stderr}"
    );
    let m = manifest(&refused_dir.path().join("guest.json"));
    assert!(
        m["audit"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| !a["command"].as_str().unwrap().contains("cat >")),
        "the module was pushed although it cannot load"
    );

    // --method auto (the default) with the same unsigned module: kcore, said so.
    let output = setup.mshot(out_dir.path()).output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("method kcore") && stderr.contains("sig_enforce"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("method   kcore"), "{stdout}");
    let image = std::fs::read(out_dir.path().join("guest.lime"))?;
    let ranges = lime_ranges(&image);
    assert_eq!(
        ranges.iter().map(|r| r.0).collect::<Vec<_>>(),
        ram.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    let m = manifest(&out_dir.path().join("guest.json"));
    assert_eq!(m["source"]["method"], "kcore");
    assert_eq!(m["source"]["target_policy"]["sig_enforce"], true);
    assert!(
        m["source"]["reason"]
            .as_str()
            .unwrap()
            .contains("not signed")
    );
    assert_eq!(m["image"]["bytes"], image.len() as u64);
    assert_nothing_left(&setup);
    Ok(())
}

/// A kernel locked down in confidentiality mode takes neither an unsigned
/// module nor reads of /proc/kcore: mshot says so, on one line, before it
/// pushes or loads anything, and leaves nothing behind.
#[test]
fn lockdown_in_confidentiality_mode_is_explained_and_nothing_is_tried() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::Netns,
        Need::TestUsers,
        Need::LabDir
    );
    let setup = Setup::start_with(LOCKDOWN_PORT, "lockdown=confidentiality")?;
    let mode = setup.ssh("cat /sys/kernel/security/lockdown");
    assert!(mode.contains("[confidentiality]"), "{mode}");
    let out_dir = tempfile::tempdir()?;
    let output = setup.mshot(out_dir.path()).output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("mshot:")).collect();
    assert!(
        errors.len() == 1
            && errors[0].contains("no way to read memory on this target")
            && errors[0].contains("lockdown (confidentiality) refuses unsigned modules")
            && errors[0].contains("forbids reading /proc/kcore"),
        "{stderr}"
    );
    let m = manifest(&out_dir.path().join("guest.json"));
    assert_eq!(
        m["source"]["target_policy"]["lockdown"], "confidentiality",
        "{m:#}"
    );
    assert!(m["image"].is_null());
    assert!(
        m["audit"].as_array().unwrap().iter().all(|a| {
            let c = a["command"].as_str().unwrap();
            !c.contains("cat >") && !c.contains("insmod") && !c.contains("dd if=/proc/kcore")
        }),
        "something was pushed, loaded or read: {m:#}"
    );
    assert!(!out_dir.path().join("guest.lime").exists());
    assert_nothing_left(&setup);
    Ok(())
}
