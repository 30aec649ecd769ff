//! The deploy files of `deploy/`, checked by the tools their ecosystems trust,
//! all offline: hadolint for the Dockerfile, the compose-spec schema
//! (check-jsonschema) for compose, `nats-server -t` for the NATS config,
//! kustomize (kubectl) and the Kubernetes schemas (kubernetes-validate) for
//! the manifests. Every tool is also handed a broken copy and must reject it,
//! so a validator that accepts anything fails the suite. The settings of each
//! process then go through the real binary's `leadger config check`, and
//! every `LEADGER_*` name must be one of its flags.
//!
//! Nothing here builds the image or starts a container: the development
//! machines have no Docker engine and no Kubernetes cluster.
//!
//! The tool paths come from `tests/install-tools.sh` (sourced by
//! `tests/run.sh`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use leadger_tests::leadger_binary;
use serde_json::Value;

/// The metrics `--metrics-listen` serves (crates/leadger/src/metrics.rs);
/// the dashboard may chart these and nothing else.
const METRICS: &[&str] = &[
    "leadger_commands_total",
    "leadger_command_duration_seconds",
    "leadger_commit_batch_commands",
    "leadger_relay_lag_events",
    "leadger_relay_lag_seconds",
    "leadger_projector_lag_events",
    "leadger_sla_breaches_open",
    "leadger_funnel_leads",
    "leadger_nats_connected",
    "leadger_db_pool_connections",
    "leadger_events_appended_total",
];

/// Histograms, which Prometheus exposes as `_bucket`, `_sum` and `_count`.
const HISTOGRAMS: &[&str] = &["leadger_command_duration_seconds", "leadger_commit_batch_commands"];

/// The processes of a deployment, as `leadger` subcommands.
const PROCESSES: &[&str] = &["serve", "relay", "project"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ lives in the repository").to_path_buf()
}

fn deploy(path: &str) -> PathBuf {
    repo().join("deploy").join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
}

fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap_or_else(|error| panic!("create {}: {error}", parent.display()));
    }
    std::fs::write(path, text).unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
}

/// A test tool that `tests/install-tools.sh` installed and exported as `var`.
fn tool(var: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{var} is not set: run the suite with `bash tests/run.sh`, or `source tests/install-tools.sh` first")
    });
    assert!(path.is_file(), "{var}={} does not exist: run tests/install-tools.sh", path.display());
    path
}

/// What a tool said, and whether it exited 0.
struct Ran {
    ok: bool,
    /// Standard output alone: what the tool produced.
    stdout: String,
    /// The command, its standard output and standard error: for messages.
    output: String,
}

fn run(command: &mut Command) -> Ran {
    let shown = format!("{command:?}");
    let output = command.output().unwrap_or_else(|error| panic!("run {shown}: {error}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let text = format!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    Ran { ok: output.status.success(), stdout, output: format!("{shown}\n{text}") }
}

#[track_caller]
fn assert_accepted(ran: &Ran, what: &str) {
    assert!(ran.ok, "{what} was rejected:\n{}", ran.output);
}

#[track_caller]
fn assert_rejected(ran: &Ran, what: &str, expected: &str) {
    assert!(!ran.ok, "{what} was accepted, so the tool does not really check:\n{}", ran.output);
    assert!(ran.output.contains(expected), "{what}: expected {expected:?} in the output:\n{}", ran.output);
}

/// Every YAML document of `path`, as JSON (PyYAML: anchors and merge keys
/// resolved as compose and kubectl resolve them).
fn yaml_documents(path: &Path) -> Vec<Value> {
    const TO_JSON: &str = "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";
    let ran = run(Command::new(tool("LEADGER_TEST_PYTHON")).args(["-c", TO_JSON]).arg(path));
    assert_accepted(&ran, &format!("YAML {}", path.display()));
    let documents: Vec<Value> = serde_json::from_str(&ran.stdout).expect("PyYAML prints JSON");
    documents.into_iter().filter(|document| !document.is_null()).collect()
}

fn yaml(path: &Path) -> Value {
    yaml_documents(path).into_iter().next().unwrap_or_else(|| panic!("{} is empty", path.display()))
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().map(|items| items.iter().map(text_of).collect()).unwrap_or_default()
}

/// A `NAME: value` mapping (compose environment, ConfigMap data) as strings.
fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|map| map.iter().map(|(key, value)| (key.clone(), text_of(value))).collect())
        .unwrap_or_default()
}

