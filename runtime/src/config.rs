//! Config files in TOML, with environment overrides.
//!
//! A service reads its file (if any) and then applies environment variables named
//! `<PREFIX>_<KEY>`, where nested keys are joined with a double underscore:
//! `GRIDMESH_GATEWAY_MQTT__URL=mqtt://broker:1883` sets `[mqtt] url`. A value that parses as a
//! TOML value (number, boolean, array, inline table, quoted string) is taken as such; anything
//! else is taken as a plain string.
//!
//! Errors name the file, the line and what is wrong, as the `toml` crate reports them.

use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the expected shape.
    #[error("config file {path} is invalid:\n{message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line, column and the offending text.
        message: String,
    },
    /// An environment override does not fit.
    #[error("environment variable {var} does not fit the config: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong.
        message: String,
    },
}

/// Loads `T` from an optional TOML file plus environment overrides with `env_prefix`.
///
/// Without a file, `T` is built from an empty document (so its serde defaults apply) plus the
/// environment.
pub fn load<T: DeserializeOwned>(path: Option<&Path>, env_prefix: &str) -> Result<T, ConfigError> {
    let vars: Vec<(String, String)> = std::env::vars().collect();
    load_with_env(path, env_prefix, &vars)
}

/// [`load`] with an explicit environment (for tests).
pub fn load_with_env<T: DeserializeOwned>(
    path: Option<&Path>,
    env_prefix: &str,
    vars: &[(String, String)],
) -> Result<T, ConfigError> {
    let (text, shown_path) = match path {
        Some(path) => (
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?,
            path.to_owned(),
        ),
        None => (String::new(), PathBuf::from("(built-in defaults)")),
    };
    let invalid = |e: toml::de::Error| ConfigError::Invalid {
        path: shown_path.clone(),
        message: e.to_string(),
    };
    // Parse the file as written first, so that mistakes in it are reported with line numbers.
    let mut document: toml::Table = toml::from_str(&text).map_err(invalid)?;
    let prefix = format!("{env_prefix}_");
    let mut overridden = Vec::new();
    for (var, value) in vars {
        let Some(key) = var.strip_prefix(&prefix) else {
            continue;
        };
        let path: Vec<String> = key.split("__").map(|p| p.to_ascii_lowercase()).collect();
        set_path(&mut document, &path, parse_value(value)).map_err(|message| ConfigError::Env {
            var: var.clone(),
            message,
        })?;
        overridden.push(var.clone());
    }
    if overridden.is_empty() {
        return toml::from_str(&text).map_err(invalid);
    }
    T::deserialize(toml::Value::Table(document)).map_err(|e| ConfigError::Env {
        var: overridden.join(", "),
        message: e.to_string(),
    })
}

fn parse_value(raw: &str) -> toml::Value {
    let probe = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&probe) {
        Ok(mut table) => table.remove("v").unwrap_or_else(|| raw.into()),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut current = table;
    for part in parents {
        let entry = current
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{part}` is not a table in the config"))?;
    }
    current.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Example {
        name: String,
        #[serde(default)]
        port: u16,
        #[serde(default)]
        mqtt: Mqtt,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    struct Mqtt {
        #[serde(default)]
        url: String,
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn file_then_env_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "name = \"a\"\nport = 1\n").unwrap();
        let vars = env(&[
            ("APP_PORT", "8080"),
            ("APP_MQTT__URL", "mqtt://x:1883"),
            ("OTHER_PORT", "9"),
        ]);
        let c: Example = load_with_env(Some(&path), "APP", &vars).unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.mqtt.url, "mqtt://x:1883");
        assert_eq!(c.name, "a");
    }

    #[test]
    fn errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "name = \"a\"\nport = \"eighty\"\n").unwrap();
        let err = load_with_env::<Example>(Some(&path), "APP", &[]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("line 2"), "{text}");
        assert!(text.contains("port"), "{text}");
        let err = load_with_env::<Example>(None, "APP", &env(&[("APP_PORT", "x")])).unwrap_err();
        assert!(matches!(err, ConfigError::Env { .. }), "{err}");
    }
}
