//! What mshot does when the server's checksum of a completed object does not
//! prove it, against moto (a second real S3 server): without `s3crc32c` it
//! reports a plain CRC32 under the CRC32C name, so a good capture disagrees;
//! with it, the full-object CRC32C agrees. The object is never deleted: it is
//! kept, tagged, read back and compared by SHA-256; only a read-back that
//! disagrees too leaves it marked failed, with exit status 4.
//! Captures go through a real sshd from a LiME-format source
//! (`bench-receive`), as in `s3_capture`.

use std::path::PathBuf;
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::s3_capture::{lime_image, text};
use crate::s3_material::{add_material, fabricated_material};
use crate::support::moto::Variant;
use crate::support::{self, DataSource, FaultProxy, KeyPair, KeyType, Moto, Need, Sshd, user};

const MIB: u64 = 1 << 20;
const PREFIX: &str = "cases/verify";

struct Rig {
    sshd: Sshd,
    key: KeyPair,
    known_hosts: PathBuf,
    moto: Moto,
}

impl Rig {
    fn start(variant: Variant) -> anyhow::Result<Rig> {
        let moto = Moto::start(variant)?;
        let sshd = Sshd::builder().start()?;
        let key = KeyPair::generate(sshd.dir(), "client", KeyType::Ed25519, None)?;
        sshd.authorize(user::NOPW, &key)?;
        let known_hosts = sshd.dir().join("mshot_known_hosts");
        sshd.append_known_hosts(&known_hosts)?;
        Ok(Rig {
            sshd,
            key,
            known_hosts,
            moto,
        })
    }

    /// `mshot bench-receive` from `source`, to the bucket at `endpoint`
    /// (moto, or a proxy in front of it) and/or `--output-dir`.
    fn capture(&self, source: &DataSource, name: &str) -> Command {
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
            .args(["--filename", name])
            .env_remove("SSH_AUTH_SOCK");
        self.moto.env(&mut cmd);
        cmd
    }

    fn to_bucket(&self, cmd: &mut Command, endpoint: &str) {
        cmd.args(["--bucket", &self.moto.bucket, "--prefix", PREFIX])
            .args(["--endpoint-url", endpoint]);
    }

    fn record(&self, name: &str) -> anyhow::Result<serde_json::Value> {
        let stem = name.trim_end_matches(".lime");
        let key = format!("{PREFIX}/127.0.0.1/{stem}.json");
        Ok(serde_json::from_slice(&self.moto.get(&key)?)?)
    }
}

fn check<'a>(verification: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    verification["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {verification:#}"))
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn verify_line(stdout: &str) -> &str {
    stdout
        .lines()
        .find(|l| l.starts_with("verify "))
        .unwrap_or_else(|| panic!("no verify line in:\n{stdout}"))
}

/// The bug: moto reports CRC32 as CRC32C. Today's mshot deleted the object;
/// now it stays, the read-back proves it, and the output says which check
/// failed and which passed.
#[test]
fn a_server_reporting_crc32_as_crc32c_keeps_the_capture_verified_by_read_back() -> anyhow::Result<()>
{
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::TestUsers,
        Need::Moto
    );
    let rig = Rig::start(Variant::Plain)?;
    let work = tempfile::tempdir()?;
    // Three parts of 8 MiB, the last short.
    let (image, sha256) = lime_image(work.path(), 20 * MIB + 5);
    let source = DataSource::file(&image)?;
    let mut cmd = rig.capture(&source, "crc32.lime");
    rig.to_bucket(&mut cmd, &rig.moto.endpoint());
    let out = cmd.output()?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains("keeping the object"), "{stderr}");
    assert!(!stderr.contains("deleted"), "{stderr}");

    let key = format!("{PREFIX}/127.0.0.1/crc32.lime");
    let object = rig.moto.get(&key)?;
    assert_eq!(hex::encode(Sha256::digest(&object)), sha256);
    assert_eq!(
        rig.moto.tags(&key)?,
        ["mshot-verification=sha256-read-back"]
    );

    let record = rig.record("crc32.lime")?;
    let v = &record["verification"];
    assert_eq!(v["verified"], true, "{v:#}");
    assert_eq!(v["by"], "sha256_read_back", "{v:#}");
    // The failed check, with both values: S3's (a CRC32) and mshot's.
    let crc = check(v, "crc32c");
    assert_eq!(crc["outcome"], "failed", "{v:#}");
    let full_crc32c = b64(&crc32c::crc32c(&object).to_be_bytes());
    assert_eq!(crc["mshot"], full_crc32c, "{v:#}");
    assert_eq!(
        crc["server"],
        b64(&crc32fast_of(&object).to_be_bytes()),
        "{v:#}"
    );
    assert!(
        crc["note"].as_str().unwrap().contains("FULL_OBJECT"),
        "{v:#}"
    );
    let read = check(v, "sha256_read_back");
    assert_eq!(read["outcome"], "passed", "{v:#}");
    assert!(read["server"].as_str().unwrap().starts_with(&sha256));

    let line = verify_line(&stdout);
    assert!(line.contains("CRC32C FAILED"), "{line}");
    assert!(
        line.contains("SHA-256 of the object read back passed"),
        "{line}"
    );
    assert!(line.contains("verified by sha256_read_back"), "{line}");
    assert!(rig.moto.open_uploads()?.is_empty());
    Ok(())
}

