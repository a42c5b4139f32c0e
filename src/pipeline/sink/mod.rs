//! Where the image goes. The file sink writes `NAME.part` and only renames it
//! to `NAME` once the caller has proven the image whole, so a file under the
//! final name is always complete. It reserves the image's size on disk
//! before anything is loaded on the target, so a full disk fails the capture
//! at its start, not half way, and hosts of a fleet sharing one disk cannot
//! take each other's space.

pub mod s3;

use crate::pipeline::Sink;
use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(
        "{path} already exists; choose another --filename or --output-dir (mshot never overwrites an image)"
    )]
    Exists { path: String },
    #[error("cannot create {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "not enough space for the image in {dir}: {free} free, the image needs {need}; free some space, write elsewhere (--output-dir, or output_dir: in a fleet file) or stream to S3 alone (--bucket without --output-dir)"
    )]
    NoSpace {
        dir: String,
        free: indicatif::HumanBytes,
        need: indicatif::HumanBytes,
    },
    #[error("cannot write {path}: {source} (is the disk full?)")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot finalise {path}: {source}")]
    Commit {
        path: String,
        source: std::io::Error,
    },
}

pub struct FileSink {
    final_path: PathBuf,
    part_path: PathBuf,
    file: File,
    /// Received chunks not yet written: flushed with one vectored write, which
    /// saves BufWriter's copy of every byte.
    pending: Vec<bytes::Bytes>,
    pending_bytes: usize,
    written: u64,
    /// Bytes reserved ahead (fallocate KEEP_SIZE); what the image did not
    /// use is given back at commit.
    reserved: u64,
    committed: bool,
}

/// Bytes gathered before one `writev`.
const FLUSH_AT: usize = 256 << 10;

impl FileSink {
    /// Creates `NAME.part`, reserving `reserve` bytes for it when given.
    pub fn create(final_path: &Path, reserve: Option<u64>) -> Result<FileSink, SinkError> {
        let shown = |p: &Path| p.display().to_string();
        if final_path.exists() {
            return Err(SinkError::Exists {
                path: shown(final_path),
            });
        }
        let mut part_name = final_path.as_os_str().to_owned();
        part_name.push(".part");
        let part_path = PathBuf::from(part_name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&part_path)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::AlreadyExists => SinkError::Exists {
                    path: shown(&part_path),
                },
                _ => SinkError::Create {
                    path: shown(&part_path),
                    source,
                },
            })?;
        let mut sink = FileSink {
            final_path: final_path.to_path_buf(),
            part_path,
            file,
            pending: Vec::new(),
            pending_bytes: 0,
            written: 0,
            reserved: 0,
            committed: false,
        };
        // On an error the sink drops here and takes the part file with it.
        if let Some(bytes) = reserve.filter(|&b| b > 0) {
            sink.reserve(bytes)?;
        }
        Ok(sink)
    }

    /// Allocates `bytes` for the file without changing its size, after a
    /// look at the free space (which also serves file systems that cannot
    /// allocate ahead: some network and FUSE ones). The free space named in
    /// an error is the one seen before trying: a failed allocation may have
    /// taken some until the part file goes.
    fn reserve(&mut self, bytes: u64) -> Result<(), SinkError> {
        use rustix::fs::{FallocateFlags, fallocate};
        use rustix::io::Errno;
        let free = rustix::fs::fstatvfs(&self.file)
            .ok()
            .map(|s| s.f_bavail.saturating_mul(s.f_frsize));
        let no_space = |sink: &FileSink| SinkError::NoSpace {
            dir: sink
                .part_path
                .parent()
                .unwrap_or(Path::new("."))
                .display()
                .to_string(),
            free: indicatif::HumanBytes(free.unwrap_or(0)),
            need: indicatif::HumanBytes(bytes),
        };
        if free.is_some_and(|f| f < bytes) {
            return Err(no_space(self));
        }
        match fallocate(&self.file, FallocateFlags::KEEP_SIZE, 0, bytes) {
            Ok(()) => {
                self.reserved = bytes;
                Ok(())
            }
            Err(Errno::NOSPC | Errno::FBIG | Errno::DQUOT) => Err(no_space(self)),
            Err(_) => Ok(()),
        }
    }

    pub fn write(&mut self, data: bytes::Bytes) -> Result<(), SinkError> {
        self.written += data.len() as u64;
        self.pending_bytes += data.len();
        self.pending.push(data);
        if self.pending_bytes >= FLUSH_AT {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        let mut slices: Vec<IoSlice<'_>> = self.pending.iter().map(|b| IoSlice::new(b)).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            match self.file.write_vectored(rest) {
                Ok(0) => {
                    return Err(SinkError::Write {
                        path: self.part_path.display().to_string(),
                        source: std::io::ErrorKind::WriteZero.into(),
                    });
                }
                Ok(n) => IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(SinkError::Write {
                        path: self.part_path.display().to_string(),
                        source,
                    });
                }
            }
        }
        self.pending.clear();
        self.pending_bytes = 0;
        Ok(())
    }

    /// Flushes, fsyncs and moves the file to its final name without ever replacing one.
    pub fn commit(mut self) -> Result<PathBuf, SinkError> {
        self.flush()?;
        let error = |source| SinkError::Commit {
            path: self.final_path.display().to_string(),
            source,
        };
        if self.reserved > self.written {
            // Give back what the image did not use (a truncate to the same
            // size frees blocks allocated past the end); failing is only waste.
            if let Err(e) = self.file.set_len(self.written) {
                tracing::debug!(
                    "{}: cannot free reserved space: {e}",
                    self.part_path.display()
                );
            }
        }
        self.file.sync_all().map_err(error)?;
        // link + unlink instead of rename: fails rather than replacing a file
        // that appeared under the final name meanwhile.
        std::fs::hard_link(&self.part_path, &self.final_path).map_err(|source| {
            match source.kind() {
                std::io::ErrorKind::AlreadyExists => SinkError::Exists {
                    path: self.final_path.display().to_string(),
                },
                _ => error(source),
            }
        })?;
        self.committed = true;
        std::fs::remove_file(&self.part_path).map_err(error)?;
        if let Some(dir) = self.final_path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(self.final_path.clone())
    }
}

