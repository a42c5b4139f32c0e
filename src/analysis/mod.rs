//! `mshot analyze IMAGE PLUGIN...`: the glue between files and the
//! synchronous `memimage` core.
//!
//! The core takes bytes and returns rows; everything that touches the
//! outside world lives here: memory-mapping the image, reading profile
//! files, the profile cache under `~/.cache/mshot/profiles` (keyed by the
//! SHA-256 of the profile file, holding only the types the plugins use),
//! choosing a profile from a directory by the image's banner, and
//! printing tables or JSON. `analyze_image` is also what the capture path
//! calls after an image lands (`--analyze pstree,...`).

pub mod material;

use anyhow::{Context, Result, bail};
use memimage::kernel::{Kernel, find_banners};
use memimage::plugins::integrity::Verdict;
use memimage::plugins::{self, Options, Row, Value};
use memimage::profile::Selection;
use memimage::{PhysicalMemory, Profile};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Output format of `mshot analyze`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// Arguments of `mshot analyze`.
#[derive(Debug, Clone, clap::Args)]
pub struct AnalyzeArgs {
    /// Memory image: LiME, AVML (compressed LiME) or raw.
    pub image: PathBuf,
    /// Plugins to run: banner, pslist, pstree, psaux, lsmod, netstat, maps,
    /// memdump, envars, bash, lsof, triage and the integrity checks (commas
    /// allowed).
    #[arg(required = true, value_delimiter = ',')]
    pub plugins: Vec<String>,
    /// Profile file (Volatility 3 ISF or Rekall JSON; .json/.json.xz/.json.gz)
    /// or a directory of them, chosen by matching the image's banner.
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
    /// Include threads in pslist/pstree.
    #[arg(long)]
    pub threads: bool,
    /// Only these processes (thread-group ids; commas allowed). Filters the
    /// rows of every plugin and picks what memdump dumps.
    #[arg(long, value_delimiter = ',')]
    pub pid: Vec<i64>,
    /// Where memdump writes one file per region plus memdump.json.
    #[arg(long)]
    pub dump_dir: Option<PathBuf>,
    /// Also write each plugin's rows as NAME.<plugin>.json into this directory.
    #[arg(long)]
    pub output_json_dir: Option<PathBuf>,
    /// Profile cache directory (default: ~/.cache/mshot/profiles).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Do not read or write the profile cache.
    #[arg(long)]
    pub no_cache: bool,
}

/// A mistake in what was asked (exit status 2), not a failure to do it.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// "unknown plugin" with the closest names, then the whole list.
fn unknown_plugin(name: &str) -> String {
    let mut close: Vec<(f64, &str)> = plugins::PLUGINS
        .iter()
        .map(|p| (strsim::jaro_winkler(name, p), *p))
        .filter(|(score, p)| *score > 0.8 || p.contains(name) || name.contains(p))
        .collect();
    close.sort_by(|a, b| b.0.total_cmp(&a.0));
    let hint = match close.first() {
        Some((_, p)) => format!(" (did you mean {p}?)"),
        None => String::new(),
    };
    format!(
        "unknown plugin \"{name}\"{hint}: expected one of {}",
        plugins::PLUGINS.join(", ")
    )
}

/// Settings for [`analyze_image`].
#[derive(Debug, Clone)]
pub struct AnalyzeConfig {
    pub threads: bool,
    /// `None` disables the profile cache.
    pub cache_dir: Option<PathBuf>,
    /// Only these pids (empty: all).
    pub pids: Vec<i64>,
    /// Where memdump writes; it refuses to run without one.
    pub dump_dir: Option<PathBuf>,
}

/// Results of all requested plugins, in request order.
#[derive(Debug, Clone)]
pub struct Analysis {
    pub results: Vec<(String, Vec<Row>)>,
}

impl Analysis {
    /// Triage's verdict, when triage ran.
    pub fn verdict(&self) -> Option<Verdict> {
        self.results
            .iter()
            .find(|(n, _)| n == "triage")
            .map(|(_, rows)| Verdict::of(rows))
    }
}

/// The default cache directory, from XDG_CACHE_HOME or HOME.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("mshot").join("profiles"))
}

