//! The sources of the capture pipeline: LiME over direct-tcpip (`lime`),
//! plain or zlib-compressed, and /proc/kcore read with dd (`kcore`); the
//! byte-stream layers between the wire and `receive` (`stream`); and here,
//! the one choice between LiME and kcore (`decide`), from the flags and one
//! probe of the target's policy.

pub mod kcore;
mod lime;
mod stream;

pub use crate::record::{Method, SourceRecord, TargetPolicy, Used};
#[cfg(test)]
pub use lime::compare_digest;
pub use lime::{ChannelChunks, check_lime_digest, lime_extra_arguments, lime_stream};
pub(crate) use stream::BATCH;
pub use stream::{ChunkReader, StreamSource, WireCounter, WireStats};

use anyhow::bail;

use crate::target::shell::Shell;

/// Source choices from the command line, validated by `config`.
#[derive(Clone, Debug)]
pub struct SourceOptions {
    pub method: Method,
    /// LiME `compress=1`; mshot inflates as the stream arrives.
    pub compress: bool,
    /// Keep the zlib stream as received instead of the plain image.
    pub store_compressed: bool,
    /// LiME `digest=sha256`, fetched and compared after the image.
    pub digest: bool,
    /// Test hook: flip the byte at this offset of the plain stream.
    pub corrupt_offset: Option<u64>,
}

/// The command line's defaults: `--method auto`, no LiME digest.
impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            method: Method::Auto,
            compress: false,
            store_compressed: false,
            digest: false,
            corrupt_offset: None,
        }
    }
}

/// Whether a usable LiME module is at hand for this kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModuleAvailability {
    Available { signed: bool },
    Missing(String),
}

/// One command as root prints all of it, labelled, so a missing file just
/// leaves its value empty.
pub const POLICY_PROBE: &str = "echo modules_disabled=$(cat /proc/sys/kernel/modules_disabled 2>/dev/null); \
echo sig_enforce=$(cat /sys/module/module/parameters/sig_enforce 2>/dev/null); \
echo lockdown=$(cat /sys/kernel/security/lockdown 2>/dev/null); \
if test -e /proc/kcore; then echo kcore=present; else echo kcore=absent; fi";

pub fn parse_policy(text: &str) -> TargetPolicy {
    let mut policy = TargetPolicy::default();
    for line in text.lines() {
        let Some((key, value)) = line.trim().split_once('=') else {
            continue;
        };
        let value = value.trim();
        match key {
            "modules_disabled" => policy.modules_disabled = value == "1",
            "sig_enforce" => policy.sig_enforce = value == "Y" || value == "1",
            // "none [integrity] confidentiality": the bracketed word is active.
            "lockdown" => {
                policy.lockdown = value
                    .split_whitespace()
                    .find(|w| w.starts_with('['))
                    .map(|w| w.trim_matches(|c| c == '[' || c == ']').to_string())
            }
            "kcore" => policy.kcore_present = value == "present",
            _ => {}
        }
    }
    policy
}

impl TargetPolicy {
    /// Why an unsigned (or signed) module would be refused, if it would.
    fn module_refusal(&self, signed: bool) -> Option<String> {
        if self.modules_disabled {
            return Some("kernel.modules_disabled=1: the kernel loads no more modules".into());
        }
        if !signed {
            if self.sig_enforce {
                return Some("module.sig_enforce is on and the LiME module is not signed".into());
            }
            if matches!(
                self.lockdown.as_deref(),
                Some("integrity" | "confidentiality")
            ) {
                return Some(format!(
                    "kernel lockdown ({}) refuses unsigned modules",
                    self.lockdown.as_deref().unwrap_or_default()
                ));
            }
        }
        None
    }

    /// Why /proc/kcore cannot serve, if it cannot.
    fn kcore_refusal(&self) -> Option<String> {
        if !self.kcore_present {
            return Some("the kernel has no /proc/kcore (built without CONFIG_PROC_KCORE)".into());
        }
        if self.lockdown.as_deref() == Some("confidentiality") {
            return Some(
                "kernel lockdown in confidentiality mode forbids reading /proc/kcore".into(),
            );
        }
        None
    }
}

/// The method chosen, and why, in words for the user and the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub used: Used,
    pub reason: String,
}

