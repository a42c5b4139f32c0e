//! Turns command-line flags into a validated `CaptureJob`: every file read,
//! key decrypted and secret resolved before any connection is made, so a typo
//! fails in a second rather than after a minute of SSH.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use sha2::{Digest, Sha256};

use crate::capture::{CaptureJob, ModuleSource, default_filename, local_user};
use crate::cli::{CaptureArgs, ConnectionArgs};
use crate::repository::ModuleFile;
use crate::target::SudoPolicy;
use crate::transport::keyfile::{decode_secret_key, needs_passphrase};
use crate::transport::route::parse_jump_chain;
use crate::transport::{Credentials, Endpoint, HostKeyPolicy, LoadedKey, SshOptions};
use crate::util::secret::Secret;

pub const ENV_PASSWORD: &str = "MSHOT_PASSWORD";
pub const ENV_JUMP_PASSWORD: &str = "MSHOT_JUMP_PASSWORD";
pub const ENV_SUDO_PASSWORD: &str = "MSHOT_SUDO_PASSWORD";
pub const ENV_KEY_PASSPHRASE: &str = "MSHOT_KEY_PASSPHRASE";

pub fn capture_job(args: &CaptureArgs) -> anyhow::Result<CaptureJob> {
    job_from(args, true)
}

/// What every command that logs in to one host needs.
pub struct Connection {
    /// Jump hosts in order, then the target.
    pub route: Vec<Endpoint>,
    pub host_keys: HostKeyPolicy,
    pub ssh: SshOptions,
    pub sudo_password: Option<Secret>,
    pub sudo: SudoPolicy,
}

/// The route, host key policy, credentials and sudo settings from the
/// connection flags; `what` names the command in errors.
pub fn connection(args: &ConnectionArgs, what: &str) -> anyhow::Result<Connection> {
    let server = args
        .server
        .clone()
        .ok_or_else(|| anyhow!("--server is required (the host to {what})"))?;
    let user = args.user.clone().unwrap_or_else(local_user);

    let password = secret_from(
        args.password.as_deref(),
        ENV_PASSWORD,
        &format!("Password for {user}@{server}: "),
    )?;
    if args.password.as_deref().is_some_and(|p| !p.is_empty()) {
        tracing::warn!(
            "--password with a value is visible to other local users; prefer the prompt or {ENV_PASSWORD}"
        );
    }
    let key = args
        .key
        .as_deref()
        .map(|path| load_key(path, password.as_ref()))
        .transpose()?;
    let use_agent = !args.no_agent && std::env::var_os("SSH_AUTH_SOCK").is_some();
    let target = Endpoint {
        host: server.clone(),
        port: args.port,
        user: user.clone(),
        credentials: Credentials {
            key: key.clone(),
            use_agent,
            password: password.clone(),
        },
    };

    let mut route = jump_hosts(args, &user, key.as_ref(), use_agent)?;
    route.push(target);

    let known_hosts = match &args.known_hosts {
        Some(path) => path.clone(),
        None => home_dir()?.join(".ssh/known_hosts"),
    };

    let sudo_password = secret_from(
        args.sudo_password.as_deref(),
        ENV_SUDO_PASSWORD,
        &format!("sudo password for {user}@{server}: "),
    )?;
    // Named in a sudo refusal, so the user knows which secret to check.
    let sudo_password_from = match (&sudo_password, args.sudo_password.as_deref(), &password) {
        (Some(_), Some(""), _) if std::env::var_os(ENV_SUDO_PASSWORD).is_none() => {
            Some("the prompt".to_string())
        }
        (Some(_), Some(v), _) if !v.is_empty() => Some("--sudo-password".to_string()),
        (Some(_), _, _) => Some(ENV_SUDO_PASSWORD.to_string()),
        (None, _, Some(_)) => Some("the login password".to_string()),
        (None, _, None) => None,
    };
    let sudo_password = sudo_password.or(password);
    Ok(Connection {
        route,
        host_keys: HostKeyPolicy {
            known_hosts,
            accept_new: args.accept_new_host_keys,
        },
        ssh: SshOptions {
            connect_timeout: Duration::from_secs(args.connect_timeout.unwrap_or(20).max(1)),
            keepalive_interval: Duration::from_secs(15),
        },
        sudo_password,
        sudo: SudoPolicy {
            mode: args.sudo,
            password_from: sudo_password_from,
        },
    })
}

/// Like `capture_job`, for the benchmark path that loads no module.
pub fn bench_job(args: &CaptureArgs) -> anyhow::Result<CaptureJob> {
    job_from(args, false)
}