/// Runs `mshot analyze`; the analysis is returned for its verdict.
pub fn run(args: &AnalyzeArgs) -> anyhow::Result<Analysis> {
    let cfg = AnalyzeConfig {
        threads: args.threads,
        cache_dir: if args.no_cache {
            None
        } else {
            args.cache_dir.clone().or_else(default_cache_dir)
        },
        pids: args.pid.clone(),
        dump_dir: args.dump_dir.clone(),
    };
    let analysis = analyze_image(&args.image, &args.plugins, args.profile.as_deref(), &cfg)?;
    let mut text = String::new();
    match args.format {
        OutputFormat::Json => {
            text = serde_json::to_string_pretty(&to_json(&analysis))?;
            text.push('\n');
        }
        OutputFormat::Table => {
            for (i, (name, rows)) in analysis.results.iter().enumerate() {
                if i > 0 {
                    text.push('\n');
                }
                if analysis.results.len() > 1 {
                    text.push_str(&format!("== {name} ==\n"));
                }
                if name == "triage" {
                    text.push_str(&format!("verdict: {}\n", Verdict::of(rows).text()));
                }
                text.push_str(&render_table(name, rows));
            }
        }
    }
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // A closed pipe (`| head`) is not an error worth reporting.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(analysis),
        r => r.context("writing output")?,
    }
    if let Some(dir) = &args.output_json_dir {
        write_json_files(&args.image, dir, &analysis)?;
    }
    Ok(analysis)
}

/// Runs `plugins` on the image at `image`.
pub fn analyze_image(
    image: &Path,
    plugins: &[String],
    profile: Option<&Path>,
    cfg: &AnalyzeConfig,
) -> anyhow::Result<Analysis> {
    let names: Vec<String> = plugins
        .iter()
        .flat_map(|p| p.split(','))
        .map(|p| plugins::canonical(&p.trim().to_ascii_lowercase()).to_string())
        .filter(|p| !p.is_empty())
        .collect();
    for n in &names {
        if !plugins::PLUGINS.contains(&n.as_str()) {
            return Err(UsageError(unknown_plugin(n)).into());
        }
    }
    if names.iter().any(|n| n == "memdump") && cfg.dump_dir.is_none() {
        return Err(UsageError(
            "memdump writes files: pass --dump-dir DIR (a new or empty directory)".into(),
        )
        .into());
    }
    if image.is_dir() {
        return Err(UsageError(format!(
            "image {} is a directory: expected a memory image file (LiME, AVML or raw)",
            image.display()
        ))
        .into());
    }
    let file =
        std::fs::File::open(image).with_context(|| format!("opening image {}", image.display()))?;
    // SAFETY: the image is opened read-only; a concurrent truncation by
    // another process would fault, which we accept for a capture file
    // that nothing else writes once it has landed.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("mapping image {}", image.display()))?;
    let phys = PhysicalMemory::parse(&map).with_context(|| format!("image {}", image.display()))?;
    let opts = Options {
        threads: cfg.threads,
    };
    let needs_kernel = names.iter().any(|n| plugins::needs_kernel(n));
    let sel = if names.iter().any(|n| plugins::is_integrity(n)) {
        Selection::INTEGRITY
    } else {
        Selection::PLUGINS
    };
    // Without --profile: the capture's own material (NAME.material/).
    let mut material = None;
    let fallback = std::env::var_os("MSHOT_PROFILES").map(PathBuf::from);
    let profile = profile.map(Path::to_path_buf);
    let (profiles, profile) = match (needs_kernel, profile) {
        (false, p) => (Vec::new(), p),
        (true, None) => match crate::analysis::material::load_for_image(image, &phys, &sel) {
            Ok((p, m)) => {
                eprintln!("mshot: {}", m.summary);
                material = Some(m);
                (vec![p], None)
            }
            // No material: first say so if this is no Linux memory image at
            // all, which is the likelier mistake than a missing profile.
            Err(_) if find_banners(&phys, 1).is_ok_and(|b| b.is_empty()) => bail!(
                "{} is not a Linux memory image: no Linux banner (\"Linux version ...\") in it, read as {}",
                image.display(),
                match phys.format() {
                    memimage::ImageFormat::Lime => "a LiME image",
                    memimage::ImageFormat::AvmlCompressed => "an AVML image",
                    memimage::ImageFormat::Raw => "raw memory (no LiME or AVML header)",
                }
            ),
            Err(e) => match fallback {
                Some(dir) => {
                    eprintln!(
                        "mshot: note: {e:#}; using the profiles in {} (MSHOT_PROFILES)",
                        dir.display()
                    );
                    (
                        load_profiles(&dir, cfg.cache_dir.as_deref(), &sel)?,
                        Some(dir),
                    )
                }
                None => return Err(e),
            },
        },
        (true, Some(p)) => (load_profiles(&p, cfg.cache_dir.as_deref(), &sel)?, Some(p)),
    };
    let kernel = if needs_kernel {
        Some(pick_kernel(&phys, &profiles, profile.as_deref())?)
    } else {
        None
    };
    if let (Some(m), Some(k)) = (material.as_mut(), &kernel) {
        m.check_kernel(k);
        for n in &m.notes {
            eprintln!("mshot: note: {n}");
        }
    }
    let mut results = Vec::new();
    for n in names {
        let rows = match (&kernel, cfg.dump_dir.as_deref()) {
            (Some(k), Some(dir)) if n == "memdump" => dump_memory(k, &cfg.pids, dir)?,
            (Some(k), _) => plugins::run_plugin(&n, k, &opts)?,
            (None, _) => plugins::run_banner(&phys)?,
        };
        // Said as soon as they are known, before the rows they qualify.
        for note in kernel.iter().flat_map(|k| k.take_notes()) {
            eprintln!("mshot: note: {n}: {note}");
        }
        results.push((n, filter_pids(rows, &cfg.pids)));
    }
    Ok(Analysis { results })
}

