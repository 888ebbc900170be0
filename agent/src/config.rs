//! Agent configuration: the YAML file schema, defaults, and validation
//! into typed values. Loading is a pure function of the text; every error
//! names the field (and, for YAML syntax, the line).
//!
//! Every option is documented, with its default, in `docs/agent-config.md`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use shoal_proto::units::{parse_duration, parse_rate, parse_size};
use shoal_proto::{PublicKey, TrustedKeys};

/// Default port of the swarm service.
pub const DEFAULT_PORT: u16 = 7400;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("{path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{0}")]
    Yaml(String),
    #[error("field `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.to_string(),
    }
}

// ---- file schema ---------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: PathBuf,
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default)]
    advertise: Vec<String>,
    tls: FileTls,
    #[serde(default)]
    trusted_publishers: Vec<String>,
    #[serde(default)]
    discovery: FileDiscovery,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    swarm: FileSwarm,
    #[serde(default)]
    store: FileStore,
    #[serde(default)]
    local_api: FileLocalApi,
    #[serde(default)]
    log: FileLog,
    #[serde(default)]
    controller: FileController,
    #[serde(default)]
    metrics: FileMetrics,
    #[serde(default)]
    otlp: FileOtlp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileOtlp {
    endpoint: String,
    sample_ratio: f64,
    chunk_sample_ratio: f64,
}

