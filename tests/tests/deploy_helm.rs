//! The Helm chart (`helm/shoal`), linted and rendered offline by Helm's
//! own library (the `helm-python-sdk` package, through
//! `tests/scripts/helm_render.py`): with the default values and with every
//! option on (`tests/fixtures/helm-values-all.yaml`). The rendered objects
//! are checked for their kinds, ports, probes and volumes, and the
//! configuration files the chart renders are checked by the real
//! `shoal-agent check-config` and `shoal-controller check-config`.
//!
//! Skips with a message when Python or helm-python-sdk is missing
//! (`tests/run-all.sh` installs it when run as root).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// The Python with helm-python-sdk: run-all.sh's tools venv
/// (`$SHOAL_TOOLS_VENV`, default /opt/shoal-test-tools/venv), else
/// `python3` on PATH.
fn python() -> PathBuf {
    let venv = std::env::var_os("SHOAL_TOOLS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/shoal-test-tools/venv"));
    let p = venv.join("bin/python");
    if p.exists() { p } else { "python3".into() }
}

/// The rendered chart, or why there is none.
enum Render {
    Ok(Value),
    Failed(String),
    Skip(String),
}

fn render(values: Option<&Path>) -> Render {
    let mut cmd = Command::new(python());
    cmd.arg(repo().join("tests/scripts/helm_render.py"))
        .arg(repo().join("helm/shoal"));
    if let Some(v) = values {
        cmd.arg(v);
    }
    let out = match cmd.output() {
        Ok(o) => o,
        Err(e) => return Render::Skip(format!("cannot run Python: {e}")),
    };
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    match out.status.code() {
        Some(0) => {
            Render::Ok(serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
                panic!("helm_render.py printed no JSON ({e}); stderr:\n{stderr}")
            }))
        }
        Some(3) => Render::Skip(stderr),
        _ => Render::Failed(stderr),
    }
}

/// Renders or, when the tools are missing, says so and returns `None`.
fn rendered(values: Option<&Path>) -> Option<Value> {
    match render(values) {
        Render::Ok(v) => Some(v),
        Render::Skip(why) => {
            eprintln!(
                "SKIP: helm-python-sdk is not available ({}); run tests/run-all.sh as root, or \
                 pip install helm-python-sdk pyyaml into $SHOAL_TOOLS_VENV",
                why.trim()
            );
            None
        }
        Render::Failed(e) => panic!("the chart did not render: {e}"),
    }
}

/// Lint must find no warning or error (infos such as "icon is
/// recommended" are fine), and the values must meet the schema.
fn assert_clean(doc: &Value) {
    let lint = &doc["lint"];
    assert_eq!(lint["errors"].as_array().map(Vec::len), Some(0), "{lint}");
    let serious: Vec<&Value> = lint["messages"]
        .as_array()
        .expect("lint messages")
        .iter()
        .filter(|m| m["severity"].as_u64().unwrap_or(3) >= 2)
        .collect();
    assert!(serious.is_empty(), "helm lint: {serious:?}");
    assert!(doc["schema_error"].is_null(), "{}", doc["schema_error"]);
}

fn objects(doc: &Value) -> Vec<&Value> {
    doc["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| &m["object"])
        .collect()
}

fn kinds(doc: &Value) -> Vec<String> {
    let mut k: Vec<String> = objects(doc)
        .iter()
        .map(|o| o["kind"].as_str().expect("kind").to_owned())
        .collect();
    k.sort();
    k
}

fn one<'a>(doc: &'a Value, kind: &str) -> &'a Value {
    let found: Vec<&Value> = objects(doc)
        .into_iter()
        .filter(|o| o["kind"] == kind)
        .collect();
    assert_eq!(found.len(), 1, "one {kind} expected");
    found[0]
}

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list}"))
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {list} entry {name}"))
}

fn ports(c: &Value) -> Vec<(String, u64)> {
    c["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().expect("port name").to_owned(),
                p["containerPort"]
                    .as_u64()
                    .or_else(|| p["port"].as_u64())
                    .expect("port number"),
            )
        })
        .collect()
}

