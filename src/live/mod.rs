//! Live analysis: plugins run against a running host's memory, read on
//! demand from its /proc/kcore over the SSH connection. Nothing is pushed
//! and nothing is written on the target: the profile comes from the host's
//! own material (BTF cached by kernel build ID, kallsyms and iomem read
//! now), and /proc/kcore is served by the host's own sftp-server as root.

mod kcore;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use memimage::kernel::VmcoreInfo;
use memimage::plugins::{self, Options, Row};
use memimage::profile::Selection;
use memimage::{Kernel, PhysicalMemory};

use crate::analysis::{Analysis, filter_pids};
use crate::pipeline::source::kcore::{KCORE, elf_notes};
use crate::record::audit::{AuditEntry, AuditLog};
use crate::target::shell::Shell;
use crate::target::{self, Privilege, SudoPolicy, commands, live, quote};
use crate::transport::{Endpoint, HostKeyPolicy, Session, SshOptions};
use crate::util::secret::Secret;
use kcore::{KcoreSource, PhysicalLayout, RemoteKcore};

/// Blocks of /proc/kcore fetched per miss: a few pages, so the walks that
/// touch neighbouring fields cost one request, yet little is read beyond.
const BLOCK: usize = 16 << 10;
const CACHE_BYTES: usize = 256 << 20;

/// What one live analysis needs.
pub struct LiveJob {
    /// Jump hosts in order, then the target.
    pub route: Vec<Endpoint>,
    pub host_keys: HostKeyPolicy,
    pub ssh: SshOptions,
    pub sudo_password: Option<Secret>,
    pub sudo: SudoPolicy,
    /// Canonical plugin names (`analysis::plugin_names`).
    pub plugins: Vec<String>,
    pub threads: bool,
    pub pids: Vec<i64>,
    /// Longest time one plugin may read for.
    pub deadline: Duration,
    /// Where BTF is kept per kernel build ID (`None`: fetched every time).
    pub cache_dir: Option<PathBuf>,
}

impl LiveJob {
    pub fn target(&self) -> &Endpoint {
        &self.route[self.route.len() - 1]
    }
}

/// What a live analysis found and what it cost.
pub struct LiveOutcome {
    pub analysis: Analysis,
    /// Plugins that failed, with why (the others' rows are complete).
    pub failed: Vec<(String, String)>,
    pub kernel_release: String,
    pub ram_bytes: u64,
    /// Requests and bytes read from /proc/kcore.
    pub kcore_requests: u64,
    pub kcore_bytes: u64,
    /// Material read over SSH, and whether BTF came from the cache.
    pub material_bytes: u64,
    pub btf_cached: bool,
    pub notes: Vec<String>,
    pub audit: Vec<AuditEntry>,
    pub seconds: f64,
}

/// Runs the plugins on the live host.
pub async fn analyze(job: &LiveJob) -> anyhow::Result<LiveOutcome> {
    let clock = Instant::now();
    let session = Session::connect(&job.route, &job.host_keys, &job.ssh).await?;
    let audit = AuditLog::default();
    let result = analyze_on(job, &session, &audit).await;
    session.close().await;
    let mut outcome = result?;
    outcome.audit = audit.entries();
    outcome.seconds = clock.elapsed().as_secs_f64();
    Ok(outcome)
}

async fn analyze_on(
    job: &LiveJob,
    session: &Session,
    audit: &AuditLog,
) -> anyhow::Result<LiveOutcome> {
    let host = job.target().host.clone();
    let mut shell = Shell {
        session,
        audit,
        host: &host,
        sudo_password: job.sudo_password.as_ref(),
        privilege: Privilege::Root,
    };
    let out = shell.run_plain(commands::KERNEL).await?;
    let kernel = target::parse_kernel_info(&out.stdout_text())
        .ok_or_else(|| anyhow!("unexpected answer to `{}`", commands::KERNEL))?;
    if kernel.machine != "x86_64" && kernel.machine != "aarch64" {
        bail!(
            "live analysis reads x86-64 and arm64 kernels; this host is {} ({}): capture it instead",
            kernel.machine,
            kernel.release
        );
    }
    shell.privilege = target::become_root(&shell, kernel.uid, &job.sudo).await?;

    let (files, material_bytes, btf_cached) = material(&shell, job.cache_dir.as_deref()).await?;
    let iomem = files
        .get("iomem")
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    let ram = target::parse_iomem_system_ram(&iomem)?;

    let out = shell.run_plain(live::FIND_SFTP_SERVER).await?;
    let Some(server) = live::parse_sftp_server(&out.stdout_text()) else {
        bail!(
            "no sftp-server on the target (sshd's Subsystem line and /usr/lib/openssh, /usr/libexec/openssh, /usr/lib/ssh name none): install openssh-sftp-server, or capture instead"
        );
    };
    let (stream, pending) = shell.open_root_duplex(&quote(&server)).await?;
    let opened = RemoteKcore::open(stream).await;
    let kcore = match opened {
        Ok(kcore) => Arc::new(kcore),
        Err(e) => {
            pending.finish(audit, None);
            return Err(explain_refusal(&shell, e).await);
        }
    };
    let read = async {
        let (header, segments) = kcore.header().await?;
        let vmcoreinfo = kcore.vmcoreinfo(&header).await?;
        let layout = Arc::new(PhysicalLayout::new(&ram, &segments)?);
        let source = KcoreSource {
            kcore: kcore.clone(),
            layout: layout.clone(),
            runtime: tokio::runtime::Handle::current(),
            deadline: Mutex::new(None),
            failure: Mutex::new(None),
        };
        let plugins = job.plugins.clone();
        let (threads, pids, deadline) = (job.threads, job.pids.clone(), job.deadline);
        let ram_bytes = layout.ram_bytes();
        let host = host.clone();
        tokio::task::spawn_blocking(move || {
            run_plugins(
                &host, &source, &layout, files, vmcoreinfo, &plugins, threads, &pids, deadline,
            )
        })
        .await
        .context("live analysis thread")?
        .map(|mut outcome| {
            outcome.ram_bytes = ram_bytes;
            outcome
        })
    }
    .await;
    if let Ok(kcore) = Arc::try_unwrap(kcore) {
        kcore.close().await;
    }
    pending.finish(audit, None);
    let mut outcome = read?;
    outcome.kernel_release = kernel.release;
    outcome.material_bytes = material_bytes;
    outcome.btf_cached = btf_cached;
    Ok(outcome)
}

