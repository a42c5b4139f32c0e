//! `mshot upload IMAGE --bucket B`: pushes an image captured to disk earlier
//! (on a jump box, say) into the evidence bucket with the capture's own
//! multipart code (`s3`), keys and metadata.
//!
//! Why it is built this way:
//! - The manifest beside the image is the capture's record: it gives the key
//!   (host), the object's metadata (kernel, capture time, tool version) and
//!   the SHA-256 the image had when it was captured. Without it there is
//!   nothing to prove the file is still what was captured, so a bare upload
//!   must be asked for (`--no-manifest --host H`).
//! - The SHA-256 is computed again over the bytes actually sent. A mismatch
//!   aborts the multipart upload: S3 never holds an object that is not the
//!   captured image, and no parts stay behind.
//! - After completion the object is checked as a capture's (`s3::verify`):
//!   a disagreement keeps it, marked failed, and reads it back; it is never
//!   deleted, and the manifest and material go up beside it either way.
//! - The file is read in large sequential reads on a blocking thread that
//!   feeds the same `PartFeeder` as a capture, so memory is bounded the same
//!   way: part size x (concurrency + 1) + one read buffer.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use sha2::{Digest, Sha256};

use std::io::IsTerminal;

use super::signals::interrupt_token;
use super::{build_runtime, exit};
use crate::cli::UploadArgs;
use crate::pipeline::sink::s3::{Destination, PartFeeder};
use crate::util::progress::CaptureProgress;

/// One read: large enough that syscalls cost nothing, small enough to be the
/// "small constant" of the memory bound.
const READ_SIZE: usize = 4 << 20;

/// What the upload needs from the capture's manifest.
#[derive(Debug)]
struct Expected {
    host: String,
    /// The manifest as written, `s3` replaced once uploaded.
    manifest: Option<serde_json::Value>,
    /// SHA-256 and size of the file as stored (the zlib stream when the
    /// capture kept it compressed).
    sha256: Option<String>,
    bytes: Option<u64>,
    metadata: HashMap<String, String>,
}

/// What `mshot upload` did, for the caller to print.
#[derive(Debug)]
pub struct Uploaded {
    pub image_uri: String,
    pub manifest_uri: String,
    pub bytes: u64,
    pub sha256: String,
    pub checksum_crc32c: String,
    /// How the object was checked; unverified means kept, marked failed.
    pub verification: crate::pipeline::sink::s3::verify::Verification,
    /// `s3://BUCKET/PREFIX/HOST/NAME.material/ (N objects)`, when material went too.
    pub material: Option<String>,
    /// Material files that did not reach the bucket (recorded in the manifest).
    pub material_problem: Option<String>,
}

fn str_field<'a>(v: &'a serde_json::Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

/// Reads the manifest beside `image` (or, with `--no-manifest`, makes do
/// with `--host`).
fn expected(args: &UploadArgs, image: &Path) -> anyhow::Result<Expected> {
    let manifest_path = crate::record::manifest_path_for(image);
    let tool_version = format!("mshot {}", env!("CARGO_PKG_VERSION"));
    if args.no_manifest {
        let host = args.host.clone().unwrap_or_default();
        return Ok(Expected {
            metadata: HashMap::from([
                ("mshot-host".to_string(), host.clone()),
                ("mshot-kernel-release".to_string(), "unknown".to_string()),
                ("mshot-tool-version".to_string(), tool_version),
                ("mshot-bare-upload".to_string(), "true".to_string()),
            ]),
            host,
            manifest: None,
            sha256: None,
            bytes: None,
        });
    }
    let text = match std::fs::read(&manifest_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{} has no manifest {} beside it: mshot needs the capture's manifest for the object's metadata and to check the SHA-256; give --no-manifest --host HOST to upload it bare",
            image.display(),
            manifest_path.display()
        ),
        Err(e) => bail!("cannot read manifest {}: {e}", manifest_path.display()),
    };
    let manifest: serde_json::Value = serde_json::from_slice(&text).map_err(|e| {
        anyhow!(
            "{} is not an mshot manifest ({e}); give --no-manifest --host HOST to upload the image bare",
            manifest_path.display()
        )
    })?;
    let field = |path: &[&str]| {
        str_field(&manifest, path)
            .map(str::to_string)
            .ok_or_else(|| {
                anyhow!(
                    "manifest {} has no {}: not a manifest of a complete mshot capture",
                    manifest_path.display(),
                    path.join(".")
                )
            })
    };
    if manifest.get("image").is_none_or(|i| i.is_null()) {
        bail!(
            "manifest {} records no complete image (the capture failed: {}); nothing to upload",
            manifest_path.display(),
            str_field(&manifest, &["error"]).unwrap_or("no error recorded")
        );
    }
    let host = field(&["host"])?;
    // A capture that kept the zlib stream stored that, and hashed it apart.
    let compressed = str_field(&manifest, &["source", "stored_as"]) == Some("zlib");
    let (sha256, bytes) = if compressed {
        (
            field(&["source", "stored_sha256"])?,
            manifest["source"]["stored_bytes"].as_u64(),
        )
    } else {
        (
            field(&["image", "sha256"])?,
            manifest["image"]["bytes"].as_u64(),
        )
    };
    let metadata = HashMap::from([
        ("mshot-host".to_string(), host.clone()),
        (
            "mshot-kernel-release".to_string(),
            field(&["kernel_release"])?,
        ),
        ("mshot-capture-time".to_string(), field(&["started"])?),
        (
            "mshot-tool-version".to_string(),
            format!("mshot {}", field(&["tool_version"])?),
        ),
        ("mshot-uploaded-by".to_string(), tool_version),
        // Known before the first byte is sent (a streaming capture's is not),
        // and the upload completes only if what was sent hashes to it.
        (
            if compressed {
                "mshot-stored-sha256"
            } else {
                "mshot-image-sha256"
            }
            .to_string(),
            sha256.to_ascii_lowercase(),
        ),
    ]);
    Ok(Expected {
        host,
        manifest: Some(manifest),
        sha256: Some(sha256.to_ascii_lowercase()),
        bytes,
        metadata,
    })
}

