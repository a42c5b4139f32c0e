//! A capture through /proc/kcore: nothing is pushed or loaded. The plan
//! (`pipeline::source::kcore`) from the target's iomem and kcore headers,
//! then one streaming remote command, framed into LiME and received as any
//! other source.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;

use super::CaptureJob;
use crate::pipeline::sink::ImageSink;
use crate::pipeline::source::kcore::{
    self, HEADER_PROBE, Header, KCORE, LimeFramer, check_plan, explain_read_failure,
    header_command, parse_header, plan, stream_command,
};
use crate::pipeline::source::{ChunkReader, SourceRecord, StreamSource, WireCounter, WireStats};
use crate::pipeline::{Received, SourceStream, receive};
use crate::record::PhysRange;
use crate::target::shell::Shell;
use crate::target::{self, commands};
use crate::util::progress::CaptureProgress;

/// Captures through /proc/kcore: the plan from the target's iomem and kcore
/// headers, then one streaming remote command, framed into LiME and fed to
/// the shared receive path.
pub async fn acquire(
    job: &CaptureJob,
    shell: &Shell<'_>,
    expected_ranges: &mut Vec<PhysRange>,
    record: &mut SourceRecord,
    s3: Option<&mut crate::pipeline::sink::s3::Destination>,
    s3_metadata: std::collections::HashMap<String, String>,
    progress: &CaptureProgress,
) -> anyhow::Result<Option<(Received, PathBuf)>> {
    let host = shell.host;
    progress.phase("reading /proc/kcore headers");
    if job.source.store_compressed {
        bail!(
            "{KCORE} streams plain, so there is no compressed stream to store: rerun without --store-compressed"
        );
    }
    if job.source.compress || job.source.digest {
        tracing::info!(
            "{host}: /proc/kcore has no compression and no kernel-side digest; the image crosses SSH plain and is hashed by mshot only"
        );
    }
    let iomem = shell.run_root(commands::IOMEM, &[], None).await?;
    if !iomem.success() {
        bail!("cannot read /proc/iomem as root: {}", iomem.stderr_line());
    }
    let ram = target::parse_iomem_system_ram(&iomem.stdout_text())?;
    *expected_ranges = ram.clone();

    let mut want = HEADER_PROBE;
    let segments = loop {
        let out = shell.run_root(&header_command(want), &[], None).await?;
        if !out.success() || out.stdout.is_empty() {
            bail!("{}", explain_read_failure(&out.stderr_line()));
        }
        match parse_header(&out.stdout)? {
            Header::Segments(segments) => break segments,
            Header::NeedBytes(n) if n > want => want = n,
            Header::NeedBytes(_) => bail!("{KCORE} program headers are cut short"),
        }
    };
    let plan = plan(&ram, &segments);
    record.kcore = Some(kcore::record(&plan, &segments));
    check_plan(&plan, &segments)?;
    for gap in &plan.uncovered {
        tracing::info!(
            "{host}: {:#x}-{:#x} ({} bytes) is System RAM in /proc/iomem but only part of a page, which {KCORE} never serves; the image leaves it out",
            gap.start,
            gap.end,
            gap.bytes()
        );
    }
    let ranges = plan.image_ranges();
    let expected_bytes = target::lime_image_size(&ranges);
    if job.dry_run {
        tracing::info!(
            "{host}: dry run: {KCORE} is readable and covers System RAM ({} ranges, {expected_bytes} bytes of image); nothing captured",
            ranges.len()
        );
        return Ok(None);
    }

    let acked = progress.s3_acked(s3.is_some());
    let sink = ImageSink::open(
        job.local_image.then_some(job.image_path.as_path()),
        Some(expected_bytes),
        s3,
        Some(expected_bytes),
        s3_metadata,
        acked,
    )
    .await?;
    progress.phase("capturing (kcore)");
    progress.start_bytes(expected_bytes);
    let (stdout, command, pending) = shell.start_root_stream(&stream_command(&plan)).await?;
    let stats = WireStats::new(false);
    let raw = WireCounter::new(ChunkReader::new(stdout), stats.clone());
    let framed = StreamSource::new(Box::new(LimeFramer::new(raw, ranges.clone())));
    let received = receive(
        SourceStream::new(framed),
        sink,
        job.stream_idle_timeout,
        progress,
    )
    .await;
    record.wire_bytes = stats.bytes();
    record.stored_as = "plain".into();
    let (received, sink) = match received {
        Ok(r) => r,
        Err(e) => {
            command.abort();
            pending.finish(shell.audit, None);
            return Err(e);
        }
    };
    let out = tokio::time::timeout(Duration::from_secs(60), command.wait()).await;
    let out = match out {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            pending.finish(shell.audit, None);
            return Err(e.into());
        }
        Err(_) => {
            pending.finish(shell.audit, None);
            bail!("dd on the target did not exit after sending the image");
        }
    };
    pending.finish(shell.audit, Some(&out));
    if !out.success() {
        bail!(
            "reading {KCORE} failed on the target ({}): {}; the image was not kept",
            out.describe_status(),
            explain_read_failure(&out.stderr_line())
        );
    }
    received.check_expected(&ranges, "the kcore stream")?;
    let path = sink.commit(&received.sha256).await?;
    Ok(Some((
        received,
        path.unwrap_or_else(|| job.image_path.clone()),
    )))
}
