//! Does an object in the bucket hold what mshot sent? Checked after a
//! multipart upload completes (and after each material `PutObject`).
//!
//! Why it is built this way:
//! - The object is the only copy of the evidence: a memory stream cannot be
//!   sent again. So a check that disagrees never deletes it. A server or
//!   proxy can report a checksum wrongly (moto without its `s3crc32c` extra
//!   reports a plain CRC32 under the CRC32C name) or in a form mshot did not
//!   ask for; the object is then kept, tagged `mshot-verification=failed`,
//!   and read back, and its SHA-256 compared with the one mshot computed
//!   over the stream. Only when that fails too does it stay marked failed
//!   (manifest, tag, exit status 4).
//! - The upload asks for a full-object CRC32C (`ChecksumType: FULL_OBJECT`),
//!   which mshot computes from the parts' CRC32Cs; a reply marked COMPOSITE,
//!   or carrying `-PARTS`, is compared with the composite instead. A bare
//!   value of neither form is ambiguous, not a mismatch: read back.
//! - The read-back streams the object and hashes it as it comes, so memory
//!   does not grow with the image.

use std::time::Duration;

use aws_sdk_s3::types::ChecksumType;
use serde::{Deserialize, Serialize};

use super::{Bucket, b64, describe};

/// The tag a disagreeing object carries, and its values.
pub const TAG: &str = "mshot-verification";
const TAG_FAILED: &str = "failed";
const TAG_READ_BACK: &str = "sha256-read-back";
/// The longest wait for the next piece of a read-back.
const READ_STALL: Duration = Duration::from_secs(120);

/// How one check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Passed,
    Failed,
    /// The server's value is of no form mshot can compare (no checksum type,
    /// no `-PARTS`, equal to neither value).
    Ambiguous,
    NotReported,
    /// The check could not be made (the request failed).
    Error,
}

/// One check: what the server says, what mshot computed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Check {
    /// `size`, `crc32c`, `sha256` (as S3 reports them) or `sha256_read_back`.
    pub check: String,
    pub outcome: Outcome,
    pub server: Option<String>,
    pub mshot: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Check {
    fn describe(&self) -> String {
        let what = match self.check.as_str() {
            "size" => "size",
            "crc32c" => "CRC32C",
            "sha256" => "SHA-256",
            "sha256_read_back" => "SHA-256 of the object read back",
            other => other,
        };
        let outcome = match self.outcome {
            Outcome::Passed => "passed",
            Outcome::Failed => "FAILED",
            Outcome::Ambiguous => "ambiguous",
            Outcome::NotReported => "not reported",
            Outcome::Error => "could not be checked",
        };
        let mut line = format!("{what} {outcome}");
        if self.outcome != Outcome::Passed || self.check == "sha256_read_back" {
            line.push_str(&format!(
                " (server {}, mshot {}{})",
                self.server.as_deref().unwrap_or("none"),
                self.mshot,
                self.note
                    .as_deref()
                    .map(|n| format!("; {n}"))
                    .unwrap_or_default()
            ));
        }
        line
    }
}

/// What the manifest records of an object's verification.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Verification {
    pub verified: bool,
    /// The check that proved the object (`crc32c`, `sha256`,
    /// `sha256_read_back`); none when nothing did.
    pub by: Option<String>,
    pub checks: Vec<Check>,
    /// `mshot-verification=VALUE` as it stands on the object, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Why the tag could not be set (a server without tagging, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag_error: Option<String>,
}

impl Verification {
    /// One line: every check and its result, then the verdict.
    pub fn summary(&self) -> String {
        let checks: Vec<String> = self.checks.iter().map(Check::describe).collect();
        let verdict = match (&self.by, self.verified) {
            (Some(by), true) => format!("verified by {by}"),
            _ => "NOT VERIFIED; the object is kept, marked failed".to_string(),
        };
        let tag = match (&self.tag, &self.tag_error) {
            (Some(tag), _) => format!(" (tag {tag})"),
            (None, Some(e)) => format!(" (the server took no tag: {e})"),
            (None, None) => String::new(),
        };
        format!("{}: {verdict}{tag}", checks.join("; "))
    }
}

