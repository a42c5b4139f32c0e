//! `mshot upload` of a local capture into a real S3-compatible server
//! (Garage on loopback): the image and its manifest's metadata, a tampered
//! image, no manifest, a part the server never answers, SIGTERM, and
//! credentials from a named profile. The capture itself goes through a real
//! sshd, as in `s3_capture`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::s3_capture::{MIB, Rig, lime_image, text};
use crate::support::{self, DataSource, FaultProxy, Need, user};

/// A capture to a local directory (no bucket) through the real receive path:
/// the image and the manifest mshot wrote beside it, as `mshot upload` finds
/// them on a jump box.
pub(crate) fn capture_locally(
    rig: &Rig,
    dir: &Path,
    name: &str,
    body: u64,
) -> anyhow::Result<PathBuf> {
    let (image, sha256) = lime_image(dir, body);
    let source = DataSource::file(&image)?;
    let out_dir = dir.join("captured");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mshot"));
    cmd.arg("bench-receive")
        .args(["--server", "127.0.0.1", "--port"])
        .arg(rig.sshd.port().to_string())
        .args(["--user", user::NOPW, "--key"])
        .arg(&rig.key.private)
        .arg("--known-hosts")
        .arg(&rig.known_hosts)
        .arg("--source-port")
        .arg(source.port().to_string())
        .args(["--filename", name, "--output-dir"])
        .arg(&out_dir)
        .env_remove("SSH_AUTH_SOCK");
    let out = cmd.output()?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains(&format!("sha256={sha256}")), "{stdout}");
    Ok(out_dir.join(name))
}

/// `mshot upload IMAGE` into the rig's bucket under `cases/up`.
pub(crate) fn upload(rig: &Rig, image: &Path) -> Command {
    upload_via(rig, image, &rig.garage.endpoint())
}

pub(crate) fn upload_via(rig: &Rig, image: &Path, endpoint: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mshot"));
    cmd.arg("upload")
        .arg(image)
        .args(["--bucket", &rig.garage.bucket, "--prefix", "cases/up"])
        .args(["--endpoint-url", endpoint]);
    rig.garage.env(&mut cmd);
    cmd
}

pub(crate) fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn upload_of_a_local_capture_stores_it_with_the_manifests_metadata() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::TestUsers,
        Need::Garage
    );
    let rig = Rig::start()?;
    let work = tempfile::tempdir()?;
    // Three parts of 8 MiB, the last one short.
    let image = capture_locally(&rig, work.path(), "jump1.lime", 20 * MIB + 12345)?;
    let bytes = std::fs::read(&image)?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let local_manifest = read_json(&work.path().join("captured/jump1.json"));
    assert_eq!(local_manifest["image"]["sha256"], sha256.as_str());

    let out = upload(&rig, &image)
        .args(["--s3-concurrency", "2"])
        .output()?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}\n{}", rig.garage.log());
    assert!(stdout.contains(&format!("sha256   {sha256}")), "{stdout}");

    // The object is the file byte for byte, under the capture's key.
    let key = "cases/up/127.0.0.1/jump1.lime";
    assert_eq!(rig.garage.get(key)?, bytes);
    let meta = rig.garage.metadata(key)?;
    assert_eq!(meta["mshot-host"], "127.0.0.1");
    assert_eq!(
        meta["mshot-kernel-release"],
        local_manifest["kernel_release"].as_str().unwrap()
    );
    assert_eq!(
        meta["mshot-capture-time"],
        local_manifest["started"].as_str().unwrap()
    );
    assert_eq!(
        meta["mshot-tool-version"],
        format!("mshot {}", local_manifest["tool_version"].as_str().unwrap())
    );
    assert_eq!(meta["mshot-manifest"], "cases/up/127.0.0.1/jump1.json");
    // Known before the upload started, so it is on the image object itself.
    assert_eq!(meta["mshot-image-sha256"], sha256.as_str());

    // The manifest beside it is the capture's, with the upload recorded.
    let manifest_key = "cases/up/127.0.0.1/jump1.json";
    let stored: serde_json::Value = serde_json::from_slice(&rig.garage.get(manifest_key)?)?;
    for field in [
        "host",
        "started",
        "finished",
        "image",
        "kernel_release",
        "module",
    ] {
        assert_eq!(stored[field], local_manifest[field], "{field}");
    }
    assert_eq!(stored["s3"]["completed"], true, "{stored:#}");
    assert_eq!(stored["s3"]["parts"], 3);
    assert_eq!(stored["s3"]["key"], key);
    // Garage takes ChecksumType FULL_OBJECT: the file's own CRC32C proves it.
    use base64::Engine;
    let full_crc32c =
        base64::engine::general_purpose::STANDARD.encode(crc32c::crc32c(&bytes).to_be_bytes());
    assert_eq!(stored["s3"]["checksum_crc32c"], full_crc32c, "{stored:#}");
    let verification = &stored["s3"]["verification"];
    assert_eq!(verification["by"], "crc32c", "{stored:#}");
    assert!(
        verification["checks"][1]["note"]
            .as_str()
            .is_some_and(|n| n.contains("FULL_OBJECT")),
        "{stored:#}"
    );
    assert_eq!(
        rig.garage.metadata(manifest_key)?["mshot-image-sha256"],
        sha256
    );
    assert!(rig.garage.open_uploads()?.is_empty());

    // Once stored, it is not replaced without --overwrite ...
    let again = upload(&rig, &image).output()?;
    let (_, stderr) = text(&again);
    assert_eq!(again.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("s3://{}/{key} already exists", rig.garage.bucket)),
        "{stderr}"
    );
    assert!(stderr.contains("--overwrite"), "{stderr}");
    rig.garage.put(key, b"something else")?;
    let again = upload(&rig, &image).output()?;
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(rig.garage.get(key)?, b"something else");
    // ... and is with it.
    let again = upload(&rig, &image).arg("--overwrite").output()?;
    let (_, stderr) = text(&again);
    assert!(again.status.success(), "{stderr}");
    assert_eq!(rig.garage.get(key)?, bytes);
    assert!(rig.garage.open_uploads()?.is_empty());
    Ok(())
}

