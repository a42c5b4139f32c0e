//! Flags given with `-c FILE`, and which wins when the file sets the same.
//!
//! The rule: a flag that names one host's connection (`--server`, `--port`,
//! `--user`, `--key`, `--password`, `--sudo`, `--sudo-password`, `--module`,
//! `--filename`, `-J`, `--jump-*`) is refused with `-c` (clap's conflicts in
//! `cli`); every other flag the file can also set wins over the file: over
//! its top level, `defaults:` and every host. Switches that turn something
//! on (`--force`, `--accept-new-host-keys`, `--compress`, `--dry-run`) win
//! by turning it on for every host; the file cannot turn them off.
//!
//! Host settings become entries of a layer above each host's own and
//! `defaults:` (`config::Layered`), so a flag's value passes the same checks
//! as the file's. Paths are made absolute here: the file's relative paths
//! are relative to the file, a flag's to the current directory.

use std::path::{Path, PathBuf};

use crate::cli::CaptureArgs;
use crate::fleet::config::{AnalyzeSpec, BucketSpec, FleetPlan, Overrides};
use crate::fleet::flags::{Flags, RepositoryFlags};
use crate::fleet::yaml::{Node, Pos, Value};

/// The overrides of a fleet run from its flags.
pub fn overrides(args: &CaptureArgs) -> Overrides {
    let mut host = Vec::new();
    let mut set = |key: &str, value: Value| {
        host.push((
            key.to_string(),
            Node {
                value,
                pos: Pos::default(),
            },
        ));
    };
    let output_dir = args.output_dir.as_deref().map(absolute);
    if let Some(dir) = &output_dir {
        set("output_dir", Value::Str(dir.display().to_string()));
    }
    if let Some(path) = &args.conn.known_hosts {
        set(
            "known_hosts",
            Value::Str(absolute(path).display().to_string()),
        );
    }
    if args.conn.no_agent {
        set("agent", Value::Bool(false));
    }
    if let Some(secs) = args.conn.connect_timeout {
        set("connect_timeout", Value::Int(secs.into()));
    }
    if let Some(secs) = args.stream_timeout {
        set("stream_timeout", Value::Int(secs.into()));
    }
    if let Some(method) = args.method {
        let name = match method {
            crate::pipeline::source::Method::Auto => "auto",
            crate::pipeline::source::Method::Lime => "lime",
            crate::pipeline::source::Method::Kcore => "kcore",
        };
        set("method", Value::Str(name.into()));
    }
    if args.compress {
        set("compress", Value::Bool(true));
    }
    if args.store_compressed {
        set("store_compressed", Value::Bool(true));
    }
    if args.digest {
        set("digest", Value::Bool(true));
    }
    let s3 = &args.s3;
    let bucket = s3.bucket.as_ref().map(|name| BucketSpec {
        name: name.clone(),
        prefix: s3.prefix.clone(),
        region: s3.region.clone(),
        endpoint_url: s3.endpoint_url.clone(),
        profile: s3.aws_profile.clone(),
        sse: s3.sse.clone(),
        sse_kms_key_id: s3.sse_kms_key_id.clone(),
        concurrency: Some(u64::from(s3.s3_concurrency)),
        part_size_mib: Some(s3.s3_part_size),
        overwrite: s3.overwrite,
    });
    let repository = (args.repository
        || args.repository_url.is_some()
        || args.repository_key.is_some())
    .then(|| RepositoryFlags {
        enable: args.repository || args.repository_url.is_some(),
        url: args.repository_url.clone(),
        key: args.repository_key.clone(),
    });
    Overrides {
        dry_run: args.dry_run,
        only: args.hosts.clone(),
        shard: args.shard,
        accept_new_host_keys: args.conn.accept_new_host_keys,
        force: args.force,
        skip_file_checks: false,
        bench: args.bench_source_port.is_some(),
        flags: Flags {
            host,
            output_dir,
            bucket,
            repository,
            analyze: !args.analyze.is_empty(),
        },
    }
}

/// The run-wide flags that `load` does not need: `--workers`, `--log-dir`,
/// `--analyze` and `--profile`, each over the file's setting.
pub fn apply(plan: &mut FleetPlan, args: &CaptureArgs) {
    plan.workers = args.workers.or(plan.workers);
    plan.log_dir = args
        .log_dir
        .as_deref()
        .map(absolute)
        .or(plan.log_dir.take());
    if !args.analyze.is_empty() {
        let profile = (args.profile.clone()).or_else(|| plan.analyze.as_ref()?.profile.clone());
        plan.analyze = Some(AnalyzeSpec {
            plugins: args.analyze.clone(),
            profile,
        });
    } else if let (Some(profile), Some(analyze)) = (&args.profile, plan.analyze.as_mut()) {
        analyze.profile = Some(profile.clone());
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