/// What mshot sent, the reference of every check.
pub struct Sent<'a> {
    pub bytes: u64,
    /// Hex, over exactly the bytes sent.
    pub sha256: &'a str,
}

/// The CRC32C of a multipart upload in both forms S3 may report.
#[derive(Clone, Debug)]
pub struct PartsCrc {
    /// CRC32C of the whole stream, base64.
    pub full_object: String,
    /// CRC32C of the parts' CRC32Cs, base64, then `-PARTS`.
    pub composite: String,
}

impl PartsCrc {
    /// From each part's CRC32C and length, in part order.
    pub fn of(parts: &[(u32, u64)]) -> PartsCrc {
        let full = parts.iter().fold(0u32, |crc, &(part, len)| {
            crc32c::crc32c_combine(crc, part, len as usize)
        });
        PartsCrc {
            full_object: b64(&full.to_be_bytes()),
            composite: composite_crc32c(parts.iter().map(|p| p.0)),
        }
    }

    /// Compares the server's CRC32C in the form its reply names.
    pub fn check(&self, reported: Option<&str>, kind: Option<&ChecksumType>) -> Check {
        let mut check = Check {
            check: "crc32c".into(),
            outcome: Outcome::NotReported,
            server: reported.map(str::to_string),
            mshot: self.full_object.clone(),
            note: kind.map(|k| format!("checksum type {}", k.as_str())),
        };
        let Some(reported) = reported else {
            return check;
        };
        let composite_reply = matches!(kind, Some(ChecksumType::Composite))
            || (kind.is_none() && reported.contains('-'));
        check.outcome = if matches!(kind, Some(ChecksumType::FullObject)) {
            pass(reported == self.full_object)
        } else if composite_reply {
            check.mshot = self.composite.clone();
            pass(same_composite(reported, &self.composite))
        } else if reported == self.full_object {
            Outcome::Passed
        } else if same_composite(reported, &self.composite) {
            check.mshot = self.composite.clone();
            Outcome::Passed
        } else {
            check.mshot = format!("{} or {}", self.full_object, self.composite);
            check.note = Some("no checksum type and no -PARTS: either form".into());
            Outcome::Ambiguous
        };
        check
    }
}

fn pass(ok: bool) -> Outcome {
    if ok { Outcome::Passed } else { Outcome::Failed }
}

/// The size check of a HEAD reply.
pub fn size_check(reported: Option<i64>, sent: u64) -> Check {
    Check {
        check: "size".into(),
        outcome: match reported {
            None => Outcome::NotReported,
            Some(n) => pass(n == sent as i64),
        },
        server: reported.map(|n| n.to_string()),
        mshot: sent.to_string(),
        note: None,
    }
}

/// A check that could not be made: the request failed.
fn error_check(check: &str, sent: String, error: String) -> Check {
    Check {
        check: check.into(),
        outcome: Outcome::Error,
        server: None,
        mshot: sent,
        note: Some(error),
    }
}

