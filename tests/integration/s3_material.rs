//! The profile material of a capture uploaded beside its image by
//! `mshot upload`, into a real S3-compatible server (Garage on loopback):
//! each file checked by SHA-256 on the way, refused when tampered with, and
//! recorded when the server refuses it while the image is kept.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::s3_capture::{MIB, Rig, text};
use crate::s3_upload::{capture_locally, read_json, upload, upload_via};
use crate::support::{self, FaultProxy, Need};

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
