//! End to end on a real kernel: the QEMU lab guest (lab/build-guest.sh) runs
//! inside a network namespace that only a jump host (a real sshd in the same
//! namespace) can reach. mshot captures it through the jump host with real
//! LiME, and the test checks the image independently of mshot's own checks.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::lab_guest::{Setup, lime_ranges, system_ram};
use crate::support::{self, Need, SmallDisk, user};

/// Ports of the guests' sshd, forwarded on each namespace's loopback only.
/// Distinct per test because the lab names its pidfiles and logs by port.
const CAPTURE_PORT: u16 = 2240;
const INTERRUPT_PORT: u16 = 2241;
const DROP_PORT: u16 = 2242;
/// The S3 tests' guest ports (issue 5's range).
const S3_CAPTURE_PORT: u16 = 2260;
const S3_INTERRUPT_PORT: u16 = 2261;
const S3_FLEET_PORT: u16 = 2262;

#[test]
fn capture_the_lab_guest_through_a_jump_host() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::Netns,
        Need::TestUsers,
        Need::LabDir
    );
    let setup = Setup::start(CAPTURE_PORT)?;
    let uname = setup.ssh("uname -r; uname -v");
    let mut uname_lines = uname.lines();
    let (release, version) = (
        uname_lines.next().unwrap_or(""),
        uname_lines.next().unwrap_or(""),
    );
    assert_eq!(release, setup.lab.release(), "guest uname: {uname:?}");
    let ram = system_ram(&setup.ssh("cat /proc/iomem"));
    assert!(!ram.is_empty());

    // The guest is out of reach without the jump host.
    assert!(std::net::TcpStream::connect(("127.0.0.1", CAPTURE_PORT)).is_err());

    let out_dir = tempfile::tempdir()?;
    let output = setup.mshot(out_dir.path()).output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "mshot failed: {stderr}");

    let image_path = out_dir.path().join("guest.lime");
    let image = std::fs::read(&image_path)?;
    let ranges = lime_ranges(&image);
    assert_eq!(
        ranges, ram,
        "LiME ranges differ from the guest's System RAM"
    );
    let expected: u64 = ram.iter().map(|(s, e)| e - s + 1 + 32).sum();
    assert_eq!(image.len() as u64, expected);

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.path().join("guest.json"))?)?;
    assert_eq!(
        manifest["image"]["sha256"],
        hex::encode(Sha256::digest(&image))
    );
    assert_eq!(manifest["image"]["bytes"], image.len() as u64);
    assert_eq!(manifest["kernel_release"], release);
    assert_eq!(manifest["jump_hosts"].as_array().unwrap().len(), 1);
    assert_eq!(manifest["cleanup"]["module_unloaded"], true);
    assert_eq!(manifest["cleanup"]["temp_dir_removed"], true);
    assert!(
        manifest["lime_arguments"]
            .as_str()
            .unwrap()
            .contains("localhostonly=1 timeout=0"),
        "{}",
        manifest["lime_arguments"]
    );
    let audit = manifest["audit"].as_array().unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a["command"].as_str().unwrap().starts_with("insmod "))
    );
    assert!(
        audit
            .iter()
            .any(|a| a["command"] == "rmmod lime" && a["exit_status"] == 0)
    );

    // The kernel's own banner, as uname reports it, is in the image.
    assert!(contains(
        &image,
        format!("Linux version {release} ").as_bytes()
    ));
    assert!(
        contains(&image, version.as_bytes()),
        "uname -v {version:?} not in the image"
    );

    // Nothing left on the target.
    setup.assert_target_clean(&manifest);
    Ok(())
}