/// memdump: writes every region of the selected processes to
/// `dir/pid.N.vma.0xSTART-0xEND.dmp` (holes zero-filled, as sparse file
/// ranges) and an index `dir/memdump.json` listing each file with its
/// unmapped ranges. Files appear under their final names only once
/// complete; the directory must be new or empty so that nothing is mixed
/// with an earlier dump.
pub fn dump_memory(k: &Kernel<'_, '_>, pids: &[i64], dir: &Path) -> Result<Vec<Row>> {
    use memimage::plugins::memdump::{Chunk, dump_regions, read_region};
    use std::io::{Seek, SeekFrom};
    if dir.exists() {
        let mut entries =
            std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
        if entries.next().is_some() {
            bail!(
                "dump directory {} is not empty: pass a new or empty --dump-dir",
                dir.display()
            );
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let regions = dump_regions(k, pids)?;
    if regions.is_empty() {
        bail!(
            "memdump: no process {} with memory regions",
            if pids.is_empty() {
                "at all".to_string()
            } else {
                format!("with pid {pids:?}")
            }
        );
    }
    let mut rows = Vec::new();
    let mut index = Vec::new();
    for r in &regions {
        let name = r.file_name();
        let final_path = dir.join(&name);
        let part = dir.join(format!("{name}.part"));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&part)
            .with_context(|| format!("creating {}", part.display()))?;
        let holes = read_region(k, r, |c| -> std::io::Result<()> {
            match c {
                Chunk::Data(b) => file.write_all(b),
                Chunk::Hole(n) => {
                    let n = i64::try_from(n).map_err(std::io::Error::other)?;
                    file.seek(SeekFrom::Current(n)).map(|_| ())
                }
            }
        })
        .and_then(|h| file.set_len(r.len()).map(|()| h))
        .with_context(|| format!("writing {}", part.display()))?;
        drop(file);
        std::fs::rename(&part, &final_path)
            .with_context(|| format!("renaming {} to {}", part.display(), final_path.display()))?;
        let unmapped: u64 = holes.iter().map(|(s, e)| e - s).sum();
        let mut row = memimage::plugins::memdump::region_row(r);
        row.fields.push(("bytes", Value::UInt(r.len())));
        row.fields.push(("unmapped_bytes", Value::UInt(unmapped)));
        let mut j = rows_json(std::slice::from_ref(&row));
        if let Some(obj) = j.get_mut(0).and_then(|v| v.as_object_mut()) {
            obj.insert(
                "unmapped".into(),
                holes
                    .iter()
                    .map(|(s, e)| serde_json::json!([s, e]))
                    .collect::<Vec<_>>()
                    .into(),
            );
            index.push(serde_json::Value::Object(obj.clone()));
        }
        rows.push(row);
    }
    let idx = dir.join("memdump.json");
    let text = serde_json::to_string_pretty(&serde_json::json!({ "regions": index }))?;
    write_atomically(&idx, (text + "\n").as_bytes())
        .with_context(|| format!("writing {}", idx.display()))?;
    Ok(rows)
}

/// Keeps rows whose `pid` is in `pids` (all rows when `pids` is empty or
/// the plugin has no pid column).
fn filter_pids(rows: Vec<Row>, pids: &[i64]) -> Vec<Row> {
    if pids.is_empty() {
        return rows;
    }
    rows.into_iter()
        .filter(|r| match r.get("pid") {
            Some(Value::Int(p)) => pids.contains(p),
            _ => true,
        })
        .collect()
}

/// For the capture path (`--analyze pstree,...`): runs the plugins on the
/// image that just landed and writes `NAME.<plugin>.json` next to it;
/// memdump writes into `NAME.memdump/` unless `cfg.dump_dir` says otherwise.
pub fn analyze_and_store(
    image: &Path,
    plugins: &[String],
    profile: Option<&Path>,
    cfg: &AnalyzeConfig,
) -> anyhow::Result<(Analysis, Vec<PathBuf>)> {
    let mut cfg = cfg.clone();
    if cfg.dump_dir.is_none() {
        let name = image
            .file_name()
            .map_or_else(|| "image".into(), |n| n.to_string_lossy().into_owned());
        cfg.dump_dir = Some(image.with_file_name(format!("{name}.memdump")));
    }
    let analysis = analyze_image(image, plugins, profile, &cfg)?;
    let dir = image
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let written = write_json_files(image, dir, &analysis)?;
    Ok((analysis, written))
}

fn pick_kernel<'p, 'a>(
    phys: &'p PhysicalMemory<'a>,
    profiles: &'p [Profile],
    path: Option<&Path>,
) -> Result<Kernel<'p, 'a>> {
    if let [only] = profiles {
        return Ok(Kernel::locate(phys, only)?);
    }
    for p in profiles {
        if let Some(k) = Kernel::probe(phys, p)? {
            return Ok(k);
        }
    }
    // Slow path: full discovery with profiles whose banner the image holds.
    let banners = find_banners(phys, 8)?;
    let Some((_, first)) = banners.first() else {
        bail!("{}", memimage::KernelError::NoBanner);
    };
    for p in profiles {
        let matches = p
            .banner
            .as_deref()
            .is_none_or(|b| banners.iter().any(|(_, f)| b.starts_with(f)));
        if matches && let Ok(k) = Kernel::locate(phys, p) {
            return Ok(k);
        }
    }
    bail!(
        "no profile in {} matches the image: expected one built for \"{}\", found {} profile(s) for other kernels",
        path.map_or_else(String::new, |p| p.display().to_string()),
        String::from_utf8_lossy(first).trim_end(),
        profiles.len()
    )
}

fn is_profile_file(p: &Path) -> bool {
    let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    n.ends_with(".json") || n.ends_with(".json.xz") || n.ends_with(".json.gz")
}

/// Loads a profile file, or every profile file of a directory.
pub fn load_profiles(
    path: &Path,
    cache_dir: Option<&Path>,
    sel: &Selection,
) -> Result<Vec<Profile>> {
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading profile directory {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_profile_file(p))
            .collect();
        files.sort();
        if files.is_empty() {
            bail!(
                "no profiles in {}: expected .json, .json.xz or .json.gz files, found none",
                path.display()
            );
        }
        files
            .iter()
            .map(|f| load_profile(f, cache_dir, sel))
            .collect()
    } else {
        Ok(vec![load_profile(path, cache_dir, sel)?])
    }
}

