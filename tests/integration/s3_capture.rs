//! Captures streamed into a real S3-compatible server (Garage on loopback)
//! through a real sshd: a LiME-format TCP source on this machine plays the
//! target's LiME, read through mshot's capture receive path (`bench-receive`).
//! The checks read the bucket with the SDK directly, not through mshot.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::support::{self, DataSource, FaultProxy, Garage, KeyPair, KeyType, Need, Sshd, user};

const MIB: u64 = 1 << 20;

/// A LiME image of one range of `body` pattern bytes, and its SHA-256.
pub(crate) fn lime_image(dir: &Path, body: u64) -> (PathBuf, String) {
    let mut bytes = Vec::with_capacity(body as usize + 32);
    bytes.extend_from_slice(&0x4C69_4D45u32.to_le_bytes());
    bytes.extend_from_slice(&1u32.to_le_bytes());
    bytes.extend_from_slice(&0x10_0000u64.to_le_bytes());
    bytes.extend_from_slice(&(0x10_0000 + body - 1).to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes());
    bytes.extend_from_slice(&support::pattern::bytes(body as usize));
    let path = dir.join("source.lime");
    std::fs::write(&path, &bytes).unwrap();
    (path, hex::encode(Sha256::digest(&bytes)))
}

struct Rig {
    sshd: Sshd,
    key: KeyPair,
    known_hosts: PathBuf,
    garage: Garage,
}

impl Rig {
    fn start() -> anyhow::Result<Rig> {
        let garage = Garage::start()?;
        let sshd = Sshd::builder().start()?;
        let key = KeyPair::generate(sshd.dir(), "client", KeyType::Ed25519, None)?;
        sshd.authorize(user::NOPW, &key)?;
        let known_hosts = sshd.dir().join("mshot_known_hosts");
        sshd.append_known_hosts(&known_hosts)?;
        Ok(Rig {
            sshd,
            key,
            known_hosts,
            garage,
        })
    }

    /// `mshot bench-receive` from `source` into the rig's bucket as NAME.
    fn mshot(&self, source: &DataSource, name: &str, endpoint: &str) -> Command {
        self.mshot_to(source, name, endpoint, &self.garage.bucket)
    }

    fn mshot_to(&self, source: &DataSource, name: &str, endpoint: &str, bucket: &str) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mshot"));
        cmd.arg("bench-receive")
            .args(["--server", "127.0.0.1", "--port"])
            .arg(self.sshd.port().to_string())
            .args(["--user", user::NOPW, "--key"])
            .arg(&self.key.private)
            .arg("--known-hosts")
            .arg(&self.known_hosts)
            .arg("--source-port")
            .arg(source.port().to_string())
            .args(["--filename", name, "--bucket", bucket])
            .args(["--prefix", "cases/s3-test", "--endpoint-url", endpoint])
            .env_remove("SSH_AUTH_SOCK");
        self.garage.env(&mut cmd);
        cmd
    }

    fn assert_nothing_left(&self, name: &str) {
        let objects = self.garage.objects().unwrap();
        assert!(
            !objects.iter().any(|k| k.contains(name)),
            "objects left: {objects:?}"
        );
        let open = self.garage.open_uploads().unwrap();
        assert!(
            open.is_empty(),
            "incomplete multipart uploads left: {open:?}"
        );
    }
}