/// `leadger config check PROCESS` with exactly `env` as its environment.
fn config_check(process: &str, env: &BTreeMap<String, String>) -> Ran {
    run(Command::new(leadger_binary!()).args(["config", "check", process]).env_clear().envs(env))
}

/// The `LEADGER_*` variables the binary reads: `env = "LEADGER_…"` on its
/// flags.
fn known_env_vars() -> BTreeSet<String> {
    let source = read(&repo().join("crates/leadger/src/lib.rs"));
    let mut known: BTreeSet<String> = source
        .split("env = \"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .filter(|name| name.starts_with("LEADGER_"))
        .map(str::to_string)
        .collect();
    // Being added with this change to serve, relay and project.
    known.insert("LEADGER_METRICS_LISTEN".into());
    known
}

/// Every `LEADGER_NAME` token in `text`.
fn env_var_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("LEADGER_") {
        let tail = &rest[start..];
        let end =
            tail.find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')).unwrap_or(tail.len());
        let name = tail[..end].trim_end_matches('_');
        if name.len() > "LEADGER".len() {
            names.insert(name.to_string());
        }
        rest = &tail[end.max(1)..];
    }
    names
}

/// The names of `text` that are no flag of the binary.
fn unknown_env_vars(text: &str, known: &BTreeSet<String>) -> Vec<String> {
    env_var_names(text).into_iter().filter(|name| !known.contains(name)).collect()
}

// --- Dockerfile -------------------------------------------------------------

#[test]
fn dockerfile_passes_hadolint() {
    let hadolint = tool("LEADGER_HADOLINT");
    let dockerfile = deploy("Dockerfile");
    assert_accepted(&run(Command::new(&hadolint).arg("--no-color").arg(&dockerfile)), "deploy/Dockerfile (hadolint)");

    let text = read(&dockerfile);
    let broken =
        text.replace("FROM debian:bookworm-slim", "FROM debian:latest").replace("USER 10001:10001", "USER root");
    assert_ne!(broken, text, "the broken copy differs");
    let dir = tempfile::tempdir().expect("temp dir");
    write(&dir.path().join("Dockerfile"), &broken);
    let ran = run(Command::new(&hadolint).arg("--no-color").arg(dir.path().join("Dockerfile")));
    assert_rejected(&ran, "a Dockerfile on debian:latest running as root", "DL3007");
    assert!(ran.output.contains("DL3002"), "the root user is reported:\n{}", ran.output);

    // What the compose file and the manifests rely on.
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    for expected in [r#"ENTRYPOINT ["leadger"]"#, r#"CMD ["serve"]"#, "EXPOSE 50051 9090", "USER 10001:10001"] {
        assert!(lines.contains(&expected), "deploy/Dockerfile has `{expected}`");
    }
    assert!(repo().join(".dockerignore").is_file(), "the build context has a .dockerignore");
}

// --- Docker Compose ---------------------------------------------------------

fn compose() -> Value {
    yaml(&deploy("compose/compose.yaml"))
}

fn services(compose: &Value) -> &serde_json::Map<String, Value> {
    compose["services"].as_object().expect("compose has services")
}

/// The leadger process a compose service runs, if it runs one.
fn process_of(service: &Value) -> Option<String> {
    let command = strings(&service["command"]);
    let process = command.first()?;
    PROCESSES.contains(&process.as_str()).then(|| process.clone())
}

/// A service's short-syntax volumes as (source, target).
fn mounts(service: &Value) -> Vec<(String, String)> {
    strings(&service["volumes"])
        .iter()
        .map(|volume| {
            let mut parts = volume.split(':');
            let source = parts.next().unwrap_or_default().to_string();
            let target = parts.next().unwrap_or_else(|| panic!("volume {volume:?} has a target")).to_string();
            (source, target)
        })
        .collect()
}

/// Where the container paths of `service` are on this machine: bind mounts
/// in the repository, named volumes in `volumes`.
fn host_paths(service: &Value, volumes: &Path) -> Vec<(String, PathBuf)> {
    mounts(service)
        .into_iter()
        .map(|(source, target)| {
            if source.starts_with('.') {
                return (target, deploy("compose").join(&source));
            }
            let host = volumes.join(&source);
            std::fs::create_dir_all(&host).unwrap_or_else(|error| panic!("create {}: {error}", host.display()));
            (target, host)
        })
        .collect()
}

