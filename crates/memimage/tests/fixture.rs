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

mod common;
use common::{NAME, capture};

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

    // The boot time equals linux.boottime's, to the microsecond.
    let boot = memimage::plugins::boot_time_ns(&k).expect("boot time from tk_core");
    let vol_boot = vol(&dir, "boottime")[0]["Boot Time"]
        .as_str()
        .unwrap()
        .replace("+00:00", "Z")
        .parse::<jiff::Timestamp>()
        .unwrap()
        .as_nanosecond();
    assert!((boot - vol_boot).abs() < 1_000, "boot {boot} vs {vol_boot}");
    let boot_fraction = boot.rem_euclid(1_000_000_000);

    // pslist: same (pid, tid, ppid, comm), task offsets, ids and start times.
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
                [int(r, "uid"), int(r, "gid"), int(r, "euid"), int(r, "egid")],
                // Wall-clock start, from the kernel's boot time.
                s(r, "start_time").unwrap(),
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
                [g("UID"), g("GID"), g("EUID"), g("EGID")],
                // Volatility 3 adds the start to the boot time's whole
                // seconds only (its linux.boottime shows the fraction), so
                // its creation times run early by that fraction: add it back.
                shift(r["CREATION TIME"].as_str().unwrap(), boot_fraction),
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
    let bytes = profile.to_cache_bytes();
    assert_eq!(bytes, serde_json::to_vec(&profile.to_isf_json()).unwrap());
    let cached = Profile::from_cache_bytes(&bytes, NAME).unwrap();
    let kc = Kernel::locate(&phys, &cached).unwrap();
    assert_eq!(run_plugin("pstree", &kc, &opts).unwrap(), tree);
    let rekall = serde_json::to_vec(&profile.to_rekall_json()).unwrap();
    let rk = Profile::load(&rekall, "rekall").unwrap();
    let kr = Kernel::locate(&phys, &rk).unwrap();
    assert_eq!(run_plugin("pstree", &kr, &opts).unwrap(), tree);
}

/// Runs `f` with the fixture's located kernel (or skips).
fn with_kernel(f: impl FnOnce(&Kernel<'_, '_>, &std::path::Path, &std::path::Path)) {
    let Some((lime, dir)) = capture() else { return };
    let bytes = std::fs::read(dir.join(format!("{NAME}.json.xz"))).unwrap();
    let profile = Profile::load(&bytes, NAME).unwrap();
    let file = std::fs::File::open(&lime).unwrap();
    let image = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let phys = PhysicalMemory::parse(&image).unwrap();
    let k = Kernel::locate(&phys, &profile).unwrap();
    f(&k, &lime, &dir);
}

fn text(v: Option<&Value>) -> J {
    match v {
        Some(Value::Str(s)) => J::from(s.clone()),
        Some(Value::Int(i)) => J::from(i.to_string()),
        Some(Value::UInt(u)) => J::from(u.to_string()),
        _ => J::Null,
    }
}

/// netstat equals linux.sockstat stored with the fixture, field for field.
#[test]
fn netstat_matches_sockstat() {
    with_kernel(|k, _, dir| {
        let ours: Vec<Vec<J>> = run_plugin("netstat", k, &Options { threads: false })
            .unwrap()
            .iter()
            .map(|r| {
                vec![
                    J::from(int(r, "netns")),
                    J::from(s(r, "comm").unwrap()),
                    J::from(int(r, "pid")),
                    J::from(int(r, "tid")),
                    J::from(int(r, "fd")),
                    J::from(int(r, "offset") as u64 & 0xffff_ffff_ffff),
                    J::from(s(r, "family").unwrap()),
                    J::from(s(r, "type").unwrap()),
                    text(r.get("proto")),
                    text(r.get("local_addr")),
                    text(r.get("local_port")),
                    text(r.get("remote_addr")),
                    text(r.get("remote_port")),
                    text(r.get("state")),
                ]
            })
            .collect();
        let theirs: Vec<Vec<J>> = vol(dir, "sockstat")
            .iter()
            .map(|r| {
                [
                    "NetNS",
                    "Process Name",
                    "PID",
                    "TID",
                    "FD",
                    "Sock Offset",
                    "Family",
                    "Type",
                    "Proto",
                    "Source Addr",
                    "Source Port",
                    "Destination Addr",
                    "Destination Port",
                    "State",
                ]
                .iter()
                .map(|k| r[*k].clone())
                .collect()
            })
            .collect();
        assert!(!theirs.is_empty());
        assert_eq!(ours, theirs);
        // The socket inodes are those lsof shows as socket:[N].
        let inodes: BTreeSet<i64> = run_plugin("netstat", k, &Options { threads: false })
            .unwrap()
            .iter()
            .map(|r| int(r, "inode"))
            .collect();
        assert_eq!(inodes, BTreeSet::from([9913, 9919, 9920, 10010, 10019]));
    });
}