fn job_from(args: &CaptureArgs, needs_module: bool) -> anyhow::Result<CaptureJob> {
    let Connection {
        route,
        host_keys,
        ssh,
        sudo_password,
        sudo,
    } = connection(&args.conn, "capture")?;
    let server = route.last().map(|t| t.host.clone()).unwrap_or_default();
    // Without --module, --method auto reads /proc/kcore unless a repository
    // has a module for the target's kernel; only --method lime needs one.
    let method = args.method.unwrap_or_default();
    let lime_possible = needs_module && method != crate::pipeline::source::Method::Kcore;
    let wants_repository = lime_possible && (args.repository || args.repository_url.is_some());
    let module = match &args.module {
        Some(path) => {
            if wants_repository {
                tracing::info!(
                    "--module {} given: not using the module repository",
                    path.display()
                );
            }
            ModuleSource::File(read_module(path)?)
        }
        None if wants_repository => {
            // Flags (and their variables) first, then the settings file.
            let settings = crate::commands::settings::Settings::load()?;
            ModuleSource::Repository(crate::repository::RepositorySpec::new(
                args.repository_url
                    .as_deref()
                    .or(settings.repository.url.as_deref()),
                args.repository_key
                    .as_deref()
                    .or(settings.repository.key.as_deref()),
            )?)
        }
        None if needs_module && method == crate::pipeline::source::Method::Lime => {
            bail!(
                "--method lime needs a module: give --module FILE (LiME built for the target's kernel), or --repository / --repository-url URL to take it from a module repository (or use --method kcore/auto)"
            )
        }
        None => ModuleSource::File(ModuleFile {
            path: PathBuf::new(),
            bytes: Vec::new(),
            sha256: String::new(),
        }),
    };

    let filename = match &args.filename {
        Some(name) => {
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                bail!("--filename must be a plain file name, not a path: {name:?}");
            }
            name.clone()
        }
        None => default_filename(&server),
    };
    if args.store_compressed && !args.analyze.is_empty() {
        bail!(
            "--analyze needs the plain image; drop --store-compressed (the plain image is stored by default)"
        );
    }
    if args.store_compressed && method == crate::pipeline::source::Method::Kcore {
        bail!("--store-compressed applies to LiME's compressed stream; /proc/kcore streams plain");
    }
    // The stored file is the zlib stream: its name says so.
    let filename = if args.store_compressed && !filename.ends_with(".zlib") {
        format!("{filename}.zlib")
    } else {
        filename
    };
    let s3 = s3_spec(&args.s3)?;
    // With --bucket alone there is no local image; the manifest's local copy
    // goes to --log-dir, else the current directory.
    let local_image = args.output_dir.is_some() || s3.is_none();
    let local_dir = match (&args.output_dir, &s3, &args.log_dir) {
        (Some(dir), _, _) => dir.clone(),
        (None, Some(_), Some(log_dir)) => log_dir.clone(),
        _ => PathBuf::from("."),
    };
    if !local_image && !args.analyze.is_empty() {
        bail!("--analyze needs a local image: add --output-dir to keep one beside the upload");
    }
    std::fs::create_dir_all(&local_dir)
        .with_context(|| format!("cannot create directory {}", local_dir.display()))?;

    Ok(CaptureJob {
        route,
        host_keys,
        ssh,
        module,
        image_path: local_dir.join(filename),
        local_image,
        s3,
        sudo_password,
        sudo,
        force: args.force,
        dry_run: args.dry_run,
        stream_idle_timeout: Duration::from_secs(args.stream_timeout.unwrap_or(120).max(1)),
        source: crate::pipeline::source::SourceOptions {
            method,
            compress: args.compress,
            store_compressed: args.store_compressed,
            digest: args.digest,
            corrupt_offset: args.test_corrupt_offset,
        },
    })
}

/// The S3 destination from `--bucket` and friends, checked for shape.
pub fn s3_spec(
    args: &crate::cli::S3Args,
) -> anyhow::Result<Option<crate::pipeline::sink::s3::S3Spec>> {
    let Some(bucket) = &args.bucket else {
        return Ok(None);
    };
    let request = crate::pipeline::sink::s3::BucketRequest {
        name: bucket.clone(),
        prefix: args.prefix.clone(),
        region: args.region.clone(),
        endpoint_url: args.endpoint_url.clone(),
        profile: args.aws_profile.clone(),
        sse: args.sse.clone(),
        sse_kms_key_id: args.sse_kms_key_id.clone(),
        concurrency: Some(u64::from(args.s3_concurrency)),
        part_size_mib: Some(args.s3_part_size),
        overwrite: args.overwrite,
    };
    request.validate().map(Some)
}