/// The one place that picks the method. `module` comes from whatever found a
/// module for this kernel (a file, or a repository); `policy` from the target.
pub fn decide(
    requested: Method,
    module: &ModuleAvailability,
    policy: &TargetPolicy,
) -> anyhow::Result<Decision> {
    let lime_blocker = match module {
        ModuleAvailability::Missing(why) => Some(why.clone()),
        ModuleAvailability::Available { signed } => policy.module_refusal(*signed),
    };
    match requested {
        Method::Lime => match lime_blocker {
            None => Ok(Decision {
                used: Used::Lime,
                reason: "--method lime".into(),
            }),
            Some(why) => bail!(
                "LiME cannot be used: {why}; try --method kcore (reads /proc/kcore, loads nothing)"
            ),
        },
        Method::Kcore => match policy.kcore_refusal() {
            None => Ok(Decision {
                used: Used::Kcore,
                reason: "--method kcore".into(),
            }),
            Some(why) => bail!("/proc/kcore cannot be used: {why}; try --method lime"),
        },
        Method::Auto => match (lime_blocker, policy.kcore_refusal()) {
            (None, _) => Ok(Decision {
                used: Used::Lime,
                reason: "a LiME module for this kernel is available and the target accepts it"
                    .into(),
            }),
            (Some(why), None) => Ok(Decision {
                used: Used::Kcore,
                reason: format!("LiME cannot be used ({why}), so /proc/kcore is read instead"),
            }),
            (Some(lime), Some(kcore)) => bail!(
                "no way to read memory on this target: LiME cannot be used ({lime}) and {kcore}"
            ),
        },
    }
}

/// Probes the target's policy, decides, records and says which method and why.
pub async fn choose(
    requested: Method,
    module: &ModuleAvailability,
    shell: &Shell<'_>,
    record: &mut SourceRecord,
) -> anyhow::Result<Decision> {
    let out = shell.run_root(POLICY_PROBE, &[], None).await?;
    let policy = parse_policy(&out.stdout_text());
    record.requested = Some(requested);
    record.target_policy = Some(policy.clone());
    let decision = decide(requested, module, &policy)?;
    record.method = Some(decision.used);
    record.reason = decision.reason.clone();
    let line = format!(
        "{}: method {}: {}",
        shell.host,
        decision.used.name(),
        decision.reason
    );
    // Not the module that was given: worth saying without -v.
    if decision.used == Used::Kcore && matches!(module, ModuleAvailability::Available { .. }) {
        tracing::warn!("{line}");
    } else {
        tracing::info!("{line}");
    }
    Ok(decision)
}

/// After `insmod` failed under `--method auto`: kcore instead, recorded and said.
pub fn fall_back(
    requested: Method,
    insmod_error: &anyhow::Error,
    record: &mut SourceRecord,
) -> Option<Decision> {
    let policy = record.target_policy.clone().unwrap_or_default();
    let decision = fall_back_after_insmod(requested, &format!("{insmod_error:#}"), &policy)?;
    record.method = Some(decision.used);
    record.reason = decision.reason.clone();
    tracing::warn!("method kcore: {}", decision.reason);
    Some(decision)
}

/// Records how the image crossed the wire and what was stored.
pub fn record_stored(options: &SourceOptions, stats: &WireStats, record: &mut SourceRecord) {
    record.wire_bytes = stats.bytes();
    record.compressed = options.compress;
    record.test_corrupt_offset = options.corrupt_offset;
    if options.compress && options.store_compressed {
        record.stored_as = "zlib".into();
        record.stored_bytes = Some(stats.bytes());
        record.stored_sha256 = stats.sha256();
    } else {
        record.stored_as = "plain".into();
    }
}

/// After `insmod` itself failed under `--method auto`: kcore instead, if it can.
pub fn fall_back_after_insmod(
    requested: Method,
    insmod_error: &str,
    policy: &TargetPolicy,
) -> Option<Decision> {
    if requested != Method::Auto || policy.kcore_refusal().is_some() {
        return None;
    }
    Some(Decision {
        used: Used::Kcore,
        reason: format!(
            "insmod refused the LiME module ({insmod_error}), so /proc/kcore is read instead"
        ),
    })
}

/// A module file signed for the kernel's keyring ends with this marker.
pub fn module_is_signed(bytes: &[u8]) -> bool {
    bytes.ends_with(b"~Module signature appended~\n")
}

#[cfg(test)]
mod tests {
    use super::lime::parse_digest;
    use super::stream::{CorruptAt, Inflate, plain_stream};
    use super::*;
    use sha2::{Digest, Sha256};
    use std::io::Write;
    use tokio::io::{AsyncRead, AsyncReadExt};

    fn policy(text: &str) -> TargetPolicy {
        parse_policy(text)
    }

    #[test]
    fn policy_probe_output() {
        let p = policy(
            "modules_disabled=0\nsig_enforce=N\nlockdown=none [integrity] confidentiality\nkcore=present\n",
        );
        assert_eq!(
            p,
            TargetPolicy {
                modules_disabled: false,
                sig_enforce: false,
                lockdown: Some("integrity".into()),
                kcore_present: true
            }
        );
        let p = policy("modules_disabled=1\nsig_enforce=Y\nlockdown=\nkcore=absent\n");
        assert!(p.modules_disabled && p.sig_enforce && !p.kcore_present);
        assert_eq!(p.lockdown, None);
    }

