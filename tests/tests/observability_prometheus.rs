//! Observability end to end: a real Prometheus (Debian's `prometheus`)
//! scrapes a real controller and real agents on loopback while a rollout
//! runs, with the shipped scrape config (retargeted) and the shipped rules.
//! Every PromQL expression of the Grafana dashboard and of the rules must
//! evaluate without error, the key ones must report what the swarm did
//! (bytes, agents online, rollout done, certificate expiry), no alert
//! fires in a healthy swarm, and every metric of docs/metrics.md is there
//! with its documented type and labels. `promtool` checks the shipped
//! config, the rules and the rules' unit tests.
//!
//! Where `/usr/bin/prometheus` is absent the tests skip with a message;
//! tests/run-all.sh installs it when it runs as root.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shoal_agent::config::TlsPaths;
use shoal_proto::chunking::ChunkingSpec;
use shoal_tests::Run;
use shoal_tests::controller::{ControllerProcess, enroll, start_agent_with, wait_until};
use shoal_tests::process::{AgentProcess, free_port, spawn_ready};
use shoal_tests::swarm::Pki;

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";
const LIMIT: Duration = Duration::from_secs(90);
const PACKAGE: &str = "course/obs@1";
/// 24 chunks of 1 MiB: enough for the fetchers to trade chunks among
/// themselves, small enough for a debug build on two cores.
const SIZE: u64 = 24 << 20;
const CHUNK: u32 = 1 << 20;
/// The fetching group; the seed (the origin) is alone in `origin`.
const GROUP: &str = "lab";
const FETCHERS: [&str; 3] = ["a1", "a2", "a3"];

/// What a dashboard or rule expression may legitimately return nothing
/// for in a healthy run: panels that filter to failures only.
const MAY_BE_EMPTY: &[&str] = &[
    "shoal_agent_chunks_rejected_total",
    "shoal_agent_peer_bans_total",
    "outcome!=\"ok\"",
    "ALERTS{",
];

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .canonicalize()
        .expect("the deploy/ directory")
}

/// Whether the Prometheus tools are here; says why not otherwise.
fn have(tool: &str) -> bool {
    let found = Path::new(tool).exists();
    if !found {
        eprintln!(
            "skipping: {tool} is absent (Debian package `prometheus`; \
             tests/run-all.sh installs it when run as root)"
        );
    }
    found
}

fn promtool(args: &[&str]) -> Run {
    Command::new(PROMTOOL)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running promtool: {e}"))
        .into()
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn promtool_accepts_the_shipped_config_rules_and_rule_tests() {
    if !have(PROMTOOL) {
        return;
    }
    let dir = deploy().join("prometheus");
    let run = promtool(&["check", "config", path_str(&dir.join("prometheus.yml"))]);
    assert_eq!(run.code, 0, "check config:\n{}{}", run.stdout, run.stderr);
    // The config loads rules.yml by a relative path: promtool found it.
    assert!(
        run.stdout.contains("1 rule files found"),
        "{}{}",
        run.stdout,
        run.stderr
    );
    let run = promtool(&["check", "rules", path_str(&dir.join("rules.yml"))]);
    assert_eq!(run.code, 0, "check rules:\n{}{}", run.stdout, run.stderr);
    let run = promtool(&["test", "rules", path_str(&dir.join("rules_test.yml"))]);
    assert_eq!(run.code, 0, "test rules:\n{}{}", run.stdout, run.stderr);

    // The example target files are in the format file_sd reads: promtool
    // parses target files named by a config.
    let work = tempfile::tempdir().expect("tempdir");
    let config = work.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "scrape_configs:\n  - job_name: shoal-agent\n    file_sd_configs:\n      - files: ['{}', '{}']\n",
            dir.join("agents.example.json").display(),
            dir.join("agents.example.yml").display()
        ),
    )
    .expect("write config");
    let run = promtool(&["check", "config", path_str(&config)]);
    assert_eq!(
        run.code, 0,
        "the example target files:\n{}{}",
        run.stdout, run.stderr
    );
    let out = format!("{}{}", run.stdout, run.stderr);
    assert!(!out.contains("WARNING"), "{out}");
}

/// A Prometheus server on a loopback port with its own storage; killed
/// when dropped, so a failing test leaves none behind.
struct Prometheus {
    addr: String,
    log: PathBuf,
    child: Child,
}