/// pid, comm, start, end, perms, pgoff, major, minor, inode, path.
type MapRow = (i64, String, i64, i64, String, i64, i64, i64, i64, String);

fn maps_rows(rows: &[Row]) -> Vec<MapRow> {
    rows.iter()
        .map(|r| {
            let p = s(r, "path").unwrap();
            (
                int(r, "pid"),
                s(r, "comm").unwrap(),
                int(r, "start"),
                int(r, "end"),
                s(r, "perms").unwrap(),
                int(r, "pgoff"),
                int(r, "major"),
                int(r, "minor"),
                int(r, "inode"),
                if p.is_empty() {
                    "Anonymous Mapping".to_string()
                } else {
                    p
                },
            )
        })
        .collect()
}

fn vol_maps(rows: &[J]) -> Vec<MapRow> {
    rows.iter()
        .map(|r| {
            let g = |k: &str| r[k].as_i64().unwrap();
            let t = |k: &str| r[k].as_str().unwrap().to_string();
            (
                g("PID"),
                t("Process"),
                g("Start"),
                g("End"),
                t("Flags"),
                g("PgOff"),
                g("Major"),
                g("Minor"),
                g("Inode"),
                t("File Path"),
            )
        })
        .collect()
}

fn reference(name: &str) -> Vec<J> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(NAME)
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// maps (maple tree, paths, heap/stack/vdso) and envars equal Volatility
/// 3.28's linux.proc.Maps and linux.envars on the fixture (outputs kept
/// in tests/data, produced with the fixture's ISF).
#[test]
fn maps_and_envars_match_volatility3() {
    with_kernel(|k, _, _| {
        let opts = Options { threads: false };
        let ours = maps_rows(&run_plugin("maps", k, &opts).unwrap());
        let theirs = vol_maps(&reference("linux.proc.Maps.json"));
        assert_eq!(ours.len(), 138);
        assert_eq!(ours, theirs);
        let ours: Vec<(i64, i64, String, String, String)> = run_plugin("envars", k, &opts)
            .unwrap()
            .iter()
            .map(|r| {
                (
                    int(r, "pid"),
                    int(r, "ppid"),
                    s(r, "comm").unwrap(),
                    s(r, "key").unwrap(),
                    s(r, "value").unwrap(),
                )
            })
            .collect();
        let theirs: Vec<(i64, i64, String, String, String)> = reference("linux.envars.json")
            .iter()
            .map(|r| {
                (
                    r["PID"].as_i64().unwrap(),
                    r["PPID"].as_i64().unwrap(),
                    r["COMM"].as_str().unwrap().into(),
                    r["KEY"].as_str().unwrap().into(),
                    r["VALUE"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert_eq!(ours, theirs);
        // No bash in this busybox guest: Volatility finds no history either.
        assert!(run_plugin("bash", k, &opts).unwrap().is_empty());
    });
}

/// lsof: the same descriptors, paths, devices and inodes as Volatility
/// 3.28's linux.lsof (threads included).
#[test]
fn lsof_matches_volatility3() {
    with_kernel(|k, _, _| {
        let opts = Options { threads: false };
        type Fd = (i64, i64, String, i64, String, String, i64);
        let ours: Vec<Fd> = run_plugin("lsof", k, &opts)
            .unwrap()
            .iter()
            .map(|r| {
                (
                    int(r, "pid"),
                    int(r, "tid"),
                    s(r, "comm").unwrap(),
                    int(r, "fd"),
                    s(r, "path").unwrap(),
                    s(r, "device").unwrap(),
                    int(r, "inode"),
                )
            })
            .collect();
        let theirs: Vec<Fd> = reference("linux.lsof.json")
            .iter()
            .map(|v| {
                (
                    v["PID"].as_i64().unwrap(),
                    v["TID"].as_i64().unwrap(),
                    v["Process"].as_str().unwrap().into(),
                    v["FD"].as_i64().unwrap(),
                    v["Path"].as_str().unwrap().into(),
                    v["Device"].as_str().unwrap().into(),
                    v["Inode"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(ours.len(), 29);
        assert_eq!(ours, theirs);
    });
}

/// Volatility 3 itself, when installed: `MSHOT_VOL`, else the venv that
/// tests/run installs under MSHOT_TOOLS_DIR (default ~/.cache/mshot-tools).
fn vol_binary() -> Option<PathBuf> {
    if let Some(v) = std::env::var_os("MSHOT_VOL") {
        return Some(PathBuf::from(v));
    }
    let tools = std::env::var_os("MSHOT_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/mshot-tools"))
        })?;
    let v = tools.join("vol3/bin/vol");
    v.is_file().then_some(v)
}

/// maps of a few processes equals linux.proc.Maps run now, by the
/// installed Volatility 3 (skipped when it is not installed; required by
/// MSHOT_REQUIRE_ALL=1 as in CI).
#[test]
fn maps_matches_volatility3_run_now() {
    with_kernel(|k, lime, dir| {
        let Some(vol_bin) = vol_binary() else {
            if std::env::var("MSHOT_REQUIRE_ALL").is_ok_and(|v| v == "1") {
                panic!(
                    "MSHOT_REQUIRE_ALL=1 and Volatility 3 is not installed (tests/run installs it)"
                );
            }
            eprintln!("skipped: Volatility 3 not installed (set MSHOT_VOL or run tests/run)");
            return;
        };
        let sym = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("vol-symbols");
        std::fs::create_dir_all(sym.join("linux")).unwrap();
        std::fs::copy(
            dir.join(format!("{NAME}.json.xz")),
            sym.join("linux").join(format!("{NAME}.json.xz")),
        )
        .unwrap();
        let home = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("vol-home");
        std::fs::create_dir_all(&home).unwrap();
        let out = std::process::Command::new(&vol_bin)
            .env("HOME", &home)
            .args(["-q", "-r", "json", "-s"])
            .arg(&sym)
            .arg("-f")
            .arg(lime)
            .args(["linux.proc.Maps", "--pid", "1", "96", "116"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs = vol_maps(&serde_json::from_slice::<Vec<J>>(&out.stdout).unwrap());
        let ours: Vec<_> = maps_rows(&run_plugin("maps", k, &Options { threads: false }).unwrap())
            .into_iter()
            .filter(|r| [1, 96, 116].contains(&r.0))
            .collect();
        assert_eq!(theirs.len(), 108);
        assert_eq!(ours, theirs);
    });
}

/// A Volatility 3 timestamp moved by `ns`, printed as mshot prints times.
fn shift(time: &str, ns: i128) -> String {
    let t = time
        .replace("+00:00", "Z")
        .parse::<jiff::Timestamp>()
        .unwrap()
        .as_nanosecond();
    // Both sides keep microseconds: round the shifted value the same way.
    let shifted = jiff::Timestamp::from_nanosecond((t + ns) / 1_000 * 1_000).unwrap();
    shifted.strftime("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
}