/// `text` (a setting, or a shell command) with each word that is a path
/// under a mount's target moved to the mount's host path.
fn on_host(text: &str, mounts: &[(String, PathBuf)]) -> String {
    let word_on_host = |word: &str| {
        mounts
            .iter()
            .filter_map(|(target, host)| {
                let rest = word.strip_prefix(target.as_str())?;
                (rest.is_empty() || rest.starts_with('/')).then(|| (target.len(), format!("{}{rest}", host.display())))
            })
            .max()
            .map_or_else(|| word.to_string(), |(_, moved)| moved)
    };
    text.split(' ').map(word_on_host).collect::<Vec<_>>().join(" ")
}

#[test]
fn compose_file_follows_the_compose_spec() {
    let check = tool("LEADGER_CHECK_JSONSCHEMA");
    let file = deploy("compose/compose.yaml");
    let ran = run(Command::new(&check).args(["--builtin-schema", "vendor.compose-spec"]).arg(&file));
    assert_accepted(&ran, "deploy/compose/compose.yaml (compose-spec)");

    let broken = read(&file).replace("service_completed_successfully", "service_finished");
    let dir = tempfile::tempdir().expect("temp dir");
    write(&dir.path().join("compose.yaml"), &broken);
    let ran = run(Command::new(&check)
        .args(["--builtin-schema", "vendor.compose-spec"])
        .arg(dir.path().join("compose.yaml")));
    assert_rejected(&ran, "a compose file with an unknown depends_on condition", "service_finished");
}

#[test]
fn compose_wires_the_production_topology() {
    let compose = compose();
    let services = services(&compose);
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    let expected = [
        "postgres",
        "nats-1",
        "nats-2",
        "nats-3",
        "kek-init",
        "serve-1",
        "serve-2",
        "relay",
        "project",
        "prometheus",
        "grafana",
    ];
    assert_eq!(names, expected.into_iter().collect(), "the services of the compose stack");

    for (name, service) in services {
        for (target, dependency) in service["depends_on"].as_object().into_iter().flatten() {
            let target_service = &services[target];
            match dependency["condition"].as_str() {
                Some("service_healthy") => {
                    assert!(
                        target_service["healthcheck"].is_object(),
                        "{name} waits for {target} to be healthy: it needs a healthcheck"
                    )
                }
                Some("service_completed_successfully") => {
                    assert_eq!(target_service["restart"], "no", "{name} waits for the one-shot {target}")
                }
                other => panic!("{name} depends on {target} with condition {other:?}"),
            }
        }
        for (source, _) in mounts(service) {
            if source.starts_with('.') {
                assert!(deploy("compose").join(&source).exists(), "{name} mounts {source}, which exists");
            } else {
                assert!(compose["volumes"].get(&source).is_some(), "{name} mounts the declared volume {source}");
            }
        }
        let observability = strings(&service["profiles"]) == ["observability"];
        assert_eq!(observability, matches!(name.as_str(), "prometheus" | "grafana"), "{name}'s profile");
        if service["image"] == "leadger:local" {
            let context = deploy("compose").join(text_of(&service["build"]["context"]));
            assert!(
                context.join(text_of(&service["build"]["dockerfile"])).is_file(),
                "{name} builds deploy/Dockerfile"
            );
        }
    }

    let nats: Vec<&str> = names.iter().copied().filter(|name| name.starts_with("nats-")).collect();
    for name in ["serve-1", "serve-2"] {
        let env = string_map(&services[name]["environment"]);
        assert_eq!(
            env.get("LEADGER_NO_PROJECTOR").map(String::as_str),
            Some("true"),
            "{name}: the project service projects"
        );
        assert!(!env.contains_key("LEADGER_NATS_URL"), "{name}: the relay service publishes, not the servers");
        assert!(
            strings(&services[name]["volumes"]).contains(&"kek:/etc/leadger/kek:ro".to_string()),
            "{name} reads the shared KEK"
        );
    }
    let relay = string_map(&services["relay"]["environment"]);
    let urls: Vec<&str> = relay["LEADGER_NATS_URL"].split(',').collect();
    assert_eq!(
        urls,
        nats.iter().map(|name| format!("nats://{name}:4222")).collect::<Vec<_>>(),
        "the relay knows every node"
    );
    assert_eq!(relay["LEADGER_NATS_REPLICAS"], nats.len().to_string(), "one stream replica per node");

    // Prometheus scrapes exactly the processes that serve metrics.
    let scraping: BTreeSet<String> = services
        .iter()
        .filter_map(|(name, service)| {
            let listen = string_map(&service["environment"]).remove("LEADGER_METRICS_LISTEN")?;
            Some(format!("{name}:{}", listen.rsplit(':').next().unwrap_or_default()))
        })
        .collect();
    let prometheus = yaml(&deploy("compose/prometheus/prometheus.yml"));
    let scraped: BTreeSet<String> = prometheus["scrape_configs"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|job| job["static_configs"].as_array().into_iter().flatten())
        .flat_map(|config| strings(&config["targets"]))
        .collect();
    assert_eq!(scraped, scraping, "prometheus.yml targets the leadger processes");

    // Grafana loads the dashboard from where compose mounts deploy/grafana.
    let provider = yaml(&deploy("compose/grafana/provisioning/dashboards/leadger.yaml"));
    let path = text_of(&provider["providers"][0]["options"]["path"]);
    assert!(
        mounts(&services["grafana"]).contains(&("../grafana".into(), path)),
        "grafana mounts deploy/grafana at the provider's path"
    );
}

