//! The controller's configuration: YAML, unknown fields refused, every
//! value checked at load with an error naming the field. Every option is
//! documented with its default in `docs/controller-config.md`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use shoal_proto::units::parse_duration;

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("{path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{0}")]
    Syntax(String),
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct File {
    listen: String,
    metrics_listen: String,
    data_dir: PathBuf,
    ca: Option<CaImport>,
    agent_cert_validity: String,
    admin_cert_validity: String,
    log_level: String,
    log_format: shoal_agent::config::LogFormat,
    otlp_endpoint: String,
    otlp_sample_ratio: f64,
}

impl Default for File {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:7800".into(),
            metrics_listen: "127.0.0.1:7801".into(),
            data_dir: "/var/lib/shoal-controller".into(),
            ca: None,
            agent_cert_validity: "30d".into(),
            admin_cert_validity: "365d".into(),
            log_level: "info".into(),
            log_format: shoal_agent::config::LogFormat::Text,
            otlp_endpoint: String::new(),
            otlp_sample_ratio: 1.0,
        }
    }
}

/// An existing CA to adopt on first start instead of generating one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaImport {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub listen: SocketAddr,
    /// Where Prometheus metrics are served; `None` = not at all.
    pub metrics_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub ca: Option<CaImport>,
    pub agent_cert_validity: Duration,
    pub admin_cert_validity: Duration,
    pub log_level: String,
    pub log_format: shoal_agent::config::LogFormat,
    /// Trace export; `None` = logs only.
    pub otlp: Option<shoal_agent::telemetry::OtlpSettings>,
}