/// Writes a ConfigMap's file to a temp dir and runs `BIN --config FILE
/// check-config` on it.
fn check_config(cm: &Value, file: &str, bin: &str) -> String {
    let text = cm["data"][file]
        .as_str()
        .unwrap_or_else(|| panic!("ConfigMap lacks {file}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(file);
    std::fs::write(&path, text).expect("write config");
    let run: shoal_tests::Run = Command::new(shoal_tests::bin(bin))
        .arg("--config")
        .arg(&path)
        .arg("check-config")
        .output()
        .expect("run check-config")
        .into();
    assert_eq!(
        run.code, 0,
        "{bin} refuses the rendered {file}:\n{text}\n{}",
        run.stderr
    );
    text.to_owned()
}

fn config_map<'a>(doc: &'a Value, suffix: &str) -> &'a Value {
    objects(doc)
        .into_iter()
        .find(|o| {
            o["kind"] == "ConfigMap"
                && o["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with(suffix))
        })
        .unwrap_or_else(|| panic!("no ConfigMap *{suffix}"))
}

/// The controller's StatefulSet, Services and config, common to both
/// renderings.
fn check_controller(doc: &Value, storage: &str) {
    let sts = one(doc, "StatefulSet");
    assert_eq!(sts["spec"]["replicas"], 1);
    let pod = &sts["spec"]["template"]["spec"];
    let c = container(pod, "containers", "controller");
    assert_eq!(
        ports(c),
        vec![("grpc".into(), 7800), ("metrics".into(), 7801)]
    );
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["path"], "/healthz", "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "metrics", "{probe}");
    }
    assert!(
        c["resources"]["requests"]["cpu"].is_string(),
        "resource requests"
    );
    let claims = sts["spec"]["volumeClaimTemplates"]
        .as_array()
        .expect("volumeClaimTemplates");
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0]["metadata"]["name"], "data");
    assert_eq!(
        claims[0]["spec"]["resources"]["requests"]["storage"],
        storage
    );
    let mounts = c["volumeMounts"].as_array().expect("volumeMounts");
    assert!(
        mounts
            .iter()
            .any(|m| m["name"] == "data" && m["mountPath"] == "/var/lib/shoal-controller"),
        "{mounts:?}"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);

    let services: Vec<&Value> = objects(doc)
        .into_iter()
        .filter(|o| o["kind"] == "Service")
        .collect();
    let main = services
        .iter()
        .find(|s| s["spec"]["clusterIP"] != "None")
        .expect("the controller Service");
    assert_eq!(
        ports(&main["spec"]),
        vec![("grpc".into(), 7800), ("metrics".into(), 7801)]
    );
    assert!(
        services.iter().any(|s| s["spec"]["clusterIP"] == "None"
            && s["metadata"]["name"] == sts["spec"]["serviceName"]),
        "a headless Service governs the StatefulSet"
    );

    let yaml = check_config(
        config_map(doc, "-controller"),
        "controller.yaml",
        "shoal-controller",
    );
    assert!(yaml.contains("metrics_listen: 0.0.0.0:7801"), "{yaml}");
    assert!(yaml.contains("listen: 0.0.0.0:7800"), "{yaml}");
    assert!(
        yaml.contains("data_dir: /var/lib/shoal-controller"),
        "{yaml}"
    );
}

#[test]
fn default_values_render_the_controller_alone() {
    let Some(doc) = rendered(None) else { return };
    assert_clean(&doc);
    assert_eq!(
        kinds(&doc),
        ["ConfigMap", "Service", "Service", "StatefulSet"],
        "defaults: the controller only"
    );
    check_controller(&doc, "2Gi");
    let yaml = config_map(&doc, "-controller")["data"]["controller.yaml"]
        .as_str()
        .expect("controller.yaml")
        .to_owned();
    assert!(!yaml.contains("ca:"), "no CA import by default: {yaml}");
}