/// CRC32 (IEEE), to name the value moto reports in place of CRC32C.
fn crc32fast_of(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

#[test]
fn a_server_reporting_crc32c_right_verifies_by_the_full_object_checksum() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::TestUsers,
        Need::MotoCrc32c
    );
    let rig = Rig::start(Variant::Crc32c)?;
    let work = tempfile::tempdir()?;
    let (image, sha256) = lime_image(work.path(), 20 * MIB + 5);
    let source = DataSource::file(&image)?;
    let mut cmd = rig.capture(&source, "right.lime");
    rig.to_bucket(&mut cmd, &rig.moto.endpoint());
    let out = cmd.output()?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(!stderr.contains("keeping the object"), "{stderr}");

    let key = format!("{PREFIX}/127.0.0.1/right.lime");
    let object = rig.moto.get(&key)?;
    assert_eq!(hex::encode(Sha256::digest(&object)), sha256);
    // Proved by the checksum: no read-back, no tag.
    assert!(rig.moto.tags(&key)?.is_empty());
    let v = &rig.record("right.lime")?["verification"];
    assert_eq!(v["verified"], true, "{v:#}");
    assert_eq!(v["by"], "crc32c", "{v:#}");
    let crc = check(v, "crc32c");
    assert_eq!(crc["outcome"], "passed", "{v:#}");
    assert_eq!(crc["server"], b64(&crc32c::crc32c(&object).to_be_bytes()));
    assert!(
        crc["note"].as_str().unwrap().contains("FULL_OBJECT"),
        "{v:#}"
    );
    assert!(v["checks"].as_array().unwrap().len() == 2, "{v:#}");
    assert!(
        verify_line(&stdout).contains("verified by crc32c"),
        "{stdout}"
    );
    Ok(())
}

/// A byte flipped on the way and stored by a server that checks no part:
/// both the CRC32C and the read-back disagree. The object stays, tagged
/// failed, the record says so, and mshot exits 4.
#[test]
fn an_object_that_differs_from_the_stream_is_kept_marked_failed_exit_4() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::TestUsers,
        Need::Moto
    );
    let rig = Rig::start(Variant::Plain)?;
    let work = tempfile::tempdir()?;
    let (image, sha256) = lime_image(work.path(), 20 * MIB + 5);
    let proxy = FaultProxy::start(rig.moto.port(), Some(12 * MIB))?;
    let source = DataSource::file(&image)?;
    let mut cmd = rig.capture(&source, "flipped.lime");
    rig.to_bucket(&mut cmd, &proxy.endpoint());
    let out = cmd.output()?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(4), "{stdout}\n{stderr}");
    assert!(stderr.contains("is kept but not verified"), "{stderr}");

    let key = format!("{PREFIX}/127.0.0.1/flipped.lime");
    let object = rig.moto.get(&key)?;
    assert_eq!(object.len() as u64, 20 * MIB + 5 + 32);
    assert_ne!(hex::encode(Sha256::digest(&object)), sha256);
    assert_eq!(rig.moto.tags(&key)?, ["mshot-verification=failed"]);
    let v = &rig.record("flipped.lime")?["verification"];
    assert_eq!(v["verified"], false, "{v:#}");
    assert!(v["by"].is_null(), "{v:#}");
    let read = check(v, "sha256_read_back");
    assert_eq!(read["outcome"], "failed", "{v:#}");
    assert_eq!(
        read["mshot"],
        format!("{sha256} ({} bytes)", 20 * MIB + 5 + 32)
    );
    assert!(verify_line(&stdout).contains("NOT VERIFIED"), "{stdout}");
    Ok(())
}

/// `mshot upload` and its material against the same server: the image and
/// every material object are kept and verified by read-back (moto reports
/// no SHA-256 for a material object, and a CRC32 for the image).
#[test]
fn upload_to_a_server_reporting_crc32_keeps_image_and_material() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::TestUsers,
        Need::Moto
    );
    let rig = Rig::start(Variant::Plain)?;
    let work = tempfile::tempdir()?;
    let (source_image, sha256) = lime_image(work.path(), 9 * MIB);
    let source = DataSource::file(&source_image)?;
    let out_dir = work.path().join("captured");
    let out = rig
        .capture(&source, "up.lime")
        .arg("--output-dir")
        .arg(&out_dir)
        .output()?;
    assert!(out.status.success(), "{}", text(&out).1);
    let image: PathBuf = out_dir.join("up.lime");
    let material = add_material(&image, &fabricated_material(100_000))?;

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mshot"));
    cmd.arg("upload").arg(&image).args([
        "--bucket",
        &rig.moto.bucket,
        "--prefix",
        PREFIX,
        "--endpoint-url",
        &rig.moto.endpoint(),
    ]);
    rig.moto.env(&mut cmd);
    let out = cmd.output()?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        verify_line(&stdout).contains("verified by sha256_read_back"),
        "{stdout}"
    );
    let key = format!("{PREFIX}/127.0.0.1/up.lime");
    assert_eq!(hex::encode(Sha256::digest(rig.moto.get(&key)?)), sha256);
    assert_eq!(
        rig.moto.tags(&key)?,
        ["mshot-verification=sha256-read-back"]
    );

    let manifest: serde_json::Value =
        serde_json::from_slice(&rig.moto.get(&format!("{PREFIX}/127.0.0.1/up.json"))?)?;
    assert_eq!(manifest["s3"]["verification"]["verified"], true);
    let objects = manifest["s3"]["material"]["objects"].as_array().unwrap();
    assert_eq!(objects.len(), material.len() + 1, "{manifest:#}");
    assert!(
        manifest["s3"]["material"]["failed"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    for (name, bytes) in &material {
        let object = objects.iter().find(|o| o["name"] == *name).unwrap();
        let key = object["key"].as_str().unwrap();
        assert_eq!(rig.moto.get(key)?, *bytes, "{name}");
        assert_eq!(
            object["verification"]["by"], "sha256_read_back",
            "{object:#}"
        );
    }
    Ok(())
}
