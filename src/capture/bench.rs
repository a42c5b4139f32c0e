//! `bench-receive`: the receive path alone, for the tunnel benchmark.

use anyhow::{Context, anyhow};
use jiff::Timestamp;

use super::manifest::{self, Manifest};
use super::{CaptureJob, prepare_s3, s3_metadata};
use crate::pipeline::sink::ImageSink;
use crate::pipeline::source;
use crate::pipeline::{Received, SourceStream, receive};
use crate::transport::Session;
use crate::util::progress::CaptureProgress;

/// The receive path alone, for the tunnel benchmark: connect, stream a
/// LiME-format source at `127.0.0.1:port` (as the target sees it) into the
/// image file. Returns the S3 record too, when uploading.
pub async fn bench_receive(
    job: &CaptureJob,
    port: u16,
    progress: &CaptureProgress,
) -> anyhow::Result<(Received, Option<crate::pipeline::sink::s3::S3Record>)> {
    let mut s3 = prepare_s3(job).await?;
    let started = Timestamp::now();
    let clock = std::time::Instant::now();
    let session = Session::connect(&job.route, &job.host_keys, &job.ssh).await?;
    let metadata = s3_metadata(job, "unknown (bench-receive)");
    let acked = progress.s3_acked(s3.is_some());
    let sink = ImageSink::open(
        job.local_image.then_some(job.image_path.as_path()),
        None,
        s3.as_mut(),
        None,
        metadata,
        acked,
    )
    .await?;
    let result: anyhow::Result<Received> = async {
        let channel = session.open_tcp("127.0.0.1", port).await?;
        let chunks = source::ChannelChunks::new(channel, source::WireStats::new(false));
        let stream = SourceStream::new(chunks);
        let (received, sink) = receive(stream, sink, job.stream_idle_timeout, progress).await?;
        sink.commit(&received.sha256).await?;
        Ok(received)
    }
    .await;
    session.close().await;
    if let Some(s3) = &s3 {
        if let Err(abort) = s3.abort_unfinished().await {
            return Err(result
                .err()
                .unwrap_or_else(|| anyhow!("S3"))
                .context(format!("{abort:#}")));
        }
        if let Ok(received) = &result {
            let record = serde_json::to_vec_pretty(&s3.record()).unwrap_or_default();
            s3.put_manifest(record, &received.sha256).await?;
        }
    }
    // A local image gets a manifest as a capture's does, so that `mshot
    // upload` can be tested and benchmarked on what the receive path wrote.
    if let Ok(received) = &result
        && job.local_image
    {
        let target = job.target();
        let manifest = Manifest {
            tool: "mshot".into(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            host: target.host.clone(),
            port: target.port,
            user: target.user.clone(),
            jump_hosts: Vec::new(),
            kernel_release: "unknown (bench-receive)".into(),
            machine: String::new(),
            privilege: None,
            dry_run: false,
            module: job.module.record(),
            lime_arguments: format!("bench-receive from 127.0.0.1:{port}"),
            started,
            finished: Timestamp::now(),
            duration_seconds: clock.elapsed().as_secs_f64(),
            image: Some(received.image_record(&job.image_path)),
            expected_ranges: Vec::new(),
            error: None,
            material: None,
            source: Default::default(),
            s3: s3.as_ref().and_then(|s3| s3.record()),
            cleanup: Default::default(),
            audit: Vec::new(),
        };
        let path = crate::record::manifest_path_for(&job.image_path);
        manifest::write(&path, &manifest)
            .with_context(|| format!("writing manifest {}", path.display()))?;
    }
    Ok((result?, s3.as_ref().and_then(|s3| s3.record())))
}
