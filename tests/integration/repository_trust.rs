//! Trust in a LiME module repository: every way a repository is refused
//! (tampered module or manifest, wrong key, no signature, no module for the
//! kernel, no server) names the problem and leaves the target untouched, its
//! audit showing nothing but `uname`; signatures interoperate with the
//! minisign tool; an HTTPS repository's certificate is checked.

use std::path::Path;
use std::process::Command;

use crate::repository::{Repo, Target, host_release, mshot, ok, sha256_hex};
use crate::support::{self, HttpServer, Need};

#[test]
fn every_refusal_names_the_problem_and_pushes_nothing() -> anyhow::Result<()> {
    support::require!(
        Need::Root,
        Need::Sshd,
        Need::SshClient,
        Need::TestUsers,
        Need::Python3
    );
    let release = host_release();
    let target = Target::start()?;
    let cache = tempfile::tempdir()?;

    // Tampered module, over HTTP: expected and actual SHA-256 in the message.
    let repo = Repo::create(&[&release]);
    let mut bytes = std::fs::read(repo.module_path(&release))?;
    let good_sha = sha256_hex(&bytes);
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(repo.module_path(&release), &bytes)?;
    let bad_sha = sha256_hex(&bytes);
    let server = HttpServer::serve(&repo.dir())?;
    let key = repo.public_key.to_str().unwrap().to_string();
    target
        .dry_run(
            &["--repository-url", &server.url(), "--repository-key", &key],
            cache.path(),
            &[],
        )
        .assert_refused(
            &[
                &format!("lime-{release}.ko: SHA-256 expected {good_sha}"),
                &format!("actual {bad_sha}"),
            ],
            false,
        );
    // Nothing of it went into the cache.
    assert!(
        !cache
            .path()
            .join(format!("mshot/modules/{good_sha}.ko"))
            .exists()
    );
    drop(server);

    // Tampered manifest (one field changed after signing): the signature fails.
    let repo = Repo::create(&[&release]);
    let manifest_path = repo.dir().join("manifest.json");
    let text = std::fs::read_to_string(&manifest_path)?.replacen(
        "\"lime_version\": \"unknown\"",
        "\"lime_version\": \"9.9\"",
        1,
    );
    std::fs::write(&manifest_path, text)?;
    let key = repo.public_key.to_str().unwrap().to_string();
    target
        .dry_run(
            &[
                "--repository-url",
                repo.dir().to_str().unwrap(),
                "--repository-key",
                &key,
            ],
            cache.path(),
            &[],
        )
        .assert_refused(
            &[
                "manifest.json: signature check failed",
                "changed after signing",
            ],
            false,
        );

    // Wrong key: another key pair's public key, and the built-in key.
    let repo = Repo::create(&[&release]);
    let other = Repo::create(&[&release]);
    let signer = key_id(&repo.public_key);
    let other_id = key_id(&other.public_key);
    let dir = repo.dir();
    target
        .dry_run(
            &[
                "--repository-url",
                dir.to_str().unwrap(),
                "--repository-key",
                other.public_key.to_str().unwrap(),
            ],
            cache.path(),
            &[],
        )
        .assert_refused(
            &[
                &format!("expected a signature by key {other_id}"),
                &format!("got one by key {signer}"),
            ],
            false,
        );
    target
        .dry_run(
            &["--repository-url", dir.to_str().unwrap()],
            cache.path(),
            &[],
        )
        .assert_refused(
            &[&format!("got one by key {signer}"), "built-in key"],
            false,
        );

    // Unsigned manifest.
    std::fs::remove_file(dir.join("manifest.json.minisig"))?;
    target
        .dry_run(
            &[
                "--repository-url",
                dir.to_str().unwrap(),
                "--repository-key",
                repo.public_key.to_str().unwrap(),
            ],
            cache.path(),
            &[],
        )
        .assert_refused(
            &[
                "manifest.json is not signed",
                "manifest.json.minisig not found",
            ],
            false,
        );

    // No module for this kernel: with --method lime, the closest releases and
    // how to build one.
    let repo = Repo::create(&[
        "6.1.0-55-amd64",
        "6.12.117+deb12-amd64",
        "6.1.0-56-cloud-amd64",
    ]);
    let repo_dir = repo.dir();
    let missing = [
        "--repository-url",
        repo_dir.to_str().unwrap(),
        "--repository-key",
        repo.public_key.to_str().unwrap(),
    ];
    let lime_only: Vec<&str> = missing
        .iter()
        .copied()
        .chain(["--method", "lime"])
        .collect();
    target
        .dry_run(&lime_only, cache.path(), &[])
        .assert_refused(
            &[
                "LiME cannot be used: ",
                &format!("no LiME module for kernel {release} (x86_64)"),
                "closest it has: ",
                "6.1.0-55-amd64",
                &format!("mshot repo build --out REPO {release}"),
            ],
            true,
        );
    // With --method auto (the default) that one miss means /proc/kcore instead,
    // said and recorded; still nothing is pushed. (A kernel without
    // /proc/kcore, like some CI machines', refuses naming both reasons.)
    let run = target.dry_run(&missing, cache.path(), &[]);
    let no_module = format!("no LiME module for kernel {release}");
    if Path::new("/proc/kcore").exists() {
        assert_eq!(run.output.status.code(), Some(0), "{}", run.stderr());
        let manifest = run.manifest();
        assert_eq!(manifest["source"]["method"], "kcore", "{manifest:#}");
        assert!(
            manifest["source"]["reason"]
                .as_str()
                .unwrap()
                .contains(&no_module),
            "{manifest:#}"
        );
        assert_eq!(manifest["module"]["remote_path"], "");
    } else {
        run.assert_refused(&["no way to read memory on this target", &no_module], true);
    }

    // Server unreachable: a loopback port nobody listens on.
    let port = support::free_port([127, 0, 0, 1].into())?;
    let url = format!("http://127.0.0.1:{port}/repo/");
    target
        .dry_run(
            &[
                "--repository-url",
                &url,
                "--repository-key",
                repo.public_key.to_str().unwrap(),
            ],
            cache.path(),
            &[],
        )
        .assert_refused(
            &[
                &format!("cannot fetch {url}manifest.json"),
                "onnection refused",
            ],
            false,
        );
    Ok(())
}

