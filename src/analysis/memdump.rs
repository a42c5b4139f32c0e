//! memdump's files: `memimage` plans the regions and streams their bytes
//! and holes; this writes one file per region and `memdump.json`, each
//! under its final name only when complete.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use memimage::kernel::Kernel;
use memimage::plugins::{Row, Value};

use super::render::rows_json;

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
    crate::util::fs::write_small_file(&idx, (text + "\n").as_bytes())
        .with_context(|| format!("writing {}", idx.display()))?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use memimage::memory::{PagingMode, VirtualMemory};
    use memimage::synth::proc;
    use memimage::{PhysicalMemory, Profile};

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
            image_base: memimage::kernel::KERNEL_MAP,
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