/// Starts a capture into `out_dir` and returns once 64 MiB of it has landed
/// in the `.part` file, so a test can break it mid-stream.
fn start_and_wait_for_64_mib(
    setup: &Setup,
    out_dir: &Path,
) -> anyhow::Result<(std::process::Child, PathBuf)> {
    let mut child = setup
        .mshot(out_dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let part = out_dir.join("guest.lime.part");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
    while std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0) < 64 << 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the capture never got going"
        );
        if child.try_wait()?.is_some() {
            let output = child.wait_with_output()?;
            panic!(
                "mshot ended mid-stream on its own: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok((child, part))
}

#[test]
fn a_full_disk_fails_before_lime_loads_and_ctrl_c_mid_stream_keeps_no_image() -> anyhow::Result<()>
{
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::Netns,
        Need::TestUsers,
        Need::LabDir
    );
    let setup = Setup::start(INTERRUPT_PORT)?;

    // 64 MiB of disk for a 512 MiB guest: refused before LiME loads, not
    // half way, and nothing is left that could pass for an image.
    let small = SmallDisk::mount(64)?;
    let output = setup.mshot(small.path()).output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let expected = format!(
        "not enough space for the image in {}: ",
        small.path().display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(stderr.contains(" free, the image needs 5"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(small.path())?
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, ["guest.json"], "only the manifest of the failure");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(small.path().join("guest.json"))?)?;
    assert!(manifest["image"].is_null());
    assert_eq!(manifest["lime_arguments"], "", "LiME was loaded");
    setup.assert_target_clean(&manifest);
    drop(small);

    let out_dir = tempfile::tempdir()?;
    let (child, part) = start_and_wait_for_64_mib(&setup, out_dir.path())?;
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let output = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("interrupted by Ctrl-C"), "{stderr}");

    assert!(!out_dir.path().join("guest.lime").exists());
    assert!(!part.exists(), "the partial image was left behind");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.path().join("guest.json"))?)?;
    assert!(manifest["image"].is_null());
    assert!(manifest["error"].as_str().unwrap().contains("interrupted"));
    assert_eq!(
        manifest["cleanup"]["module_unloaded"], true,
        "{}",
        manifest["cleanup"]
    );
    assert_eq!(manifest["cleanup"]["temp_dir_removed"], true);

    setup.assert_target_clean(&manifest);
    Ok(())
}

#[test]
fn dropped_connection_mid_stream_reconnects_and_cleans_the_target() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::Netns,
        Need::TestUsers,
        Need::LabDir
    );
    let setup = Setup::start(DROP_PORT)?;
    let out_dir = tempfile::tempdir()?;
    let (child, part) = start_and_wait_for_64_mib(&setup, out_dir.path())?;
    // The jump host kills mshot's connection, as a network drop would; it
    // still accepts new ones, so cleanup can come back.
    setup.jump.drop_connections()?;
    let output = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("mshot after the drop:\n{stderr}");
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!out_dir.path().join("guest.lime").exists());
    assert!(!part.exists(), "the partial image was left behind");

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.path().join("guest.json"))?)?;
    assert!(manifest["image"].is_null());
    assert!(
        manifest["error"]
            .as_str()
            .is_some_and(|e| e.contains("connection") && e.contains("lost")),
        "{}",
        manifest["error"]
    );
    assert_eq!(
        manifest["cleanup"]["temp_dir_removed"], true,
        "{}",
        manifest["cleanup"]
    );
    assert_eq!(manifest["cleanup"]["module_unloaded"], true);
    // Cleanup ran on a second connection: the jump host logged two logins.
    let logins = setup.jump.log().matches("Accepted publickey").count();
    assert!(
        logins >= 2,
        "expected a reconnect, sshd log:\n{}",
        setup.jump.log()
    );

    setup.assert_target_clean(&manifest);
    Ok(())
}