/// Loads one profile file through the cache.
pub fn load_profile(path: &Path, cache_dir: Option<&Path>, sel: &Selection) -> Result<Profile> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading profile {}", path.display()))?;
    let name = path
        .file_name()
        .map_or_else(|| "profile".into(), |n| n.to_string_lossy().into_owned());
    let key = memimage::profile::cache_key(&bytes);
    let cached = cache_dir.map(|d| d.join(format!("{key}-{}.json", sel.tag())));
    if let Some(c) = &cached
        && let Ok(cb) = std::fs::read(c)
        && let Ok(p) = Profile::from_cache_bytes(&cb, &name)
    {
        return Ok(p);
    }
    let profile = Profile::load_with(&bytes, &name, sel)
        .with_context(|| format!("profile {}", path.display()))?;
    if let Some(c) = &cached {
        // Best effort: a read-only home must not stop the analysis.
        let _ = write_atomically(c, &profile.to_cache_bytes());
    }
    Ok(profile)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

fn value_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Int(i) => (*i).into(),
        Value::UInt(u) => (*u).into(),
        Value::Str(s) => s.clone().into(),
        Value::Null => serde_json::Value::Null,
    }
}

/// Rows as JSON objects with snake_case keys.
pub fn rows_json(rows: &[Row]) -> serde_json::Value {
    rows.iter()
        .map(|r| {
            r.fields
                .iter()
                .map(|(k, v)| ((*k).to_string(), value_json(v)))
                .collect::<serde_json::Map<_, _>>()
                .into()
        })
        .collect::<Vec<serde_json::Value>>()
        .into()
}

