//! The user's settings file: what a responder sets once for every capture,
//! so that a bare `--repository` reaches their team's module repository
//! with their team's signing key pinned.
//!
//! Found at `$MSHOT_CONFIG`, else `$XDG_CONFIG_HOME/mshot/config.yaml`,
//! else `~/.config/mshot/config.yaml`; a missing file is no settings. Flags
//! and their environment variables always win over it. Unknown keys are
//! errors (a misspelt `url:` must not silently fall back to the default).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

pub const ENV_CONFIG: &str = "MSHOT_CONFIG";

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub repository: RepositorySettings,
    /// Where the settings came from, for messages.
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

/// `repository:` — the module repository `--repository` uses.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositorySettings {
    /// An http(s):// URL, a file:// URL or a directory.
    pub url: Option<String>,
    /// The minisign public key (`RW...`) or a key file its manifest must be
    /// signed with.
    pub key: Option<String>,
}

impl Settings {
    /// The settings file in its usual place (see the module comment).
    pub fn load() -> anyhow::Result<Settings> {
        match std::env::var_os(ENV_CONFIG) {
            // Named explicitly: it must exist.
            Some(path) => Settings::from_file(Path::new(&path)),
            None => match default_path() {
                Some(path) if path.is_file() => Settings::from_file(&path),
                _ => Ok(Settings::default()),
            },
        }
    }

    pub fn from_file(path: &Path) -> anyhow::Result<Settings> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "reading the settings file {} ({ENV_CONFIG})",
                path.display()
            )
        })?;
        let mut settings = Settings::parse(&text).with_context(|| {
            format!(
                "settings file {}: fix it or point {ENV_CONFIG} elsewhere",
                path.display()
            )
        })?;
        // A key file named in the settings is relative to the settings file.
        if let Some(key) = &mut settings.repository.key
            && !key.starts_with("RW")
            && let Some(dir) = path.parent()
        {
            *key = dir.join(&*key).display().to_string();
        }
        settings.path = Some(path.to_path_buf());
        Ok(settings)
    }

    pub fn parse(text: &str) -> anyhow::Result<Settings> {
        if text.trim().is_empty() {
            return Ok(Settings::default());
        }
        let settings: Settings = serde_saphyr::from_str(text)
            .map_err(|e| anyhow::anyhow!("{}", one_line(&e.to_string())))?;
        for (name, value) in [
            ("repository.url", &settings.repository.url),
            ("repository.key", &settings.repository.key),
        ] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                bail!("{name} is empty: give a value or remove the key");
            }
        }
        Ok(settings)
    }
}

fn default_path() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var_os("HOME")?).join(".config"),
    };
    Some(base.join("mshot/config.yaml"))
}

/// The parser's message on one line, without the excerpt of the document
/// it draws after ` --> `.
fn one_line(message: &str) -> String {
    let message = message.split(" --> ").next().unwrap_or(message);
    let message = message.trim().trim_start_matches("error: ");
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_url_and_key() {
        let s = Settings::parse(
            "repository:\n  url: https://modules.example.org/lime/\n  key: RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3\n",
        )
        .unwrap();
        assert_eq!(
            s.repository.url.as_deref(),
            Some("https://modules.example.org/lime/")
        );
        assert!(s.repository.key.unwrap().starts_with("RWQ"));
        assert!(Settings::parse("").unwrap().repository.url.is_none());
    }

    #[test]
    fn unknown_keys_and_empty_values_are_errors() {
        let e = Settings::parse("repository:\n  ulr: https://x/\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("ulr") && !e.contains('\n'), "{e}");
        let e = Settings::parse("repositories: {}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("repositories"), "{e}");
        let e = Settings::parse("repository:\n  url: ''\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("repository.url is empty"), "{e}");
    }

    #[test]
    fn a_key_file_is_found_beside_the_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "repository:\n  key: team.pub\n").unwrap();
        let s = Settings::from_file(&path).unwrap();
        assert_eq!(
            s.repository.key.as_deref(),
            Some(dir.path().join("team.pub").to_str().unwrap())
        );
        std::fs::write(&path, "repository: [\n").unwrap();
        let e = format!("{:#}", Settings::from_file(&path).unwrap_err());
        assert!(e.contains("config.yaml") && !e.contains('\n'), "{e}");
    }
}
