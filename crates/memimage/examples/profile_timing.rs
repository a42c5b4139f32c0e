//! Times profile decompression and selective parsing: `profile_timing FILE`.
fn main() {
    let Some(path) = std::env::args().nth(1) else {
        return;
    };
    let Ok(bytes) = std::fs::read(&path) else {
        return;
    };
    let t = std::time::Instant::now();
    let Ok(json) = memimage::profile::decompress(&bytes) else {
        return;
    };
    let d = t.elapsed();
    let t = std::time::Instant::now();
    let p = memimage::Profile::load(&json, "p");
    println!(
        "decompress {d:?}, parse {:?}, ok={}",
        t.elapsed(),
        p.is_ok()
    );
}
