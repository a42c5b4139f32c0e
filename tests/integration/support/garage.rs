/*!
A real S3-compatible server for the S3 tests: Garage, single node, on
loopback, with a key and a bucket of its own, in a temporary directory.

Why Garage (and not moto or s3s-fs): it checks every part's CRC32C and
rejects a wrong one, lists and aborts multipart uploads, and computes
composite checksums with AWS's formulas, so a test that passes here says
something about S3. moto accepts wrong checksums; s3s-fs cannot list uploads.

Ports come from 29500-29599, two per server (S3 API, RPC), in *slots* held
with an exclusive `flock`, so parallel tests and parallel test processes
never share one. The range sits below Linux's ephemeral ports (32768 and
up): Garage does not retry a taken port, and an outgoing connection could
take one there between the slot's check and Garage's bind.
*/

use std::fs::File;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::process::{KillOnDrop, find_program};

/// Where tests/run installs Garage (`cargo install --root /opt/garage`).
pub const DEFAULT_BINARY: &str = "/opt/garage/bin/garage";
const FIRST_PORT: u16 = 29500;
const SLOTS: u16 = 50;
const SLOT_DIR: &str = "/run/mshot-tests";
pub const REGION: &str = "garage";

/// The Garage binary: `MSHOT_GARAGE`, /opt/garage/bin/garage, or `garage` on PATH.
pub fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("MSHOT_GARAGE") {
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    if Path::new(DEFAULT_BINARY).is_file() {
        return Some(PathBuf::from(DEFAULT_BINARY));
    }
    find_program("garage")
}

/// A running Garage; killed and its data removed when dropped.
pub struct Garage {
    child: Option<KillOnDrop>,
    dir: tempfile::TempDir,
    s3_port: u16,
    pub access_key: String,
    pub secret_key: String,
    pub bucket: String,
    _slot: File,
}

impl Garage {
    /// Starts a fresh server with one key and the bucket `mshot-evidence`,
    /// and waits until the bucket answers.
    pub fn start() -> anyhow::Result<Garage> {
        let (slot, number) = claim_slot()?;
        let s3_port = FIRST_PORT + 2 * number;
        let rpc_port = s3_port + 1;
        let dir = tempfile::Builder::new()
            .prefix("mshot-garage-")
            .tempdir()
            .context("cannot make Garage's temp dir")?;
        let path = dir.path().display().to_string();
        let rpc_secret = hex::encode(rand::random::<[u8; 32]>());
        std::fs::write(
            dir.path().join("garage.toml"),
            format!(
                r#"metadata_dir = "{path}/meta"
data_dir = "{path}/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{rpc_secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3_port}"
root_domain = ".s3.garage.localhost"
"#
            ),
        )?;
        let mut garage = Garage {
            child: None,
            dir,
            s3_port,
            access_key: format!("GK{}", hex::encode(rand::random::<[u8; 12]>())),
            secret_key: hex::encode(rand::random::<[u8; 32]>()),
            bucket: "mshot-evidence".to_string(),
            _slot: slot,
        };
        garage.spawn()?;
        Ok(garage)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let binary = binary().context("garage is not installed")?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = Command::new(binary)
            .arg("-c")
            .arg(self.dir.path().join("garage.toml"))
            .args(["server", "--single-node", "--default-bucket"])
            .env("GARAGE_DEFAULT_ACCESS_KEY", &self.access_key)
            .env("GARAGE_DEFAULT_SECRET_KEY", &self.secret_key)
            .env("GARAGE_DEFAULT_BUCKET", &self.bucket)
            .env("RUST_LOG", "garage=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start garage")?;
        self.child = Some(KillOnDrop(child));
        self.wait_ready(Duration::from_secs(60))
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = &mut self.child
                && let Some(status) = child.0.try_wait()?
            {
                bail!("garage exited ({status}) while starting:\n{}", self.log());
            }
            if TcpStream::connect(("127.0.0.1", self.s3_port)).is_ok()
                && self.block_on(async {
                    self.client()
                        .head_bucket()
                        .bucket(&self.bucket)
                        .send()
                        .await
                        .is_ok()
                })
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "garage did not serve its bucket within {timeout:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the server (as a crash would); its data stays for `restart`.
    pub fn stop(&mut self) {
        self.child = None;
    }

    /// Starts the stopped server again on the same port with the same data.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    pub fn port(&self) -> u16 {
        self.s3_port
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("garage.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Credentials and region for a child (mshot, aws), from the environment
    /// only, as the AWS chain reads them; nothing from the caller's ~/.aws.
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
        cmd.env("AWS_ACCESS_KEY_ID", &self.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret_key)
            .env("AWS_REGION", REGION)
            .env("AWS_CONFIG_FILE", &empty)
            .env("AWS_SHARED_CREDENTIALS_FILE", &empty)
            .env("AWS_EC2_METADATA_DISABLED", "true");
    }

    /// An SDK client for the test's own checks (independent of mshot's code).
    pub fn client(&self) -> aws_sdk_s3::Client {
        let credentials = aws_sdk_s3::config::Credentials::new(
            &self.access_key,
            &self.secret_key,
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
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// Runs a future to completion on a runtime of its own.
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

    /// Keys with a multipart upload still open (parts stored, not completed).
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

    /// An object's user metadata (`x-amz-meta-*`).
    pub fn metadata(&self, key: &str) -> anyhow::Result<std::collections::HashMap<String, String>> {
        self.block_on(async {
            let out = self
                .client()
                .head_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await?;
            Ok(out.metadata().cloned().unwrap_or_default())
        })
    }

    /// Uploads `body` under `key` (to test that mshot refuses to overwrite).
    pub fn put(&self, key: &str, body: &[u8]) -> anyhow::Result<()> {
        self.block_on(async {
            self.client()
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .body(body.to_vec().into())
                .send()
                .await?;
            Ok(())
        })
    }
}

fn claim_slot() -> anyhow::Result<(File, u16)> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    std::fs::create_dir_all(SLOT_DIR).with_context(|| format!("cannot create {SLOT_DIR}"))?;
    let start = std::process::id()
        .wrapping_mul(17)
        .wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed));
    for i in 0..SLOTS as u32 {
        let number = (start.wrapping_add(i) % SLOTS as u32) as u16;
        let path = format!("{SLOT_DIR}/garage-{number}.lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {path}"))?;
        if file.try_lock().is_ok() {
            let port = FIRST_PORT + 2 * number;
            // A port held by something else (a Garage of a killed run that
            // survived): skip the slot.
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok()
            {
                return Ok((file, number));
            }
        }
    }
    let last = FIRST_PORT + 2 * SLOTS - 1;
    bail!("all {SLOTS} Garage slots (ports {FIRST_PORT}-{last}) are in use (see {SLOT_DIR})")
}