pub(crate) fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn capture_streams_into_the_bucket_and_to_disk_at_once() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::TestUsers,
        Need::Garage
    );
    let rig = Rig::start()?;
    let work = tempfile::tempdir()?;
    // 7 parts of 8 MiB and a short last one.
    let (image, sha256) = lime_image(work.path(), 60 * MIB + 12345);
    let source = DataSource::file(&image)?;
    let out_dir = work.path().join("out");
    let out = rig
        .mshot(&source, "host1.lime", &rig.garage.endpoint())
        .arg("--output-dir")
        .arg(&out_dir)
        .args(["--s3-concurrency", "3"])
        .output()?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}\n{}", rig.garage.log());
    assert!(stdout.contains(&format!("sha256={sha256}")), "{stdout}");

    // The object, read back independently, is the source byte for byte.
    let key = "cases/s3-test/127.0.0.1/host1.lime";
    let object = rig.garage.get(key)?;
    assert_eq!(object.len() as u64, 60 * MIB + 12345 + 32);
    assert_eq!(hex::encode(Sha256::digest(&object)), sha256);
    // ... and so is the local copy written at the same time.
    assert_eq!(
        hex::encode(Sha256::digest(std::fs::read(out_dir.join("host1.lime"))?)),
        sha256
    );

    let meta = rig.garage.metadata(key)?;
    assert_eq!(
        meta.get("mshot-host").map(String::as_str),
        Some("127.0.0.1")
    );
    assert!(meta["mshot-tool-version"].starts_with("mshot "), "{meta:?}");
    assert!(meta.contains_key("mshot-capture-time"), "{meta:?}");
    assert_eq!(meta["mshot-manifest"], "cases/s3-test/127.0.0.1/host1.json");

    // The record beside it names the image's SHA-256 (content and metadata).
    let manifest_key = "cases/s3-test/127.0.0.1/host1.json";
    let manifest: serde_json::Value = serde_json::from_slice(&rig.garage.get(manifest_key)?)?;
    assert_eq!(manifest["parts"], 8, "{manifest}");
    assert_eq!(manifest["completed"], true);
    // Garage's CRC32C proves the object: no read-back, no tag.
    assert_eq!(manifest["verification"]["verified"], true, "{manifest}");
    assert_eq!(manifest["verification"]["by"], "crc32c", "{manifest}");
    assert!(stdout.contains("verify   "), "{stdout}");
    assert_eq!(
        rig.garage.metadata(manifest_key)?["mshot-image-sha256"],
        sha256
    );
    assert!(rig.garage.open_uploads()?.is_empty());

    // A second capture under the same name is refused, and changes nothing.
    let source = DataSource::file(&image)?;
    let again = rig
        .mshot(&source, "host1.lime", &rig.garage.endpoint())
        .output()?;
    let (_, stderr) = text(&again);
    assert_eq!(again.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("already exists"), "{stderr}");
    assert!(stderr.contains("--overwrite"), "{stderr}");
    assert_eq!(hex::encode(Sha256::digest(rig.garage.get(key)?)), sha256);
    Ok(())
}

#[test]
fn existing_object_is_replaced_only_with_overwrite() -> anyhow::Result<()> {
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
    let key = "cases/s3-test/127.0.0.1/old.lime";
    rig.garage.put(key, b"evidence from before")?;

    let source = DataSource::file(&image)?;
    let out = rig
        .mshot(&source, "old.lime", &rig.garage.endpoint())
        .output()?;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("s3://mshot-evidence/cases/s3-test/127.0.0.1/old.lime already exists"),
        "{stderr}"
    );
    assert_eq!(rig.garage.get(key)?, b"evidence from before");
    assert!(rig.garage.open_uploads()?.is_empty());

    let source = DataSource::file(&image)?;
    let out = rig
        .mshot(&source, "old.lime", &rig.garage.endpoint())
        .arg("--overwrite")
        .output()?;
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(hex::encode(Sha256::digest(rig.garage.get(key)?)), sha256);
    Ok(())
}

#[test]
fn wrong_credentials_and_a_missing_bucket_fail_before_the_capture() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::TestUsers,
        Need::Garage
    );
    let rig = Rig::start()?;
    let work = tempfile::tempdir()?;
    let (image, _) = lime_image(work.path(), 9 * MIB);

    let source = DataSource::file(&image)?;
    let out = rig
        .mshot(&source, "creds.lime", &rig.garage.endpoint())
        .env("AWS_SECRET_ACCESS_KEY", "0".repeat(64))
        .output()?;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("S3 refused access to bucket \"mshot-evidence\""),
        "{stderr}"
    );
    assert!(stderr.contains("check the credentials"), "{stderr}");
    // The source was never read: the capture did not start.
    assert!(source.wait(Duration::from_millis(200)).is_err());

    let source = DataSource::file(&image)?;
    let out = rig
        .mshot_to(
            &source,
            "nobucket.lime",
            &rig.garage.endpoint(),
            "no-such-bucket",
        )
        .output()?;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("S3 bucket \"no-such-bucket\" does not exist"),
        "{stderr}"
    );
    rig.assert_nothing_left("creds");
    rig.assert_nothing_left("nobucket");
    Ok(())
}