#[test]
fn nats_servers_accept_the_cluster_config() {
    let nats_server = tool("LEADGER_TEST_NATS_SERVER");
    let compose = compose();
    let volumes = tempfile::tempdir().expect("temp dir");
    let nodes: Vec<(&String, &Value)> =
        services(&compose).iter().filter(|(name, _)| name.starts_with("nats-")).collect();
    assert_eq!(nodes.len(), 3, "a cluster of three");
    for (name, service) in &nodes {
        let command = strings(&service["command"]);
        let config = command.last().expect("nats-server --config FILE");
        let config = on_host(config, &host_paths(service, volumes.path()));
        let env = string_map(&service["environment"]);
        let ran = run(Command::new(&nats_server).args(["-t", "-c", &config]).env_clear().envs(&env));
        assert_accepted(&ran, &format!("the NATS config of {name}"));
        assert!(read(Path::new(&config)).contains(&format!("nats-route://{name}:6222")), "every node routes to {name}");
    }

    let broken = read(&deploy("compose/nats/cluster.conf")).replace("jetstream {", "jetstrem {");
    let dir = tempfile::tempdir().expect("temp dir");
    write(&dir.path().join("cluster.conf"), &broken);
    let ran = run(Command::new(&nats_server)
        .arg("-t")
        .arg("-c")
        .arg(dir.path().join("cluster.conf"))
        .env("SERVER_NAME", "n"));
    assert_rejected(&ran, "a NATS config with a misspelled block", "jetstrem");
}