/// The checksum HEAD is to report, and mshot's value of it.
pub enum Expect<'a> {
    Crc32c(&'a PartsCrc),
    /// Base64, as S3 gives it.
    Sha256(&'a str),
}

/// What the upload's own reply said, for what HEAD leaves out.
#[derive(Default)]
pub struct Reply {
    pub checksum: Option<String>,
    pub kind: Option<ChecksumType>,
    pub version: Option<String>,
    pub etag: Option<String>,
}

/// HEAD's answer as checks against what was sent, and what S3 reported.
pub struct Head {
    pub checks: Vec<Check>,
    pub reported: Option<String>,
    pub version: Option<String>,
    pub etag: Option<String>,
}

/// Asks S3 for the object's size and checksum (a failed HEAD is a check
/// that could not be made, not an error: `settle` reads back).
async fn head(bucket: &Bucket, key: &str, bytes: u64, expect: Expect<'_>, reply: Reply) -> Head {
    let head = bucket
        .head_object(key)
        .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
        .send()
        .await;
    let (name, mshot) = match &expect {
        Expect::Crc32c(crc) => ("crc32c", crc.full_object.clone()),
        Expect::Sha256(sha) => ("sha256", sha.to_string()),
    };
    let head = match head {
        Ok(head) => head,
        Err(e) => {
            let error = format!("cannot read its checksum: {}", describe(&e));
            return Head {
                checks: vec![error_check(name, mshot, error)],
                reported: None,
                version: reply.version,
                etag: reply.etag,
            };
        }
    };
    let reported = match expect {
        Expect::Crc32c(_) => head.checksum_crc32_c(),
        Expect::Sha256(_) => head.checksum_sha256(),
    };
    let reported = reported.map(str::to_string).or(reply.checksum);
    let check = match expect {
        Expect::Crc32c(crc) => crc.check(
            reported.as_deref(),
            head.checksum_type().or(reply.kind.as_ref()),
        ),
        Expect::Sha256(sha) => Check {
            check: name.into(),
            outcome: reported
                .as_deref()
                .map_or(Outcome::NotReported, |r| pass(r == sha)),
            server: reported.clone(),
            mshot,
            note: None,
        },
    };
    Head {
        checks: vec![size_check(head.content_length(), bytes), check],
        reported,
        version: head.version_id().map(str::to_string).or(reply.version),
        etag: head.e_tag().map(str::to_string).or(reply.etag),
    }
}

/// The whole check of a stored object: `head`, then `settle` on its checks.
pub async fn object(
    bucket: &Bucket,
    key: &str,
    sent: &Sent<'_>,
    expect: Expect<'_>,
    reply: Reply,
) -> (Head, Verification) {
    let head = head(bucket, key, sent.bytes, expect, reply).await;
    let checks = head.checks.clone();
    let verification = settle(bucket, key, head.version.as_deref(), sent, checks).await;
    (head, verification)
}

/// Decides from the reply's checks; on anything but a clean pass keeps the
/// object, tags it, and reads it back. Never deletes, never fails: the
/// result says what held.
async fn settle(
    bucket: &Bucket,
    key: &str,
    version: Option<&str>,
    sent: &Sent<'_>,
    mut checks: Vec<Check>,
) -> Verification {
    let all_passed = checks.iter().all(|c| c.outcome == Outcome::Passed);
    let by = checks
        .iter()
        .find(|c| c.check != "size" && c.outcome == Outcome::Passed)
        .map(|c| c.check.clone());
    if all_passed && by.is_some() {
        return Verification {
            verified: true,
            by,
            checks,
            tag: None,
            tag_error: None,
        };
    }
    let uri = bucket.uri(key);
    let first: Vec<String> = checks.iter().map(Check::describe).collect();
    tracing::warn!(
        "{uri}: {}; keeping the object, tagged {TAG}={TAG_FAILED}, and reading it back to compare its SHA-256",
        first.join("; ")
    );
    // Marked failed before the read-back, so an interrupted one leaves it so.
    let mut tag_error = set_tag(bucket, key, version, TAG_FAILED).await.err();
    let mut tag = tag_error.is_none().then(|| format!("{TAG}={TAG_FAILED}"));
    let read = read_back(bucket, key, version, sent).await;
    let verified = read.outcome == Outcome::Passed;
    checks.push(read);
    if verified && tag.is_some() {
        match set_tag(bucket, key, version, TAG_READ_BACK).await {
            Ok(()) => tag = Some(format!("{TAG}={TAG_READ_BACK}")),
            Err(e) => tag_error = Some(e),
        }
    }
    let verification = Verification {
        verified,
        by: verified.then(|| "sha256_read_back".to_string()),
        checks,
        tag,
        tag_error,
    };
    if verified {
        tracing::warn!("{uri}: {}", verification.summary());
    } else {
        tracing::error!("{uri}: {}", verification.summary());
    }
    verification
}

async fn set_tag(
    bucket: &Bucket,
    key: &str,
    version: Option<&str>,
    value: &str,
) -> Result<(), String> {
    use aws_sdk_s3::types::{Tag, Tagging};
    let tag = Tag::builder()
        .key(TAG)
        .value(value)
        .build()
        .map_err(|e| e.to_string())?;
    let tagging = Tagging::builder()
        .tag_set(tag)
        .build()
        .map_err(|e| e.to_string())?;
    bucket
        .client
        .put_object_tagging()
        .bucket(&bucket.spec.bucket)
        .key(key)
        .set_version_id(version.map(str::to_string))
        .tagging(tagging)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| describe(&e))
}