/// One JSON object keyed by plugin name (and `verdict`, when triage ran).
pub fn to_json(a: &Analysis) -> serde_json::Value {
    let mut out: serde_json::Map<_, _> = a
        .results
        .iter()
        .map(|(n, rows)| (n.clone(), rows_json(rows)))
        .collect();
    if let Some(v) = a.verdict() {
        out.insert("verdict".into(), verdict_json(&v));
    }
    out.into()
}

pub fn verdict_json(v: &Verdict) -> serde_json::Value {
    serde_json::json!({
        "text": v.text(),
        "findings": v.findings,
        "high": v.high,
        "not_checked": v.not_checked,
    })
}

/// Writes `NAME.<plugin>.json` for each plugin into `dir`; returns the paths.
pub fn write_json_files(image: &Path, dir: &Path, a: &Analysis) -> Result<Vec<PathBuf>> {
    let stem = image
        .file_name()
        .map_or_else(|| "image".into(), |n| n.to_string_lossy().into_owned());
    let mut out = Vec::new();
    for (n, rows) in &a.results {
        let p = dir.join(format!("{stem}.{n}.json"));
        let text = serde_json::to_string_pretty(&rows_json(rows))?;
        std::fs::write(&p, text + "\n").with_context(|| format!("writing {}", p.display()))?;
        out.push(p);
    }
    Ok(out)
}