#[test]
fn kek_init_creates_the_key_once_and_keeps_it() {
    let compose = compose();
    let init = &services(&compose)["kek-init"];
    assert_eq!(strings(&init["entrypoint"]), ["/bin/sh", "-c"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    std::os::unix::fs::symlink(leadger_binary!(), bin.join("leadger")).expect("leadger on PATH");
    let mounts = host_paths(init, &dir.path().join("volumes"));
    let script = on_host(&strings(&init["command"])[0], &mounts);
    let init_run =
        || run(Command::new("/bin/sh").args(["-c", &script]).env("PATH", format!("{}:/usr/bin:/bin", bin.display())));

    let kek = on_host("/etc/leadger/kek/leadger.kek", &mounts);
    assert_accepted(&init_run(), "the first kek-init");
    let key = read(Path::new(&kek));
    assert_eq!(key.trim().len(), 64, "a 32-byte key in hex");
    assert_accepted(&init_run(), "kek-init with the key already there");
    assert_eq!(read(Path::new(&kek)), key, "the second run keeps the key");
}

#[test]
fn compose_settings_pass_leadger_config_check() {
    let compose = compose();
    let services = services(&compose);
    let volumes = tempfile::tempdir().expect("temp dir");
    let kek = volumes.path().join("kek/leadger.kek");
    write(&kek, &format!("{}\n", "ab".repeat(32)));
    let mut checked = BTreeSet::new();
    for (name, service) in services {
        let Some(process) = process_of(service) else { continue };
        let mounts = host_paths(service, volumes.path());
        let env: BTreeMap<String, String> = string_map(&service["environment"])
            .into_iter()
            .map(|(key, value)| (key, on_host(&value, &mounts)))
            .collect();
        let ran = config_check(&process, &env);
        assert_accepted(&ran, &format!("the settings of {name} (`leadger config check {process}`)"));
        assert!(ran.output.contains(&format!("leadger {process}: configuration is valid")), "{}", ran.output);
        checked.insert(process);
    }
    assert_eq!(checked, PROCESSES.iter().map(|p| p.to_string()).collect(), "compose runs every process");

    let mut broken = string_map(&services["relay"]["environment"]);
    broken.insert("LEADGER_NATS_REPLICAS".into(), "three".into());
    assert_rejected(&config_check("relay", &broken), "LEADGER_NATS_REPLICAS=three", "three");
}

#[test]
fn example_credentials_are_the_documented_demo_token() {
    let text = read(&deploy("compose/credentials/leadger.credentials"));
    let credentials = leadger_grpc::Credentials::parse(&text).expect("the example credentials file parses");
    assert_eq!(credentials.entries().count(), 1, "one demo caller");
    let token = "compose-demo-token";
    assert!(text.contains(&format!("Bearer {token}")), "the file says which token it lists");
    let digest: String = leadger_grpc::auth::token_digest(token).iter().map(|byte| format!("{byte:02x}")).collect();
    assert!(text.contains(&format!("sha256:{digest}")), "the listed hash is the documented token's");
}

// --- Kubernetes -------------------------------------------------------------

/// `kubectl kustomize DIR`: the manifests `kubectl apply -k` would apply.
fn kustomize(dir: &Path) -> Ran {
    run(Command::new(tool("LEADGER_KUBECTL")).arg("kustomize").arg(dir))
}

fn rendered_k8s() -> Vec<Value> {
    let ran = kustomize(&deploy("k8s"));
    assert_accepted(&ran, "deploy/k8s (kustomize)");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("rendered.yaml");
    write(&file, &ran.stdout);
    yaml_documents(&file)
}

fn find<'a>(documents: &'a [Value], kind: &str, name: &str) -> &'a Value {
    documents
        .iter()
        .find(|document| document["kind"] == kind && document["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("deploy/k8s renders {kind} {name}"))
}

fn deployments(documents: &[Value]) -> impl Iterator<Item = &Value> {
    documents.iter().filter(|document| document["kind"] == "Deployment")
}

/// The environment of a Deployment's first container, from its ConfigMaps
/// and Secrets (`envFrom`) and `env`.
fn container_env(documents: &[Value], deployment: &Value) -> BTreeMap<String, String> {
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let mut env = BTreeMap::new();
    for source in container["envFrom"].as_array().into_iter().flatten() {
        if let Some(name) = source["configMapRef"]["name"].as_str() {
            env.extend(string_map(&find(documents, "ConfigMap", name)["data"]));
        }
        if let Some(name) = source["secretRef"]["name"].as_str() {
            env.extend(string_map(&find(documents, "Secret", name)["stringData"]));
        }
    }
    for variable in container["env"].as_array().into_iter().flatten() {
        env.insert(text_of(&variable["name"]), text_of(&variable["value"]));
    }
    env
}

/// Writes the Secret volumes of `deployment` under `root`; returns each
/// mount path with its directory there.
fn secret_files(documents: &[Value], deployment: &Value, root: &Path) -> Vec<(String, PathBuf)> {
    let pod = &deployment["spec"]["template"]["spec"];
    let mut mounts = Vec::new();
    for mount in pod["containers"][0]["volumeMounts"].as_array().into_iter().flatten() {
        let volume = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|volume| volume["name"] == mount["name"])
            .expect("every mount has a volume");
        let Some(secret) = volume["secret"]["secretName"].as_str() else { continue };
        let dir = root.join(secret);
        for (key, value) in string_map(&find(documents, "Secret", secret)["stringData"]) {
            write(&dir.join(key), &value);
        }
        mounts.push((text_of(&mount["mountPath"]), dir));
    }
    mounts
}

#[test]
fn kustomization_lists_files_that_exist() {
    let kustomization = yaml(&deploy("k8s/kustomization.yaml"));
    let resources = strings(&kustomization["resources"]);
    assert!(!resources.is_empty(), "the kustomization has resources");
    for resource in &resources {
        assert!(deploy("k8s").join(resource).is_file(), "deploy/k8s/{resource} is listed and exists");
    }
    for generator in kustomization["configMapGenerator"].as_array().into_iter().flatten() {
        for file in strings(&generator["envs"]) {
            assert!(deploy("k8s").join(&file).is_file(), "deploy/k8s/{file} is listed and exists");
        }
    }
    // And no manifest lies there forgotten.
    for entry in std::fs::read_dir(deploy("k8s")).expect("list deploy/k8s") {
        let name = entry.expect("dir entry").file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            assert!(resources.contains(&name), "deploy/k8s/{name} is listed in the kustomization's resources");
        }
    }
}