#[test]
fn upload_of_a_tampered_image_is_aborted_and_names_both_hashes() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::TestUsers,
        Need::Garage
    );
    let rig = Rig::start()?;
    let work = tempfile::tempdir()?;
    let image = capture_locally(&rig, work.path(), "tampered.lime", 30 * MIB)?;
    let captured = read_json(&work.path().join("captured/tampered.json"));
    let want = captured["image"]["sha256"].as_str().unwrap().to_string();
    // One byte changed after the capture, in the third of four parts: the
    // first parts are already stored when the hash is known.
    let mut bytes = std::fs::read(&image)?;
    bytes[20 * MIB as usize] ^= 0x01;
    std::fs::write(&image, &bytes)?;
    let got = hex::encode(Sha256::digest(&bytes));

    let out = upload(&rig, &image).output()?;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("does not match its manifest"), "{stderr}");
    assert!(stderr.contains(&image.display().to_string()), "{stderr}");
    assert!(stderr.contains(&got), "{stderr}");
    assert!(stderr.contains(&want), "{stderr}");
    // Neither the image nor the manifest is stored, and no parts are left.
    rig.assert_nothing_left("tampered");
    Ok(())
}

#[test]
fn upload_without_a_manifest_is_refused_unless_asked_for_bare() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::TestUsers,
        Need::Garage
    );
    let rig = Rig::start()?;
    let work = tempfile::tempdir()?;
    let (image, sha256) = lime_image(work.path(), 9 * MIB);

    let out = upload(&rig, &image).output()?;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{} has no manifest {} beside it",
            image.display(),
            work.path().join("source.json").display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("--no-manifest --host HOST"), "{stderr}");
    rig.assert_nothing_left("source");

    let out = upload(&rig, &image)
        .args(["--no-manifest", "--host", "web1"])
        .output()?;
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let key = "cases/up/web1/source.lime";
    assert_eq!(hex::encode(Sha256::digest(rig.garage.get(key)?)), sha256);
    let meta = rig.garage.metadata(key)?;
    assert_eq!(meta["mshot-host"], "web1");
    assert_eq!(meta["mshot-bare-upload"], "true");
    let record: serde_json::Value =
        serde_json::from_slice(&rig.garage.get("cases/up/web1/source.json")?)?;
    assert_eq!(record["bare_upload"], true);
    assert_eq!(record["image"]["sha256"], sha256.as_str());
    assert_eq!(record["s3"]["completed"], true);
    Ok(())
}