impl Prometheus {
    fn start(config: &Path, dir: &Path) -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        let log = dir.join("prometheus.log");
        let mut cmd = Command::new(PROMETHEUS);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"));
        let child = spawn_ready(cmd, &log, "prometheus", || {
            http_get(&addr, "/-/ready").is_ok_and(|(code, _)| code == 200)
        });
        Self { addr, log, child }
    }

    /// An instant query; the result vector, or Prometheus's error.
    fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let path = format!("/api/v1/query?query={}", url_encode(expr));
        let (code, body) = http_get(&self.addr, &path).map_err(|e| format!("GET: {e}"))?;
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| format!("HTTP {code}, not JSON ({e}): {body}"))?;
        if v["status"] != "success" {
            return Err(format!("{}: {}", v["errorType"], v["error"]));
        }
        match v["data"]["resultType"].as_str() {
            Some("vector") => Ok(v["data"]["result"].as_array().cloned().unwrap_or_default()),
            // A scalar or string result: one sample, no labels.
            Some(_) => Ok(vec![json!({"metric": {}, "value": v["data"]["result"]})]),
            None => Err(format!("no resultType: {body}")),
        }
    }

    /// `expr`'s samples as (labels, value); panics on a query error.
    fn samples(&self, expr: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        self.query(expr)
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
            .iter()
            .map(|s| {
                let labels = s["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                (labels, sample_value(s))
            })
            .collect()
    }

    /// The value of a one-sample `expr`, or None while it has no sample.
    fn value(&self, expr: &str) -> Option<f64> {
        let s = self.samples(expr);
        assert!(s.len() <= 1, "{expr}: more than one sample: {s:?}");
        s.first().map(|(_, v)| *v)
    }

    /// Waits until `expr` has one sample equal to `want`.
    fn wait_for(&self, expr: &str, want: f64) {
        let mut last = None;
        let deadline = Instant::now() + LIMIT;
        loop {
            last = self.value(expr).or(last);
            if last == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{expr}: {last:?} after {LIMIT:?}, want {want}; prometheus log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn api(&self, path: &str) -> Value {
        let (code, body) = http_get(&self.addr, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(code, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sample_value(s: &Value) -> f64 {
    s["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("not a sample: {s}"))
}

/// GET over HTTP/1.0, so the body simply runs to the end of the
/// connection (no chunked encoding to undo). Loopback only.
fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    Ok((code, body.to_owned()))
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The shipped prometheus.yml, pointed at this test's processes: every
/// second, the shipped rules by absolute path, the controller statically,
/// the seed statically and the fetchers through a file_sd target file, as
/// the shipped agent job does both.
fn test_config(
    shipped: &Path,
    ctl_metrics: &str,
    seed_metrics: &str,
    sd_file: &Path,
) -> serde_yaml::Value {
    let text = std::fs::read_to_string(shipped).expect("read prometheus.yml");
    let mut cfg: serde_yaml::Value = serde_yaml::from_str(&text).expect("prometheus.yml is YAML");
    let yaml = |s: &str| serde_yaml::from_str::<serde_yaml::Value>(s).expect("valid YAML");
    for key in ["scrape_interval", "scrape_timeout", "evaluation_interval"] {
        cfg["global"][key] = "1s".into();
    }
    cfg["rule_files"] = vec![path_str(&shipped.with_file_name("rules.yml")).to_owned()].into();
    let mut jobs = BTreeSet::new();
    for job in cfg["scrape_configs"]
        .as_sequence_mut()
        .expect("scrape_configs is a list")
    {
        let name = job["job_name"].as_str().unwrap_or_default().to_owned();
        match name.as_str() {
            "shoal-controller" => {
                job["static_configs"] = yaml(&format!("[{{targets: ['{ctl_metrics}']}}]"));
            }
            "shoal-agent" => {
                job["static_configs"] = yaml(&format!(
                    "[{{targets: ['{seed_metrics}'], labels: {{group: origin}}}}]"
                ));
                job["file_sd_configs"] = yaml(&format!(
                    "[{{files: ['{}'], refresh_interval: 1s}}]",
                    sd_file.display()
                ));
            }
            other => panic!("unexpected job {other:?} in the shipped prometheus.yml"),
        }
        jobs.insert(name);
    }
    assert_eq!(
        jobs,
        BTreeSet::from(["shoal-agent".to_owned(), "shoal-controller".to_owned()]),
        "the rules and the dashboard expect these jobs"
    );
    cfg
}

/// Every `expr` of the dashboard's panel targets, with its panel's title.
fn dashboard_exprs(v: &Value, title: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            let title = m.get("title").and_then(Value::as_str).unwrap_or(title);
            if let Some(targets) = m.get("targets").and_then(Value::as_array) {
                for t in targets {
                    if let Some(e) = t["expr"].as_str() {
                        out.push((title.to_owned(), e.to_owned()));
                    }
                }
            }
            for child in m.values() {
                dashboard_exprs(child, title, out);
            }
        }
        Value::Array(l) => l.iter().for_each(|c| dashboard_exprs(c, title, out)),
        _ => {}
    }
}

/// Grafana's variables replaced as Grafana would for "All" and a short
/// range; anything left starting with `$` is a variable the dashboard does
/// not define.
fn substitute(expr: &str, vars: &[String]) -> String {
    let mut e = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m");
    for v in vars {
        e = e
            .replace(&format!("${{{v}}}"), ".*")
            .replace(&format!("${v}"), ".*");
    }
    assert!(!e.contains('$'), "undefined variable in {expr:?}");
    e
}

/// (record or alert name, expr, whether it is an alert) of every rule in
/// a rules file.
fn rule_exprs(path: &Path) -> Vec<(String, String, bool)> {
    let text = std::fs::read_to_string(path).expect("read rules");
    let v: serde_yaml::Value = serde_yaml::from_str(&text).expect("rules are YAML");
    let mut out = Vec::new();
    for g in v["groups"].as_sequence().expect("groups") {
        for r in g["rules"].as_sequence().expect("rules") {
            let expr = r["expr"].as_str().expect("expr").to_owned();
            match (r["record"].as_str(), r["alert"].as_str()) {
                (Some(name), None) => out.push((name.to_owned(), expr, false)),
                (None, Some(name)) => out.push((name.to_owned(), expr, true)),
                _ => panic!("a rule is either a record or an alert: {r:?}"),
            }
        }
    }
    out
}

/// One row of docs/metrics.md: name, type, and its labels with their
/// documented values (empty where the doc lists none).
struct Documented {
    name: String,
    kind: String,
    labels: Vec<(String, Vec<String>)>,
}

/// The metric tables of docs/metrics.md (the contract), e.g.
/// ``| `x_total` | counter | `source` = `peer` \| `origin` | … |``.
fn documented_metrics() -> Vec<Documented> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md");
    let text = std::fs::read_to_string(&path).expect("read docs/metrics.md");
    let ticked = |s: &str| {
        let s = s.trim();
        s.strip_prefix('`')
            .and_then(|r| r.split_once('`'))
            .map(|(t, _)| t.to_owned())
    };
    text.lines()
        .filter(|l| l.starts_with("| `shoal_"))
        .map(|row| {
            // `\|` separates label values inside a cell.
            let row = row.replace("\\|", "\u{1}");
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let name = ticked(cells[1]).expect("metric name");
            let kind = cells[2]
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            let labels = cells[3]
                .split(", ")
                .filter_map(|part| {
                    let label = ticked(part)?;
                    let values = part
                        .split_once('=')
                        .map(|(_, v)| v.split('\u{1}').filter_map(ticked).collect())
                        .unwrap_or_default();
                    Some((label, values))
                })
                .collect();
            Documented { name, kind, labels }
        })
        .collect()
}

fn enrolled(ctl: &ControllerProcess, token: &str, fp: &str, host: &str, dir: &Path) -> TlsPaths {
    let (run, tls) = enroll(&ctl.addr, token, fp, host, dir);
    assert_eq!(run.code, 0, "{host}: {}{}", run.stdout, run.stderr);
    tls
}

#[test]
fn prometheus_scrapes_a_rollout_and_every_dashboard_and_rule_query_works() {
    if !have(PROMETHEUS) || !have(PROMTOOL) {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let ctl = ControllerProcess::start(&work.path().join("controller"));
    let fp = ctl.fingerprint();
    let pki = Pki::new();
    let hosts: Vec<(&str, &str)> = std::iter::once(("seed", "origin"))
        .chain(FETCHERS.iter().map(|h| (*h, GROUP)))
        .collect();
    let mut metrics = BTreeMap::new();
    let agents: Vec<AgentProcess> = hosts
        .iter()
        .map(|(h, g)| {
            let token = ctl.token(&[g], "1h", 1);
            let tls = enrolled(&ctl, &token, &fp, h, &work.path().join(format!("{h}-id")));
            let addr = format!("127.0.0.1:{}", free_port());
            let extra = format!("metrics:\n  listen: {addr}\n");
            metrics.insert(h.to_string(), addr);
            start_agent_with(&pki, &ctl, h, &work.path().join(h), tls, &extra)
        })
        .collect();
    let seed = &agents[0];

    // Every endpoint answers /healthz as docs/metrics.md says.
    for addr in metrics.values().chain([&ctl.metrics_addr]) {
        wait_until(&format!("{addr}/healthz"), LIMIT, || {
            http_get(addr, "/healthz").is_ok_and(|(c, b)| c == 200 && b.trim() == "ok")
        });
    }

    // Prometheus with the shipped config and rules, retargeted.
    let prom_dir = work.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).expect("mkdir");
    let sd_file = prom_dir.join("agents.json");
    let fetchers: Vec<&str> = FETCHERS.iter().map(|h| metrics[*h].as_str()).collect();
    std::fs::write(
        &sd_file,
        json!([{"targets": fetchers, "labels": {"group": GROUP}}]).to_string(),
    )
    .expect("write target file");
    let shipped = deploy().join("prometheus/prometheus.yml");
    let cfg = test_config(&shipped, &ctl.metrics_addr, &metrics["seed"], &sd_file);
    let config = prom_dir.join("prometheus.yml");
    std::fs::write(
        &config,
        serde_yaml::to_string(&cfg).expect("serialise config"),
    )
    .expect("write config");
    let run = promtool(&["check", "config", path_str(&config)]);
    assert_eq!(
        run.code, 0,
        "generated config:\n{}{}",
        run.stdout, run.stderr
    );
    let prom = Prometheus::start(&config, &prom_dir);

    // All five targets up, the fetchers found through the target file.
    prom.wait_for(r#"count(up{job="shoal-agent"} == 1)"#, hosts.len() as f64);
    prom.wait_for(
        &format!(r#"count(up{{job="shoal-agent", group="{GROUP}"}} == 1)"#),
        FETCHERS.len() as f64,
    );
    prom.wait_for(r#"up{job="shoal-controller"}"#, 1.0);

    // Push a package from the seed to the lab group.
    let key = pki.publisher.public().to_string();
    let run = ctl.cli(&["namespace", "set", "course", "--key", &key]);
    assert_eq!(run.code, 0, "namespace: {}", run.stderr);
    let pkg_dir = work.path().join("pkg");
    std::fs::create_dir_all(&pkg_dir).expect("mkdir");
    let (content, manifest) = pki.write_package(
        &pkg_dir,
        "course/obs",
        SIZE,
        ChunkingSpec::fixed(CHUNK).expect("valid chunking"),
    );
    let run = ctl.cli(&["package", "register", path_str(&manifest)]);
    assert_eq!(run.code, 0, "register: {}{}", run.stdout, run.stderr);
    seed.publish(&manifest, &content);
    let run = ctl.cli(&["assign", PACKAGE, "--group", GROUP]);
    assert_eq!(run.code, 0, "assign: {}{}", run.stdout, run.stderr);
    wait_until("the rollout done on every lab agent", LIMIT, || {
        let run = ctl.cli(&["rollout", "status", PACKAGE, "--json"]);
        run.code == 0 && run.json()["done"] == FETCHERS.len()
    });

    // What the swarm did, as Prometheus scraped it.
    let fetched = (FETCHERS.len() as u64 * SIZE) as f64;
    prom.wait_for("sum(shoal_agent_received_bytes_total)", fetched);
    let by_status: u64 = agents.iter().map(|a| a.status_u64("bytes_received")).sum();
    assert_eq!(by_status as f64, fetched, "agents' own status");
    assert_eq!(
        prom.value(r#"sum(shoal_agent_received_bytes_total{group="origin"})"#),
        Some(0.0),
        "the origin fetched nothing"
    );
    let from_origin = prom
        .value(r#"sum(shoal_agent_received_bytes_total{source="origin"})"#)
        .expect("bytes from the origin");
    let from_peers = prom
        .value(r#"sum(shoal_agent_received_bytes_total{source="peer"})"#)
        .expect("bytes from peers");
    assert!(from_origin > 0.0, "only the origin had it at first");
    assert_eq!(from_origin + from_peers, fetched);
    // Senders count a frame once it is queued, receivers a chunk once it
    // is verified, and each agent is scraped on its own schedule: the
    // senders' total can trail the receivers' by a scrape.
    prom.wait_for(
        &format!("sum(shoal_agent_sent_bytes_total) >= bool {fetched}"),
        1.0,
    );
    prom.wait_for(
        "sum(shoal_agent_chunks_verified_total)",
        (FETCHERS.len() as u64 * SIZE / u64::from(CHUNK)) as f64,
    );
    assert_eq!(
        prom.value("sum(shoal_agent_chunks_rejected_total)"),
        Some(0.0)
    );
    let progress = prom.samples(&format!(
        r#"shoal_agent_package_progress_ratio{{package="{PACKAGE}", group="{GROUP}"}}"#
    ));
    assert_eq!(progress.len(), FETCHERS.len(), "{progress:?}");
    assert!(progress.iter().all(|(_, v)| *v == 1.0), "{progress:?}");
    let ids: BTreeSet<String> = prom
        .samples("shoal_agent_info")
        .into_iter()
        .map(|(l, _)| l.get("agent_id").cloned().unwrap_or_default())
        .collect();
    assert_eq!(
        ids,
        hosts
            .iter()
            .map(|(h, _)| h.to_string())
            .collect::<BTreeSet<_>>(),
        "agent_id labels"
    );
    prom.wait_for("sum(shoal_agent_controller_connected)", hosts.len() as f64);

    // The controller's view.
    prom.wait_for("shoal_controller_info", 1.0);
    prom.wait_for("sum(shoal_controller_agents_online)", hosts.len() as f64);
    prom.wait_for(
        &format!(r#"shoal_controller_agents_online{{group="{GROUP}"}}"#),
        FETCHERS.len() as f64,
    );
    prom.wait_for(r#"shoal_controller_agents_online{group="origin"}"#, 1.0);
    prom.wait_for("sum(shoal_controller_agents_enrolled)", hosts.len() as f64);
    let rollout = format!(r#"package="{PACKAGE}", group="{GROUP}""#);
    prom.wait_for(
        &format!(r#"shoal_controller_rollout_agents{{{rollout}, state="done"}}"#),
        FETCHERS.len() as f64,
    );
    let wave = prom
        .value(&format!("shoal_controller_rollout_wave{{{rollout}}}"))
        .expect("rollout wave");
    assert!(wave >= 1.0, "wave {wave}");
    prom.wait_for("sum(shoal_controller_fleet_received_bytes)", fetched);
    let ratio = prom.value("shoal_controller_p2p_ratio").expect("p2p ratio");
    let fleet_peer = prom
        .value(r#"shoal_controller_fleet_received_bytes{source="peer"}"#)
        .expect("fleet bytes from peers");
    assert!(
        (ratio - fleet_peer / fetched).abs() < 1e-9,
        "p2p ratio {ratio} vs {fleet_peer} / {fetched}"
    );
    // Both read the same certificates: the agents' earliest expiry is the
    // controller's minimum, and 30 days (the default validity) away.
    let agents_min = prom
        .value("min(shoal_agent_certificate_expiry_timestamp_seconds)")
        .expect("agent certificate expiry");
    let ctl_min = prom
        .value("shoal_controller_agent_certificate_expiry_min_timestamp_seconds")
        .expect("controller certificate expiry");
    assert!(
        (agents_min - ctl_min).abs() <= 1.0,
        "{agents_min} vs {ctl_min}"
    );
    let left = prom
        .value("min(shoal_agent_certificate_expiry_timestamp_seconds) - time()")
        .expect("time left");
    assert!(left > 29.0 * 86400.0, "certificates expire in {left} s");

    // The contract: every metric of docs/metrics.md is scraped, with its
    // type, its labels, and label values among those documented.
    let documented = documented_metrics();
    assert!(
        documented.len() > 30,
        "{} metrics documented",
        documented.len()
    );
    for m in &documented {
        let series = if m.kind == "histogram" {
            format!("{}_count", m.name)
        } else {
            m.name.clone()
        };
        let found = prom.samples(&series);
        assert!(!found.is_empty(), "{} is not exposed", m.name);
        let meta = prom.api(&format!("/api/v1/metadata?metric={}", m.name));
        let kinds: BTreeSet<&str> = meta["data"][&m.name]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["type"].as_str())
            .collect();
        assert_eq!(
            kinds,
            BTreeSet::from([m.kind.as_str()]),
            "type of {}",
            m.name
        );
        for (label, values) in &m.labels {
            for (labels, _) in &found {
                let v = labels
                    .get(label)
                    .unwrap_or_else(|| panic!("{} has no label {label}: {labels:?}", m.name));
                assert!(
                    values.is_empty() || values.contains(v),
                    "{}{{{label}={v:?}}}: not one of {values:?}",
                    m.name
                );
            }
        }
    }

    // The recording rules, evaluated by Prometheus every second.
    prom.wait_for(
        &format!("package_group:shoal_controller_rollout_done:ratio{{{rollout}}}"),
        1.0,
    );
    prom.wait_for(
        &format!(r#"group:shoal_controller_agents_online:ratio{{group="{GROUP}"}}"#),
        1.0,
    );
    let eff = prom
        .value("job:shoal_agent_p2p_efficiency:ratio_rate5m")
        .expect("p2p efficiency");
    assert!((0.0..=1.0).contains(&eff), "efficiency {eff}");

    // Every rule loaded and evaluated without error.
    let rules_file = deploy().join("prometheus/rules.yml");
    let rules = rule_exprs(&rules_file);
    wait_until("every rule evaluated", LIMIT, || {
        let v = prom.api("/api/v1/rules");
        let loaded: Vec<&Value> = v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        for r in &loaded {
            assert!(
                r["lastError"].as_str().unwrap_or_default().is_empty(),
                "rule {} failed: {}",
                r["name"],
                r["lastError"]
            );
        }
        loaded.len() == rules.len() && loaded.iter().all(|r| r["health"] == "ok")
    });

    // Every rule expression evaluates; recording rules have data, and no
    // alert's condition holds in this healthy swarm.
    for (name, expr, alert) in &rules {
        let result = prom
            .query(expr)
            .unwrap_or_else(|e| panic!("rule {name}: {e}\n{expr}"));
        if *alert {
            assert!(result.is_empty(), "alert {name} would fire: {result:?}");
        } else if !MAY_BE_EMPTY.iter().any(|m| expr.contains(m)) {
            assert!(
                !result.is_empty(),
                "recording rule {name} has no data\n{expr}"
            );
        }
    }

    // Every dashboard expression evaluates, and shows data unless it only
    // shows failures; its variables' queries list this fleet's values.
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy().join("grafana/shoal-dashboard.json"))
            .expect("read dashboard"),
    )
    .expect("the dashboard is JSON");
    assert_eq!(dash["templating"]["list"][0]["type"], "datasource");
    let vars: Vec<String> = dash["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter(|v| v["type"] != "datasource")
        .filter_map(|v| v["name"].as_str().map(str::to_owned))
        .collect();
    let mut exprs = Vec::new();
    dashboard_exprs(&dash["panels"], "", &mut exprs);
    assert!(exprs.len() > 20, "only {} dashboard queries", exprs.len());
    let mut empty = Vec::new();
    for (title, expr) in &exprs {
        let q = substitute(expr, &vars);
        let result = prom
            .query(&q)
            .unwrap_or_else(|e| panic!("panel {title:?}: {e}\n{q}"));
        if result.is_empty() {
            assert!(
                MAY_BE_EMPTY.iter().any(|m| expr.contains(m)),
                "panel {title:?} shows no data\n{q}"
            );
            empty.push(title.as_str());
        }
    }
    for v in dash["templating"]["list"].as_array().expect("templating") {
        let Some(def) = v["definition"].as_str() else {
            continue;
        };
        let (selector, label) = def
            .strip_prefix("label_values(")
            .and_then(|d| d.strip_suffix(')'))
            .and_then(|d| d.rsplit_once(','))
            .unwrap_or_else(|| panic!("variable {}: not label_values(…, …): {def}", v["name"]));
        let q = substitute(
            &format!("count by ({label}) ({selector})", label = label.trim()),
            &vars,
        );
        let values: BTreeSet<String> = prom
            .samples(&q)
            .into_iter()
            .filter_map(|(l, _)| l.get(label.trim()).cloned())
            .collect();
        let want: BTreeSet<String> = match label.trim() {
            "group" => BTreeSet::from([GROUP.to_owned(), "origin".to_owned()]),
            "package" => BTreeSet::from([PACKAGE.to_owned()]),
            other => panic!("variable over an unexpected label {other}"),
        };
        assert_eq!(values, want, "variable {}: {q}", v["name"]);
    }
    eprintln!(
        "{} documented metrics ({} labels) scraped; {} dashboard and {} rule \
         queries evaluated; P2P ratio {ratio:.3} ({from_peers} of {fetched} \
         bytes from peers); no data, as expected of a healthy swarm: {empty:?}",
        documented.len(),
        documented.iter().map(|m| m.labels.len()).sum::<usize>(),
        exprs.len(),
        rules.len()
    );
}
