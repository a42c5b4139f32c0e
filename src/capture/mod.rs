//! Orchestration of one capture, from connection to manifest.
//!
//! The order of steps is the safety argument: nothing is written on the target
//! before we know we can become root and that no LiME is loaded; the module is
//! loaded only after its hash was checked on the target; LiME listens on
//! loopback only and the stream comes back inside the SSH connection; the image
//! gets its final name only after the LiME headers, byte count and ranges all
//! match /proc/iomem; and `cleanup` runs on every path, Ctrl-C included.

mod bench;
mod cleanup;
mod job;
mod kcore;
mod listener;
pub mod manifest;
mod module;

use crate::repository::ModuleFile;
use crate::target::become_root;
pub use bench::bench_receive;
use cleanup::{RemoteState, cleanup};
use job::module_record;
pub use job::{CaptureJob, ModuleSource, SudoPolicy, default_filename, local_user};
use listener::wait_for_listener;
use module::module_availability;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use jiff::Timestamp;
use tokio_util::sync::CancellationToken;

use crate::pipeline::sink::ImageSink;
use crate::pipeline::source::{self, Used};
use crate::pipeline::{Received, receive};
use crate::record;
use crate::record::audit::AuditLog;
use crate::target::shell::Shell;
use crate::target::{self, PhysRange, Privilege, commands};
use crate::transport::Session;
use crate::util::progress::CaptureProgress;
use manifest::Manifest;

/// What a finished capture produced.
pub struct CaptureOutcome {
    pub manifest: Manifest,
    pub image_path: Option<PathBuf>,
    pub manifest_path: Option<PathBuf>,
    /// Cleanup left something on the target: the capture itself may still be good.
    pub cleanup_failed: bool,
}

/// Facts gathered before the stream starts; they go into the manifest.
#[derive(Default)]
struct Facts {
    kernel_release: String,
    machine: String,
    expected_ranges: Vec<PhysRange>,
    remote_module_path: String,
    lime_arguments: String,
    material: Option<crate::target::material::Fetched>,
    source: source::SourceRecord,
    /// The module actually used, once known (repository modules after `uname`).
    module: Option<manifest::ModuleRecord>,
}

/// Connects to S3 and checks the bucket and the keys before anything
/// happens on the target.
async fn prepare_s3(
    job: &CaptureJob,
) -> anyhow::Result<Option<crate::pipeline::sink::s3::Destination>> {
    let Some(spec) = &job.s3 else {
        return Ok(None);
    };
    let name = job
        .image_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    crate::pipeline::sink::s3::Destination::prepare(spec, &job.target().host, &name)
        .await
        .map(Some)
}

/// The image object's metadata: what it is, known before the first byte.
pub(crate) fn s3_metadata(
    job: &CaptureJob,
    kernel_release: &str,
) -> std::collections::HashMap<String, String> {
    std::collections::HashMap::from([
        ("mshot-host".to_string(), job.target().host.clone()),
        (
            "mshot-kernel-release".to_string(),
            kernel_release.to_string(),
        ),
        (
            "mshot-capture-time".to_string(),
            Timestamp::now().to_string(),
        ),
        (
            "mshot-tool-version".to_string(),
            format!("mshot {}", env!("CARGO_PKG_VERSION")),
        ),
    ])
}