/// Names why /proc/kcore could not be opened: lockdown, or no root.
async fn explain_refusal(shell: &Shell<'_>, error: anyhow::Error) -> anyhow::Error {
    let mode = shell
        .run_plain(live::LOCKDOWN)
        .await
        .ok()
        .and_then(|o| live::parse_lockdown(&o.stdout_text()));
    match mode.as_deref() {
        Some("confidentiality") => anyhow!(
            "the kernel is in lockdown=confidentiality, which refuses {KCORE} (and any unsigned module): neither live analysis nor a capture can read this host's memory; a LiME module signed for this kernel is the only way"
        ),
        _ => error,
    }
}

/// The profile material: BTF from the cache when this kernel build was
/// seen before, the rest (tied to this boot) read now.
async fn material(
    shell: &Shell<'_>,
    cache_dir: Option<&std::path::Path>,
) -> anyhow::Result<(BTreeMap<String, Vec<u8>>, u64, bool)> {
    let notes = shell.run_plain(live::KERNEL_NOTES).await?;
    let build_id = elf_notes(&notes.stdout)
        .into_iter()
        .find(|n| n.name == b"GNU" && n.kind == 3)
        .map(|n| hex::encode(n.desc));
    let cached = match (&build_id, cache_dir) {
        (Some(id), Some(dir)) => {
            let path = dir.join(id).join("vmlinux.btf");
            std::fs::read(&path)
                .ok()
                .filter(|b| memimage::material::Btf::parse(b).is_ok())
                .map(|b| (b, path))
        }
        _ => None,
    };
    let fetched = crate::target::material::fetch_only(shell, |name| {
        matches!(name, "kallsyms" | "iomem" | "version")
            || (name == "vmlinux.btf" && cached.is_none())
    })
    .await;
    let mut files = BTreeMap::new();
    let mut bytes = 0u64;
    for (file, contents) in fetched.files() {
        bytes += contents.len() as u64;
        files.insert(file.name.clone(), contents.to_vec());
    }
    let btf_cached = cached.is_some();
    match cached {
        Some((btf, _)) => {
            files.insert("vmlinux.btf".into(), btf);
        }
        None => {
            if let (Some(id), Some(dir), Some(btf)) =
                (&build_id, cache_dir, files.get("vmlinux.btf"))
            {
                let dir = dir.join(id);
                // A cache that cannot be written only costs the next run a fetch.
                let _ = std::fs::create_dir_all(&dir).and_then(|()| {
                    crate::util::fs::write_small_file(&dir.join("vmlinux.btf"), btf)
                });
            }
        }
    }
    for missing in &fetched.record().missing {
        if missing.name == "kallsyms" || missing.name == "iomem" {
            bail!(
                "the target did not give {} as root ({}): live analysis needs it",
                missing.source,
                missing.error
            );
        }
    }
    if !files.contains_key("vmlinux.btf") {
        bail!(
            "the target has no /sys/kernel/btf/vmlinux (a kernel without CONFIG_DEBUG_INFO_BTF): live analysis needs it; capture the host and analyse with --profile"
        );
    }
    Ok((files, bytes, btf_cached))
}