#[test]
fn k8s_manifests_render_and_validate() {
    let validate = tool("LEADGER_KUBERNETES_VALIDATE");
    let ran = kustomize(&deploy("k8s"));
    assert_accepted(&ran, "deploy/k8s (kustomize)");
    let dir = tempfile::tempdir().expect("temp dir");
    let rendered = dir.path().join("rendered.yaml");
    write(&rendered, &ran.stdout);
    let ran = run(Command::new(&validate).args(["--strict", "--quiet"]).arg(&rendered));
    assert_accepted(&ran, "the rendered manifests (kubernetes-validate --strict)");

    let broken = read(&rendered).replacen("livenessProbe:", "livenessProbes:", 1);
    write(&dir.path().join("broken.yaml"), &broken);
    let ran = run(Command::new(&validate).args(["--strict", "--quiet"]).arg(dir.path().join("broken.yaml")));
    assert_rejected(&ran, "a Deployment with a misspelled probe", "livenessProbes");

    // kustomize refuses a kustomization that lists a missing file.
    let copy = dir.path().join("k8s");
    for entry in walk(&deploy("k8s")) {
        let relative = entry.strip_prefix(deploy("k8s")).expect("under deploy/k8s");
        write(&copy.join(relative), &read(&entry));
    }
    let kustomization =
        read(&copy.join("kustomization.yaml")).replace("  - pdb.yaml\n", "  - pdb.yaml\n  - missing.yaml\n");
    write(&copy.join("kustomization.yaml"), &kustomization);
    assert_rejected(&kustomize(&copy), "a kustomization listing a missing file", "missing.yaml");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|error| panic!("list {}: {error}", dir.display())) {
        let path = entry.expect("dir entry").path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}

