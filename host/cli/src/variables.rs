//! The variable values a host supplies to its app: `DURO_VAR_<NAME>`
//! environment variables, a `--variables` file (TOML or dotenv), and
//! `--var NAME=VALUE` flags, later ones overriding earlier ones. Values stay
//! on the host: a deploy carries names, never values.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context as _, bail};

/// Prefix of the environment variables that supply values.
pub const ENV_PREFIX: &str = "DURO_VAR_";

/// The values from the environment, then `file`, then `flags` (each
/// `NAME=VALUE`); names are lower-cased.
pub fn supplied(file: Option<&Path>, flags: &[String]) -> anyhow::Result<HashMap<String, String>> {
    let mut values = HashMap::new();
    for (key, value) in std::env::vars() {
        if let Some(name) = key.strip_prefix(ENV_PREFIX) {
            values.insert(name.to_ascii_lowercase(), value);
        }
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the variables file {}", path.display()))?;
        values.extend(parse_file(path, &text)?);
    }
    for flag in flags {
        let Some((name, value)) = flag.split_once('=') else {
            bail!("--var {flag:?}: expected NAME=VALUE");
        };
        values.insert(name.trim().to_ascii_lowercase(), value.to_string());
    }
    Ok(values)
}

/// A variables file: a TOML table of strings (`.toml`), or dotenv lines
/// (`NAME=VALUE`, `#` comments, optional quotes). Errors name the line, not
/// the value (it may be a secret).
fn parse_file(path: &Path, text: &str) -> anyhow::Result<HashMap<String, String>> {
    let mut values = HashMap::new();
    if path.extension().is_some_and(|e| e == "toml") {
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            anyhow::anyhow!(
                "variables file {}: not TOML: {}",
                path.display(),
                e.message()
            )
        })?;
        for (name, value) in table {
            let Some(value) = value.as_str() else {
                bail!(
                    "variables file {}: `{name}` is not a string",
                    path.display()
                );
            };
            values.insert(name.to_ascii_lowercase(), value.to_string());
        }
        return Ok(values);
    }
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((name, value)) = line.split_once('=') else {
            bail!(
                "variables file {}: line {} is not NAME=VALUE",
                path.display(),
                number + 1
            );
        };
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        values.insert(name.trim().to_ascii_lowercase(), value.to_string());
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_and_toml_files_give_values() {
        let dotenv = parse_file(
            Path::new("app.env"),
            "# comment\nSTRIPE_KEY=\"sk_test_1\"\nexport base_url='https://x'\nplain = v=1\n",
        )
        .unwrap();
        assert_eq!(dotenv["stripe_key"], "sk_test_1");
        assert_eq!(dotenv["base_url"], "https://x");
        assert_eq!(dotenv["plain"], "v=1");
        let broken = parse_file(Path::new("app.env"), "ok=1\nsecret-without-equals\n").unwrap_err();
        assert!(broken.to_string().contains("line 2"), "{broken}");
        assert!(!broken.to_string().contains("secret-without"), "{broken}");
        let toml = parse_file(Path::new("app.toml"), "stripe_key = \"sk\"\n").unwrap();
        assert_eq!(toml["stripe_key"], "sk");
        assert!(parse_file(Path::new("app.toml"), "n = 1\n").is_err());
    }

    #[test]
    fn flags_override_files_and_name_themselves() {
        let values = supplied(None, &["Greeting=hi=there".into()]).unwrap();
        assert_eq!(values["greeting"], "hi=there");
        assert!(supplied(None, &["novalue".into()]).is_err());
    }
}
