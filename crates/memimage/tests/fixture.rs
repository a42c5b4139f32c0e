//! Compares mshot with Volatility 3 on the real Debian 6.1 capture in
//! `shared/fixtures` (skipped, with a message, when it is not there).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use memimage::plugins::{Options, Row, Value, run_plugin};
use memimage::{Kernel, PhysicalMemory, Profile};
use serde_json::Value as J;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

const NAME: &str = "debian-6.1.0-56-amd64";
const LIME_SIZE: u64 = 536_341_568;

fn fixture_dir() -> PathBuf {
    match std::env::var_os("MSHOT_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures"),
    }
    .join(NAME)
}

/// Unpacks capture.lime.zst once into the target directory.
fn capture() -> Option<(PathBuf, PathBuf)> {
    let dir = fixture_dir();
    let zst = dir.join("capture.lime.zst");
    if !zst.exists() {
        eprintln!("skipped: fixture not found at {}", dir.display());
        return None;
    }
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{NAME}.lime"));
    if std::fs::metadata(&out).map(|m| m.len()).ok() != Some(LIME_SIZE) {
        let tmp = out.with_extension("partial");
        let st = std::process::Command::new("zstd")
            .args(["-d", "-q", "-f", "--long=27", "-o"])
            .arg(&tmp)
            .arg(&zst)
            .status();
        match st {
            Ok(s) if s.success() => std::fs::rename(&tmp, &out).unwrap(),
            _ => {
                eprintln!(
                    "skipped: fixture at {} present but `zstd -d` is unavailable",
                    dir.display()
                );
                return None;
            }
        }
    }
    Some((out, dir))
}

fn vol(dir: &std::path::Path, plugin: &str) -> Vec<J> {
    let text =
        std::fs::read_to_string(dir.join("volatility3").join(format!("linux.{plugin}.json")))
            .unwrap();
    serde_json::from_str::<Vec<J>>(&text).unwrap()
}

fn int(r: &Row, k: &str) -> i64 {
    match r.get(k) {
        Some(Value::Int(i)) => *i,
        Some(Value::UInt(u)) => *u as i64,
        other => panic!("{k}: {other:?}"),
    }
}

fn s(r: &Row, k: &str) -> Option<String> {
    match r.get(k) {
        Some(Value::Str(s)) => Some(s.clone()),
        _ => None,
    }
}

fn tree_edges(rows: &[Row]) -> BTreeSet<(i64, i64)> {
    let mut stack: Vec<i64> = Vec::new();
    let mut edges = BTreeSet::new();
    for r in rows {
        let d = int(r, "depth") as usize;
        stack.truncate(d);
        edges.insert((stack.last().copied().unwrap_or(0), int(r, "pid")));
        stack.push(int(r, "pid"));
    }
    edges
}

fn vol_edges(nodes: &[J], parent: i64, out: &mut BTreeSet<(i64, i64)>) {
    for n in nodes {
        let pid = n["PID"].as_i64().unwrap();
        out.insert((parent, pid));
        vol_edges(n["__children"].as_array().unwrap(), pid, out);
    }
}

#[test]
fn matches_volatility3() {
    let Some((lime, dir)) = capture() else { return };
    let bytes = std::fs::read(dir.join(format!("{NAME}.json.xz"))).unwrap();
    let t = std::time::Instant::now();
    let profile = Profile::load(&bytes, NAME).unwrap();
    eprintln!("profile load: {:?}", t.elapsed());
    let file = std::fs::File::open(&lime).unwrap();
    let image = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let phys = PhysicalMemory::parse(&image).unwrap();
    let k = Kernel::locate(&phys, &profile).unwrap();
    assert!(k.banner.starts_with(b"Linux version 6.1.0-56-amd64"));
    let opts = Options { threads: false };

    // pslist: same (pid, tid, ppid, comm) and the same task offsets.
    let ours: BTreeSet<_> = run_plugin("pslist", &k, &Options { threads: true })
        .unwrap()
        .iter()
        .map(|r| {
            (
                int(r, "pid"),
                int(r, "tid"),
                int(r, "ppid"),
                s(r, "comm").unwrap(),
                int(r, "offset") as u64 & 0xffff_ffff_ffff,
            )
        })
        .collect();
    let theirs: BTreeSet<_> = vol(&dir, "pslist")
        .iter()
        .map(|r| {
            let g = |k: &str| r[k].as_i64().unwrap();
            (
                g("PID"),
                g("TID"),
                g("PPID"),
                r["COMM"].as_str().unwrap().to_string(),
                r["OFFSET (V)"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ours, theirs);

    // pstree: same parent-child edges.
    let tree = run_plugin("pstree", &k, &opts).unwrap();
    let mut vol_tree = BTreeSet::new();
    vol_edges(&vol(&dir, "pstree"), 0, &mut vol_tree);
    assert_eq!(tree_edges(&tree), vol_tree);

    // psaux: same command lines ([comm] for kernel threads; None = unreadable).
    let ours: BTreeMap<i64, Option<String>> = run_plugin("psaux", &k, &opts)
        .unwrap()
        .iter()
        .map(|r| (int(r, "pid"), s(r, "args")))
        .collect();
    let theirs: BTreeMap<i64, Option<String>> = vol(&dir, "psaux")
        .iter()
        .map(|r| {
            (
                r["PID"].as_i64().unwrap(),
                r["ARGS"].as_str().map(str::to_string),
            )
        })
        .collect();
    assert_eq!(ours, theirs);

    // lsmod: same names and sizes.
    let ours: BTreeSet<(String, i64)> = run_plugin("lsmod", &k, &opts)
        .unwrap()
        .iter()
        .map(|r| (s(r, "name").unwrap(), int(r, "size")))
        .collect();
    let theirs: BTreeSet<(String, i64)> = vol(&dir, "lsmod")
        .iter()
        .map(|r| {
            (
                r["Module Name"].as_str().unwrap().to_string(),
                r["Code Size"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ours, theirs);

    // The cache and a Rekall export of the same profile give the same tree.
    let cached = Profile::from_cache_bytes(&profile.to_cache_bytes(), NAME).unwrap();
    let kc = Kernel::locate(&phys, &cached).unwrap();
    assert_eq!(run_plugin("pstree", &kc, &opts).unwrap(), tree);
    let rekall = serde_json::to_vec(&profile.to_rekall_json()).unwrap();
    let rk = Profile::load(&rekall, "rekall").unwrap();
    let kr = Kernel::locate(&phys, &rk).unwrap();
    assert_eq!(run_plugin("pstree", &kr, &opts).unwrap(), tree);
}