    #[test]
    fn auto_prefers_lime_and_falls_back_to_kcore() {
        let open = policy("kcore=present");
        let unsigned = ModuleAvailability::Available { signed: false };
        let d = decide(Method::Auto, &unsigned, &open).unwrap();
        assert_eq!(d.used, Used::Lime);

        let enforcing = policy("sig_enforce=Y\nkcore=present");
        let d = decide(Method::Auto, &unsigned, &enforcing).unwrap();
        assert_eq!(d.used, Used::Kcore);
        assert!(d.reason.contains("sig_enforce"), "{}", d.reason);
        // A signed module may still load under sig_enforce.
        let signed = ModuleAvailability::Available { signed: true };
        assert_eq!(
            decide(Method::Auto, &signed, &enforcing).unwrap().used,
            Used::Lime
        );

        let disabled = policy("modules_disabled=1\nkcore=present");
        let d = decide(Method::Auto, &signed, &disabled).unwrap();
        assert_eq!(d.used, Used::Kcore);
        assert!(d.reason.contains("modules_disabled"), "{}", d.reason);

        let missing = ModuleAvailability::Missing("no LiME module for 6.1.0-99-amd64".into());
        let d = decide(Method::Auto, &missing, &open).unwrap();
        assert_eq!(d.used, Used::Kcore);
        assert!(d.reason.contains("6.1.0-99"), "{}", d.reason);
    }

    #[test]
    fn explains_when_nothing_works() {
        let locked = policy("lockdown=none integrity [confidentiality]\nkcore=present");
        let unsigned = ModuleAvailability::Available { signed: false };
        let e = decide(Method::Auto, &unsigned, &locked)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("confidentiality") && e.contains("unsigned"),
            "{e}"
        );
        let e = decide(Method::Kcore, &unsigned, &policy("kcore=absent"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("CONFIG_PROC_KCORE"), "{e}");
        let e = decide(
            Method::Lime,
            &ModuleAvailability::Missing("--module not given".into()),
            &policy("kcore=present"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--module not given") && e.contains("kcore"),
            "{e}"
        );
        assert!(fall_back_after_insmod(Method::Lime, "x", &policy("kcore=present")).is_none());
        assert_eq!(
            fall_back_after_insmod(Method::Auto, "Key was rejected", &policy("kcore=present"))
                .unwrap()
                .used,
            Used::Kcore
        );
    }

    #[test]
    fn signature_marker() {
        assert!(module_is_signed(b"\x7fELF...~Module signature appended~\n"));
        assert!(!module_is_signed(b"\x7fELF..."));
    }

    #[test]
    fn digests() {
        let hex64 = "ab".repeat(32);
        assert_eq!(
            parse_digest(hex64.to_uppercase().as_bytes()).unwrap(),
            hex64
        );
        assert_eq!(
            parse_digest(format!("{hex64}\n").as_bytes()).unwrap(),
            hex64
        );
        assert!(parse_digest(b"").is_err());
        assert!(parse_digest(&b"zz".repeat(32)).is_err());
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    async fn read_all(mut r: impl AsyncRead + Unpin) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        r.read_to_end(&mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn inflates_counts_and_refuses_damage() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i / 7) as u8).collect();
        let packed = zlib(&data);
        let stats = WireStats::new(true);
        let plain = plain_stream(
            Box::new(std::io::Cursor::new(packed.clone())),
            true,
            stats.clone(),
            None,
        );
        assert_eq!(read_all(plain).await.unwrap(), data);
        assert_eq!(stats.bytes(), packed.len() as u64);
        assert_eq!(
            stats.sha256().unwrap(),
            hex::encode(Sha256::digest(&packed))
        );

        let truncated = &packed[..packed.len() - 10];
        let e = read_all(Inflate::new(std::io::Cursor::new(truncated.to_vec())))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("ended before"), "{e}");

        let mut trailing = packed.clone();
        trailing.extend_from_slice(b"junk");
        let e = read_all(Inflate::new(std::io::Cursor::new(trailing)))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("after the end"), "{e}");

        let mut garbled = packed;
        garbled[1] ^= 0xff;
        assert!(
            read_all(Inflate::new(std::io::Cursor::new(garbled)))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn corrupts_exactly_one_byte() {
        let data = vec![0u8; 100_000];
        let out = read_all(CorruptAt::new(std::io::Cursor::new(data.clone()), 70_000))
            .await
            .unwrap();
        let diffs: Vec<usize> = (0..data.len()).filter(|&i| data[i] != out[i]).collect();
        assert_eq!(diffs, [70_000]);
    }
}
