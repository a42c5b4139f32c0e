//! Commands of live analysis: finding the target's own sftp-server and the
//! kernel's build ID. Strings only, as every target command.

/// Prints the first executable sftp-server: the one sshd's `Subsystem`
/// line names, else where distributions put it (Debian and Ubuntu, Red Hat
/// and Amazon Linux, Arch, a busybox guest). Exits 1 when there is none.
pub const FIND_SFTP_SERVER: &str = "for p in $(sed -n 's/^[[:space:]]*[Ss]ubsystem[[:space:]][[:space:]]*sftp[[:space:]][[:space:]]*\\([^[:space:]]*\\).*/\\1/p' /etc/ssh/sshd_config /etc/ssh/sshd_config.d/*.conf 2>/dev/null) /usr/lib/openssh/sftp-server /usr/libexec/openssh/sftp-server /usr/lib/ssh/sftp-server /usr/libexec/sftp-server /usr/lib/sftp-server; do if [ -x \"$p\" ]; then echo \"$p\"; exit 0; fi; done; exit 1";

/// The kernel's ELF notes, among them its GNU build ID (world-readable).
pub const KERNEL_NOTES: &str = "cat /sys/kernel/notes";

/// The kernel's lockdown mode, to explain a refused /proc/kcore.
pub const LOCKDOWN: &str = "cat /sys/kernel/security/lockdown 2>/dev/null; true";

/// The path `FIND_SFTP_SERVER` printed, if it looks like one.
pub fn parse_sftp_server(stdout: &str) -> Option<String> {
    let path = stdout.lines().next()?.trim();
    (path.starts_with('/') && path.bytes().all(|b| b.is_ascii_graphic())).then(|| path.to_string())
}

/// The active lockdown mode (`[confidentiality]` in `none integrity
/// [confidentiality]`).
pub fn parse_lockdown(stdout: &str) -> Option<String> {
    let start = stdout.find('[')? + 1;
    let end = start + stdout[start..].find(']')?;
    Some(stdout[start..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sftp_server_paths_and_lockdown() {
        assert_eq!(
            parse_sftp_server("/usr/lib/openssh/sftp-server\n").as_deref(),
            Some("/usr/lib/openssh/sftp-server")
        );
        assert_eq!(parse_sftp_server("internal-sftp\n"), None);
        assert_eq!(parse_sftp_server(""), None);
        assert_eq!(
            parse_lockdown("none integrity [confidentiality]\n").as_deref(),
            Some("confidentiality")
        );
        assert_eq!(
            parse_lockdown("[none] integrity confidentiality\n").as_deref(),
            Some("none")
        );
        assert_eq!(parse_lockdown(""), None);
    }

    /// The command runs in a real POSIX shell and finds a server from a
    /// `Subsystem` line before the usual places.
    #[test]
    fn the_search_reads_subsystem_lines() {
        let dir = tempfile::tempdir().unwrap();
        let server = dir.path().join("my-sftp-server");
        std::fs::write(&server, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&server, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port 22\n  Subsystem   sftp  {} -l INFO\n",
                server.display()
            ),
        )
        .unwrap();
        let command =
            FIND_SFTP_SERVER.replace("/etc/ssh/sshd_config ", &format!("{} ", config.display()));
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .output()
            .unwrap();
        assert_eq!(
            parse_sftp_server(&String::from_utf8_lossy(&out.stdout)),
            Some(server.display().to_string())
        );
    }
}