/// Escapes control characters so memory contents cannot drive the terminal.
fn sanitize(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

fn cell(name: &str, v: &Value) -> String {
    match v {
        Value::Int(i) => i.to_string(),
        Value::UInt(u) if matches!(name, "offset" | "start" | "end" | "pgoff") => {
            format!("{u:#x}")
        }
        Value::UInt(u) => u.to_string(),
        Value::Str(s) => sanitize(s),
        Value::Null => "-".into(),
    }
}

/// Tree prefixes ("├─ ", "│  "…) for rows given in depth-first order.
fn tree_prefixes(depths: &[usize]) -> Vec<String> {
    let mut out = Vec::with_capacity(depths.len());
    for (i, &d) in depths.iter().enumerate() {
        let mut s = String::new();
        for level in 1..=d {
            // Is there a later sibling at `level` before the subtree ends?
            let more = depths
                .iter()
                .skip(i + 1)
                .take_while(|&&x| x >= level)
                .any(|&x| x == level);
            s.push_str(match (level == d, more) {
                (true, true) => "├─ ",
                (true, false) => "└─ ",
                (false, true) => "│  ",
                (false, false) => "   ",
            });
        }
        out.push(s);
    }
    out
}

/// Aligned columns for people; pstree draws the tree in the COMM column.
pub fn render_table(plugin: &str, rows: &[Row]) -> String {
    let Some(first) = rows.first() else {
        return "(no rows)\n".into();
    };
    let cols: Vec<&str> = first
        .fields
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| *n != "depth")
        .collect();
    let depths: Vec<usize> = rows
        .iter()
        .map(|r| match r.get("depth") {
            Some(Value::Int(d)) => usize::try_from(*d).unwrap_or(0),
            _ => 0,
        })
        .collect();
    let prefixes = if plugin == "pstree" {
        tree_prefixes(&depths)
    } else {
        vec![String::new(); rows.len()]
    };
    let mut grid: Vec<Vec<String>> = vec![cols.iter().map(|c| c.to_uppercase()).collect()];
    for (r, prefix) in rows.iter().zip(&prefixes) {
        grid.push(
            cols.iter()
                .map(|c| {
                    let v = r.get(c).map_or_else(String::new, |v| cell(c, v));
                    if *c == "comm" {
                        format!("{prefix}{v}")
                    } else {
                        v
                    }
                })
                .collect(),
        );
    }
    let widths: Vec<usize> = (0..cols.len())
        .map(|i| {
            grid.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let numeric = |c: &str| {
        matches!(
            c,
            "pid"
                | "tid"
                | "ppid"
                | "uid"
                | "gid"
                | "euid"
                | "egid"
                | "size"
                | "start_boottime_ns"
                | "fd"
                | "inode"
                | "netns"
                | "local_port"
                | "remote_port"
                | "bytes"
                | "unmapped_bytes"
        )
    };
    let mut out = String::new();
    for row in &grid {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .zip(&cols)
            .enumerate()
            .map(|(i, ((v, w), c))| {
                let pad = w.saturating_sub(v.chars().count());
                if numeric(c) {
                    format!("{}{v}", " ".repeat(pad))
                } else if i + 1 == cols.len() {
                    v.clone()
                } else {
                    format!("{v}{}", " ".repeat(pad))
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn row(pid: i64, comm: &str, depth: i64) -> Row {
        Row {
            fields: vec![
                ("pid", Value::Int(pid)),
                ("comm", Value::Str(comm.into())),
                ("offset", Value::UInt(0xffff_8880_0000_1000)),
                ("depth", Value::Int(depth)),
            ],
        }
    }

    #[test]
    fn pstree_table_draws_tree() {
        let rows = [
            row(1, "init", 0),
            row(5, "sh", 1),
            row(7, "ls", 2),
            row(6, "sshd", 1),
            row(2, "kthreadd", 0),
        ];
        let t = render_table("pstree", &rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["PID", "COMM", "OFFSET"]
        );
        assert!(lines[2].contains("├─ sh"), "{t}");
        assert!(lines[3].contains("│  └─ ls"), "{t}");
        assert!(lines[4].contains("└─ sshd"), "{t}");
        assert!(lines[1].contains("0xffff888000001000"));
    }

    #[test]
    fn json_is_keyed_by_plugin_with_snake_case_rows() {
        let a = Analysis {
            results: vec![("pstree".into(), vec![row(1, "a\u{1b}[2J", 0)])],
        };
        let j = to_json(&a);
        assert_eq!(j["pstree"][0]["pid"], 1);
        assert_eq!(j["pstree"][0]["depth"], 0);
        // Tables escape control characters; JSON keeps the exact string.
        assert!(!render_table("pstree", &a.results[0].1).contains('\u{1b}'));
        assert_eq!(j["pstree"][0]["comm"], "a\u{1b}[2J");
    }
}

#[cfg(test)]
mod memdump_tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use memimage::memory::{PagingMode, VirtualMemory};
    use memimage::synth::proc;

    #[test]
    fn memdump_writes_complete_files_zero_filled_holes_and_an_index() {
        let pk = proc::build(true);
        let phys = PhysicalMemory::parse(&pk.mem.bytes).unwrap();
        let profile = Profile::load(pk.isf.as_bytes(), "synth").unwrap();
        let k = Kernel {
            phys: &phys,
            profile: &profile,
            vm: VirtualMemory::new(&phys, PagingMode::Level4, pk.mem.dtb),
            aslr_shift: 0,
            phys_shift: 0,
            dtb: pk.mem.dtb,
            mode: PagingMode::Level4,
            banner: Vec::new(),
            banner_pa: 0,
            vmcoreinfo: None,
            method: "synthetic",
            notes: Default::default(),
        };
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("dump");
        let rows = dump_memory(&k, &[100], &dir).unwrap();
        assert_eq!(rows.len(), 4);
        let heap = format!(
            "pid.100.vma.{:#x}-{:#x}.dmp",
            proc::HEAP,
            proc::HEAP + 0x3000
        );
        let bytes = std::fs::read(dir.join(&heap)).unwrap();
        assert_eq!(bytes.len(), 0x3000);
        assert_eq!(&bytes[0x200..0x20c], b"ls -la /root");
        assert!(bytes[0x2000..].iter().all(|&b| b == 0));
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("memdump.json")).unwrap()).unwrap();
        let entry = index["regions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["file"] == heap.as_str())
            .unwrap();
        assert_eq!(entry["path"], "[heap]");
        assert_eq!(entry["unmapped_bytes"], 0x1000);
        assert_eq!(
            entry["unmapped"],
            serde_json::json!([[proc::HEAP + 0x2000, proc::HEAP + 0x3000]])
        );
        // No .part file is left; a second dump into the same directory is refused.
        assert!(
            std::fs::read_dir(&dir).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".part"))
        );
        let e = dump_memory(&k, &[100], &dir).unwrap_err().to_string();
        assert!(e.contains("is not empty"), "{e}");
        let e = dump_memory(&k, &[4242], &tmp.path().join("none"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no process with pid [4242]"), "{e}");
    }
}