#[test]
fn k8s_runs_the_production_topology() {
    let documents = rendered_k8s();
    let serve = find(&documents, "Deployment", "leadger-serve");
    assert_eq!(serve["spec"]["replicas"], 2, "two API servers");
    let container = &serve["spec"]["template"]["spec"]["containers"][0];
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(container[probe]["grpc"]["port"], 50051, "serve's {probe} is the native gRPC health probe");
    }
    let ports: Vec<&Value> =
        container["ports"].as_array().into_iter().flatten().map(|port| &port["containerPort"]).collect();
    assert_eq!(ports, [50051, 9090], "gRPC and metrics");
    for name in ["leadger-relay", "leadger-project"] {
        let replicas = find(&documents, "Deployment", name)["spec"]["replicas"].as_u64().unwrap_or(0);
        assert!(replicas >= 1, "{name} runs (extra replicas stand by)");
    }

    for deployment in deployments(&documents) {
        let name = text_of(&deployment["metadata"]["name"]);
        let template = &deployment["spec"]["template"];
        let pod = &template["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name} runs as non-root");
        let annotations = &template["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/scrape"], "true", "{name} is scraped");
        assert_eq!(annotations["prometheus.io/port"], "9090", "{name} is scraped on the metrics port");
        for container in pod["containers"].as_array().into_iter().flatten() {
            let security = &container["securityContext"];
            assert_eq!(security["readOnlyRootFilesystem"], true, "{name}: read-only root");
            assert_eq!(security["allowPrivilegeEscalation"], false, "{name}: no privilege escalation");
            assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"], "{name}: no capabilities");
            for bound in ["requests", "limits"] {
                for resource in ["cpu", "memory"] {
                    assert!(container["resources"][bound][resource].is_string(), "{name} sets {bound}.{resource}");
                }
            }
            let process = strings(&container["args"]).first().cloned().unwrap_or_default();
            assert_eq!(format!("leadger-{process}"), name, "{name} runs `leadger {process}`");
        }
    }

    let serve_labels = serve["spec"]["template"]["metadata"]["labels"].as_object().expect("serve pod labels");
    let selects_serve = |selector: &Value| {
        let selector = selector.as_object().expect("a selector");
        !selector.is_empty() && selector.iter().all(|(key, value)| serve_labels.get(key) == Some(value))
    };
    let service = find(&documents, "Service", "leadger");
    assert!(selects_serve(&service["spec"]["selector"]), "the Service selects the serve pods");
    let service_ports: Vec<&Value> =
        service["spec"]["ports"].as_array().into_iter().flatten().map(|port| &port["port"]).collect();
    assert_eq!(service_ports, [50051, 9090], "the Service exposes gRPC and metrics");
    let pdb = find(&documents, "PodDisruptionBudget", "leadger-serve");
    assert!(selects_serve(&pdb["spec"]["selector"]["matchLabels"]), "the budget covers the serve pods");
    assert_eq!(pdb["spec"]["minAvailable"], 1);

    let serve_env = container_env(&documents, serve);
    assert_eq!(serve_env.get("LEADGER_NO_PROJECTOR").map(String::as_str), Some("true"), "leadger-project projects");
    assert!(!serve_env.contains_key("LEADGER_NATS_URL"), "leadger-relay publishes, not the servers");
    let relay_env = container_env(&documents, find(&documents, "Deployment", "leadger-relay"));
    assert_eq!(relay_env["LEADGER_NATS_URL"].split(',').count(), 3, "the relay knows the three NATS nodes");
    assert_eq!(relay_env["LEADGER_NATS_REPLICAS"], "3");
}

#[test]
fn k8s_settings_pass_leadger_config_check_once_the_placeholders_are_replaced() {
    let documents = rendered_k8s();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut checked = BTreeSet::new();
    for deployment in deployments(&documents) {
        let name = text_of(&deployment["metadata"]["name"]);
        let process = strings(&deployment["spec"]["template"]["spec"]["containers"][0]["args"]).remove(0);
        let mounts = secret_files(&documents, deployment, &dir.path().join(&name));
        let env: BTreeMap<String, String> = container_env(&documents, deployment)
            .into_iter()
            .map(|(key, value)| (key, on_host(&value, &mounts)))
            .collect();
        if process == "serve" {
            // The placeholders stop the server: a forgotten one cannot run.
            let kek = PathBuf::from(&env["LEADGER_KEK_FILE"]);
            assert_rejected(&config_check(&process, &env), "the placeholder KEK", "64 hex characters");
            write(&kek, &format!("{}\n", "cd".repeat(32)));
            assert_rejected(&config_check(&process, &env), "the placeholder credentials", "lists no credentials");
            let credentials = read(&deploy("compose/credentials/leadger.credentials"));
            write(Path::new(&env["LEADGER_CREDENTIALS_FILE"]), &credentials);
        }
        let ran = config_check(&process, &env);
        assert_accepted(&ran, &format!("the settings of {name} (`leadger config check {process}`)"));
        checked.insert(process);
    }
    assert_eq!(checked, PROCESSES.iter().map(|p| p.to_string()).collect(), "deploy/k8s runs every process");
}

// --- Settings and dashboard -------------------------------------------------

