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
mod memdump;
mod render;
pub mod stack;

use memdump::dump_memory;
pub use render::{analysis_json_rows, render_table, to_json, write_json_files};

use anyhow::{Context, Result, bail};
use memimage::kernel::{Kernel, find_banners};
use memimage::plugins::integrity::Verdict;
use memimage::plugins::{self, Options, Row, Value};
use memimage::profile::Selection;
use memimage::{PhysicalMemory, Profile};
use std::path::{Path, PathBuf};

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
    cache_dir("profiles")
}

/// `NAME` under mshot's cache (`$XDG_CACHE_HOME/mshot`, else `~/.cache/mshot`).
pub fn cache_dir(name: &str) -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("mshot").join(name))
}

/// Runs `plugins` on the image at `image`.
pub fn analyze_image(
    image: &Path,
    plugins: &[String],
    profile: Option<&Path>,
    cfg: &AnalyzeConfig,
) -> anyhow::Result<Analysis> {
    let names = plugin_names(plugins)?;
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
                    memimage::ImageFormat::Live => "a live source",
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
        let k = pick_kernel(&phys, &profiles, profile.as_deref())?;
        eprintln!("mshot: kernel {}", k.describe());
        Some(k)
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

/// The plugins asked for, by their canonical names (commas allowed); an
/// unknown name is a usage error with the closest names.
pub fn plugin_names(plugins: &[String]) -> anyhow::Result<Vec<String>> {
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
    Ok(names)
}

/// Keeps rows whose `pid` is in `pids` (all rows when `pids` is empty or
/// the plugin has no pid column).
pub fn filter_pids(rows: Vec<Row>, pids: &[i64]) -> Vec<Row> {
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
) -> anyhow::Result<(Analysis, Vec<PathBuf>)> {
    let name = image
        .file_name()
        .map_or_else(|| "image".into(), |n| n.to_string_lossy().into_owned());
    let cfg = AnalyzeConfig {
        threads: false,
        cache_dir: default_cache_dir(),
        pids: Vec::new(),
        // memdump output goes beside the image (NAME.memdump/).
        dump_dir: Some(image.with_file_name(format!("{name}.memdump"))),
    };
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
        let _ = c
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| crate::util::fs::write_small_file(c, &profile.to_cache_bytes()));
    }
    Ok(profile)
}