#[test]
fn a_part_the_server_never_answers_is_sent_again_after_its_attempt_timeout() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::TestUsers,
        Need::Garage
    );
    let rig = Rig::start()?;
    let work = tempfile::tempdir()?;
    let image = capture_locally(&rig, work.path(), "hang.lime", 20 * MIB)?;
    let bytes = std::fs::read(&image)?;
    // The request carrying byte 10 MiB (the second part) is swallowed and
    // never answered, as Garage did under load.
    let proxy = FaultProxy::start_with(rig.garage.port(), None, Some(10 * MIB))?;
    let clock = Instant::now();
    let mut child = upload_via(&rig, &image, &proxy.endpoint())
        // Long enough that a healthy part never hits it on a loaded CI
        // machine (disks busy with lab images), short enough for a test.
        .env("MSHOT_S3_ATTEMPT_TIMEOUT", "10")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Without the attempt timeout the upload waits forever: bound it.
    while child.try_wait()?.is_none() {
        if clock.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("the upload still hangs after 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output()?;
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    // It waited for the timeout, then the retry stored the part.
    assert!(clock.elapsed() >= Duration::from_secs(10), "{stderr}");
    assert_eq!(rig.garage.get("cases/up/127.0.0.1/hang.lime")?, bytes);
    assert!(rig.garage.open_uploads()?.is_empty());
    Ok(())
}

/// SIGTERM (a scheduler stopping the job) stops an upload like Ctrl-C: the
/// multipart upload is aborted and no object appears.
#[test]
fn sigterm_aborts_an_upload_and_leaves_nothing() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::TestUsers,
        Need::Garage
    );
    let rig = Rig::start()?;
    let work = tempfile::tempdir()?;
    let image = capture_locally(&rig, work.path(), "term.lime", 20 * MIB)?;
    // The second part is swallowed, so the upload is surely under way and
    // unfinished when the signal comes.
    let proxy = FaultProxy::start_with(rig.garage.port(), None, Some(10 * MIB))?;
    let mut child = upload_via(&rig, &image, &proxy.endpoint())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let clock = Instant::now();
    while rig.garage.open_uploads()?.is_empty() {
        assert!(
            child.try_wait()?.is_none(),
            "the upload ended before SIGTERM"
        );
        assert!(
            clock.elapsed() < Duration::from_secs(60),
            "no multipart upload started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let stopped = Instant::now();
    while child.try_wait()?.is_none() {
        if stopped.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("the upload ignored SIGTERM for 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output()?;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(rig.garage.open_uploads()?.is_empty(), "{stderr}");
    assert!(rig.garage.get("cases/up/127.0.0.1/term.lime").is_err());
    Ok(())
}

/// `--aws-profile` and `--region`: the credentials come from a named profile
/// in the shared credentials file (none in the environment), the region from
/// the flag; a profile that does not exist is a clear error and uploads
/// nothing.
#[test]
fn credentials_from_a_named_profile_and_the_region_from_the_flag() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::TestUsers,
        Need::Garage
    );
    let rig = Rig::start()?;
    let work = tempfile::tempdir()?;
    let image = capture_locally(&rig, work.path(), "profile.lime", 9 * MIB)?;
    let credentials = work.path().join("credentials");
    std::fs::write(
        &credentials,
        format!(
            "[default]\naws_access_key_id = GKwrong\naws_secret_access_key = {}\n\n[evidence]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            "0".repeat(64),
            rig.garage.access_key,
            rig.garage.secret_key
        ),
    )?;
    let config = work.path().join("config");
    std::fs::write(&config, "[profile evidence]\n")?;
    let run = |profile: &str| {
        let mut cmd = upload_via(&rig, &image, &rig.garage.endpoint());
        cmd.env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_REGION")
            .env("AWS_SHARED_CREDENTIALS_FILE", &credentials)
            .env("AWS_CONFIG_FILE", &config)
            .args([
                "--aws-profile",
                profile,
                "--region",
                support::garage::REGION,
            ]);
        cmd.output()
    };
    let out = run("evidence")?;
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        rig.garage.get("cases/up/127.0.0.1/profile.lime")?,
        std::fs::read(&image)?
    );
    let out = run("no-such-profile")?;
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("mshot:")).collect();
    assert!(
        errors.len() == 1 && errors[0].contains("no-such-profile"),
        "{stderr}"
    );
    assert!(!stderr.contains(&rig.garage.secret_key), "{stderr}");
    assert!(rig.garage.open_uploads()?.is_empty());
    Ok(())
}
