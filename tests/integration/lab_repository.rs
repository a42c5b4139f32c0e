//! The LiME module repository against the QEMU lab guest: a capture with a
//! module built by `mshot repo build` for the guest's kernel, and one from
//! the shipped repository (`kernel-modules/repo`) trusted through the
//! built-in key; no `--module` in either.

use std::path::{Path, PathBuf};

use crate::repository::{mshot, ok, sha256_hex};
use crate::support::{self, HttpServer, Need};

/// Ports of the lab guests for the repository end-to-end tests (issue 4's range).
const LAB_PORT: u16 = 2250;
const SHIPPED_LAB_PORT: u16 = 2251;

#[test]
fn capture_the_lab_guest_with_a_module_from_a_built_repository() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::Netns,
        Need::TestUsers,
        Need::Python3,
        Need::LabDir
    );
    let setup = crate::lab_guest::Setup::start(LAB_PORT)?;
    let release = setup.lab.release();

    // The repository: built by `mshot repo build` from Debian's packages for
    // the guest's kernel, indexed, signed with a fresh key, served over HTTP.
    let root = tempfile::tempdir()?;
    let repo = root.path().join("repo");
    ok(mshot()
        .args(["repo", "build", "--out"])
        .arg(&repo)
        .arg("--work")
        .arg(root.path().join("work"))
        .arg(&release));
    let (secret, public) = (root.path().join("k.key"), root.path().join("k.pub"));
    ok(mshot()
        .args(["repo", "keygen", "--unencrypted", "--secret-key"])
        .arg(&secret)
        .arg("--public-key")
        .arg(&public));
    ok(mshot().args(["repo", "index"]).arg(&repo));
    ok(mshot()
        .args(["repo", "sign"])
        .arg(&repo)
        .arg("--secret-key")
        .arg(&secret));
    let built = std::fs::read(repo.join(format!("modules/x86_64/lime-{release}.ko")))?;
    let server = HttpServer::serve(&repo)?;

    let out_dir = tempfile::tempdir()?;
    let cache = tempfile::tempdir()?;
    let output = setup
        .mshot_without_module(out_dir.path())
        .arg("--repository-url")
        .arg(server.url())
        .arg("--repository-key")
        .arg(&public)
        .env("XDG_CACHE_HOME", cache.path())
        .env_remove("MSHOT_REPOSITORY_URL")
        .env_remove("MSHOT_REPOSITORY_KEY")
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "mshot failed: {stderr}");

    let image = std::fs::read(out_dir.path().join("guest.lime"))?;
    let ram = crate::lab_guest::system_ram(&setup.ssh("cat /proc/iomem"));
    assert_eq!(crate::lab_guest::lime_ranges(&image), ram);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.path().join("guest.json"))?)?;
    assert_eq!(manifest["kernel_release"], release.as_str());
    assert_eq!(manifest["source"]["method"], "lime");
    let module = &manifest["module"];
    assert_eq!(module["sha256"], sha256_hex(&built));
    assert_eq!(module["repository"]["repository"], server.url());
    assert_eq!(
        module["repository"]["entry"]["lime_version"]
            .as_str()
            .map(|v| !v.is_empty()),
        Some(true)
    );
    assert!(
        module["repository"]["entry"]["build"]["headers"]
            .as_str()
            .unwrap()
            .starts_with(&format!("linux-headers-{release} "))
    );
    assert_eq!(manifest["cleanup"]["module_unloaded"], true);
    setup.assert_target_clean(&manifest);
    Ok(())
}

#[test]
fn the_shipped_repository_serves_a_real_kernel() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::Netns,
        Need::TestUsers,
        Need::LabDir
    );
    // The 6.12 cloud guest when tests/run built it, else the main (6.1) one:
    // either way a module from kernel-modules/repo loads into a real kernel,
    // trusted through the key built into mshot (no --repository-key).
    let main = PathBuf::from(std::env::var("MSHOT_LAB_DIR")?);
    let dir = std::env::var_os("MSHOT_LAB_CLOUD_DIR")
        .map(PathBuf::from)
        .or_else(|| Some(main.parent()?.join("cloud-amd64")))
        .filter(|d| d.join("vmlinuz").is_file() && d.join("release").is_file())
        .unwrap_or(main);
    let setup = crate::lab_guest::Setup::start_in(&dir, SHIPPED_LAB_PORT, "")?;
    let release = setup.lab.release();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernel-modules/repo");
    let shipped_manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(shipped.join("manifest.json"))?)?;
    let has_release = shipped_manifest["modules"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["kernel_release"] == release.as_str() && m["arch"] == "x86_64");

    let out_dir = tempfile::tempdir()?;
    let cache = tempfile::tempdir()?;
    let output = setup
        .mshot_without_module(out_dir.path())
        .arg("--repository-url")
        .arg(format!("file://{}", shipped.display()))
        .args(["--method", "lime"])
        .env("XDG_CACHE_HOME", cache.path())
        .env_remove("MSHOT_REPOSITORY_URL")
        .env_remove("MSHOT_REPOSITORY_KEY")
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.path().join("guest.json"))?)?;
    if !has_release {
        // Debian moved on since kernel-modules/repo was built: the refusal
        // must say so and point at the closest shipped releases.
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("no LiME module for kernel {release}")),
            "{stderr}"
        );
        assert!(stderr.contains("closest it has: "), "{stderr}");
        return Ok(());
    }
    assert!(output.status.success(), "mshot failed: {stderr}");
    let image = std::fs::read(out_dir.path().join("guest.lime"))?;
    let ram = crate::lab_guest::system_ram(&setup.ssh("cat /proc/iomem"));
    assert_eq!(crate::lab_guest::lime_ranges(&image), ram);
    let origin = &manifest["module"]["repository"];
    assert_eq!(origin["key_origin"], "built-in key");
    assert_eq!(origin["entry"]["kernel_release"], release.as_str());
    assert_eq!(manifest["source"]["method"], "lime");
    setup.assert_target_clean(&manifest);
    Ok(())
}
