//! The deployment files: every Kubernetes manifest parses and holds together
//! (names, ports, probes, grace period against the config it mounts, which
//! must load with bgsched's own loader), and the systemd unit and the
//! Dockerfile keep the settings bgsched's shutdown and build depend on.

mod common;

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// The port the Deployment serves /metrics, /healthz and /readyz on.
const HTTP_PORT: u64 = 9187;
/// Time beyond shutdown_grace + kill_grace to record outcomes and exit.
const STOP_MARGIN: Duration = Duration::from_secs(5);

fn manifests() -> Vec<(PathBuf, Value)> {
    let dir = Path::new(ROOT).join("deploy/kubernetes");
    let mut paths: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no manifests in {}", dir.display());
    let mut docs = Vec::new();
    for path in paths {
        let text = fs::read_to_string(&path).unwrap();
        for doc in serde_norway::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: not valid YAML: {e}", path.display()));
            if !value.is_null() {
                docs.push((path.clone(), value));
            }
        }
    }
    docs
}

/// The one object of `kind` named `name`.
fn object<'a>(docs: &'a [(PathBuf, Value)], kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = docs
        .iter()
        .map(|(_, v)| v)
        .filter(|v| v["kind"] == kind && v["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "want exactly one {kind} {name}");
    found[0]
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"))
}

fn env_of<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .and_then(|env| env.iter().find(|e| e["name"] == name))
        .unwrap_or_else(|| panic!("container has no env {name}: {container}"))
}

/// A probe's or service's port, by number or by the container port's name.
fn port_number(container: &Value, port: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = str_of(port, "port");
    container["ports"]
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["name"] == name))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {name}: {container}"))
}

/// Whether `labels` has every entry of `selector`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_object().expect("selector is a map");
    !selector.is_empty() && selector.iter().all(|(k, v)| labels[k] == *v)
}

fn duration_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The config the Deployment mounts, loaded like bgsched loads it.
fn mounted_config(docs: &[(PathBuf, Value)]) -> bgsched::config::Config {
    let cm = object(docs, "ConfigMap", "bgsched-jobs");
    let text = str_of(&cm["data"]["jobs.toml"], "ConfigMap data jobs.toml");
    bgsched::config::load_str(Path::new("jobs.toml"), text.as_bytes())
        .unwrap_or_else(|e| panic!("the ConfigMap's jobs.toml does not load:\n{e}"))
}

#[test]
fn every_manifest_is_a_named_kubernetes_object() {
    let docs = manifests();
    for (path, doc) in &docs {
        for field in ["apiVersion", "kind"] {
            assert!(
                doc[field].is_string(),
                "{}: no {field}: {doc}",
                path.display()
            );
        }
        assert!(
            doc["metadata"]["name"].is_string(),
            "{}: unnamed {}",
            path.display(),
            doc["kind"]
        );
    }
    let kinds: Vec<&str> = docs
        .iter()
        .map(|(_, d)| str_of(&d["kind"], "kind"))
        .collect();
    for kind in ["Deployment", "ConfigMap", "StatefulSet", "Service"] {
        assert!(kinds.contains(&kind), "no {kind} among {kinds:?}");
    }
}