impl Default for FileOtlp {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            sample_ratio: 1.0,
            chunk_sample_ratio: 0.05,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileMetrics {
    listen: String,
}

impl Default for FileMetrics {
    fn default() -> Self {
        Self {
            listen: DEFAULT_METRICS_LISTEN.into(),
        }
    }
}

/// Where `/metrics` is served unless configured: loopback only.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:7401";

fn default_listen() -> String {
    format!("0.0.0.0:{DEFAULT_PORT}")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    #[serde(default)]
    deny: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileDiscovery {
    mdns: bool,
    static_peers: Vec<String>,
    peer_timeout: String,
}

impl Default for FileDiscovery {
    fn default() -> Self {
        Self {
            mdns: true,
            static_peers: Vec::new(),
            peer_timeout: "2m".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileLimits {
    upload_rate: String,
    download_rate: String,
    upload_slots: u32,
    max_concurrent_downloads: u32,
    cache_quota: String,
}

impl Default for FileLimits {
    fn default() -> Self {
        Self {
            upload_rate: "unlimited".into(),
            download_rate: "unlimited".into(),
            upload_slots: 8,
            max_concurrent_downloads: 2,
            cache_quota: "0".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileSwarm {
    requests_per_peer: u32,
    request_timeout: String,
    ban_threshold: u32,
    ban_duration: String,
}

impl Default for FileSwarm {
    fn default() -> Self {
        Self {
            requests_per_peer: 4,
            request_timeout: "30s".into(),
            ban_threshold: 3,
            ban_duration: "1h".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileStore {
    direct_io: bool,
}

impl Default for FileStore {
    fn default() -> Self {
        Self { direct_io: true }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileLocalApi {
    socket: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileLog {
    format: LogFormat,
    level: String,
}

impl Default for FileLog {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileController {
    url: Option<String>,
    status_interval: String,
    reconnect_max: String,
}

impl Default for FileController {
    fn default() -> Self {
        Self {
            url: None,
            status_interval: "10s".into(),
            reconnect_max: "60s".into(),
        }
    }
}

// ---- typed configuration -------------------------------------------------

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Where the agent's certificate, key and CA are.
#[derive(Debug, Clone)]
pub struct TlsPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Bandwidth, slots and cache limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Bytes per second; 0 = unlimited.
    pub upload_rate: u64,
    pub download_rate: u64,
    pub upload_slots: u32,
    pub max_concurrent_downloads: u32,
    /// Bytes; 0 = unlimited.
    pub cache_quota: u64,
}

/// Swarm behaviour.
#[derive(Debug, Clone)]
pub struct SwarmSettings {
    pub requests_per_peer: u32,
    pub request_timeout: Duration,
    pub ban_threshold: u32,
    pub ban_duration: Duration,
    /// Every this many chunk requests gets a trace span (0 = none): a
    /// download makes thousands, a few are enough to see where time goes.
    pub chunk_trace_every: u32,
}

/// The controller session: where the controller is and how often to talk.
#[derive(Debug, Clone)]
pub struct ControllerSettings {
    /// `host:port` to dial (the port defaults to 7800).
    pub addr: String,
    /// How often a status report is sent.
    pub status_interval: Duration,
    /// Longest wait between reconnection attempts.
    pub reconnect_max: Duration,
}

impl ControllerSettings {
    /// Defaults for the controller at `addr`.
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            status_interval: Duration::from_secs(10),
            reconnect_max: Duration::from_secs(60),
        }
    }
}

/// A validated agent configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Addresses announced to peers; empty = the listen address, or the
    /// host's addresses when listening on all of them.
    pub advertise: Vec<SocketAddr>,
    pub tls: TlsPaths,
    /// Agent ids or certificate serials (hex) whose connections are refused.
    pub deny: Vec<String>,
    pub trusted_publishers: TrustedKeys,
    pub mdns: bool,
    pub static_peers: Vec<String>,
    pub peer_timeout: Duration,
    pub limits: Limits,
    pub swarm: SwarmSettings,
    /// Package content is read and written bypassing the page cache
    /// (`O_DIRECT`) where the file system allows.
    pub direct_io: bool,
    pub socket: PathBuf,
    pub log_format: LogFormat,
    pub log_level: String,
    /// The controller to keep a session with; `None` = standalone.
    pub controller: Option<ControllerSettings>,
    /// Where Prometheus metrics are served; `None` = not at all.
    pub metrics_listen: Option<SocketAddr>,
    /// Trace export; `None` = logs only.
    pub otlp: Option<crate::telemetry::OtlpSettings>,
}

impl AgentConfig {
    /// Defaults for everything but the data directory and identity.
    pub fn new(data_dir: &Path, tls: TlsPaths) -> Self {
        Self {
            data_dir: data_dir.to_owned(),
            listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
            advertise: Vec::new(),
            tls,
            deny: Vec::new(),
            trusted_publishers: TrustedKeys::new(),
            mdns: true,
            static_peers: Vec::new(),
            peer_timeout: Duration::from_secs(120),
            limits: Limits {
                upload_rate: 0,
                download_rate: 0,
                upload_slots: 8,
                max_concurrent_downloads: 2,
                cache_quota: 0,
            },
            swarm: SwarmSettings {
                requests_per_peer: 4,
                request_timeout: Duration::from_secs(30),
                ban_threshold: 3,
                ban_duration: Duration::from_secs(3600),
                chunk_trace_every: 0,
            },
            direct_io: true,
            socket: data_dir.join("agent.sock"),
            log_format: LogFormat::Text,
            log_level: "info".into(),
            controller: None,
            metrics_listen: None,
            otlp: None,
        }
    }

    /// Reads and validates a YAML file. Relative paths in it are taken
    /// relative to the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_owned(),
            cause,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_yaml(&text, base).map_err(|e| match e {
            ConfigError::Yaml(m) => ConfigError::Yaml(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses and validates YAML text; relative paths resolve against `base`.
    pub fn from_yaml(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let f: FileConfig =
            serde_yaml::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?;
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let data_dir = abs(f.data_dir);
        let mut c = Self::new(
            &data_dir,
            TlsPaths {
                ca: abs(f.tls.ca),
                cert: abs(f.tls.cert),
                key: abs(f.tls.key),
            },
        );
        c.listen = f
            .listen
            .parse()
            .map_err(|_| invalid("listen", format!("{:?} is not an address:port", f.listen)))?;
        c.advertise = f
            .advertise
            .iter()
            .map(|a| {
                a.parse()
                    .map_err(|_| invalid("advertise", format!("{a:?} is not an address:port")))
            })
            .collect::<Result<_, _>>()?;
        c.deny = f.tls.deny;
        for k in &f.trusted_publishers {
            let key: PublicKey = k.parse().map_err(|e| invalid("trusted_publishers", e))?;
            c.trusted_publishers.insert(key);
        }
        c.mdns = f.discovery.mdns;
        for p in &f.discovery.static_peers {
            validate_peer_addr(p).map_err(|r| invalid("discovery.static_peers", r))?;
        }
        c.static_peers = f.discovery.static_peers;
        c.peer_timeout = parse_duration(&f.discovery.peer_timeout)
            .map_err(|e| invalid("discovery.peer_timeout", e))?;
        c.limits = Limits {
            upload_rate: parse_rate(&f.limits.upload_rate)
                .map_err(|e| invalid("limits.upload_rate", e))?,
            download_rate: parse_rate(&f.limits.download_rate)
                .map_err(|e| invalid("limits.download_rate", e))?,
            upload_slots: f.limits.upload_slots,
            max_concurrent_downloads: f.limits.max_concurrent_downloads,
            cache_quota: parse_size(&f.limits.cache_quota)
                .map_err(|e| invalid("limits.cache_quota", e))?,
        };
        c.swarm = SwarmSettings {
            requests_per_peer: f.swarm.requests_per_peer,
            request_timeout: parse_duration(&f.swarm.request_timeout)
                .map_err(|e| invalid("swarm.request_timeout", e))?,
            ban_threshold: f.swarm.ban_threshold,
            ban_duration: parse_duration(&f.swarm.ban_duration)
                .map_err(|e| invalid("swarm.ban_duration", e))?,
            chunk_trace_every: 0,
        };
        c.direct_io = f.store.direct_io;
        if !f.otlp.endpoint.trim().is_empty() {
            let endpoint = f.otlp.endpoint.trim().to_owned();
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(invalid(
                    "otlp.endpoint",
                    format!("{endpoint:?}: use http://host:4317 (OTLP over gRPC)"),
                ));
            }
            for (field, r) in [
                ("otlp.sample_ratio", f.otlp.sample_ratio),
                ("otlp.chunk_sample_ratio", f.otlp.chunk_sample_ratio),
            ] {
                if !(0.0..=1.0).contains(&r) {
                    return Err(invalid(field, format!("{r} is not between 0 and 1")));
                }
            }
            c.otlp = Some(crate::telemetry::OtlpSettings {
                endpoint,
                sample_ratio: f.otlp.sample_ratio,
            });
            c.swarm.chunk_trace_every = if f.otlp.chunk_sample_ratio <= 0.0 {
                0
            } else {
                (1.0 / f.otlp.chunk_sample_ratio).round().max(1.0) as u32
            };
        }
        if let Some(s) = f.local_api.socket {
            c.socket = abs(s);
        }
        c.log_format = f.log.format;
        c.log_level = f.log.level;
        c.metrics_listen = match f.metrics.listen.trim() {
            "" | "off" => None,
            addr => Some(addr.parse().map_err(|_| {
                invalid(
                    "metrics.listen",
                    format!("{addr:?} is not ip:port (or `off`)"),
                )
            })?),
        };
        let status_interval = parse_duration(&f.controller.status_interval)
            .map_err(|e| invalid("controller.status_interval", e))?;
        let reconnect_max = parse_duration(&f.controller.reconnect_max)
            .map_err(|e| invalid("controller.reconnect_max", e))?;
        if let Some(url) = &f.controller.url {
            let addr = crate::enroll::parse_controller_addr(url)
                .map_err(|r| invalid("controller.url", r))?;
            c.controller = Some(ControllerSettings {
                addr,
                status_interval,
                reconnect_max,
            });
        }
        c.validate()?;
        Ok(c)
    }

    /// Range checks that apply however the config was built.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.limits.upload_slots == 0 {
            return Err(invalid("limits.upload_slots", "must be at least 1"));
        }
        if self.limits.max_concurrent_downloads == 0 {
            return Err(invalid(
                "limits.max_concurrent_downloads",
                "must be at least 1",
            ));
        }
        if !(1..=64).contains(&self.swarm.requests_per_peer) {
            return Err(invalid("swarm.requests_per_peer", "must be 1..=64"));
        }
        if self.swarm.request_timeout < Duration::from_secs(1) {
            return Err(invalid("swarm.request_timeout", "must be at least 1s"));
        }
        if self.swarm.ban_threshold == 0 {
            return Err(invalid("swarm.ban_threshold", "must be at least 1"));
        }
        if self.peer_timeout < Duration::from_secs(5) {
            return Err(invalid("discovery.peer_timeout", "must be at least 5s"));
        }
        if let Some(ctl) = &self.controller {
            if ctl.status_interval < Duration::from_secs(1) {
                return Err(invalid("controller.status_interval", "must be at least 1s"));
            }
            if ctl.reconnect_max < Duration::from_secs(1) {
                return Err(invalid("controller.reconnect_max", "must be at least 1s"));
            }
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_level)
            .map_err(|e| invalid("log.level", e))?;
        Ok(())
    }
}

/// `host:port` with a non-zero port.
fn validate_peer_addr(p: &str) -> Result<(), String> {
    let (host, port) = p
        .rsplit_once(':')
        .ok_or_else(|| format!("{p:?} has no port; write host:port"))?;
    if host.is_empty() {
        return Err(format!("{p:?} has no host"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{p:?} has an invalid port")),
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str =
        "data_dir: /var/lib/shoal\ntls: {ca: ca.pem, cert: agent.pem, key: agent.key}\n";

    #[test]
    fn minimal_config_gets_defaults() {
        let c = AgentConfig::from_yaml(MINIMAL, Path::new("/etc/shoal")).expect("valid");
        assert_eq!(c.listen.port(), DEFAULT_PORT);
        assert_eq!(c.tls.ca, Path::new("/etc/shoal/ca.pem"));
        assert_eq!(c.socket, Path::new("/var/lib/shoal/agent.sock"));
        assert!(c.mdns);
        assert_eq!(c.limits.upload_slots, 8);
        assert!(
            c.controller.is_none(),
            "standalone unless a controller is named"
        );
    }

    #[test]
    fn controller_section_parses_with_defaults() {
        let text = format!("{MINIMAL}controller: {{url: ctl.lan}}\n");
        let c = AgentConfig::from_yaml(&text, Path::new("/")).expect("valid");
        let ctl = c.controller.expect("controller set");
        assert_eq!(ctl.addr, "ctl.lan:7800");
        assert_eq!(ctl.status_interval, Duration::from_secs(10));
        assert_eq!(ctl.reconnect_max, Duration::from_secs(60));

        let text = format!(
            "{MINIMAL}controller: {{url: 'https://10.0.0.1:9000', status_interval: 2s, reconnect_max: 5m}}\n"
        );
        let ctl = AgentConfig::from_yaml(&text, Path::new("/"))
            .expect("valid")
            .controller
            .expect("controller set");
        assert_eq!(ctl.addr, "10.0.0.1:9000");
        assert_eq!(ctl.status_interval, Duration::from_secs(2));
        assert_eq!(ctl.reconnect_max, Duration::from_secs(300));

        // Timings without a url: checked, but no session.
        let text = format!("{MINIMAL}controller: {{status_interval: 5s}}\n");
        let c = AgentConfig::from_yaml(&text, Path::new("/")).expect("valid");
        assert!(c.controller.is_none());
    }

    #[test]
    fn full_config_parses() {
        let text = format!(
            "{MINIMAL}listen: 127.0.0.1:9000\ndiscovery: {{mdns: false, static_peers: ['10.9.0.2:7400'], peer_timeout: 30s}}\n\
             limits: {{upload_rate: 50Mbit/s, download_rate: 10MiB/s, cache_quota: 20GiB}}\n\
             swarm: {{request_timeout: 10s}}\nlog: {{format: json, level: debug}}\n"
        );
        let c = AgentConfig::from_yaml(&text, Path::new("/")).expect("valid");
        assert_eq!(c.limits.upload_rate, 6_250_000);
        assert_eq!(c.limits.cache_quota, 20 << 30);
        assert_eq!(c.static_peers, vec!["10.9.0.2:7400"]);
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("limits: {upload_rate: fast}", "limits.upload_rate"),
            (
                "discovery: {static_peers: ['nohost']}",
                "discovery.static_peers",
            ),
            ("swarm: {request_timeout: 10}", "swarm.request_timeout"),
            ("listen: nowhere", "listen"),
            ("trusted_publishers: ['ed25519:00']", "trusted_publishers"),
            ("limits: {upload_slots: 0}", "limits.upload_slots"),
            ("controller: {url: 'ctl:0'}", "controller.url"),
            ("controller: {url: 'http://ctl'}", "controller.url"),
            (
                "controller: {url: ctl, status_interval: 500ms}",
                "controller.status_interval",
            ),
            (
                "controller: {status_interval: often}",
                "controller.status_interval",
            ),
            (
                "controller: {url: ctl, reconnect_max: 0s}",
                "controller.reconnect_max",
            ),
            ("controller: {urll: ctl}", "urll"),
        ];
        for (extra, field) in cases {
            let e = AgentConfig::from_yaml(&format!("{MINIMAL}{extra}\n"), Path::new("/"))
                .expect_err(extra)
                .to_string();
            assert!(e.contains(field), "{extra}: {e}");
        }
        // A typo in a field name is caught, with its line.
        let e = AgentConfig::from_yaml(&format!("{MINIMAL}limitz: {{}}\n"), Path::new("/"))
            .expect_err("typo")
            .to_string();
        assert!(e.contains("limitz") && e.contains("line 3"), "{e}");
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// The shipped example parses and says what the defaults are.
    #[test]
    fn example_config_matches_the_defaults() {
        let text = include_str!("../../deploy/agent.example.yaml");
        let c = AgentConfig::from_yaml(text, Path::new("/etc/shoal")).expect("example parses");
        let d = AgentConfig::new(&c.data_dir, c.tls.clone());
        assert_eq!(c.listen, d.listen);
        assert_eq!(c.mdns, d.mdns);
        assert_eq!(c.peer_timeout, d.peer_timeout);
        assert_eq!(c.limits.upload_slots, d.limits.upload_slots);
        assert_eq!(
            c.limits.max_concurrent_downloads,
            d.limits.max_concurrent_downloads
        );
        assert_eq!(
            (
                c.limits.upload_rate,
                c.limits.download_rate,
                c.limits.cache_quota
            ),
            (0, 0, 0)
        );
        assert_eq!(c.swarm.requests_per_peer, d.swarm.requests_per_peer);
        assert_eq!(c.swarm.request_timeout, d.swarm.request_timeout);
        assert_eq!(c.swarm.ban_threshold, d.swarm.ban_threshold);
        assert_eq!(c.swarm.ban_duration, d.swarm.ban_duration);
        assert_eq!(c.socket, d.socket);
        assert!(c.controller.is_none(), "the example runs standalone");
    }

    /// Every field of the file schema is documented in the reference.
    #[test]
    fn reference_documents_every_field() {
        let doc = include_str!("../../docs/agent-config.md");
        let fields = [
            "data_dir",
            "listen",
            "advertise",
            "tls.ca",
            "tls.cert",
            "tls.key",
            "tls.deny",
            "trusted_publishers",
            "discovery.mdns",
            "discovery.static_peers",
            "discovery.peer_timeout",
            "limits.upload_rate",
            "limits.download_rate",
            "limits.upload_slots",
            "limits.max_concurrent_downloads",
            "limits.cache_quota",
            "swarm.requests_per_peer",
            "swarm.request_timeout",
            "swarm.ban_threshold",
            "swarm.ban_duration",
            "store.direct_io",
            "local_api.socket",
            "log.format",
            "log.level",
            "controller.url",
            "controller.status_interval",
            "controller.reconnect_max",
            "metrics.listen",
            "otlp.endpoint",
            "otlp.sample_ratio",
            "otlp.chunk_sample_ratio",
        ];
        for field in fields {
            assert!(
                doc.contains(&format!("| `{field}` |")),
                "docs/agent-config.md lacks {field}"
            );
        }
        // And the reference documents nothing that is not a field.
        for line in doc.lines() {
            if let Some(field) = line
                .strip_prefix("| `")
                .and_then(|rest| rest.split_once("` |"))
                .map(|(f, _)| f)
            {
                assert!(
                    fields.contains(&field),
                    "docs/agent-config.md documents {field}, which the schema lacks"
                );
            }
        }
    }
}