#[test]
fn leadger_variables_in_the_deploy_files_are_flags_of_the_binary() {
    let known = known_env_vars();
    for name in ["LEADGER_DATABASE_URL", "LEADGER_KEK_FILE", "LEADGER_NATS_URL", "LEADGER_NO_PROJECTOR"] {
        assert!(known.contains(name), "the flags of crates/leadger/src/lib.rs include {name}: {known:?}");
    }
    let mut used = BTreeSet::new();
    // deploy/local-cluster* belongs to the local cluster without containers.
    for file in walk(&repo().join("deploy")) {
        let relative = file.strip_prefix(repo().join("deploy")).expect("under deploy/").to_string_lossy().into_owned();
        if relative.starts_with("local-cluster") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        let unknown = unknown_env_vars(&text, &known);
        assert!(unknown.is_empty(), "deploy/{relative} names {unknown:?}, which no flag of `leadger` reads");
        used.extend(env_var_names(&text));
    }
    for name in ["LEADGER_DATABASE_URL", "LEADGER_METRICS_LISTEN", "LEADGER_NATS_REPLICAS", "LEADGER_CREDENTIALS_FILE"]
    {
        assert!(used.contains(name), "the deploy files set {name}: {used:?}");
    }
    assert_eq!(unknown_env_vars("LEADGER_LISTEN=x LEADGER_LISTEN_PORT=y", &known), ["LEADGER_LISTEN_PORT"]);
}

/// What is wrong with a dashboard: metrics it charts that leadger does not
/// serve, and metrics it leaves out.
fn dashboard_problems(dashboard: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut charted = BTreeSet::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten().filter(|panel| panel["type"] != "row") {
        let title = text_of(&panel["title"]);
        if panel["datasource"]["uid"] != "${datasource}" {
            problems.push(format!("{title:?} does not use the datasource variable"));
        }
        let exprs: Vec<String> =
            panel["targets"].as_array().into_iter().flatten().map(|target| text_of(&target["expr"])).collect();
        if exprs.is_empty() {
            problems.push(format!("{title:?} has no query"));
        }
        for name in exprs.iter().flat_map(|expr| metric_names(expr)) {
            let base = HISTOGRAMS
                .iter()
                .find(|histogram| {
                    ["_bucket", "_sum", "_count"].iter().any(|suffix| name == format!("{histogram}{suffix}"))
                })
                .map_or(name.as_str(), |histogram| histogram);
            if METRICS.contains(&base) {
                charted.insert(base.to_string());
            } else {
                problems.push(format!("{title:?} charts {name}, which leadger does not serve"));
            }
        }
    }
    for metric in METRICS.iter().filter(|metric| !charted.contains(**metric)) {
        problems.push(format!("no panel charts {metric}"));
    }
    problems
}

fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("leadger_") {
        let tail = &rest[start..];
        let end =
            tail.find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')).unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn grafana_dashboard_charts_the_leadger_metrics() {
    let dashboard: Value = serde_json::from_str(&read(&deploy("grafana/leadger.json"))).expect("the dashboard is JSON");
    let schema = dashboard["schemaVersion"].as_u64().unwrap_or(0);
    assert!((36..=41).contains(&schema), "schemaVersion {schema} is one of Grafana 10/11");
    let variables = dashboard["templating"]["list"].as_array().expect("templating variables");
    assert!(
        variables.iter().any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"),
        "a Prometheus datasource variable"
    );
    let problems = dashboard_problems(&dashboard);
    assert!(problems.is_empty(), "deploy/grafana/leadger.json: {problems:#?}");

    let exprs = read(&deploy("grafana/leadger.json"));
    for quantile in ["0.5", "0.99"] {
        let expected = format!(
            "histogram_quantile({quantile}, sum by (le, command) (rate(leadger_command_duration_seconds_bucket"
        );
        assert!(exprs.contains(&expected), "the dashboard charts command latency p{quantile}");
    }
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        assert!(ids.insert(panel["id"].as_u64()), "panel ids are unique");
    }

    // The check catches a misspelled metric and a missing panel.
    let mut broken = dashboard.clone();
    let panels = broken["panels"].as_array_mut().expect("panels");
    let funnel = panels.iter().position(|panel| panel["title"] == "Funnel: leads by stage").expect("a funnel panel");
    panels.remove(funnel);
    let throughput = panels
        .iter_mut()
        .find(|panel| panel["title"] == "Command throughput by command and code")
        .expect("a throughput panel");
    throughput["targets"][0]["expr"] = "sum(rate(leadger_commands_totl[5m]))".into();
    let problems = dashboard_problems(&broken);
    assert!(problems.iter().any(|p| p.contains("leadger_commands_totl")), "the misspelling is caught: {problems:?}");
    assert!(
        problems.iter().any(|p| p == "no panel charts leadger_funnel_leads"),
        "the missing panel is caught: {problems:?}"
    );
}