impl ControllerConfig {
    /// Defaults with the given data directory, and no metrics endpoint
    /// (configurations built in code are for tests and embedding, where a
    /// fixed port would collide).
    pub fn new(data_dir: &Path) -> Self {
        let mut c = Self::from_file(File::default()).expect("defaults are valid");
        c.data_dir = data_dir.to_owned();
        c.metrics_listen = None;
        c
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_owned(),
            cause,
        })?;
        Self::from_yaml(&text).map_err(|e| match e {
            ConfigError::Syntax(s) => ConfigError::Syntax(format!("{}: {s}", path.display())),
            other => other,
        })
    }

    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let file: File = if text.trim().is_empty() {
            File::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?
        };
        Self::from_file(file)
    }

    fn from_file(f: File) -> Result<Self, ConfigError> {
        let listen = f
            .listen
            .parse()
            .map_err(|_| invalid("listen", format!("{:?} is not an address:port", f.listen)))?;
        let metrics_listen = match f.metrics_listen.trim() {
            "" | "off" => None,
            a => Some(a.parse().map_err(|_| {
                invalid(
                    "metrics_listen",
                    format!("{a:?} is not an address:port (or `off`)"),
                )
            })?),
        };
        let otlp = match f.otlp_endpoint.trim() {
            "" => None,
            e if e.starts_with("http://") || e.starts_with("https://") => {
                if !(0.0..=1.0).contains(&f.otlp_sample_ratio) {
                    return Err(invalid(
                        "otlp_sample_ratio",
                        format!("{} is not between 0 and 1", f.otlp_sample_ratio),
                    ));
                }
                Some(shoal_agent::telemetry::OtlpSettings {
                    endpoint: e.to_owned(),
                    sample_ratio: f.otlp_sample_ratio,
                })
            }
            e => {
                return Err(invalid(
                    "otlp_endpoint",
                    format!("{e:?}: use http://host:4317 (OTLP over gRPC)"),
                ));
            }
        };
        let duration = |field: &'static str, v: &str, min: Duration, min_text: &str| {
            let d = parse_duration(v).map_err(|e| invalid(field, e.to_string()))?;
            if d < min {
                return Err(invalid(field, format!("must be at least {min_text}")));
            }
            Ok(d)
        };
        if f.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        Ok(Self {
            listen,
            metrics_listen,
            data_dir: f.data_dir,
            ca: f.ca,
            // Agents renew at two thirds of the lifetime; a minute is
            // short enough for tests of renewal and still leaves retries.
            agent_cert_validity: duration(
                "agent_cert_validity",
                &f.agent_cert_validity,
                Duration::from_secs(60),
                "1m",
            )?,
            admin_cert_validity: duration(
                "admin_cert_validity",
                &f.admin_cert_validity,
                Duration::from_secs(3600),
                "1h",
            )?,
            log_level: f.log_level,
            log_format: f.log_format,
            otlp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_field_named_errors() {
        let c = ControllerConfig::from_yaml("").expect("defaults");
        assert_eq!(c.listen.port(), 7800);
        assert_eq!(c.agent_cert_validity, Duration::from_secs(30 * 86_400));
        let e =
            ControllerConfig::from_yaml("agent_cert_validity: soon").expect_err("must be refused");
        assert!(e.to_string().starts_with("agent_cert_validity:"), "{e}");
        let e = ControllerConfig::from_yaml("listen: nowhere").expect_err("must be refused");
        assert!(e.to_string().starts_with("listen:"), "{e}");
        let e = ControllerConfig::from_yaml("colour: blue").expect_err("must be refused");
        assert!(e.to_string().contains("unknown field `colour`"), "{e}");
    }
}

#[cfg(test)]
mod reference_tests {
    use serde::de::{self, Visitor};

    use super::{CaImport, File};

    /// A deserializer that records the field list serde's derive passes to
    /// `deserialize_struct` (the schema's own names, renames included) and
    /// then stops.
    struct FieldNames<'a>(&'a mut &'static [&'static str]);

    impl<'de> de::Deserializer<'de> for FieldNames<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("fields recorded"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }

    fn fields_of<T: for<'de> serde::Deserialize<'de>>() -> &'static [&'static str] {
        let mut fields: &'static [&'static str] = &[];
        let _ = T::deserialize(FieldNames(&mut fields));
        assert!(!fields.is_empty(), "no fields recorded");
        fields
    }

    /// Every field of the file schema has a row in
    /// docs/controller-config.md, and every row there is a field; the
    /// `ca` row names the import's own fields.
    #[test]
    fn reference_documents_every_field() {
        let doc = include_str!("../../docs/controller-config.md");
        let fields = fields_of::<File>();
        let rows: Vec<(&str, &str)> = doc
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("| `")?;
                let (field, _) = rest.split_once("` |")?;
                Some((field, line))
            })
            .collect();
        for field in fields {
            assert!(
                rows.iter().any(|(f, _)| f == field),
                "docs/controller-config.md lacks a row for `{field}`"
            );
        }
        for (field, _) in &rows {
            assert!(
                fields.contains(field),
                "docs/controller-config.md documents `{field}`, which the schema lacks"
            );
        }
        let (_, ca_row) = rows
            .iter()
            .find(|(f, _)| *f == "ca")
            .expect("a row for `ca`");
        for field in fields_of::<CaImport>() {
            assert!(
                ca_row.contains(&format!("{field}:")),
                "the `ca` row of docs/controller-config.md does not name `{field}:`"
            );
        }
    }
    /// The shipped example parses to exactly the defaults, names every
    /// field (`ca` commented out, as it has no default), and its `ca`
    /// block parses once uncommented.
    #[test]
    fn example_config_matches_the_defaults() {
        use super::ControllerConfig;
        let text = include_str!("../../deploy/controller.example.yaml");
        let example = ControllerConfig::from_yaml(text).expect("the example parses");
        let defaults = ControllerConfig::from_yaml("").expect("defaults");
        assert_eq!(format!("{example:?}"), format!("{defaults:?}"));
        for field in fields_of::<File>() {
            let set = text.lines().any(|l| l.starts_with(&format!("{field}:")));
            let commented = text.lines().any(|l| l.starts_with(&format!("# {field}:")));
            assert!(
                set || commented,
                "deploy/controller.example.yaml lacks `{field}`"
            );
        }
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.starts_with("ca:") || rest.starts_with("  ") => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let with_ca = ControllerConfig::from_yaml(&uncommented).expect("the ca block parses");
        assert!(with_ca.ca.is_some(), "{uncommented}");
    }
}
