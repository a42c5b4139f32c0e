//! The integrity checks on the real Debian 6.1 capture in
//! `shared/fixtures` (skipped, with a message, when it is not there),
//! against Volatility 3 2.28.2's `linux.malware.*` (process_spoofing
//! included), `linux.psscan` and `linux.kmsg` output on the same image
//! (kept in tests/data, made with the fixture's ISF). A clean image:
//! any finding is a false alarm and fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use memimage::plugins::{Options, Row, Value, run_plugin};
use memimage::profile::Selection;
use memimage::{Kernel, PhysicalMemory, Profile};
use serde_json::Value as J;
use std::collections::BTreeMap;

mod common;
use common::{NAME, capture};

/// Volatility prints addresses without their top 16 bits.
const MASK: u64 = 0xffff_ffff_ffff;

fn vol(plugin: &str) -> Vec<J> {
    vol_file(&format!("linux.malware.{plugin}"))
}

/// Volatility's output of `plugin` (its full name) on the fixture.
fn vol_file(plugin: &str) -> Vec<J> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(NAME)
        .join(format!("{plugin}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn with_kernel(f: impl FnOnce(&Kernel<'_, '_>)) {
    let Some((lime, dir)) = capture() else { return };
    let bytes = std::fs::read(dir.join(format!("{NAME}.json.xz"))).unwrap();
    let profile = Profile::load_with(&bytes, NAME, &Selection::INTEGRITY).unwrap();
    let file = std::fs::File::open(&lime).unwrap();
    let image = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let phys = PhysicalMemory::parse(&image).unwrap();
    let k = Kernel::locate(&phys, &profile).unwrap();
    f(&k);
}

fn run(k: &Kernel<'_, '_>, plugin: &str) -> Vec<Row> {
    run_plugin(plugin, k, &Options { threads: false }).unwrap()
}

fn s(r: &Row, key: &str) -> String {
    match r.get(key) {
        Some(Value::Str(v)) => v.clone(),
        other => panic!("{key}: {other:?}"),
    }
}

fn u(r: &Row, key: &str) -> u64 {
    match r.get(key) {
        Some(Value::UInt(v)) => *v,
        other => panic!("{key}: {other:?}"),
    }
}

fn i(r: &Row, key: &str) -> i64 {
    match r.get(key) {
        Some(Value::Int(v)) => *v,
        other => panic!("{key}: {other:?}"),
    }
}

/// A text column, Volatility's "N/A" for a value that could not be read.
fn s_or_na(r: &Row, key: &str) -> String {
    match r.get(key) {
        Some(Value::Null) => "N/A".into(),
        _ => s(r, key),
    }
}

/// Triage on a clean capture: every check ran, none found anything, and the
/// capture's own LiME is recognised.
#[test]
fn triage_finds_nothing_on_a_clean_capture() {
    with_kernel(|k| {
        let rows = run(k, "triage");
        let results: Vec<(String, String, String)> = rows
            .iter()
            .map(|r| (s(r, "check"), s(r, "result"), s(r, "what")))
            .collect();
        for (check, result, what) in &results {
            assert_eq!(result, "ok", "{check}: {result}: {what}");
        }
        for check in memimage::plugins::integrity::CHECKS {
            assert!(
                results.iter().any(|(c, _, _)| c == check),
                "{check} missing from triage"
            );
        }
        assert!(results.iter().any(|(_, _, w)| w.contains("lime")));
    });
}

/// For every index Volatility prints, the same handler address and symbol;
/// mshot also reads the entries Volatility's sizing leaves out, and the
/// three dispatchers, whose every case reaches the table's handler.
#[test]
fn check_syscall_agrees_with_volatility() {
    with_kernel(|k| {
        let rows = run(k, "check_syscall");
        let table: BTreeMap<u64, &Row> = rows
            .iter()
            .filter(|r| s(r, "source") == "sys_call_table")
            .map(|r| (u(r, "index"), r))
            .collect();
        let theirs = vol("check_syscall");
        assert_eq!(theirs.len(), 430);
        for v in &theirs {
            assert_eq!(v["Table Name"], "64bit");
            let i = v["Index"].as_u64().unwrap();
            let ours = table[&i];
            assert_eq!(
                u(ours, "handler") & MASK,
                v["Handler Address"].as_u64().unwrap(),
                "{i}"
            );
            assert_eq!(
                s(ours, "symbol"),
                v["Handler Symbol"].as_str().unwrap(),
                "{i}"
            );
            assert_eq!(s(ours, "hooked"), "false");
        }
        assert_eq!(table.len(), 451, "NR_syscalls of 6.1");
        assert_eq!(s(table[&62], "name"), "kill");
        // The dispatcher reaches what the table holds, number by number.
        for r in rows.iter().filter(|r| s(r, "source") == "x64_sys_call") {
            let i = u(r, "index");
            if let Some(t) = table.get(&i) {
                assert_eq!(u(r, "handler"), u(t, "handler"), "x64_sys_call case {i}");
            }
            assert_eq!(s(r, "hooked"), "false", "x64_sys_call case {i}");
        }
        for d in ["ia32_sys_call", "x32_sys_call"] {
            let n = rows.iter().filter(|r| s(r, "source") == d).count();
            assert!(n > 400, "{d}: {n} cases");
        }
    });
}

/// The IDT gates Volatility prints, with the same handler and symbol.
#[test]
fn check_idt_agrees_with_volatility() {
    with_kernel(|k| {
        let rows = run(k, "check_idt");
        assert_eq!(rows.len(), 256);
        for v in vol("check_idt") {
            let i = v["Index"].as_u64().unwrap() as usize;
            assert_eq!(u(&rows[i], "index"), i as u64);
            assert_eq!(
                u(&rows[i], "address") & MASK,
                v["Address"].as_u64().unwrap()
            );
            assert_eq!(s(&rows[i], "symbol"), v["Symbol"].as_str().unwrap());
        }
    });
}

/// Same netfilter hooks, no keyboard notifiers, no hidden modules, and the
/// module views agree with modxview.
#[test]
fn hooks_and_module_views_agree_with_volatility() {
    with_kernel(|k| {
        let ours: Vec<(String, u64, String)> = run(k, "netfilter")
            .iter()
            .map(|r| (s(r, "family"), u(r, "address") & MASK, s(r, "symbol")))
            .collect();
        let theirs: Vec<(String, u64, String)> = vol("netfilter")
            .iter()
            .map(|v| {
                (
                    v["Proto"].as_str().unwrap().to_lowercase(),
                    v["Handler"].as_u64().unwrap(),
                    v["Symbol"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(ours, theirs);
        assert!(run(k, "keyboard_notifiers").is_empty());
        assert!(vol("keyboard_notifiers").is_empty());
        assert!(run(k, "hidden_modules").is_empty());
        assert!(run(k, "check_modules").is_empty());
        let mut views: Vec<(String, u64, bool, bool)> = run(k, "modxview")
            .iter()
            .map(|r| {
                (
                    s(r, "name"),
                    u(r, "offset") & MASK,
                    s(r, "in_sysfs") == "true",
                    s(r, "carved") == "true",
                )
            })
            .collect();
        let mut vol_views: Vec<(String, u64, bool, bool)> = vol("modxview")
            .iter()
            .map(|v| {
                (
                    v["Name"].as_str().unwrap().to_string(),
                    v["Address"].as_u64().unwrap(),
                    v["In sysfs"].as_bool().unwrap(),
                    v["In scan"].as_bool().unwrap(),
                )
            })
            .collect();
        views.sort();
        vol_views.sort();
        assert_eq!(views, vol_views);
    });
}

/// tty_check: the same terminal and handler; check_afinfo: Volatility
/// prints only hooked members (none), mshot every member it read.
#[test]
fn tty_and_afinfo_agree_with_volatility() {
    with_kernel(|k| {
        let ours: Vec<(String, u64, String)> = run(k, "tty_check")
            .iter()
            .map(|r| (s(r, "name"), u(r, "address") & MASK, s(r, "symbol")))
            .collect();
        let theirs: Vec<(String, u64, String)> = vol("tty_check")
            .iter()
            .map(|v| {
                (
                    v["Name"].as_str().unwrap().to_string(),
                    v["Address"].as_u64().unwrap(),
                    v["Symbol"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(ours, theirs);
        let afinfo = run(k, "check_afinfo");
        assert!(vol("check_afinfo").is_empty());
        assert_eq!(afinfo.len(), 36, "4 members of 9 tables");
        assert!(afinfo.iter().all(|r| s(r, "hooked") == "false"));
    });
}

/// The kernel log line for line as Volatility's kmsg prints it, plus the
/// newest record, which its walk stops before: LiME's second taint line.
#[test]
fn kmsg_agrees_with_volatility() {
    with_kernel(|k| {
        let ours: Vec<[String; 5]> = run(k, "kmsg")
            .iter()
            .map(|r| ["timestamp", "facility", "level", "caller", "line"].map(|c| s_or_na(r, c)))
            .collect();
        let theirs: Vec<[String; 5]> = vol_file("linux.kmsg")
            .iter()
            .map(|v| {
                ["timestamp", "facility", "level", "caller", "line"]
                    .map(|c| v[c].as_str().unwrap_or("N/A").to_string())
            })
            .collect();
        assert_eq!(theirs.len(), 459);
        assert_eq!(ours[..theirs.len()], theirs[..]);
        assert_eq!(ours.len(), theirs.len() + 1);
        assert_eq!(
            ours[theirs.len()][4],
            "lime: module verification failed: signature and/or required key missing - tainting kernel"
        );
    });
}

/// The tasks Volatility's psscan carves, each with the same offset, ids,
/// parent, name and exit state, less three words it takes for tasks that
/// have a pid but no thread group (tgid 0); mshot adds the idle task
/// (pid 0, which Volatility skips). Every live task is in the task list
/// and the PID table; the others are dead.
#[test]
fn psscan_agrees_with_volatility() {
    with_kernel(|k| {
        let rows = run(k, "psscan");
        let key = |off: u64, pid: i64, tid: i64, ppid: i64, comm: &str, exit: &str| {
            (off, pid, tid, ppid, comm.to_string(), exit.to_string())
        };
        let ours: Vec<_> = rows
            .iter()
            .filter(|r| i(r, "tid") > 0)
            .map(|r| {
                key(
                    u(r, "offset_p"),
                    i(r, "pid"),
                    i(r, "tid"),
                    i(r, "ppid"),
                    &s(r, "comm"),
                    &s(r, "exit_state"),
                )
            })
            .collect();
        let all = vol_file("linux.psscan");
        let (garbage, theirs): (Vec<&J>, Vec<&J>) = all.iter().partition(|v| v["PID"] == 0);
        assert_eq!(garbage.len(), 3, "{garbage:#?}");
        let theirs: Vec<_> = theirs
            .iter()
            .map(|v| {
                key(
                    v["OFFSET (P)"].as_u64().unwrap(),
                    v["PID"].as_i64().unwrap(),
                    v["TID"].as_i64().unwrap(),
                    v["PPID"].as_i64().unwrap(),
                    v["COMM"].as_str().unwrap(),
                    v["EXIT_STATE"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(ours, theirs);
        assert_eq!(ours.len(), 60);
        let idle: Vec<_> = rows.iter().filter(|r| i(r, "tid") == 0).collect();
        assert_eq!(idle.len(), 1);
        assert_eq!(s(idle[0], "comm"), "swapper/0");
        for r in rows.iter().filter(|r| i(r, "tid") > 0) {
            let live = s(r, "exit_state") == "TASK_RUNNING";
            assert_eq!(s(r, "in_list") == "true", live, "{r:?}");
            assert_eq!(s(r, "in_pid_table") == "true", live, "{r:?}");
        }
    });
}

/// process_spoofing: the same executables and argv[0] names as
/// Volatility's. It flags the busybox applets (comm is not "busybox"),
/// which are not findings here; nothing is.
#[test]
fn process_spoofing_agrees_with_volatility() {
    with_kernel(|k| {
        let ours: Vec<(i64, i64, String, String, String, bool)> = run(k, "process_spoofing")
            .iter()
            .map(|r| {
                (
                    i(r, "pid"),
                    i(r, "ppid"),
                    s_or_na(r, "exe_path"),
                    s_or_na(r, "argv0"),
                    s(r, "comm"),
                    s(r, "exe_deleted") == "true",
                )
            })
            .collect();
        let theirs: Vec<(i64, i64, String, String, String, bool)> =
            vol_file("linux.malware.process_spoofing")
                .iter()
                .map(|v| {
                    (
                        v["PID"].as_i64().unwrap(),
                        v["PPID"].as_i64().unwrap(),
                        v["Exe_Path"].as_str().unwrap().to_string(),
                        v["Cmdline_Basename"].as_str().unwrap().to_string(),
                        v["Comm"].as_str().unwrap().to_string(),
                        v["Exe_Deleted"].as_bool().unwrap(),
                    )
                })
                .collect();
        assert_eq!(ours, theirs);
        assert_eq!(ours.iter().filter(|o| o.2 == "/bin/busybox").count(), 5);
    });
}

/// tracepoints: Volatility 3's linux.tracing.tracepoints finds no probe on
/// the clean fixture, and neither does mshot, having read every one of the
/// kernel's 639 tracepoints (32-bit offsets on x86-64) and the modules'.
#[test]
fn tracepoints_agree_with_volatility() {
    with_kernel(|k| {
        assert!(run(k, "tracepoints").is_empty());
        assert!(vol_file("linux.tracing.tracepoints").is_empty());
        let triage = run(k, "triage");
        let row = triage
            .iter()
            .find(|r| s(r, "check") == "tracepoints")
            .unwrap();
        assert_eq!(s(row, "result"), "ok");
        let what = s(row, "what");
        let n: u64 = what.split(' ').next().unwrap().parse().unwrap();
        assert!(n >= 639, "{what}");
        assert!(what.contains("0 probes attached"), "{what}");
    });
}

/// ebpf: no program is loaded on the fixture (Volatility 3's linux.ebpf
/// lists none either); the walk of prog_idr, link_idr and the BPF symbol
/// list still ran, and so did the hooks': the root cgroup (the guest
/// mounts no cgroup v2), lo and eth0, and every trace event.
#[test]
fn ebpf_agrees_with_volatility() {
    with_kernel(|k| {
        assert!(run(k, "ebpf").is_empty());
        assert!(vol_file("linux.ebpf").is_empty());
        let triage = run(k, "triage");
        let row = triage.iter().find(|r| s(r, "check") == "ebpf").unwrap();
        assert_eq!(s(row, "result"), "ok");
        assert_eq!(
            s(row, "what"),
            "0 eBPF programs, 0 links; the hooks of 1 cgroups, 2 network devices \
             and 1336 trace events: no findings"
        );
    });
}

/// unowned_code: every executable page of the fixture's module space has
/// an owner (the BPF JIT's pack, e1000's and LiME's text); the walk read
/// 533 pages.
#[test]
fn module_space_code_is_all_owned() {
    with_kernel(|k| {
        let runs: Vec<(String, u64)> = run(k, "unowned_code")
            .iter()
            .map(|r| (s(r, "owner"), u(r, "pages")))
            .collect();
        let want = [
            ("BPF JIT pack", 512),
            ("module e1000", 20),
            ("module lime", 1),
        ];
        assert_eq!(runs, want.map(|(o, n)| (o.to_string(), n)));
    });
}