/// Streams the object and compares its size and SHA-256 with what was sent.
async fn read_back(bucket: &Bucket, key: &str, version: Option<&str>, sent: &Sent<'_>) -> Check {
    let mshot = format!("{} ({} bytes)", sent.sha256, sent.bytes);
    let failed = |e: String| error_check("sha256_read_back", mshot.clone(), e);
    // The SDK's own validation would trust the header that is in doubt.
    let no_validation = aws_sdk_s3::config::Builder::default()
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired);
    let out = bucket
        .client
        .get_object()
        .bucket(&bucket.spec.bucket)
        .key(key)
        .set_version_id(version.map(str::to_string))
        .customize()
        .config_override(no_validation)
        .send()
        .await;
    let mut body = match out {
        Ok(out) => out.body,
        Err(e) => return failed(format!("cannot read it back: {}", describe(&e))),
    };
    let mut hash = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut bytes = 0u64;
    loop {
        match tokio::time::timeout(READ_STALL, body.try_next()).await {
            Ok(Ok(Some(piece))) => {
                bytes += piece.len() as u64;
                hash.update(&piece);
            }
            Ok(Ok(None)) => break,
            Ok(Err(e)) => return failed(format!("reading it back failed at byte {bytes}: {e}")),
            Err(_) => {
                return failed(format!(
                    "reading it back stalled at byte {bytes} for {} s",
                    READ_STALL.as_secs()
                ));
            }
        }
    }
    let got = hex::encode(hash.finish());
    Check {
        check: "sha256_read_back".into(),
        outcome: pass(bytes == sent.bytes && got.eq_ignore_ascii_case(sent.sha256)),
        server: Some(format!("{got} ({bytes} bytes)")),
        mshot,
        note: None,
    }
}

/// The composite checksum S3 gives a multipart object: CRC32C of the parts'
/// big-endian CRC32Cs, base64, then `-PARTS`.
pub fn composite_crc32c(parts: impl Iterator<Item = u32>) -> String {
    let mut concat = Vec::new();
    for crc in parts {
        concat.extend_from_slice(&crc.to_be_bytes());
    }
    let n = concat.len() / 4;
    format!("{}-{n}", b64(&crc32c::crc32c(&concat).to_be_bytes()))
}