#[test]
fn capture_the_lab_guest_straight_into_s3() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::Netns,
        Need::TestUsers,
        Need::LabDir,
        Need::Garage
    );
    let garage = support::Garage::start()?;
    let setup = Setup::start(S3_CAPTURE_PORT)?;
    let ram = system_ram(&setup.ssh("cat /proc/iomem"));
    let log_dir = tempfile::tempdir()?;
    // LiME compresses on the wire (a slow link's choice); mshot inflates
    // on arrival and the bucket gets the plain image.
    let mut cmd = setup.mshot_no_output();
    cmd.args(["--bucket", &garage.bucket, "--prefix", "ir/case-7"])
        .args(["--endpoint-url", &garage.endpoint()])
        .arg("--compress")
        .arg("--log-dir")
        .arg(log_dir.path());
    garage.env(&mut cmd);
    let output = cmd.output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "mshot failed: {stderr}");
    assert!(
        stdout.contains("s3       s3://mshot-evidence/ir/case-7/127.0.0.1/guest.lime"),
        "{stdout}"
    );

    // No local image; the manifest's local copy is in --log-dir.
    assert!(!log_dir.path().join("guest.lime").exists());
    let local: serde_json::Value =
        serde_json::from_slice(&std::fs::read(log_dir.path().join("guest.json"))?)?;

    // The object's bytes hash to the manifest's SHA-256, uploaded beside it.
    let image = garage.get("ir/case-7/127.0.0.1/guest.lime")?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&garage.get("ir/case-7/127.0.0.1/guest.json")?)?;
    assert_eq!(
        manifest["image"]["sha256"],
        hex::encode(Sha256::digest(&image))
    );
    assert_eq!(manifest["image"]["sha256"], local["image"]["sha256"]);
    assert_eq!(lime_ranges(&image), ram);
    assert_eq!(manifest["source"]["compressed"], true, "{manifest:#}");
    let wire = manifest["source"]["wire_bytes"].as_u64().unwrap();
    assert!(
        wire > 0 && wire * 4 < image.len() as u64,
        "{wire} wire bytes for {}",
        image.len()
    );
    assert_eq!(manifest["image"]["bytes"], image.len() as u64);
    assert_eq!(manifest["s3"]["completed"], true);
    assert_eq!(manifest["s3"]["key"], "ir/case-7/127.0.0.1/guest.lime");
    let meta = garage.metadata("ir/case-7/127.0.0.1/guest.lime")?;
    assert_eq!(
        meta["mshot-kernel-release"],
        setup.lab.release(),
        "{meta:?}"
    );

    // The profile material went too, beside the image, before the manifest
    // that lists it.
    let prefix = "ir/case-7/127.0.0.1/guest.material/";
    let objects = assert_material_in_bucket(&garage, &manifest, prefix)?;
    assert!(
        stdout.contains(&format!(
            "material s3://{}/{prefix} ({objects} objects)",
            garage.bucket
        )),
        "{stdout}"
    );
    // With --bucket alone the local copy sits beside the manifest's, in --log-dir.
    assert!(log_dir.path().join("guest.material/kallsyms").is_file());
    assert!(garage.open_uploads()?.is_empty());
    setup.assert_target_clean(&manifest);
    Ok(())
}

#[test]
fn ctrl_c_mid_upload_aborts_it_and_cleans_the_target() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::Netns,
        Need::TestUsers,
        Need::LabDir,
        Need::Garage
    );
    let garage = support::Garage::start()?;
    let setup = Setup::start(S3_INTERRUPT_PORT)?;
    let log_dir = tempfile::tempdir()?;
    let mut cmd = setup.mshot_no_output();
    cmd.args(["--bucket", &garage.bucket])
        .args(["--endpoint-url", &garage.endpoint()])
        .arg("--log-dir")
        .arg(log_dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    garage.env(&mut cmd);
    let mut child = cmd.spawn()?;
    // Interrupt once parts are stored in the open upload.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
    loop {
        let parts = garage.block_on(async {
            let uploads = garage
                .client()
                .list_multipart_uploads()
                .bucket(&garage.bucket)
                .send()
                .await
                .ok()?;
            let upload = uploads.uploads().first()?.clone();
            let parts = garage
                .client()
                .list_parts()
                .bucket(&garage.bucket)
                .key(upload.key()?)
                .upload_id(upload.upload_id()?)
                .send()
                .await
                .ok()?;
            Some(parts.parts().len())
        });
        if parts.unwrap_or(0) >= 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the upload never got going"
        );
        assert!(
            child.try_wait()?.is_none(),
            "mshot ended before it was interrupted"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let output = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("interrupted by Ctrl-C"), "{stderr}");

    // No object, no open upload, the target clean; the local manifest says so.
    assert!(garage.objects()?.is_empty(), "{:?}", garage.objects()?);
    assert!(garage.open_uploads()?.is_empty());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(log_dir.path().join("guest.json"))?)?;
    assert!(manifest["image"].is_null());
    assert_eq!(manifest["s3"]["aborted"], true, "{}", manifest["s3"]);
    assert_eq!(manifest["s3"]["completed"], false);
    setup.assert_target_clean(&manifest);
    Ok(())
}