/// Jump hosts from `-J` or MargaritaShotgun's `--jump-server` flags.
fn jump_hosts(
    args: &ConnectionArgs,
    default_user: &str,
    target_key: Option<&LoadedKey>,
    use_agent: bool,
) -> anyhow::Result<Vec<Endpoint>> {
    if args.jump.is_some() && args.jump_server.is_some() {
        bail!("give jump hosts either with -J or with --jump-server, not both");
    }
    let mut hops = match (&args.jump, &args.jump_server) {
        (Some(chain), _) => parse_jump_chain(chain)?,
        (None, Some(server)) => vec![(None, server.clone(), args.jump_port)],
        (None, None) => return Ok(Vec::new()),
    };
    let jump_user = args
        .jump_username
        .clone()
        .unwrap_or_else(|| default_user.to_string());
    let jump_password = secret_from(
        args.jump_password.as_deref(),
        ENV_JUMP_PASSWORD,
        "Password for the jump host: ",
    )?;
    let jump_key = match &args.jump_key {
        Some(path) => Some(load_key(path, jump_password.as_ref())?),
        None => target_key.cloned(),
    };
    Ok(hops
        .drain(..)
        .map(|(user, host, port)| Endpoint {
            host,
            port,
            user: user.unwrap_or_else(|| jump_user.clone()),
            credentials: Credentials {
                key: jump_key.clone(),
                use_agent,
                password: jump_password.clone(),
            },
        })
        .collect())
}

/// A secret from the flag (empty value = prompt), else from the environment.
fn secret_from(flag: Option<&str>, env: &str, prompt: &str) -> anyhow::Result<Option<Secret>> {
    match flag {
        Some("") => prompt_secret(prompt, env).map(Some),
        Some(value) => Ok(Some(Secret::new(value.to_string()))),
        None => Ok(std::env::var(env).ok().map(Secret::new)),
    }
}

fn prompt_secret(prompt: &str, env: &str) -> anyhow::Result<Secret> {
    if let Ok(value) = std::env::var(env) {
        return Ok(Secret::new(value));
    }
    rpassword::prompt_password(prompt)
        .map(Secret::new)
        .map_err(|e| anyhow!("cannot prompt for a secret ({e}); set {env} instead"))
}

fn load_key(path: &Path, password: Option<&Secret>) -> anyhow::Result<LoadedKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    let decoded = match decode_secret_key(&text, None) {
        Ok(key) => key,
        Err(e) if needs_passphrase(&e) => {
            let passphrase = match std::env::var(ENV_KEY_PASSPHRASE) {
                Ok(p) => Secret::new(p),
                Err(_) => match password {
                    Some(p) => p.clone(),
                    None => prompt_secret(
                        &format!("Passphrase for {}: ", path.display()),
                        ENV_KEY_PASSPHRASE,
                    )?,
                },
            };
            decode_secret_key(&text, Some(passphrase.expose())).map_err(|e| {
                anyhow!(
                    "cannot decrypt key {}: {e}; check the passphrase ({ENV_KEY_PASSPHRASE} or the prompt)",
                    path.display()
                )
            })?
        }
        Err(e) => bail!(
            "cannot load key {}: {e}; mshot reads OpenSSH, PEM and PKCS#8 private keys",
            path.display()
        ),
    };
    Ok(LoadedKey {
        path: path.to_path_buf(),
        key: Arc::new(decoded),
    })
}

fn read_module(path: &Path) -> anyhow::Result<ModuleFile> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read --module {}", path.display()))?;
    if bytes.is_empty() {
        bail!("--module {} is empty", path.display());
    }
    let sha256 = hex::encode(Sha256::digest(&bytes));
    Ok(ModuleFile {
        path: path.to_path_buf(),
        bytes,
        sha256,
    })
}

fn home_dir() -> anyhow::Result<PathBuf> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .ok_or_else(|| anyhow!("HOME is not set; give --known-hosts"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_chains() {
        let hops = parse_jump_chain("ops@bastion:2222,10.0.0.1,[fe80::1]:23,u@[::1]").unwrap();
        assert_eq!(
            hops,
            vec![
                (Some("ops".into()), "bastion".into(), 2222),
                (None, "10.0.0.1".into(), 22),
                (None, "fe80::1".into(), 23),
                (Some("u".into()), "::1".into(), 22),
            ]
        );
        for bad in ["", "a,,b", "@h", "h:notaport", "h:0", "[::1", "[::1]x"] {
            assert!(parse_jump_chain(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn default_names_are_safe() {
        let name = default_filename("fe80::1%eth0");
        assert!(name.starts_with("fe80__1_eth0-"));
        assert!(name.ends_with("-mem.lime"));
    }
}