#[test]
fn a_part_corrupted_in_transit_is_rejected_and_the_upload_aborted() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::TestUsers,
        Need::Garage
    );
    let rig = Rig::start()?;
    let work = tempfile::tempdir()?;
    let (image, _) = lime_image(work.path(), 40 * MIB);
    // One byte flipped on the way to S3, well inside the second or third part.
    let proxy = FaultProxy::start(rig.garage.port(), Some(20 * MIB))?;
    let source = DataSource::file(&image)?;
    let out = rig
        .mshot(&source, "corrupt.lime", &proxy.endpoint())
        .output()?;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("S3 upload of part "), "{stderr}");
    assert!(
        stderr.contains("InvalidDigest") || stderr.contains("BadDigest"),
        "{stderr}"
    );
    rig.assert_nothing_left("corrupt");
    Ok(())
}

#[test]
fn server_stopped_mid_upload_fails_clearly_and_leaves_no_upload() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::TestUsers,
        Need::Garage
    );
    let mut rig = Rig::start()?;
    let work = tempfile::tempdir()?;
    let (image, _) = lime_image(work.path(), 200 * MIB);
    let proxy = FaultProxy::start(rig.garage.port(), None)?;
    let source = DataSource::file(&image)?;
    let mut child = rig
        .mshot(&source, "outage.lime", &proxy.endpoint())
        // Few part retries, so the outage outlasts them; the abort retries longer.
        .env("AWS_MAX_ATTEMPTS", "2")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while proxy.sent() < 24 * MIB {
        assert!(Instant::now() < deadline, "the upload never got going");
        assert!(child.try_wait()?.is_none(), "mshot ended too early");
        std::thread::sleep(Duration::from_millis(10));
    }
    rig.garage.stop();
    // Wait for mshot to give up on a part, then bring the server back: the
    // abort, which retries for longer, must then remove the upload.
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut seen = Vec::new();
    loop {
        let line = lines_rx.recv_timeout(Duration::from_secs(90))?;
        seen.push(line.clone());
        if line.contains("S3 upload of part ") {
            break;
        }
    }
    rig.garage.restart()?;
    let status = child.wait()?;
    while let Ok(line) = lines_rx.recv_timeout(Duration::from_secs(10)) {
        seen.push(line);
    }
    let stderr = seen.join("\n");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot reach the S3 endpoint") || stderr.contains("did not answer"),
        "{stderr}"
    );
    assert!(!stderr.contains("cannot abort"), "{stderr}");
    rig.assert_nothing_left("outage");
    Ok(())
}