#[test]
fn the_deployment_runs_three_probed_replicas_with_enough_grace() {
    let docs = manifests();
    let deploy = object(&docs, "Deployment", "bgsched");
    let spec = &deploy["spec"];
    assert_eq!(spec["replicas"], 3);
    let pod = &spec["template"];
    assert!(
        selects(&spec["selector"]["matchLabels"], &pod["metadata"]["labels"]),
        "the selector does not select the pods"
    );
    let containers = pod["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];

    // The probes hit /healthz and /readyz on the port bgsched serves.
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(port_number(c, &get["port"]), HTTP_PORT, "{probe}");
    }
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| str_of(a, "arg"))
        .collect();
    // The image's entrypoint is the binary: the args name the command.
    assert_eq!(args.first(), Some(&"run"), "{args:?}");
    let http = args
        .iter()
        .position(|a| *a == "--http")
        .and_then(|i| args.get(i + 1))
        .unwrap_or_else(|| panic!("no --http in {args:?}"));
    assert_eq!(
        *http,
        format!("0.0.0.0:{HTTP_PORT}"),
        "bgsched listens where the probes look"
    );

    // Instance id from the pod name; etcd from the environment.
    assert_eq!(
        env_of(c, "BGSCHED_INSTANCE_ID")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    let endpoints = str_of(&env_of(c, "BGSCHED_ETCD_ENDPOINTS")["value"], "endpoints");
    let etcd_svc = object(&docs, "Service", "bgsched-etcd");
    let client_port = etcd_svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "client")
        .and_then(|p| p["port"].as_u64())
        .expect("etcd client port");
    assert_eq!(endpoints, format!("http://bgsched-etcd:{client_port}"));

    // The config path is the ConfigMap's key inside its mount.
    let config_path = str_of(&env_of(c, "BGSCHED_CONFIG")["value"], "BGSCHED_CONFIG");
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "jobs")
        .expect("jobs mount");
    assert!(
        mount.get("subPath").is_none(),
        "a subPath mount misses ConfigMap updates"
    );
    let volume = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "jobs")
        .expect("jobs volume");
    assert_eq!(volume["configMap"]["name"], "bgsched-jobs");
    assert_eq!(
        config_path,
        format!("{}/jobs.toml", str_of(&mount["mountPath"], "mountPath"))
    );

    // Grace: the drain of the config it runs must fit before the kubelet's SIGKILL.
    let config = mounted_config(&docs);
    let kill_grace = config.jobs.values().map(|j| j.kill_grace).max().unwrap();
    let needed = config.scheduler.shutdown_grace + kill_grace + STOP_MARGIN;
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace >= duration_secs(needed),
        "terminationGracePeriodSeconds {grace} < shutdown_grace {:?} + kill_grace {kill_grace:?} + {STOP_MARGIN:?}",
        config.scheduler.shutdown_grace
    );

    // Non-root, as the image's user.
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    let uid = pod["spec"]["securityContext"]["runAsUser"]
        .as_u64()
        .unwrap();
    let dockerfile = fs::read_to_string(Path::new(ROOT).join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(&format!("USER {uid}:")),
        "the Dockerfile's user is not uid {uid}"
    );
}

#[test]
fn the_configmap_config_loads_and_has_jobs() {
    let config = mounted_config(&manifests());
    assert!(!config.jobs.is_empty());
    // Cluster mode comes from BGSCHED_ETCD_ENDPOINTS, so a [cluster] table
    // would have to repeat (and be overridden by) it.
    assert!(config.cluster.is_none());
}

#[test]
fn services_select_pods_and_the_etcd_statefulset_is_governed() {
    let docs = manifests();
    let pod_labels: Vec<&Value> = docs
        .iter()
        .filter(|(_, d)| d["kind"] == "Deployment" || d["kind"] == "StatefulSet")
        .map(|(_, d)| &d["spec"]["template"]["metadata"]["labels"])
        .collect();
    for (path, svc) in docs.iter().filter(|(_, d)| d["kind"] == "Service") {
        assert!(
            pod_labels
                .iter()
                .any(|l| selects(&svc["spec"]["selector"], l)),
            "{}: service {} selects no pods",
            path.display(),
            svc["metadata"]["name"]
        );
    }
    let sts = object(&docs, "StatefulSet", "bgsched-etcd");
    let governing = str_of(&sts["spec"]["serviceName"], "serviceName");
    let svc = object(&docs, "Service", governing);
    assert_eq!(
        svc["spec"]["clusterIP"], "None",
        "a StatefulSet's service is headless"
    );
    assert!(selects(
        &sts["spec"]["selector"]["matchLabels"],
        &sts["spec"]["template"]["metadata"]["labels"]
    ));
}

/// `key=value` lines of a unit file (the last one wins, as in systemd).
fn unit_settings(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn the_systemd_unit_lets_bgsched_drain_its_jobs() {
    let text = fs::read_to_string(Path::new(ROOT).join("deploy/systemd/bgsched.service")).unwrap();
    let unit = unit_settings(&text);
    // Only bgsched gets SIGTERM; it stops its jobs itself (README "Signals").
    assert_eq!(unit.get("KillMode").map(String::as_str), Some("mixed"));
    assert!(unit["ExecStart"].contains("bgsched run"), "{unit:?}");
    assert_ne!(unit.get("User").map(String::as_str), Some("root"));
    // The defaults, as bgsched's own loader fills them in.
    let config = bgsched::config::load_str(
        Path::new("jobs.toml"),
        b"[jobs.x]\nschedule = \"@daily\"\ncommand = [\"true\"]\n",
    )
    .unwrap();
    let needed = config.scheduler.shutdown_grace + config.jobs["x"].kill_grace + STOP_MARGIN;
    let timeout = humantime::parse_duration(&unit["TimeoutStopSec"])
        .unwrap_or_else(|e| panic!("TimeoutStopSec: {e}"));
    assert!(timeout >= needed, "TimeoutStopSec {timeout:?} < {needed:?}");
}

#[test]
fn the_dockerfile_builds_with_the_vendored_protoc_and_runs_as_non_root() {
    let text = fs::read_to_string(Path::new(ROOT).join("Dockerfile")).unwrap();
    // etcd-client's build finds protoc through .cargo/config.toml -> scripts/protoc.
    for needed in [
        "COPY .cargo",
        "scripts/protoc",
        "Cargo.lock",
        "--locked",
        "build.rs",
    ] {
        assert!(text.contains(needed), "the Dockerfile lacks {needed:?}");
    }
    let config = fs::read_to_string(Path::new(ROOT).join(".cargo/config.toml")).unwrap();
    assert!(
        config.contains("scripts/protoc"),
        "PROTOC is no longer scripts/protoc"
    );
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "a builder and a runtime stage: {froms:?}");
    assert!(froms[1].contains("-slim"), "{froms:?}");
    let user = text
        .lines()
        .rfind(|l| l.starts_with("USER "))
        .expect("a USER line");
    assert!(!user.contains("root") && !user.contains(" 0"), "{user}");
    // The build context must leave the target directory out.
    let ignore = fs::read_to_string(Path::new(ROOT).join(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "*"), "{ignore}");
    assert!(!ignore.contains("!target"), "{ignore}");
}