#[test]
fn every_option_on_renders_agents_monitoring_and_ingress() {
    let values = repo().join("tests/fixtures/helm-values-all.yaml");
    let Some(doc) = rendered(Some(&values)) else {
        return;
    };
    assert_clean(&doc);
    assert_eq!(
        kinds(&doc),
        [
            "ConfigMap",
            "ConfigMap",
            "DaemonSet",
            "Ingress",
            "Secret",
            "Service",
            "Service",
            "ServiceMonitor",
            "StatefulSet"
        ]
    );
    check_controller(&doc, "10Gi");

    // The CA comes from the Secret and is imported through the config.
    let sts = one(&doc, "StatefulSet");
    let volumes = sts["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes");
    assert!(
        volumes
            .iter()
            .any(|v| v["secret"]["secretName"] == "shoal-fleet-ca"),
        "{volumes:?}"
    );
    let yaml = config_map(&doc, "-controller")["data"]["controller.yaml"]
        .as_str()
        .expect("controller.yaml");
    assert!(
        yaml.contains("cert: /etc/shoal/ca-import/ca.crt")
            && yaml.contains("key: /etc/shoal/ca-import/ca.key"),
        "{yaml}"
    );

    // The agent: host network, state on the node, enrollment from a Secret.
    let ds = one(&doc, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    let data = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "data")
        .expect("data volume");
    assert_eq!(data["hostPath"]["path"], "/srv/shoal");
    assert_eq!(data["hostPath"]["type"], "DirectoryOrCreate");
    let agent = container(pod, "containers", "agent");
    assert_eq!(ports(agent), vec![("swarm".into(), 7410)]);
    assert!(
        agent["livenessProbe"]["exec"]["command"]
            .to_string()
            .contains("status"),
        "liveness asks the agent"
    );
    let enroll = container(pod, "initContainers", "enroll");
    let script = enroll["command"].to_string();
    for part in [
        "enroll",
        "--controller",
        "--ca-fingerprint",
        "identity/agent.pem",
    ] {
        assert!(
            script.contains(part),
            "enroll script lacks {part}: {script}"
        );
    }
    let env = enroll["env"].as_array().expect("env");
    let token = env
        .iter()
        .find(|e| e["name"] == "SHOAL_ENROLL_TOKEN")
        .expect("token variable");
    let secret = one(&doc, "Secret");
    assert_eq!(
        token["valueFrom"]["secretKeyRef"]["name"],
        secret["metadata"]["name"]
    );
    assert!(secret["data"]["token"].is_string());

    let yaml = check_config(config_map(&doc, "-agent"), "agent.yaml", "shoal-agent");
    for line in [
        "url: shoal-fleet-controller.shoal.svc:7800",
        "data_dir: /var/lib/shoal",
        "cert: /var/lib/shoal/identity/agent.pem",
        "- lab-a-13",
    ] {
        assert!(yaml.contains(line), "agent.yaml lacks {line:?}:\n{yaml}");
    }

    // Monitoring and the passthrough Ingress point at the named ports.
    let sm = one(&doc, "ServiceMonitor");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    let ing = one(&doc, "Ingress");
    assert_eq!(
        ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/ssl-passthrough"],
        "true"
    );
    assert!(ing["spec"]["tls"].is_null(), "passthrough: no TLS section");
    let rules = ing["spec"]["rules"].as_array().expect("rules");
    assert_eq!(
        rules
            .iter()
            .map(|r| r["host"].as_str().unwrap_or(""))
            .collect::<Vec<_>>(),
        ["shoal", "controller.shoal"]
    );
    assert_eq!(
        rules[0]["http"]["paths"][0]["backend"]["service"]["port"]["name"],
        "grpc"
    );
}

#[test]
fn a_typo_or_a_missing_fingerprint_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let typo = dir.path().join("typo.yaml");
    std::fs::write(&typo, "controller:\n  persistance:\n    size: 1Gi\n").expect("write");
    match render(Some(&typo)) {
        Render::Skip(why) => {
            eprintln!("SKIP: helm-python-sdk is not available ({})", why.trim());
            return;
        }
        Render::Ok(_) => panic!("a misspelt key was accepted"),
        Render::Failed(e) => assert!(e.contains("persistance"), "{e}"),
    }
    let no_fp = dir.path().join("no-fp.yaml");
    std::fs::write(
        &no_fp,
        "agent:\n  enabled: true\n  enrollment:\n    token: t\n",
    )
    .expect("write");
    match render(Some(&no_fp)) {
        Render::Failed(e) => assert!(e.contains("caFingerprint"), "{e}"),
        Render::Ok(_) => panic!("an agent without a CA fingerprint rendered"),
        Render::Skip(why) => panic!("skipped on the second run: {why}"),
    }
}