/// Captures one host. `cancel` stops the work (the single-host path wires it to
/// Ctrl-C, the fleet to its own interrupt); cleanup still runs after it fires.
pub async fn capture(
    job: &CaptureJob,
    progress: &CaptureProgress,
    cancel: &CancellationToken,
) -> anyhow::Result<CaptureOutcome> {
    let started = Timestamp::now();
    let clock = Instant::now();
    let audit = AuditLog::default();
    let target = job.target().clone();

    progress.phase("connecting");
    let s3 = tokio::select! {
        s = prepare_s3(job) => s?,
        _ = cancel.cancelled() => bail!("interrupted while checking the S3 bucket; nothing was changed on the target"),
    };
    let session = tokio::select! {
        s = Session::connect(&job.route, &job.host_keys, &job.ssh) => s?,
        _ = cancel.cancelled() => bail!("interrupted by Ctrl-C while connecting; nothing was changed on the target"),
    };

    let mut state = RemoteState {
        s3,
        ..RemoteState::default()
    };
    let mut facts = Facts::default();
    let result = tokio::select! {
        r = run(job, &session, &audit, &mut state, &mut facts, progress) => r,
        _ = cancel.cancelled() => Err(anyhow!("interrupted by Ctrl-C")),
    };

    progress.phase("cleaning up");
    let cleanup = cleanup(job, session, &audit, &mut state).await;
    // A capture that did not prove its image whole never completes the
    // upload: abort it, so no parts are left billing.
    let s3_abort = match &state.s3 {
        Some(s3) => {
            progress.phase("aborting the S3 upload");
            s3.abort_unfinished().await.err()
        }
        None => None,
    };
    progress.finish();

    let result = match (result, s3_abort) {
        (Err(e), Some(abort)) => Err(e.context(format!("{abort:#}"))),
        (result, _) => result,
    };
    let (received, image_path) = match &result {
        Ok(Some((received, path))) => (Some(received), Some(path.clone())),
        _ => (None, None),
    };
    let material = facts.material.take();
    // Material goes to the bucket after the image and before the manifest,
    // which lists its keys; a failure is a warning (`s3::material` says why).
    if let (Some(s3), Some(fetched), Some(path)) = (state.s3.as_mut(), &material, &image_path)
        && s3.completed()
    {
        let dir = crate::target::material::dir_for(path);
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        let bodies = crate::pipeline::sink::s3::material::from_fetched(fetched, &name);
        if let Some(problem) = s3.put_material(bodies, cancel).await.problem() {
            tracing::warn!(
                "{}: the image is complete in the bucket, but {problem}; a local copy is written to {}",
                target.host,
                dir.display()
            );
        }
    }
    let manifest = Manifest {
        tool: "mshot".into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        host: target.host.clone(),
        port: target.port,
        user: target.user.clone(),
        jump_hosts: job.route[..job.route.len() - 1]
            .iter()
            .map(|e| e.to_string())
            .collect(),
        kernel_release: facts.kernel_release.clone(),
        machine: facts.machine.clone(),
        privilege: state.privilege,
        dry_run: job.dry_run,
        module: manifest::ModuleRecord {
            remote_path: facts.remote_module_path.clone(),
            ..facts.module.clone().unwrap_or_else(|| job.module.record())
        },
        lime_arguments: facts.lime_arguments.clone(),
        started,
        finished: Timestamp::now(),
        duration_seconds: clock.elapsed().as_secs_f64(),
        image: received
            .zip(image_path.as_deref())
            .map(|(r, path)| r.image_record(path)),
        expected_ranges: facts
            .expected_ranges
            .iter()
            .map(record::RangeRecord::from)
            .collect(),
        error: result.as_ref().err().map(|e| format!("{e:#}")),
        material: crate::target::material::finish(material, image_path.as_deref()),
        source: facts.source.clone(),
        s3: state.s3.as_ref().and_then(|s3| s3.record()),
        cleanup: cleanup.clone(),
        audit: audit.entries(),
    };
    // The manifest is written on every path past the connection: a failed or
    // dry run still leaves the audit of what was done on the target.
    let manifest_path = record::manifest_path_for(&job.image_path);
    manifest::write(&manifest_path, &manifest)
        .with_context(|| format!("writing manifest {}", manifest_path.display()))?;
    let manifest_path = Some(manifest_path);
    if let (Some(s3), Some(image)) = (&state.s3, &manifest.image)
        && s3.completed()
    {
        let json = serde_json::to_vec_pretty(&manifest)?;
        s3.put_manifest(json, &image.sha256)
            .await
            .with_context(|| {
                format!(
                    "the image {} is complete, but its manifest was not uploaded (local copy: {})",
                    s3.bucket.uri(&s3.image_key),
                    record::manifest_path_for(&job.image_path).display()
                )
            })?;
    }
    let image_path = image_path.filter(|_| job.local_image);
    let cleanup_failed = !cleanup.errors.is_empty();
    match result {
        Ok(_) => Ok(CaptureOutcome {
            manifest,
            image_path,
            manifest_path,
            cleanup_failed,
        }),
        Err(error) if cleanup_failed => {
            Err(error.context(format!("and cleanup failed: {}", cleanup.errors.join("; "))))
        }
        Err(error) => Err(error),
    }
}

