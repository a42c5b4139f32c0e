//! Captures streamed into a real S3-compatible server (Garage on loopback)
//! through a real sshd: a LiME-format TCP source on this machine plays the
//! target's LiME, read through mshot's capture receive path (`bench-receive`).
//! The checks read the bucket with the SDK directly, not through mshot.
//! The rig here serves `s3_upload` and `s3_material` too.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::support::{self, DataSource, FaultProxy, Garage, KeyPair, KeyType, Need, Sshd, user};

pub(crate) const MIB: u64 = 1 << 20;

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

pub(crate) struct Rig {
    pub(crate) sshd: Sshd,
    pub(crate) key: KeyPair,
    pub(crate) known_hosts: PathBuf,
    pub(crate) garage: Garage,
}

impl Rig {
    pub(crate) fn start() -> anyhow::Result<Rig> {
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

    pub(crate) fn assert_nothing_left(&self, name: &str) {
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