/// Each material file the manifest lists is an object under `prefix` whose
/// bytes hash to the manifest's SHA-256 for that file, S3 stores that SHA-256
/// (it checked it on arrival), the manifest's `s3.material` lists it, and
/// `index.json` is there too. Returns the number of objects.
fn assert_material_in_bucket(
    garage: &support::Garage,
    manifest: &serde_json::Value,
    prefix: &str,
) -> anyhow::Result<usize> {
    use base64::Engine;
    let files = manifest["material"]["files"].as_array().unwrap();
    let names: Vec<&str> = files.iter().map(|f| f["name"].as_str().unwrap()).collect();
    for name in ["vmlinux.btf", "kallsyms", "iomem", "version", "uname"] {
        assert!(names.contains(&name), "{name} not fetched: {names:?}");
    }
    let record = &manifest["s3"]["material"];
    assert_eq!(record["prefix"], prefix, "{record:#}");
    assert_eq!(record["failed"], serde_json::json!([]), "{record:#}");
    for file in files {
        let key = format!("{prefix}{}", file["name"].as_str().unwrap());
        let want = file["sha256"].as_str().unwrap();
        let object = garage.get(&key)?;
        assert_eq!(hex::encode(Sha256::digest(&object)), want, "{key}");
        assert_eq!(
            object.len() as u64,
            file["bytes"].as_u64().unwrap(),
            "{key}"
        );
        let stored = garage.block_on(async {
            garage
                .client()
                .head_object()
                .bucket(&garage.bucket)
                .key(&key)
                .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
                .send()
                .await
                .map(|h| h.checksum_sha256().map(str::to_string))
        })?;
        let want_b64 = base64::engine::general_purpose::STANDARD.encode(hex::decode(want)?);
        assert_eq!(stored, Some(want_b64), "{key}");
        assert!(
            record["objects"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o["key"] == key.as_str() && o["sha256"] == want),
            "{key} not in {record:#}"
        );
    }
    // index.json too, so a downloaded copy is checked like a local one.
    let index: serde_json::Value =
        serde_json::from_slice(&garage.get(&format!("{prefix}index.json"))?)?;
    assert_eq!(index["files"], manifest["material"]["files"]);
    Ok(files.len() + 1)
}

/// A fleet with a bucket goes through the same capture path: the guest's
/// image, material and manifest all land in the bucket, and the report says so.
#[test]
fn a_fleet_with_a_bucket_uploads_the_guests_material_too() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::Netns,
        Need::TestUsers,
        Need::LabDir,
        Need::Garage
    );
    let garage = support::Garage::start()?;
    let setup = Setup::start(S3_FLEET_PORT)?;
    let work = tempfile::tempdir()?;
    let dir = work.path();
    let config = format!(
        r#"workers: 1
bucket: {{name: {bucket}, prefix: fleet/run-7, endpoint_url: {endpoint}}}
hosts:
  - addr: 127.0.0.1
    port: {port}
    name: guest
    username: root
    key: {key}
    module: {module}
    known_hosts: {known_hosts}
    agent: false
    filename: guest.lime
    jump_host:
      addr: {jump_ip}
      port: {jump_port}
      username: {jump_user}
      key: {jump_key}
"#,
        bucket = garage.bucket,
        endpoint = garage.endpoint(),
        port = setup.guest.port,
        key = setup.lab.key().display(),
        module = setup.lab.module().display(),
        known_hosts = setup.known_hosts.display(),
        jump_ip = setup.jump.ip(),
        jump_port = setup.jump.port(),
        jump_user = user::NOPW,
        jump_key = setup.jump_key.private.display(),
    );
    std::fs::write(dir.join("fleet.yaml"), config)?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mshot"));
    cmd.current_dir(dir)
        .arg("-c")
        .arg(dir.join("fleet.yaml"))
        .arg("--report")
        .arg(dir.join("report.json"))
        .env_remove("SSH_AUTH_SOCK");
    garage.env(&mut cmd);
    let output = cmd.output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json"))?)?;
    assert_eq!(report["summary"]["succeeded"], 1, "{report:#}");
    let host = &report["hosts"][0];
    assert!(host["error"].is_null(), "{host:#}");

    let image = garage.get("fleet/run-7/127.0.0.1/guest.lime")?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&garage.get("fleet/run-7/127.0.0.1/guest.json")?)?;
    assert_eq!(
        manifest["image"]["sha256"],
        hex::encode(Sha256::digest(&image))
    );
    assert_material_in_bucket(&garage, &manifest, "fleet/run-7/127.0.0.1/guest.material/")?;
    assert!(garage.open_uploads()?.is_empty());
    setup.assert_target_clean(&manifest);
    Ok(())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