#[test]
fn a_fleet_file_with_a_bucket_uploads_every_host() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::TestUsers,
        Need::Garage
    );
    let rig = Rig::start()?;
    let work = tempfile::tempdir()?;
    let dir = work.path();
    let (image, sha256) = lime_image(dir, 20 * MIB + 777);
    // Every host reads the same image; the fleet's bench source is one port.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let source_port = listener.local_addr()?.port();
    let bytes = std::fs::read(&image)?;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let bytes = bytes.clone();
            std::thread::spawn(move || {
                use std::io::Write;
                let mut stream = stream;
                let _ = stream.write_all(&bytes);
            });
        }
    });
    // `kept` also writes locally; `uploaded` only goes to the bucket.
    let config = format!(
        "workers: 2\n\
         bucket: {{name: {bucket}, prefix: fleet/run-1, endpoint_url: {endpoint}, concurrency: 2}}\n\
         defaults: {{username: {u}, key: {k}, known_hosts: {kh}, agent: false, port: {p}}}\n\
         hosts:\n\
         \x20 - {{addr: 127.0.0.1, name: kept, filename: kept.lime, output_dir: {out}}}\n\
         \x20 - {{addr: 127.0.0.1, name: uploaded, filename: uploaded.lime}}\n",
        bucket = rig.garage.bucket,
        endpoint = rig.garage.endpoint(),
        u = user::NOPW,
        k = rig.key.private.display(),
        kh = rig.known_hosts.display(),
        p = rig.sshd.port(),
        out = dir.join("out").display(),
    );
    std::fs::write(dir.join("fleet.yaml"), config)?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mshot"));
    cmd.current_dir(dir)
        .arg("-c")
        .arg(dir.join("fleet.yaml"))
        .args(["--bench-source-port", &source_port.to_string()])
        .arg("--report")
        .arg(dir.join("report.json"))
        .env_remove("SSH_AUTH_SOCK");
    rig.garage.env(&mut cmd);
    let out = cmd.output()?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");

    for name in ["kept", "uploaded"] {
        let object = rig
            .garage
            .get(&format!("fleet/run-1/127.0.0.1/{name}.lime"))?;
        assert_eq!(hex::encode(Sha256::digest(&object)), sha256, "{name}");
    }
    assert_eq!(
        hex::encode(Sha256::digest(std::fs::read(dir.join("out/kept.lime"))?)),
        sha256
    );
    assert!(
        !dir.join("uploaded.lime").exists(),
        "bucket-only host wrote locally"
    );
    assert!(rig.garage.open_uploads()?.is_empty());
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json"))?)?;
    assert_eq!(report["summary"]["succeeded"], 2, "{report:#}");
    for name in ["kept", "uploaded"] {
        let host = report["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == name)
            .unwrap();
        assert_eq!(
            host["s3"],
            format!(
                "s3://{}/fleet/run-1/127.0.0.1/{name}.lime",
                rig.garage.bucket
            ),
            "{host:#}"
        );
    }
    Ok(())
}

/// A capture to a local directory (no bucket) through the real receive path:
/// the image and the manifest mshot wrote beside it, as `mshot upload` finds
/// them on a jump box.
fn capture_locally(rig: &Rig, dir: &Path, name: &str, body: u64) -> anyhow::Result<PathBuf> {
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
fn upload(rig: &Rig, image: &Path) -> Command {
    upload_via(rig, image, &rig.garage.endpoint())
}

fn upload_via(rig: &Rig, image: &Path, endpoint: &str) -> Command {
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

/// Fabricates the profile material of a capture beside `image`, as
/// `material::store` leaves it (`NAME.material/` with `index.json`), and
/// lists it in the local manifest as a capture does. Returns the files.
pub(crate) fn add_material(
    image: &Path,
    files: &[(&str, Vec<u8>)],
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let stem = image.file_stem().unwrap().to_string_lossy().into_owned();
    let dir = image.with_file_name(format!("{stem}.material"));
    std::fs::create_dir(&dir)?;
    let listed: Vec<serde_json::Value> = files
        .iter()
        .map(|(name, bytes)| {
            serde_json::json!({
                "name": name,
                "source": format!("cat /fabricated/{name}"),
                "bytes": bytes.len(),
                "sha256": hex::encode(Sha256::digest(bytes)),
            })
        })
        .collect();
    let record = serde_json::json!({
        "dir": format!("{stem}.material"),
        "files": listed,
        "missing": [{"name": "os-release", "source": "cat /etc/os-release", "error": "exit 1"}],
    });
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes)?;
    }
    std::fs::write(dir.join("index.json"), serde_json::to_vec_pretty(&record)?)?;
    let manifest_path = image.with_file_name(format!("{stem}.json"));
    let mut manifest = read_json(&manifest_path);
    manifest["material"] = record;
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest)?)?;
    Ok(files
        .iter()
        .map(|(n, b)| (n.to_string(), b.clone()))
        .collect())
}

