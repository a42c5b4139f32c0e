//! The real Debian 6.1 capture in `shared/fixtures`, shared by the test
//! crates that read it (each `mod common;`s this file).

use std::path::PathBuf;

pub const NAME: &str = "debian-6.1.0-56-amd64";
const LIME_SIZE: u64 = 536_341_568;

pub fn fixture_dir() -> PathBuf {
    match std::env::var_os("MSHOT_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures"),
    }
    .join(NAME)
}

/// Unpacks capture.lime.zst once into the target directory.
pub fn capture() -> Option<(PathBuf, PathBuf)> {
    let dir = fixture_dir();
    let zst = dir.join("capture.lime.zst");
    if !zst.exists() {
        eprintln!("skipped: fixture not found at {}", dir.display());
        return None;
    }
    // Tests run in parallel; one unpacks, the others wait for it.
    static UNPACK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = UNPACK.lock().unwrap_or_else(|e| e.into_inner());
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{NAME}.lime"));
    if std::fs::metadata(&out).map(|m| m.len()).ok() != Some(LIME_SIZE) {
        // nextest runs each test in a process of its own, so the mutex above
        // does not cover them all: unpack to a name of this process's own and
        // rename over (same bytes whoever wins).
        let tmp = out.with_extension(format!("partial.{}", std::process::id()));
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