/// A sink dropped before `commit` (an error, Ctrl-C) removes its partial file,
/// so an interrupted capture leaves nothing that could pass for an image.
impl Drop for FileSink {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.part_path);
        }
    }
}

/// Where the validated stream goes: the local file, an S3 multipart upload,
/// or both at once. Either is optional, not both (`config` checks).
pub struct ImageSink {
    file: Option<FileSink>,
    s3: Option<crate::pipeline::sink::s3::PartFeeder>,
    /// Bytes written (what is stored: the plain image, or the wire stream
    /// with --store-compressed); S3 must have acknowledged exactly these.
    written: u64,
}

impl ImageSink {
    /// Creates `local` (if given), with `reserve` bytes set aside for it,
    /// and starts the S3 upload (if `s3` is set up) of an image of about
    /// `expected` bytes. Call on the runtime.
    pub async fn open(
        local: Option<&Path>,
        reserve: Option<u64>,
        s3: Option<&mut crate::pipeline::sink::s3::Destination>,
        expected: Option<u64>,
        metadata: std::collections::HashMap<String, String>,
        acked: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) -> anyhow::Result<ImageSink> {
        let file = local
            .map(|path| FileSink::create(path, reserve))
            .transpose()?;
        let s3 = match s3 {
            Some(destination) => {
                let upload = destination.start(expected, metadata, acked).await?;
                Some(crate::pipeline::sink::s3::PartFeeder::new(
                    upload,
                    tokio::runtime::Handle::current(),
                ))
            }
            None => None,
        };
        Ok(ImageSink {
            file,
            s3,
            written: 0,
        })
    }

    /// Gives the local file its final name, then completes the S3 upload and
    /// checks the object against `stored_sha256` (of the bytes written).
    /// Returns the local image's path, if there is one.
    pub async fn commit(self, stored_sha256: &str) -> anyhow::Result<Option<PathBuf>> {
        let bytes = self.written;
        let path = self.file.map(FileSink::commit).transpose()?;
        if let Some(s3) = self.s3 {
            let upload = s3.upload().clone();
            upload
                .complete(bytes, stored_sha256)
                .await
                .map_err(|e| match &path {
                    Some(p) => e.context(format!(
                        "the local image {} is complete, but the S3 upload failed",
                        p.display()
                    )),
                    None => e,
                })?;
        }
        Ok(path)
    }

    /// Removes the partial file; the S3 upload is aborted by its owner
    /// (`capture` aborts it on every path that did not complete it).
    pub fn discard(self) {}
}

impl Sink for ImageSink {
    /// Writer thread only: the S3 side may block while all parts are in flight.
    fn write(&mut self, data: bytes::Bytes) -> anyhow::Result<()> {
        self.written += data.len() as u64;
        if let Some(s3) = &mut self.s3 {
            s3.write(&data)?;
        }
        if let Some(file) = &mut self.file {
            file.write(data)?;
        }
        Ok(())
    }

    /// Writer thread only, once the stream is known whole: sends the last part.
    fn end_of_stream(&mut self) -> anyhow::Result<()> {
        match &mut self.s3 {
            Some(s3) => s3.finish(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_moves_part_to_final() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.lime");
        let mut sink = FileSink::create(&path, None).unwrap();
        sink.write(bytes::Bytes::from_static(b"hello")).unwrap();
        assert!(dir.path().join("img.lime.part").exists());
        assert!(!path.exists());
        sink.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello");
        assert!(!dir.path().join("img.lime.part").exists());
    }

    #[test]
    fn discard_leaves_nothing_and_existing_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.lime");
        let mut sink = FileSink::create(&path, None).unwrap();
        sink.write(bytes::Bytes::from_static(b"partial")).unwrap();
        drop(sink);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut dropped = FileSink::create(&path, None).unwrap();
        dropped
            .write(bytes::Bytes::from(vec![1u8; 5 << 20]))
            .unwrap();
        assert!(dir.path().join("img.lime.part").exists());
        drop(dropped);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        std::fs::write(&path, b"old").unwrap();
        assert!(matches!(
            FileSink::create(&path, None),
            Err(SinkError::Exists { .. })
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
    }

    #[test]
    fn a_reservation_beyond_the_disk_is_refused_up_front_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.lime");
        let error = FileSink::create(&path, Some(1 << 62))
            .err()
            .expect("refused");
        let text = error.to_string();
        assert!(matches!(error, SinkError::NoSpace { .. }), "{text}");
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert!(text.contains("the image needs 4.00 EiB"), "{text}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn unused_reserved_space_is_given_back_at_commit() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.lime");
        let mut sink = FileSink::create(&path, Some(64 << 20)).unwrap();
        sink.write(bytes::Bytes::from(vec![7u8; 4096])).unwrap();
        sink.commit().unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 4096);
        // Blocks past the end were punched out: far less than the 64 MiB reserved.
        assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());
    }
}