pub(crate) fn fabricated_material(btf_bytes: usize) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("vmlinux.btf", support::pattern::bytes(btf_bytes)),
        (
            "kallsyms",
            b"ffffffff81000000 T _text\nffffffff81001000 T startup_64\n".to_vec(),
        ),
        ("version", b"Linux version 6.1.0-fabricated\n".to_vec()),
    ]
}

/// The SHA-256 S3 stores for `key` (base64), read with checksum mode on.
fn stored_sha256(rig: &Rig, key: &str) -> anyhow::Result<Option<String>> {
    rig.garage.block_on(async {
        let head = rig
            .garage
            .client()
            .head_object()
            .bucket(&rig.garage.bucket)
            .key(key)
            .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
            .send()
            .await?;
        Ok(head.checksum_sha256().map(str::to_string))
    })
}

fn b64_of_hex(hex_digest: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(hex::decode(hex_digest).unwrap())
}

#[test]
fn upload_carries_the_material_beside_the_image_checked_by_sha256() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::TestUsers,
        Need::Garage
    );
    let rig = Rig::start()?;
    let work = tempfile::tempdir()?;
    let image = capture_locally(&rig, work.path(), "mat.lime", 9 * MIB)?;
    let files = add_material(&image, &fabricated_material(300 * 1024))?;
    let local = read_json(&work.path().join("captured/mat.json"));

    let out = upload(&rig, &image).output()?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}\n{}", rig.garage.log());
    let prefix = "cases/up/127.0.0.1/mat.material/";
    assert!(
        stdout.contains(&format!(
            "material s3://{}/{prefix} (4 objects)",
            rig.garage.bucket
        )),
        "{stdout}"
    );

    // Each file is an object beside the image, its bytes hash to the
    // manifest's SHA-256, and S3 holds that SHA-256 (it checked it on arrival).
    let stored: serde_json::Value =
        serde_json::from_slice(&rig.garage.get("cases/up/127.0.0.1/mat.json")?)?;
    let listed = &stored["material"]["files"];
    assert_eq!(listed, &local["material"]["files"]);
    for (i, (name, bytes)) in files.iter().enumerate() {
        let key = format!("{prefix}{name}");
        let object = rig.garage.get(&key)?;
        let want = listed[i]["sha256"].as_str().unwrap();
        assert_eq!(listed[i]["name"], name.as_str());
        assert_eq!(hex::encode(Sha256::digest(&object)), want, "{key}");
        assert_eq!(&object, bytes, "{key}");
        assert_eq!(stored_sha256(&rig, &key)?, Some(b64_of_hex(want)), "{key}");
        assert_eq!(
            rig.garage.metadata(&key)?["mshot-image-key"],
            "cases/up/127.0.0.1/mat.lime"
        );
    }
    // index.json makes a downloaded copy checkable, as the local one is.
    let index: serde_json::Value =
        serde_json::from_slice(&rig.garage.get(&format!("{prefix}index.json"))?)?;
    assert_eq!(index["files"], *listed);
    assert_eq!(index["dir"], "mat.material");
    // The manifest's S3 record lists every material object, none failed.
    let record = &stored["s3"]["material"];
    assert_eq!(record["prefix"], prefix, "{stored:#}");
    let keys: Vec<&str> = record["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            format!("{prefix}vmlinux.btf"),
            format!("{prefix}kallsyms"),
            format!("{prefix}version"),
            format!("{prefix}index.json"),
        ]
    );
    assert_eq!(record["failed"], serde_json::json!([]));
    assert!(rig.garage.open_uploads()?.is_empty());

    // Material of an earlier capture under the same name is not replaced
    // without --overwrite: refused before anything is sent.
    let image2 = capture_locally(&rig, work.path(), "mat2.lime", 9 * MIB)?;
    add_material(&image2, &fabricated_material(1024))?;
    let old_key = "cases/up/127.0.0.1/mat2.material/version";
    rig.garage.put(old_key, b"an earlier capture's")?;
    let out = upload(&rig, &image2).output()?;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "s3://{}/{old_key} already exists",
            rig.garage.bucket
        )),
        "{stderr}"
    );
    assert!(rig.garage.get("cases/up/127.0.0.1/mat2.lime").is_err());
    assert_eq!(rig.garage.get(old_key)?, b"an earlier capture's");
    let out = upload(&rig, &image2).arg("--overwrite").output()?;
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        rig.garage.get(old_key)?,
        b"Linux version 6.1.0-fabricated\n"
    );
    assert!(rig.garage.open_uploads()?.is_empty());
    Ok(())
}