/// Runs `mshot upload`. Aborts the multipart upload on every path that did
/// not complete it, Ctrl-C included.
pub async fn run(
    args: &UploadArgs,
    progress: &Arc<CaptureProgress>,
    cancel: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<Uploaded> {
    let spec = crate::commands::job::s3_spec(&args.s3)?
        .ok_or_else(|| anyhow!("mshot upload needs --bucket BUCKET"))?;
    let image = args.image.clone();
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| anyhow!("{} is not a file name", image.display()))?;
    let size = std::fs::metadata(&image)
        .with_context(|| format!("cannot read image {}", image.display()))?
        .len();
    let expected = expected(args, &image)?;
    if let Some(bytes) = expected.bytes
        && bytes != size
    {
        bail!(
            "{} is {size} bytes, but its manifest records {bytes}: the file changed since the capture; not uploading",
            image.display()
        );
    }
    // Material is read and checked before anything is sent: a file that
    // changed since the capture stops the upload as a changed image does.
    let material = match &expected.manifest {
        Some(manifest) => crate::pipeline::sink::s3::material::read_local(&image, manifest)?,
        None => None,
    };
    let mut dest = Destination::prepare(&spec, &expected.host, &name).await?;
    let result = tokio::select! {
        r = upload(&mut dest, &image, size, &expected, progress) => r,
        _ = cancel.cancelled() => Err(anyhow!("interrupted (Ctrl-C or SIGTERM)")),
    };
    // Whatever happened, no unfinished upload stays behind.
    if let Err(abort) = dest.abort_unfinished().await {
        return Err(result
            .err()
            .unwrap_or_else(|| anyhow!("S3"))
            .context(format!("{abort:#}")));
    }
    let (sha256, completed) = result?;
    // After the image, before the manifest that lists it (see `s3::material`).
    if let Some(bodies) = material {
        dest.put_material(bodies, cancel).await;
    }
    let manifest_json = match &expected.manifest {
        Some(manifest) => {
            let mut manifest = manifest.clone();
            manifest["s3"] = serde_json::to_value(dest.record())?;
            manifest["upload"] = serde_json::json!({
                "tool_version": env!("CARGO_PKG_VERSION"),
                "time": jiff::Timestamp::now().to_string(),
                "file": image.display().to_string(),
            });
            manifest
        }
        // A bare upload still gets a record beside it: what was sent and its hash.
        None => serde_json::json!({
            "tool": "mshot",
            "tool_version": env!("CARGO_PKG_VERSION"),
            "host": expected.host,
            "bare_upload": true,
            "image": {"file": name, "bytes": size, "sha256": sha256},
            "s3": dest.record(),
            "upload": {
                "time": jiff::Timestamp::now().to_string(),
                "file": image.display().to_string(),
            },
        }),
    };
    let mut json = serde_json::to_vec_pretty(&manifest_json)?;
    json.push(b'\n');
    dest.put_manifest(json, &sha256).await.with_context(|| {
        format!(
            "the image {} is complete, but its manifest was not uploaded",
            dest.bucket.uri(&dest.image_key)
        )
    })?;
    let material = dest.record().and_then(|r| r.material);
    Ok(Uploaded {
        image_uri: dest.bucket.uri(&dest.image_key),
        manifest_uri: dest.bucket.uri(&dest.manifest_key),
        bytes: size,
        sha256,
        checksum_crc32c: completed.checksum_crc32c,
        verification: completed.verification,
        material: material.as_ref().map(|m| {
            format!(
                "{} ({} objects)",
                dest.bucket.uri(&m.prefix),
                m.objects.len()
            )
        }),
        material_problem: material.and_then(|m| m.problem()),
    })
}