/// Compares composite checksums whether or not the server appends `-PARTS`.
fn same_composite(reported: &str, expected: &str) -> bool {
    let strip = |s: &str| s.split('-').next().unwrap_or("").to_string();
    strip(reported) == strip(expected)
        && match (reported.split_once('-'), expected.split_once('-')) {
            (Some((_, a)), Some((_, b))) => a == b,
            _ => true,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composite_checksum_matches_s3s_formula() {
        // CRC32C("") = 0, CRC32C("123456789") = 0xE3069283 (the check value).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        let one = composite_crc32c([0xE306_9283u32].into_iter());
        assert!(one.ends_with("-1"));
        let expected = b64(&crc32c::crc32c(&0xE306_9283u32.to_be_bytes()).to_be_bytes());
        assert_eq!(one, format!("{expected}-1"));
        assert!(same_composite(&format!("{expected}-1"), &one));
        assert!(same_composite(&expected, &one));
        assert!(!same_composite(&format!("{expected}-2"), &one));
        assert!(!same_composite("AAAAAA==-1", &one));
    }

    #[test]
    fn full_object_crc_is_the_crc_of_the_whole_stream() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (a, rest) = data.split_at(40_000);
        let (b, c) = rest.split_at(40_000);
        let parts: Vec<(u32, u64)> = [a, b, c]
            .iter()
            .map(|p| (crc32c::crc32c(p), p.len() as u64))
            .collect();
        let crc = PartsCrc::of(&parts);
        assert_eq!(crc.full_object, b64(&crc32c::crc32c(&data).to_be_bytes()));
        assert!(crc.composite.ends_with("-3"), "{}", crc.composite);
    }

    #[test]
    fn each_reply_form_is_compared_with_its_own_value() {
        let crc = PartsCrc::of(&[(0x1234_5678, 8 << 20), (0x9abc_def0, 100)]);
        let full = crc.full_object.clone();
        let composite = crc.composite.clone();
        let bare_composite = composite.split('-').next().unwrap().to_string();
        let crc32_as_crc32c = "0nMjYw==";
        let cases: [(Option<&str>, Option<ChecksumType>, Outcome); 9] = [
            (Some(&full), Some(ChecksumType::FullObject), Outcome::Passed),
            (
                Some(crc32_as_crc32c),
                Some(ChecksumType::FullObject),
                Outcome::Failed,
            ),
            (
                Some(&composite),
                Some(ChecksumType::Composite),
                Outcome::Passed,
            ),
            (
                Some(&bare_composite),
                Some(ChecksumType::Composite),
                Outcome::Passed,
            ),
            (
                Some(crc32_as_crc32c),
                Some(ChecksumType::Composite),
                Outcome::Failed,
            ),
            (Some(&composite), None, Outcome::Passed),
            (Some("AAAAAA==-2"), None, Outcome::Failed),
            // The reply of the issue: no type, no -PARTS, neither value.
            (Some(crc32_as_crc32c), None, Outcome::Ambiguous),
            (None, None, Outcome::NotReported),
        ];
        for (reported, kind, want) in cases {
            let check = crc.check(reported, kind.as_ref());
            assert_eq!(check.outcome, want, "{reported:?} {kind:?}: {check:?}");
        }
        // A bare value equal to one form is that form.
        assert_eq!(crc.check(Some(&full), None).outcome, Outcome::Passed);
        assert_eq!(
            crc.check(Some(&bare_composite), None).outcome,
            Outcome::Passed
        );
    }

    #[test]
    fn the_summary_names_the_failed_and_the_passed_check() {
        let v = Verification {
            verified: true,
            by: Some("sha256_read_back".into()),
            checks: vec![
                size_check(Some(10), 10),
                Check {
                    check: "crc32c".into(),
                    outcome: Outcome::Failed,
                    server: Some("0nMjYw==".into()),
                    mshot: "9PWodw==".into(),
                    note: Some("checksum type FULL_OBJECT".into()),
                },
                Check {
                    check: "sha256_read_back".into(),
                    outcome: Outcome::Passed,
                    server: Some("ab (10 bytes)".into()),
                    mshot: "ab (10 bytes)".into(),
                    note: None,
                },
            ],
            tag: Some(format!("{TAG}={TAG_READ_BACK}")),
            tag_error: None,
        };
        let s = v.summary();
        assert!(
            s.contains(
                "CRC32C FAILED (server 0nMjYw==, mshot 9PWodw==; checksum type FULL_OBJECT)"
            ),
            "{s}"
        );
        assert!(s.contains("SHA-256 of the object read back passed"), "{s}");
        assert!(s.contains("verified by sha256_read_back"), "{s}");
        assert!(size_check(Some(9), 10).outcome == Outcome::Failed);
    }
}