#[test]
fn upload_of_tampered_material_is_refused_and_names_both_hashes() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::TestUsers,
        Need::Garage
    );
    let rig = Rig::start()?;
    let work = tempfile::tempdir()?;
    let image = capture_locally(&rig, work.path(), "tmat.lime", 20 * MIB)?;
    add_material(&image, &fabricated_material(64 * 1024))?;
    let manifest = read_json(&work.path().join("captured/tmat.json"));
    let want = manifest["material"]["files"][1]["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let path = work.path().join("captured/tmat.material/kallsyms");
    let tampered = b"ffffffff81000000 T _text\nffffffff81001000 T evil\n";
    std::fs::write(&path, tampered)?;
    let got = hex::encode(Sha256::digest(tampered));

    let out = upload(&rig, &image).output()?;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("does not match its manifest"), "{stderr}");
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert!(stderr.contains(&got), "{stderr}");
    assert!(stderr.contains(&want), "{stderr}");
    // Nothing stored: no image, no material, no manifest, no open upload.
    rig.assert_nothing_left("tmat");
    Ok(())
}

#[test]
fn material_the_server_refuses_is_recorded_and_the_image_kept() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::TestUsers,
        Need::Garage
    );
    let rig = Rig::start()?;
    let work = tempfile::tempdir()?;
    let image = capture_locally(&rig, work.path(), "rmat.lime", MIB)?;
    let image_bytes = std::fs::read(&image)?;
    // vmlinux.btf (4 MiB) is the first material object, sent right after the
    // image: one byte flipped 2 MiB past the image's bytes lands in its body
    // whatever the size of the requests' headers (a few KiB in all).
    add_material(&image, &fabricated_material(4 << 20))?;
    let flip = image_bytes.len() as u64 + 2 * MIB;
    let proxy = FaultProxy::start(rig.garage.port(), Some(flip))?;
    let out = upload_via(&rig, &image, &proxy.endpoint()).output()?;
    let (stdout, stderr) = text(&out);
    // The image and manifest are stored; the command fails so a script retries.
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("the image and its manifest are in the bucket, but 1 of 4"),
        "{stderr}"
    );
    assert!(stderr.contains("vmlinux.btf ("), "{stderr}");
    assert_eq!(rig.garage.get("cases/up/127.0.0.1/rmat.lime")?, image_bytes);
    let prefix = "cases/up/127.0.0.1/rmat.material/";
    assert!(rig.garage.get(&format!("{prefix}vmlinux.btf")).is_err());
    let stored: serde_json::Value =
        serde_json::from_slice(&rig.garage.get("cases/up/127.0.0.1/rmat.json")?)?;
    let record = &stored["s3"]["material"];
    assert_eq!(record["failed"][0]["name"], "vmlinux.btf", "{record:#}");
    assert_eq!(record["failed"][0]["key"], format!("{prefix}vmlinux.btf"));
    assert_eq!(record["objects"].as_array().unwrap().len(), 3, "{record:#}");
    for object in record["objects"].as_array().unwrap() {
        let key = object["key"].as_str().unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(rig.garage.get(key)?)),
            object["sha256"].as_str().unwrap()
        );
    }
    assert!(rig.garage.open_uploads()?.is_empty());
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