/// The tasks whose pid or name read differently a moment later, past the
/// cache: rows of a running kernel that may mix two moments.
fn changed_tasks(
    kernel: &Kernel<'_, '_>,
    phys: &PhysicalMemory<'_>,
    rows: &[Row],
) -> Option<String> {
    let profile = kernel.profile;
    let (comm_off, pid_off) = (
        profile.offset("task_struct", "comm").ok()?,
        profile.offset("task_struct", "pid").ok()?,
    );
    let fresh = |va: u64, len: usize| -> Option<Vec<u8>> {
        let pa = kernel.vm.translate(va).ok()?;
        let mut b = vec![0u8; len];
        phys.read_fresh(pa, &mut b).ok()?;
        Some(b)
    };
    let mut changed = Vec::new();
    for row in rows {
        let (Some(memimage::plugins::Value::UInt(task)), Some(memimage::plugins::Value::Int(tid))) =
            (row.get("offset"), row.get("tid").or_else(|| row.get("pid")))
        else {
            continue;
        };
        let comm = match row.get("comm") {
            Some(memimage::plugins::Value::Str(c)) => c.clone(),
            _ => continue,
        };
        let now_pid =
            fresh(task + pid_off, 4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let now_comm = fresh(task + comm_off, 16).map(|b| {
            let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
            String::from_utf8_lossy(&b[..end]).into_owned()
        });
        if now_pid != Some(*tid as i32) || now_comm.as_deref() != Some(comm.as_str()) {
            changed.push(tid.to_string());
        }
    }
    (!changed.is_empty()).then(|| {
        format!(
            "{} task(s) changed while they were read (pid {}): the host kept running; their rows may mix two moments",
            changed.len(),
            changed.join(", ")
        )
    })
}

/// The kernel located at the shift VMCOREINFO (or iomem's "Kernel code")
/// gives, then each plugin with its deadline. Runs on a blocking thread.
#[allow(clippy::too_many_arguments)]
fn run_plugins(
    host: &str,
    source: &KcoreSource,
    layout: &PhysicalLayout,
    files: BTreeMap<String, Vec<u8>>,
    vmcoreinfo: Option<Vec<u8>>,
    names: &[String],
    threads: bool,
    pids: &[i64],
    deadline: Duration,
) -> anyhow::Result<LiveOutcome> {
    let sel = if names.iter().any(|n| plugins::is_integrity(n)) {
        Selection::INTEGRITY
    } else {
        Selection::PLUGINS
    };
    let iomem = files.get("iomem").cloned().unwrap_or_default();
    let (profile, check) = crate::analysis::material::load_files(host, files, &sel)?;
    let phys = PhysicalMemory::from_source(&layout.ranges(), source, BLOCK, CACHE_BYTES);
    let info = vmcoreinfo.as_deref().and_then(VmcoreInfo::parse);
    let kernel_code = memimage::material::iomem_kernel_code(&iomem);
    source.set_deadline(deadline);
    let kernel = match Kernel::from_running(&phys, &profile, info.as_ref(), kernel_code) {
        Ok(k) => k,
        Err(why) => {
            if let Some(failure) = source.failure() {
                bail!("reading {KCORE} failed: {failure}");
            }
            bail!("the running kernel was not found in {KCORE}: {why}");
        }
    };
    let mut notes = check.notes;
    let mut results = Vec::new();
    let mut failed = Vec::new();
    for name in names {
        source.set_deadline(deadline);
        let rows: anyhow::Result<Vec<Row>> = if name == "memdump" {
            Err(anyhow!(
                "memdump reads whole memory regions: capture the host for it"
            ))
        } else if name == "banner" {
            // The running kernel's own banner: a search of memory for
            // others needs a capture.
            Ok(vec![Row {
                fields: vec![
                    (
                        "banner",
                        memimage::plugins::Value::Str(
                            String::from_utf8_lossy(&kernel.banner).into_owned(),
                        ),
                    ),
                    ("offset", memimage::plugins::Value::UInt(kernel.banner_pa)),
                ],
            }])
        } else {
            plugins::run_plugin(name, &kernel, &Options { threads }).map_err(Into::into)
        };
        for note in kernel.take_notes() {
            notes.push(format!("{name}: {note}"));
        }
        if let Ok(rows) = &rows
            && matches!(name.as_str(), "pslist" | "pstree" | "psaux")
            && let Some(note) = changed_tasks(&kernel, &phys, rows)
        {
            notes.push(format!("{name}: {note}"));
        }
        match rows {
            Ok(rows) => results.push((name.clone(), filter_pids(rows, pids))),
            Err(e) => failed.push((name.clone(), format!("{e:#}"))),
        }
        if let Some(failure) = source.failure() {
            if !failed.iter().any(|(n, _)| n == name) {
                results.retain(|(n, _)| n != name);
                failed.push((name.clone(), format!("reading {KCORE} failed: {failure}")));
            }
            if failure.contains("deadline") {
                // The next plugin gets its own deadline.
                if let Ok(mut f) = source.failure.lock() {
                    *f = None;
                }
                continue;
            }
            break;
        }
    }
    let stats = phys.source_stats();
    Ok(LiveOutcome {
        analysis: Analysis { results },
        failed,
        kernel_release: String::new(),
        ram_bytes: 0,
        kcore_requests: stats.requests,
        kcore_bytes: stats.bytes,
        material_bytes: 0,
        btf_cached: false,
        notes,
        audit: Vec::new(),
        seconds: 0.0,
    })
}