/// Streams the file into a new multipart upload and completes it only when
/// the SHA-256 of what was sent equals the manifest's.
async fn upload(
    dest: &mut Destination,
    image: &Path,
    size: u64,
    expected: &Expected,
    progress: &Arc<CaptureProgress>,
) -> anyhow::Result<(String, crate::pipeline::sink::s3::Completed)> {
    let upload = dest
        .start(
            Some(size),
            expected.metadata.clone(),
            progress.s3_acked(true),
        )
        .await?;
    progress.start_bytes(size);
    let feeder = PartFeeder::new(upload.clone(), tokio::runtime::Handle::current());
    let path: PathBuf = image.to_path_buf();
    let reader = tokio::task::spawn_blocking({
        let progress = progress.clone();
        move || read_into(&path, feeder, &progress)
    });
    let (bytes, sha256) = reader
        .await
        .map_err(|e| anyhow!("the reader thread failed: {e}"))??;
    if bytes != size {
        bail!(
            "{} changed size while it was read ({size} bytes at the start, {bytes} read); the upload was aborted",
            image.display()
        );
    }
    if let Some(want) = &expected.sha256
        && *want != sha256
    {
        bail!(
            "{} does not match its manifest: SHA-256 {sha256}, the manifest records {want}; the image changed since the capture, the upload was aborted and nothing was stored",
            image.display()
        );
    }
    let completed = upload.complete(bytes, &sha256).await?;
    progress.finish();
    Ok((sha256, completed))
}

/// The blocking side: large sequential reads, hashed and cut into parts.
fn read_into(
    path: &Path,
    mut feeder: PartFeeder,
    progress: &CaptureProgress,
) -> anyhow::Result<(u64, String)> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut buffer = vec![0u8; READ_SIZE];
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    loop {
        let n = match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => bail!("cannot read {} at byte {total}: {e}", path.display()),
        };
        hasher.update(&buffer[..n]);
        feeder.write(&buffer[..n])?;
        total += n as u64;
        progress.add_bytes(n as u64);
    }
    feeder.finish()?;
    Ok((total, hex::encode(hasher.finalize())))
}
/// `mshot upload IMAGE --bucket B`: exit 0 when the object and its manifest
/// are stored and verified, 2 for bad flags, 1 otherwise.
pub fn main(args: &UploadArgs) -> u8 {
    use tracing_subscriber::{EnvFilter, fmt};
    let level = super::log_level(args.verbose);
    let _ = fmt()
        .with_writer(|| crate::util::progress::Stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .with_env_filter(
            EnvFilter::try_from_env("MSHOT_LOG")
                .unwrap_or_else(|_| EnvFilter::new(format!("mshot={level},warn"))),
        )
        .try_init();
    match crate::commands::job::s3_spec(&args.s3) {
        Ok(Some(_)) => {}
        Ok(None) => {
            eprintln!("mshot: mshot upload needs --bucket BUCKET");
            return exit::USAGE;
        }
        Err(e) => {
            eprintln!("mshot: {e:#}");
            return exit::USAGE;
        }
    }
    let Some(runtime) = build_runtime(None) else {
        return exit::FAILED;
    };
    let label = args
        .image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let progress = std::sync::Arc::new(CaptureProgress::new(&label));
    let clock = std::time::Instant::now();
    let uploaded = runtime.block_on(async {
        let cancel = interrupt_token();
        crate::commands::upload::run(args, &progress, &cancel).await
    });
    match uploaded {
        Ok(done) => {
            progress.finish();
            let secs = clock.elapsed().as_secs_f64();
            println!("s3       {}", done.image_uri);
            println!("manifest {}", done.manifest_uri);
            println!("crc32c   {}", done.checksum_crc32c);
            println!("verify   {}", done.verification.summary());
            println!("bytes    {}", done.bytes);
            println!("sha256   {}", done.sha256);
            println!(
                "time     {secs:.1} s ({:.1} MiB/s)",
                done.bytes as f64 / 1048576.0 / secs.max(0.001)
            );
            if let Some(material) = &done.material {
                println!("material {material}");
            }
            // Unlike a capture's, an upload's material can simply be sent
            // again (`--overwrite`): fail, so a script retries.
            if !done.verification.verified {
                eprintln!(
                    "mshot: {} is kept but not verified: {}",
                    done.image_uri,
                    done.verification.summary()
                );
                return exit::UNVERIFIED;
            }
            if let Some(problem) = &done.material_problem {
                eprintln!(
                    "mshot: the image and its manifest are in the bucket, but {problem}; run the upload again with --overwrite"
                );
                return exit::FAILED;
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("mshot: {e:#}");
            exit::FAILED
        }
    }
}
