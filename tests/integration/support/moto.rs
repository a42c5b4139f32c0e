/*!
moto's S3 server (`moto_server`) on a loopback port of its own, with the
bucket `mshot-evidence`: the second real S3 server of the tests, for how
mshot treats a server that reports checksums wrongly.

Two installs (`tests/run` puts both in venvs under `$MSHOT_TOOLS_DIR`):
- [`Variant::Plain`], `moto[server]`: without the `crc32c` package it
  reports a plain CRC32 under the CRC32C name, the server of the bug where a
  good capture was deleted;
- [`Variant::Crc32c`], `moto[server,s3crc32c]`: reports CRC32C correctly.

Neither checks a part's checksum on arrival, so a byte flipped on the way
(`FaultProxy`) is stored: the case where only the read-back can tell.
*/

use std::fs::File;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::process::KillOnDrop;

pub const REGION: &str = "us-east-1";

/// Which install of moto.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Plain,
    Crc32c,
}

impl Variant {
    /// The variable that names its `moto_server`, and its venv under the tools dir.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Variant::Plain => ("MSHOT_MOTO", "moto"),
            Variant::Crc32c => ("MSHOT_MOTO_CRC32C", "moto-crc32c"),
        }
    }
}

/// `moto_server`: `MSHOT_MOTO` / `MSHOT_MOTO_CRC32C`, else
/// `$MSHOT_TOOLS_DIR/{moto,moto-crc32c}/bin/moto_server` (default tools dir
/// `~/.cache/mshot-tools`, where `tests/run` installs them).
pub fn binary(variant: Variant) -> Option<PathBuf> {
    let (var, venv) = variant.names();
    if let Some(path) = std::env::var_os(var) {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    let tools = std::env::var_os("MSHOT_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/mshot-tools"))
        })?;
    Some(tools.join(venv).join("bin/moto_server")).filter(|p| p.is_file())
}

/// A running moto; killed when dropped (it keeps everything in memory).
pub struct Moto {
    _child: KillOnDrop,
    dir: tempfile::TempDir,
    port: u16,
    pub bucket: String,
}

impl Moto {
    /// Starts moto on a free loopback port (another if that one was taken
    /// meanwhile) and makes the bucket.
    pub fn start(variant: Variant) -> anyhow::Result<Moto> {
        let binary =
            binary(variant).with_context(|| format!("{variant:?} moto is not installed"))?;
        let dir = tempfile::Builder::new().prefix("mshot-moto-").tempdir()?;
        let mut last = String::new();
        for _ in 0..5 {
            let port = super::free_port("127.0.0.1".parse()?)?;
            let log = File::create(dir.path().join("moto.log"))?;
            let child = Command::new(&binary)
                .args(["-H", "127.0.0.1", "-p"])
                .arg(port.to_string())
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("cannot start moto_server")?;
            let mut child = KillOnDrop(child);
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(status) = child.0.try_wait()? {
                    last = format!("moto exited ({status})");
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    let moto = Moto {
                        _child: child,
                        dir,
                        port,
                        bucket: "mshot-evidence".into(),
                    };
                    moto.block_on(moto.client().create_bucket().bucket(&moto.bucket).send())
                        .context("moto refused to make the bucket")?;
                    return Ok(moto);
                }
                if Instant::now() > deadline {
                    bail!("moto did not listen on {port} within 30 s");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        bail!(
            "{last}:\n{}",
            std::fs::read_to_string(dir.path().join("moto.log")).unwrap_or_default()
        )
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }

    /// Credentials (moto takes any) and region for a child, from the
    /// environment only; nothing from the caller's ~/.aws.
    pub fn env(&self, cmd: &mut Command) {
        for var in [
            "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3",
        ] {
            cmd.env_remove(var);
        }
        let empty = self.dir.path().join("no-aws-config");
        cmd.env("AWS_ACCESS_KEY_ID", "mshot-tests")
            .env("AWS_SECRET_ACCESS_KEY", "mshot-tests-secret")
            .env("AWS_REGION", REGION)
            .env("AWS_CONFIG_FILE", &empty)
            .env("AWS_SHARED_CREDENTIALS_FILE", &empty)
            .env("AWS_EC2_METADATA_DISABLED", "true");
    }

    /// An SDK client for the test's own checks.
    pub fn client(&self) -> aws_sdk_s3::Client {
        let credentials = aws_sdk_s3::config::Credentials::new(
            "mshot-tests",
            "mshot-tests-secret",
            None,
            None,
            "mshot-tests",
        );
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new(REGION))
            .endpoint_url(self.endpoint())
            .credentials_provider(credentials)
            .force_path_style(true)
            // The point of these servers is a checksum header that may lie.
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            )
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
            .block_on(future)
    }

    /// Keys of every object in the bucket.
    pub fn objects(&self) -> anyhow::Result<Vec<String>> {
        self.block_on(async {
            let out = self
                .client()
                .list_objects_v2()
                .bucket(&self.bucket)
                .send()
                .await?;
            Ok(out
                .contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_string))
                .collect())
        })
    }

    /// An object's bytes.
    pub fn get(&self, key: &str) -> anyhow::Result<Vec<u8>> {
        self.block_on(async {
            let out = self
                .client()
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await?;
            Ok(out.body.collect().await?.into_bytes().to_vec())
        })
    }

    /// An object's tags, as `KEY=VALUE`.
    pub fn tags(&self, key: &str) -> anyhow::Result<Vec<String>> {
        self.block_on(async {
            let out = self
                .client()
                .get_object_tagging()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await?;
            Ok(out
                .tag_set()
                .iter()
                .map(|t| format!("{}={}", t.key(), t.value()))
                .collect())
        })
    }

    /// Keys with a multipart upload still open.
    pub fn open_uploads(&self) -> anyhow::Result<Vec<String>> {
        self.block_on(async {
            let out = self
                .client()
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .send()
                .await?;
            Ok(out
                .uploads()
                .iter()
                .filter_map(|u| u.key().map(str::to_string))
                .collect())
        })
    }
}
