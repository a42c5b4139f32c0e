//! How a host's memory is read: the method and stream options, and the LiME
//! module the method needs (a file, or the repository once the kernel is known).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::schema::Layered;
use super::values::found;
use super::{Checker, RepositorySpec};
use crate::capture::ModuleSource;
use crate::fleet::yaml::{Node, Pos, Value};
use crate::pipeline::source::{Method, SourceOptions};
use crate::repository::ModuleFile;

impl Checker {
    /// `method`, `compress`, `store_compressed`, `digest`: as the flags of one capture.
    pub(super) fn source_options(&mut self, layered: &Layered) -> Option<SourceOptions> {
        let mut options = SourceOptions::default();
        let mut ok = true;
        if let Some(n) = layered.get("method") {
            match &n.value {
                Value::Str(m) if m == "auto" => options.method = Method::Auto,
                Value::Str(m) if m == "lime" => options.method = Method::Lime,
                Value::Str(m) if m == "kcore" => options.method = Method::Kcore,
                other => {
                    self.error(
                        n.pos,
                        format!("method must be auto, lime or kcore, found {}", found(other)),
                    );
                    ok = false;
                }
            }
        }
        for (key, slot) in [
            ("compress", &mut options.compress),
            ("store_compressed", &mut options.store_compressed),
            ("digest", &mut options.digest),
        ] {
            if let Some(n) = layered.get(key) {
                match self.boolean(n, key) {
                    Some(b) => *slot = b,
                    None => ok = false,
                }
            }
        }
        if options.store_compressed
            && !options.compress
            && let Some(n) = layered.get("store_compressed")
        {
            self.error(n.pos, "store_compressed needs compress: true");
            ok = false;
        }
        ok.then_some(options)
    }

    /// A host's `module:` file, else the repository, else none where the
    /// method does not need one; errors about a missing module point at `pos`.
    pub(super) fn module_source(
        &mut self,
        layered: &Layered,
        repository: Option<&RepositorySpec>,
        source: Option<&SourceOptions>,
        pos: Pos,
        owner: &str,
    ) -> Option<ModuleSource> {
        let repository = repository.filter(|r| {
            r.enabled && !self.overrides.bench && source.is_some_and(|s| s.method != Method::Kcore)
        });
        match (layered.get("module"), repository) {
            (Some(n), _) => self
                .path(n, "module")
                .and_then(|p| self.module(n, &p))
                .map(|m| ModuleSource::File(ModuleFile::clone(&m))),
            // No module: the repository, resolved once the host's kernel is known.
            (None, Some(r)) => {
                let url = r
                    .url
                    .clone()
                    .or_else(|| r.dir.as_ref().map(|d| d.display().to_string()));
                match crate::repository::RepositorySpec::new(url.as_deref(), r.key.as_deref()) {
                    Ok(spec) => Some(ModuleSource::Repository(spec)),
                    Err(e) => {
                        self.error(pos, format!("{owner}: repository: {e:#}"));
                        None
                    }
                }
            }
            // No module: --method auto reads /proc/kcore instead (and benchmarks load none).
            (None, None)
                if self.overrides.bench || source.is_some_and(|s| s.method != Method::Lime) =>
            {
                Some(ModuleSource::File(unread_module(PathBuf::new())))
            }
            // The method itself is wrong: that error says enough.
            (None, None) if source.is_none() => None,
            (None, None) => {
                self.error(
                    pos,
                    format!(
                        "{owner}: method lime needs module: (the LiME .ko built for its kernel), here or in defaults, or repository: {{enabled: true, url: ...}}; or use method: auto or kcore"
                    ),
                );
                None
            }
        }
    }

    /// Reads and hashes a module once; hosts share it.
    fn module(&mut self, node: &Node, path: &Path) -> Option<Arc<ModuleFile>> {
        if let Some(cached) = self.modules.get(path) {
            return cached.clone();
        }
        let module = if self.overrides.skip_file_checks {
            Some(Arc::new(unread_module(path.to_path_buf())))
        } else {
            match std::fs::read(path) {
                Ok(bytes) if bytes.is_empty() => {
                    self.error(node.pos, format!("module {} is empty", path.display()));
                    None
                }
                Ok(bytes) => Some(Arc::new(ModuleFile {
                    path: path.to_path_buf(),
                    sha256: hex::encode(Sha256::digest(&bytes)),
                    bytes,
                })),
                Err(e) => {
                    self.error(
                        node.pos,
                        format!("cannot read module {}: {e}", path.display()),
                    );
                    None
                }
            }
        };
        self.modules.insert(path.to_path_buf(), module.clone());
        module
    }
}

/// A module left unread: file checks are off, or the method loads none.
fn unread_module(path: PathBuf) -> ModuleFile {
    ModuleFile {
        path,
        bytes: Vec::new(),
        sha256: String::new(),
    }
}
