//! `mshot analyze` as a newcomer meets it: wrong input gets one clear line
//! and the documented exit status; triage's verdict and its exit status on
//! the real 6.1 capture (when shared/fixtures is there).

use std::path::PathBuf;
use std::process::{Command, Output};

fn mshot(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mshot"))
        .arg("analyze")
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn random_bytes_are_not_a_memory_image() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("random.bin");
    let bytes: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&f, bytes).unwrap();
    for plugin in ["banner", "pslist", "triage"] {
        let o = mshot(&[f.as_os_str(), plugin.as_ref()]);
        assert_eq!(o.status.code(), Some(1), "{plugin}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains("no Linux banner"), "{plugin}: {e}");
        assert_eq!(e.matches("no Linux banner").count(), 1, "said once: {e}");
        assert!(!String::from_utf8_lossy(&o.stdout).contains("no rows"));
    }
}

#[test]
fn a_directory_is_not_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let o = mshot(&[dir.path().as_os_str(), "pslist".as_ref()]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("is a directory") && !e.contains("os error"),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "{e}");
}

#[test]
fn unknown_plugins_get_a_suggestion_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("x.lime");
    std::fs::write(&f, b"x").unwrap();
    for (typo, meant) in [
        ("psllist", "pslist"),
        ("check_sycall", "check_syscall"),
        ("triag", "triage"),
    ] {
        let o = mshot(&[f.as_os_str(), typo.as_ref()]);
        assert_eq!(o.status.code(), Some(2), "{typo}");
        assert!(
            stderr(&o).contains(&format!("did you mean {meant}?")),
            "{}",
            stderr(&o)
        );
    }
    // Volatility's names are accepted as they are.
    let o = mshot(&[f.as_os_str(), "linux.malware.check_syscall".as_ref()]);
    assert!(!stderr(&o).contains("unknown plugin"), "{}", stderr(&o));
}

fn fixture() -> Option<(PathBuf, PathBuf)> {
    let dir = std::env::var_os("MSHOT_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"))
        .join("debian-6.1.0-56-amd64");
    if !dir.join("capture.lime.zst").exists() {
        eprintln!("skipped: fixture not found at {}", dir.display());
        return None;
    }
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("analyze-cli-fixture.lime");
    // Tests of one process unpack once (threads share the pid in the name).
    static UNPACK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = UNPACK.lock().unwrap_or_else(|e| e.into_inner());
    if std::fs::metadata(&out).map(|m| m.len()).ok() != Some(536_341_568) {
        let tmp = out.with_extension(format!("part{}", std::process::id()));
        let st = Command::new("zstd")
            .args(["-d", "-q", "-f", "--long=27", "-o"])
            .arg(&tmp)
            .arg(dir.join("capture.lime.zst"))
            .status()
            .unwrap();
        assert!(st.success());
        std::fs::rename(&tmp, &out).unwrap();
    }
    Some((out, dir.join("debian-6.1.0-56-amd64.json.xz")))
}

/// On the clean fixture: exit 0, "no findings; every check ran", and the
/// JSON document's verdict object says the same.
#[test]
fn triage_verdict_on_the_clean_fixture() {
    let Some((image, isf)) = fixture() else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let args = |fmt: &str| -> Vec<std::ffi::OsString> {
        vec![
            image.clone().into(),
            "triage".into(),
            "--profile".into(),
            isf.clone().into(),
            "--cache-dir".into(),
            cache.path().into(),
            "--format".into(),
            fmt.into(),
        ]
    };
    let table: Vec<_> = args("table");
    let o = mshot(&table.iter().map(|a| a.as_os_str()).collect::<Vec<_>>());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.starts_with("verdict: no findings; every check ran"),
        "{out}"
    );
    let json: Vec<_> = args("json");
    let o = mshot(&json.iter().map(|a| a.as_os_str()).collect::<Vec<_>>());
    assert_eq!(o.status.code(), Some(0));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["verdict"]["findings"], 0);
    assert_eq!(doc["verdict"]["not_checked"], 0);
    assert!(doc["triage"].as_array().unwrap().len() >= 8);
}

/// An unreachable host: one line that says so once, exit 1.
#[test]
fn an_unreachable_host_is_said_once() {
    use crate::support::{self, KeyPair, KeyType, Need};
    if !support::prereq::check(&[Need::SshClient]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "id", KeyType::Ed25519, None).unwrap();
    let port = support::free_port("127.0.0.1".parse().unwrap()).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_mshot"))
        .args([
            "--server",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--user",
            "root",
        ])
        .arg("--key")
        .arg(&key.private)
        .arg("--output-dir")
        .arg(dir.path())
        .args(["--method", "kcore"])
        .output()
        .unwrap();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    let errors: Vec<&str> = e.lines().filter(|l| l.starts_with("mshot:")).collect();
    assert_eq!(errors.len(), 1, "{e}");
    assert_eq!(errors[0].matches("refused").count(), 1, "{e}");
}

/// `mshot stack` of one capture twice: the same values everywhere, so no
/// outliers; and a single image is a usage error.
#[test]
fn stacking_identical_captures_finds_no_outliers() {
    let one = Command::new(env!("CARGO_BIN_EXE_mshot"))
        .args(["stack", "/nonexistent.lime"])
        .output()
        .unwrap();
    assert_eq!(one.status.code(), Some(2), "{}", stderr(&one));
    let Some((image, isf)) = fixture() else {
        return;
    };
    let o = Command::new(env!("CARGO_BIN_EXE_mshot"))
        .arg("stack")
        .arg(&image)
        .arg(&image)
        .arg("--profile")
        .arg(&isf)
        .args(["--plugins", "pslist,lsmod,netstat", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["outliers"], serde_json::json!([]), "{doc}");
}
