//! deploy/kubernetes against the binary: each overlay is rendered with `kubectl kustomize`, each
//! Deployment's ConfigMap TOML passes `wick config check`, the manifests agree with that config
//! (ports, probe paths, drain timing, selectors, the URL of the cascade's large tier), and the
//! real binary started with the ConfigMap's TOML answers 200 on every probe path. Tools:
//! scripts/fetch-deploy-tools (scripts/test runs it).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use wick_tests::{http_get, root, wick_binary, Server};

fn tool(var: &str, cached: &str) -> PathBuf {
    let p = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
        home.join(".cache/wick").join(cached)
    });
    assert!(
        p.is_file(),
        "{} missing: run scripts/fetch-deploy-tools (scripts/test does)",
        p.display()
    );
    p
}

/// Every object `kubectl kustomize DIR` renders, as JSON (PyYAML from the deploy venv reads the
/// YAML, so no YAML parser is needed here).
fn render(dir: &str) -> Vec<Value> {
    let kubectl = tool("WICK_KUBECTL", "kubernetes-client/usr/bin/kubectl");
    let python = tool("WICK_DEPLOY_PYTHON", "deploy-venv/bin/python");
    let yaml = Command::new(kubectl)
        .arg("kustomize")
        .arg(root().join(dir))
        .output()
        .expect("kubectl runs");
    assert!(
        yaml.status.success(),
        "{dir}: {}",
        String::from_utf8_lossy(&yaml.stderr)
    );
    let mut py = Command::new(python)
        .args([
            "-c",
            "import sys, json, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python runs");
    std::io::Write::write_all(&mut py.stdin.take().expect("stdin"), &yaml.stdout).expect("write");
    let out = py.wait_with_output().expect("python exits");
    assert!(out.status.success(), "{dir}: YAML to JSON failed");
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn kind<'a>(objects: &'a [Value], kind: &str) -> impl Iterator<Item = &'a Value> {
    let kind = kind.to_string();
    objects.iter().filter(move |o| o["kind"] == kind.as_str())
}

fn named<'a>(objects: &'a [Value], k: &str, name: &str) -> &'a Value {
    kind(objects, k)
        .find(|o| o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {k} named {name}"))
}

/// A Deployment with its ConfigMap's TOML written to a file and parsed.
struct Instance {
    name: String,
    deployment: Value,
    toml: PathBuf,
    config: wick_config::Config,
}