#[test]
fn signatures_interoperate_with_the_minisign_tool() -> anyhow::Result<()> {
    support::require!(Need::Minisign);
    let release = host_release();
    let repo = Repo::create(&[&release]);
    // The minisign tool verifies what `mshot repo sign` wrote...
    ok(Command::new("minisign")
        .arg("-V")
        .arg("-p")
        .arg(&repo.public_key)
        .arg("-m")
        .arg(repo.dir().join("manifest.json")));
    // ...and mshot accepts a manifest signed by the tool, with a key the tool made.
    let keys = repo.root.path().join("tool-keys");
    std::fs::create_dir_all(&keys)?;
    ok(Command::new("minisign")
        .args(["-G", "-W", "-p"])
        .arg(keys.join("k.pub"))
        .arg("-s")
        .arg(keys.join("k.key")));
    ok(Command::new("minisign")
        .args(["-S", "-s"])
        .arg(keys.join("k.key"))
        .arg("-m")
        .arg(repo.dir().join("manifest.json")));
    let out = ok(mshot()
        .args(["repo", "verify"])
        .arg(repo.dir())
        .arg("--repository-key")
        .arg(keys.join("k.pub")));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("ok x86_64   {release}")),
        "{stdout}"
    );
    // And refuses the same repository under the key mshot signed it with before.
    let out = mshot()
        .args(["repo", "verify"])
        .arg(repo.dir())
        .arg("--repository-key")
        .arg(&repo.public_key)
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    Ok(())
}

/// The key ID as minisign prints it: the little-endian u64 after "Ed", in hex.
fn key_id(public_key: &Path) -> String {
    let text = std::fs::read_to_string(public_key).unwrap();
    let line = text.lines().nth(1).unwrap();
    let raw = base64_decode(line);
    let mut id = [0u8; 8];
    id.copy_from_slice(&raw[2..10]);
    format!("{:016X}", u64::from_le_bytes(id))
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .unwrap()
}

/// Python's http.server behind TLS, with a certificate for 127.0.0.1 from a
/// CA made for the test.
const TLS_SERVER: &str = r#"
import http.server, ssl, sys, functools
port, directory, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
httpd.serve_forever()
"#;

#[test]
fn https_repository_checks_the_server_certificate() -> anyhow::Result<()> {
    support::require!(Need::Python3, Need::Openssl);
    let release = host_release();
    let repo = Repo::create(&[&release]);
    let tls = repo.root.path().join("tls");
    std::fs::create_dir_all(&tls)?;
    let openssl = |args: &[&str]| {
        ok(Command::new("openssl").current_dir(&tls).args(args));
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=mshot test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        tls.join("ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    )?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
    let port = support::free_port([127, 0, 0, 1].into())?;
    let _server = support::KillOnDrop(
        Command::new("python3")
            .arg("-c")
            .arg(TLS_SERVER)
            .arg(port.to_string())
            .arg(repo.dir())
            .arg(tls.join("srv.pem"))
            .arg(tls.join("srv.key"))
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the TLS server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let url = format!("https://127.0.0.1:{port}/");
    let verify = |ca: Option<&Path>| {
        let mut cmd = mshot();
        cmd.args(["repo", "verify", &url, "--repository-key"])
            .arg(&repo.public_key)
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR");
        if let Some(ca) = ca {
            cmd.env("SSL_CERT_FILE", ca);
        }
        cmd.output().unwrap()
    };
    // Trusted through the CA: fetched over TLS and verified.
    let out = verify(Some(&tls.join("ca.pem")));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("ok x86_64   {release}")),
        "{stdout}"
    );
    // Without the CA the certificate is refused, and the error says so.
    let out = verify(None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot fetch {url}manifest.json"))
            && stderr.contains("certificate"),
        "{stderr}"
    );
    Ok(())
}