/// The runtime stage's instructions: (keyword, arguments), continuation
/// lines joined, comments dropped.
fn dockerfile_instructions() -> Vec<(String, String)> {
    let text = fs::read_to_string(Path::new(ROOT).join("Dockerfile")).unwrap();
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                let (keyword, rest) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((keyword.to_uppercase(), rest.trim().to_string()));
                current.clear();
            }
        }
    }
    let runtime = out.iter().rposition(|(k, _)| k == "FROM").expect("FROM");
    out.split_off(runtime)
}

fn json_array(what: &str, args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("{what} is not exec form ({e}): {args}"))
}

fn only<'a>(instructions: &'a [(String, String)], keyword: &str) -> &'a str {
    let found: Vec<&str> = instructions
        .iter()
        .filter(|(k, _)| k == keyword)
        .map(|(_, a)| a.as_str())
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {keyword} in the runtime stage: {found:?}"
    );
    found[0]
}

/// `docker run IMAGE check` works (the entrypoint is the binary and `run`
/// only the default command), the state directory is a volume, and the
/// HEALTHCHECK, run here with what the image has (bash), passes against a
/// live scheduler and fails once it is gone.
#[test]
fn the_image_runs_any_command_keeps_state_in_a_volume_and_checks_health() {
    let ins = dockerfile_instructions();
    let entrypoint = json_array("ENTRYPOINT", only(&ins, "ENTRYPOINT"));
    assert_eq!(
        entrypoint.last().map(String::as_str),
        Some("/usr/local/bin/bgsched"),
        "{entrypoint:?}"
    );
    assert_eq!(json_array("CMD", only(&ins, "CMD")), ["run"]);

    let env = only(&ins, "ENV");
    let value_of = |name: &str| {
        env.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("ENV lacks {name}: {env}"))
            .to_string()
    };
    let state_dir = value_of("BGSCHED_STATE_DIR");
    assert_eq!(json_array("VOLUME", only(&ins, "VOLUME")), [state_dir]);
    let http = value_of("BGSCHED_HTTP");
    assert_eq!(http, format!("0.0.0.0:{HTTP_PORT}"));
    assert!(
        ins.iter()
            .any(|(k, a)| k == "EXPOSE" && *a == HTTP_PORT.to_string()),
        "EXPOSE {HTTP_PORT}"
    );

    let health = only(&ins, "HEALTHCHECK");
    let (options, cmd) = health.split_once("CMD ").expect("HEALTHCHECK ... CMD");
    assert!(options.contains("--timeout="), "{health}");
    let probe = json_array("HEALTHCHECK CMD", cmd.trim());
    assert_eq!(
        probe[0], "bash",
        "the slim image has bash, not curl: {probe:?}"
    );

    let env = common::Env::new().config("[jobs.a]\nschedule = \"@yearly\"\ncommand = [\"true\"]\n");
    let mut run = env.spawn_run_with("a", &["--http", "127.0.0.1:0"]);
    let port = run.http_port();
    let check = || {
        std::process::Command::new(&probe[0])
            .args(&probe[1..])
            .env("BGSCHED_HTTP", format!("0.0.0.0:{port}"))
            .output()
            .expect("run the health check")
    };
    let healthy = check();
    assert!(healthy.status.success(), "healthy scheduler: {healthy:?}");
    run.kill9();
    let gone = check();
    assert!(!gone.status.success(), "no scheduler: {gone:?}");
}