fn instances(dir: &str, objects: &[Value]) -> Vec<Instance> {
    let tmp = std::env::temp_dir().join(format!("wick-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    kind(objects, "Deployment")
        .map(|d| {
            let name = d["metadata"]["name"].as_str().expect("name").to_string();
            let spec = &d["spec"]["template"]["spec"];
            let volumes = spec["volumes"].as_array().expect("volumes");
            let cm = volumes
                .iter()
                .find_map(|v| v["configMap"]["name"].as_str())
                .unwrap_or_else(|| panic!("{dir}/{name}: no ConfigMap volume"));
            let text = named(objects, "ConfigMap", cm)["data"]["wick.toml"]
                .as_str()
                .unwrap_or_else(|| panic!("{dir}/{name}: ConfigMap {cm} has no wick.toml"));
            // Unique per call: tests run in parallel threads of one process, and two of them
            // rendering the same overlay must not read each other's half-written file.
            static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let toml = tmp.join(format!("{}-{name}-{call}.toml", dir.replace('/', "-")));
            std::fs::write(&toml, text).expect("write TOML");
            let none = wick_config::Overrides::default();
            let config = wick_config::load(Some(&toml), &none, &none)
                .unwrap_or_else(|e| panic!("{dir}/{name}: ConfigMap {cm}:\n{e}"));
            Instance {
                name,
                deployment: d.clone(),
                toml,
                config,
            }
        })
        .collect()
}

const OVERLAYS: &[&str] = &[
    "deploy/kubernetes/base",
    "deploy/kubernetes/overlays/cpu",
    "deploy/kubernetes/overlays/gpu",
    "deploy/kubernetes/overlays/cascade",
];

fn probe(container: &Value, which: &str) -> (String, String) {
    let get = &container[which]["httpGet"];
    let path = get["path"]
        .as_str()
        .unwrap_or_else(|| panic!("{which}: no httpGet.path"));
    (path.to_string(), get["port"].to_string())
}

/// The manifests agree with the configuration each Deployment mounts.
fn check_instance(dir: &str, objects: &[Value], inst: &Instance) {
    let at = format!("{dir}/{}", inst.name);
    let cfg = &inst.config;
    let spec = &inst.deployment["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    let port = c["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "http"))
        .unwrap_or_else(|| panic!("{at}: no port named http"));
    assert_eq!(
        port["containerPort"], cfg.server.port,
        "{at}: containerPort vs server.port"
    );
    assert_eq!(
        cfg.server.host, "0.0.0.0",
        "{at}: must listen beyond the pod's loopback"
    );
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(args, ["serve", "--config", "/etc/wick/wick.toml"], "{at}");
    let mounts = c["volumeMounts"].as_array().expect("mounts");
    assert!(
        mounts.iter().any(|m| m["mountPath"] == "/etc/wick"),
        "{at}: config not mounted"
    );
    // Probes by the port's name, on the paths the server has.
    assert_eq!(
        probe(c, "startupProbe"),
        ("/health".into(), "\"http\"".into()),
        "{at}"
    );
    assert_eq!(
        probe(c, "livenessProbe"),
        ("/health".into(), "\"http\"".into()),
        "{at}"
    );
    assert_eq!(
        probe(c, "readinessProbe"),
        ("/ready".into(), "\"http\"".into()),
        "{at}"
    );
    let startup = &c["startupProbe"];
    let startup_s =
        startup["periodSeconds"].as_u64().unwrap_or(10) * startup["failureThreshold"].as_u64().unwrap_or(3);
    assert!(
        startup_s >= 600,
        "{at}: {startup_s} s of startup probe is short for a model download"
    );
    // Drain: preStop sleep, then the server's delay and grace, must end before the kubelet kills.
    let pre_stop: Vec<&str> = c["lifecycle"]["preStop"]["exec"]["command"]
        .as_array()
        .expect("preStop exec")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let sleep: u64 = match pre_stop.as_slice() {
        ["sleep", s] => s.parse().expect("sleep seconds"),
        other => panic!("{at}: preStop {other:?}"),
    };
    let grace = spec["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    let drain = sleep + cfg.server.drain_delay_secs + cfg.server.drain_grace_secs;
    assert!(
        grace > drain,
        "{at}: terminationGracePeriodSeconds {grace} <= preStop + drain {drain}"
    );
    let key = c["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "WICK_API_KEY");
    assert!(
        key.is_some_and(|k| k["valueFrom"]["secretKeyRef"]["key"] == "api-key"),
        "{at}: WICK_API_KEY from the Secret"
    );

    // The Service, PDB and HPA of this Deployment select or target exactly its pods.
    let labels = &inst.deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(
        inst.deployment["spec"]["selector"]["matchLabels"], *labels,
        "{at}"
    );
    let svc = kind(objects, "Service")
        .find(|s| s["spec"]["selector"] == *labels)
        .unwrap_or_else(|| panic!("{at}: no Service selects the pods"));
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http", "{at}");
    assert!(kind(objects, "PodDisruptionBudget").any(|p| p["spec"]["selector"]["matchLabels"] == *labels));
    let hpa = kind(objects, "HorizontalPodAutoscaler")
        .find(|h| h["spec"]["scaleTargetRef"]["name"] == inst.name.as_str())
        .unwrap_or_else(|| panic!("{at}: no HPA"));
    assert_eq!(
        hpa["spec"]["metrics"][0]["pods"]["metric"]["name"],
        "vllm_num_requests_waiting"
    );

    // A remote tier's URL names a Service of this render, on its port.
    for m in cfg.models.iter().filter(|m| m.is_remote()) {
        let url = m.url.as_deref().unwrap_or_default();
        let host_port = url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default();
        let (host, port) = host_port.split_once(':').unwrap_or((host_port, "80"));
        let svc = named(objects, "Service", host);
        assert_eq!(svc["spec"]["ports"][0]["port"].to_string(), port, "{at}: {url}");
    }
}

#[test]
fn manifests_agree_with_the_configmap_config() {
    let mut seen = 0;
    for dir in OVERLAYS {
        let objects = render(dir);
        for inst in instances(dir, &objects) {
            check_instance(dir, &objects, &inst);
            seen += 1;
        }
    }
    // base, cpu, gpu, and the cascade's two.
    assert_eq!(seen, 5);
    // The ServiceMonitor (a CRD, not schema-checked by scripts/check-deploy) scrapes every wick
    // Service on a port they all have, at the path the server serves.
    let monitor = render("deploy/kubernetes/monitoring");
    let sm = named(&monitor, "ServiceMonitor", "wick");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    let cascade = render("deploy/kubernetes/overlays/cascade");
    let selector = sm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("selector");
    let services: Vec<&Value> = kind(&cascade, "Service").collect();
    assert_eq!(services.len(), 2);
    for svc in services {
        for (k, v) in selector {
            assert_eq!(&svc["metadata"]["labels"][k], v, "{}", svc["metadata"]["name"]);
        }
        assert_eq!(
            svc["spec"]["ports"][0]["name"],
            sm["spec"]["endpoints"][0]["port"]
        );
    }
}

/// Starts the real binary with each CPU Deployment's ConfigMap TOML (the port is a free one, by
/// flag, since 8080 may be taken here; the test above ties the port to the manifests) and asks
/// for every probe path and the metrics path.
#[test]
fn the_configmap_config_serves_the_probe_paths() {
    let mut started = 0;
    for dir in OVERLAYS {
        let objects = render(dir);
        for inst in instances(dir, &objects) {
            if inst.config.engine.device != "cpu" {
                continue; // GPU configs: checked by `config check` only, no GPU here.
            }
            let c = &inst.deployment["spec"]["template"]["spec"]["containers"][0];
            let toml = inst.toml.to_string_lossy().into_owned();
            let server = Server::start(&["--config", &toml]);
            for which in ["startupProbe", "livenessProbe", "readinessProbe"] {
                let (path, _) = probe(c, which);
                let status = http_get(server.port, &path).map(|r| r.0);
                assert_eq!(status, Some(200), "{dir}/{}: {which} {path}", inst.name);
            }
            assert_eq!(http_get(server.port, "/metrics").map(|r| r.0), Some(200));
            started += 1;
        }
    }
    // base, cpu, and the cascade's front.
    assert_eq!(started, 3);
}

fn config_check(files: &[&Path]) -> (bool, String) {
    let out = Command::new(wick_binary())
        .args(["config", "check"])
        .args(files)
        .output()
        .expect("wick runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn config_check_passes_every_shipped_config_and_locates_errors() {
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in ["config/examples", "deploy/docker"] {
        for entry in std::fs::read_dir(root().join(dir)).expect("dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                files.push(path);
            }
        }
    }
    assert_eq!(files.len(), 7, "{files:?}");
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let (ok, text) = config_check(&refs);
    assert!(ok, "{text}");
    assert_eq!(text.matches(": ok").count(), 7, "{text}");

    let bad = std::env::temp_dir().join(format!("wick-bad-{}.toml", std::process::id()));
    std::fs::write(&bad, "[server]\nport = 8080\n\n[engine]\nkv_cache_mb = 512\n").expect("write");
    let (ok, text) = config_check(&[&bad]);
    assert!(!ok, "{text}");
    let want = format!(
        "{}:5:1: engine.kv_cache_mb: unknown key `kv_cache_mb` (did you mean `kv_cache_mib`?)",
        bad.display()
    );
    assert!(text.contains(&want), "{text}");
}