async fn run(
    job: &CaptureJob,
    session: &Session,
    audit: &AuditLog,
    state: &mut RemoteState,
    facts: &mut Facts,
    progress: &CaptureProgress,
) -> anyhow::Result<Option<(Received, PathBuf)>> {
    let host = session.label().to_string();
    let shell = Shell {
        session,
        audit,
        host: &host,
        sudo_password: job.sudo_password.as_ref(),
        privilege: Privilege::Root,
    };

    progress.phase("checking the target");
    let out = shell.run_plain(commands::KERNEL).await?;
    let kernel = target::parse_kernel_info(&out.stdout_text()).ok_or_else(|| {
        anyhow!(
            "cannot read the kernel release: `{}` printed {:?}",
            commands::KERNEL,
            out.stdout_text()
        )
    })?;
    facts.kernel_release = kernel.release.clone();
    facts.machine = kernel.machine.clone();
    tracing::info!("{host}: kernel {} on {}", kernel.release, kernel.machine);
    // A repository is asked only now that the kernel is known; it verifies the
    // manifest's signature and the module's hash before anything is pushed.
    // Only "no module for this kernel" leaves the choice to --method (auto
    // reads /proc/kcore then); a failed verification always stops here.
    let resolved;
    let no_module = ModuleFile {
        path: PathBuf::new(),
        bytes: Vec::new(),
        sha256: String::new(),
    };
    let mut repository_miss = None;
    let module_file = match &job.module {
        ModuleSource::File(module) => module,
        ModuleSource::Repository(spec) => {
            progress.phase("fetching module");
            match crate::repository::resolve(spec, &kernel.release, &kernel.machine).await {
                Ok(r) => {
                    resolved = r;
                    facts.module = Some(module_record(
                        &resolved.module,
                        Some(resolved.origin.clone()),
                    ));
                    &resolved.module
                }
                Err(e) if e.is::<crate::repository::NoModule>() => {
                    repository_miss = Some(e.to_string());
                    &no_module
                }
                Err(e) => return Err(e),
            }
        }
    };
    let module = match repository_miss {
        Some(why) => source::ModuleAvailability::Missing(why),
        None => module_availability(module_file, &kernel),
    };

    let privilege = become_root(&shell, kernel.uid, &job.sudo).await?;
    state.privilege = Some(privilege);
    let shell = Shell { privilege, ..shell };

    let decision = source::choose(job.source.method, &module, &shell, &mut facts.source).await?;
    if decision.used == Used::Kcore {
        // The same profile material as for LiME, so analysis works alike.
        progress.phase("fetching profile material");
        facts.material = Some(crate::target::material::fetch(&shell).await);
        return kcore::acquire(
            job,
            &shell,
            &mut facts.expected_ranges,
            &mut facts.source,
            state.s3.as_mut(),
            s3_metadata(job, &facts.kernel_release),
            progress,
        )
        .await;
    }

    let modules = shell.run_plain(commands::MODULES).await?;
    if target::module_loaded(&modules.stdout_text(), "lime") {
        if !job.force {
            bail!(
                "a lime module is already loaded on {host} (another capture running, or one left behind); rerun with --force to unload it"
            );
        }
        let out = shell.run_root(commands::RMMOD_LIME, &[], None).await?;
        if !out.success() {
            bail!(
                "--force: cannot unload the lime module already loaded: {}",
                out.stderr_line()
            );
        }
    }

    let iomem = shell.run_root(commands::IOMEM, &[], None).await?;
    if !iomem.success() {
        bail!("cannot read /proc/iomem as root: {}", iomem.stderr_line());
    }
    let expected = target::parse_iomem_system_ram(&iomem.stdout_text())?;
    facts.expected_ranges = expected.clone();
    let expected_bytes = target::lime_image_size(&expected);

    // Profile material (BTF, kallsyms...) for analysis without a profile;
    // read before LiME loads, stored beside the image once it lands.
    progress.phase("fetching profile material");
    facts.material = Some(crate::target::material::fetch(&shell).await);

    let sockets = shell.run_plain(commands::TCP_SOCKETS).await?;
    let used = target::used_ports(&target::parse_proc_net_tcp(&sockets.stdout_text()));
    let port = target::choose_free_port(&used, rand::random::<u16>)
        .ok_or_else(|| anyhow!("no free TCP port between 20000 and 32767 on the target"))?;
    state.port = Some(port);

    progress.phase("pushing module");
    let out = shell.run_root(commands::MAKE_TEMP_DIR, &[], None).await?;
    let dir = target::parse_temp_dir(&out.stdout_text())
        .ok_or_else(|| anyhow!("mktemp on the target failed: {}", out.stderr_line()))?;
    state.temp_dir = Some(dir.clone());
    let remote_module = format!("{dir}/lime.ko");
    facts.remote_module_path = remote_module.clone();
    let out = shell
        .run_root(
            &commands::write_file(&remote_module),
            &module_file.bytes,
            Some(format!(
                "{} ({} bytes)",
                module_file.path.display(),
                module_file.bytes.len()
            )),
        )
        .await?;
    if !out.success() {
        bail!(
            "cannot write {remote_module} on the target: {}",
            out.stderr_line()
        );
    }
    let out = shell
        .run_root(&commands::sha256(&remote_module), &[], None)
        .await?;
    let remote_hash = target::parse_sha256sum(&out.stdout_text())
        .ok_or_else(|| anyhow!("sha256sum of {remote_module} failed: {}", out.stderr_line()))?;
    if remote_hash != module_file.sha256 {
        bail!(
            "module changed in transit: {remote_module} on the target has SHA-256 {remote_hash}, {} has {}",
            module_file.path.display(),
            module_file.sha256
        );
    }

    if job.dry_run {
        tracing::info!(
            "{host}: dry run: connection, root, module transfer and hash all good; not loading LiME"
        );
        return Ok(None);
    }

    let acked = progress.s3_acked(state.s3.is_some());
    // A compressed store's size is not known ahead; the plain image's is.
    let stored_plain = !(job.source.compress && job.source.store_compressed);
    let sink = ImageSink::open(
        job.local_image.then_some(job.image_path.as_path()),
        stored_plain.then_some(expected_bytes),
        state.s3.as_mut(),
        Some(expected_bytes),
        s3_metadata(job, &facts.kernel_release),
        acked,
    )
    .await?;

    progress.phase("loading LiME");
    let lime_args = target::lime_arguments(port) + &source::lime_extra_arguments(&job.source);
    facts.lime_arguments = lime_args.clone();
    let insmod = shell
        .start_root(&commands::insmod(&remote_module, &lime_args))
        .await?;
    state.module_loaded_by_us = true;
    state.insmod = Some(insmod);
    if let Err(error) = wait_for_listener(&shell, state, port).await {
        // insmod itself refused the module: under --method auto, kcore instead.
        let refused = state.insmod.is_none() && !state.module_loaded_by_us;
        match refused
            .then(|| source::fall_back(job.source.method, &error, &mut facts.source))
            .flatten()
        {
            Some(_) => {
                drop(sink);
                return kcore::acquire(
                    job,
                    &shell,
                    &mut facts.expected_ranges,
                    &mut facts.source,
                    state.s3.as_mut(),
                    s3_metadata(job, &facts.kernel_release),
                    progress,
                )
                .await;
            }
            None => return Err(error),
        }
    }

    progress.phase("capturing");
    progress.start_bytes(expected_bytes);
    let channel = session.open_tcp("127.0.0.1", port).await?;
    let wire = source::lime_stream(channel, &job.source);
    let received = receive(wire.stream, sink, job.stream_idle_timeout, progress).await;
    facts.source.wire_bytes = wire.stats.bytes();
    let (received, sink) = match received {
        Ok(r) => r,
        // The stream's own error (a short range, say) reads as a LiME fault;
        // say plainly when the cause was the SSH connection going away.
        Err(e) if session.is_closed() => {
            return Err(e.context("the SSH connection was lost mid-stream; rerun the capture"));
        }
        Err(e) => return Err(e),
    };
    source::record_stored(&job.source, &wire.stats, &mut facts.source);
    if job.source.digest {
        // Before waiting for insmod: LiME returns only once its digest is fetched.
        if let Err(error) =
            source::check_lime_digest(session, port, &received.sha256, &mut facts.source).await
        {
            sink.discard();
            return Err(error);
        }
    }

    // LiME returns from init once the image is sent; its exit status is part of the record.
    if let Some((command, pending)) = state.insmod.take() {
        match tokio::time::timeout(Duration::from_secs(30), command.wait()).await {
            Ok(Ok(out)) => {
                pending.finish(audit, Some(&out));
                if !out.success() {
                    tracing::warn!(
                        "{host}: insmod ended with {}: {}",
                        out.describe_status(),
                        out.stderr_line()
                    );
                }
            }
            _ => pending.finish(audit, None),
        }
    }

    received.check_expected(&expected, "LiME")?;
    if job.s3.is_some() {
        progress.phase("completing the S3 upload");
    }
    // With --store-compressed the stored bytes are the zlib stream.
    let stored_sha256 = (facts.source.stored_sha256.clone()).unwrap_or(received.sha256.clone());
    let path = sink.commit(&stored_sha256).await?;
    Ok(Some((
        received,
        path.unwrap_or_else(|| job.image_path.clone()),
    )))
}
