//! `mshot repo build|index|sign|keygen|verify`: make and check a module repository.

use std::path::{Path, PathBuf};

use crate::cli::{RepoArgs, RepoCommand};
use anyhow::{Context, anyhow, bail};

use crate::repository::manifest::{self, RepoManifest};
use crate::repository::signature::{self, SigningKey};
use crate::repository::{MANIFEST_NAME, RepositorySpec, SIGNATURE_NAME};

/// The build script, embedded so `mshot repo build` works from any directory
/// and always matches this mshot (it is also kernel-modules/build-lime.sh).
pub const BUILD_SCRIPT: &str = include_str!("../../kernel-modules/build-lime.sh");

pub fn run(args: &RepoArgs) -> anyhow::Result<()> {
    match &args.command {
        RepoCommand::Build {
            out,
            work,
            headers,
            arch,
            releases,
        } => build(
            out,
            work.as_deref(),
            headers.as_deref(),
            arch.as_deref(),
            releases,
        ),
        RepoCommand::Index { repo, description } => {
            let manifest = manifest::index(repo, description.clone())?;
            let path = repo.join(MANIFEST_NAME);
            write_atomic(&path, &manifest.to_json())?;
            let signature = repo.join(SIGNATURE_NAME);
            match std::fs::remove_file(&signature) {
                Ok(()) => println!(
                    "removed {} (it signed the old manifest)",
                    signature.display()
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => bail!("cannot remove the stale {}: {e}", signature.display()),
            }
            for m in &manifest.modules {
                println!(
                    "{:<8} {:<36} {:>9}  {}",
                    m.arch, m.kernel_release, m.size, m.file
                );
            }
            println!(
                "wrote {} ({} modules); now sign it: mshot repo sign {} --secret-key FILE",
                path.display(),
                manifest.modules.len(),
                repo.display()
            );
            Ok(())
        }
        RepoCommand::Sign { repo, secret_key } => sign(repo, secret_key),
        RepoCommand::Keygen {
            secret_key,
            public_key,
            unencrypted,
        } => {
            let id = signature::keygen(secret_key, public_key, *unencrypted)?;
            println!(
                "key {id}: secret key {} (keep it off the repository), public key {} (give it to mshot with --repository-key)",
                secret_key.display(),
                public_key.display()
            );
            Ok(())
        }
        RepoCommand::Verify {
            repository,
            repository_key,
        } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(verify(repository, repository_key.as_deref()))
        }
    }
}

fn build(
    out: &Path,
    work: Option<&Path>,
    headers: Option<&Path>,
    arch: Option<&str>,
    releases: &[String],
) -> anyhow::Result<()> {
    for release in releases {
        if !manifest::is_release(release) {
            bail!("{release:?} is not a kernel release (as uname -r prints it)");
        }
    }
    let script = tempfile_with(BUILD_SCRIPT)?;
    let mut command = std::process::Command::new("bash");
    command.arg(script.path()).arg("--out").arg(out);
    if let Some(work) = work {
        command.arg("--work").arg(work);
    }
    if let Some(headers) = headers {
        command.arg("--headers").arg(headers);
    }
    if let Some(arch) = arch {
        command.arg("--arch").arg(arch);
    }
    command.args(releases);
    let status = command
        .status()
        .context("cannot run bash for the build script")?;
    if !status.success() {
        bail!("the LiME build failed ({status}); see the messages above");
    }
    println!(
        "built {} module(s) into {}; next: mshot repo index {}",
        releases.len(),
        out.join("modules").display(),
        out.display()
    );
    Ok(())
}

/// The embedded script in a file of its own, removed on drop.
fn tempfile_with(text: &str) -> anyhow::Result<TempScript> {
    let path = std::env::temp_dir().join(format!(
        "mshot-build-lime-{}-{}.sh",
        std::process::id(),
        rand::random::<u32>()
    ));
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o700)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(TempScript(path))
}

struct TempScript(PathBuf);

impl TempScript {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempScript {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn sign(repo: &Path, secret_key: &Path) -> anyhow::Result<()> {
    let path = repo.join(MANIFEST_NAME);
    let bytes = std::fs::read(&path)
        .with_context(|| format!("cannot read {}: run mshot repo index first", path.display()))?;
    let parsed = RepoManifest::parse(&bytes, &path.display().to_string())?;
    // Sign only what a capture would accept: every listed module present and intact.
    for entry in &parsed.modules {
        let file = repo.join(&entry.file);
        let module =
            std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
        crate::repository::check_module(&module, entry, &file.display().to_string())
            .map_err(|e| anyhow!("{e}; run mshot repo index again"))?;
    }
    let key = SigningKey::load(secret_key)?;
    let comment = format!(
        "timestamp:{}\tfile:{MANIFEST_NAME}\tsha256:{}",
        jiff::Timestamp::now().as_second(),
        crate::repository::sha256_hex(&bytes)
    );
    let signature = key.sign(&bytes, &comment)?;
    // Prove the result verifies with the public half before writing it.
    signature::TrustedKey::parse(&key.public_base64(), "the signing key")?.verify(
        &bytes,
        &signature,
        &path.display().to_string(),
    )?;
    let signature_path = repo.join(SIGNATURE_NAME);
    write_atomic(&signature_path, signature.as_bytes())?;
    println!(
        "signed {} ({} modules) with key {}: {}\ncaptures trust it with --repository-key {}",
        path.display(),
        parsed.modules.len(),
        key.id,
        signature_path.display(),
        key.public_base64()
    );
    Ok(())
}

async fn verify(repository: &str, key: Option<&str>) -> anyhow::Result<()> {
    let mut spec = RepositorySpec::new(Some(repository), key)?;
    spec.cache_dir = None;
    let fetcher = crate::repository::Fetcher::new(&spec.location)?;
    let verified = crate::repository::fetch_manifest(&fetcher, &spec).await?;
    println!(
        "{}: signed by key {} ({}), {}; {} modules",
        spec.location.name_of(MANIFEST_NAME),
        verified.signed.key_id,
        spec.key.origin,
        verified.signed.trusted_comment,
        verified.manifest.modules.len()
    );
    for entry in &verified.manifest.modules {
        let name = spec.location.name_of(&entry.file);
        let bytes = fetcher
            .get(&entry.file, entry.size + 1)
            .await?
            .ok_or_else(|| anyhow!("{name} is listed but missing"))?;
        crate::repository::check_module(&bytes, entry, &name)?;
        let facts = manifest::module_facts(&bytes).map_err(|e| anyhow!("{name}: {e}"))?;
        if facts.release != entry.kernel_release || facts.arch != entry.arch {
            bail!(
                "{name}: the manifest says {} ({}), the module itself {} ({})",
                entry.kernel_release,
                entry.arch,
                facts.release,
                facts.arch
            );
        }
        println!(
            "ok {:<8} {:<36} {}",
            entry.arch, entry.kernel_release, entry.sha256
        );
    }
    Ok(())
}

/// Replaces `path` whole (temporary file, then rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let temp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&temp, bytes).with_context(|| format!("cannot write {}", temp.display()))?;
    std::fs::rename(&temp, path).with_context(|| format!("cannot write {}", path.display()))
}
