//! The deploy/ manifests: every kustomization renders with `kubectl kustomize`, every rendered
//! object deserializes into its k8s-openapi type, the DaemonSet keeps its security policy, the
//! embedded agent config is one the agent accepts, and the PrometheusRule passes
//! `promtool check rules` and `promtool test rules`.

use std::{path::PathBuf, process::Command};

use anyhow::{ensure, Context, Result};
mod manifests;
use manifests::{
    check_agent, check_rules, check_types, daemonset, parse_docs, pod_labels, pod_spec,
};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

const KUSTOMIZATIONS: [&str; 4] = [
    "deploy/base",
    "deploy/overlays/prometheus-operator",
    "deploy/overlays/kubecost",
    "deploy/overlays/metrics-auth",
];

fn render(dir: &str) -> Result<Vec<Value>> {
    let out = Command::new("kubectl")
        .args(["kustomize"])
        .arg(root().join(dir))
        .output()
        .context("running kubectl kustomize (kubectl with kustomize)")?;
    ensure!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    parse_docs(&format!("rendered {dir}"), &text)
}

/// Renders `dir` and checks every object against its k8s-openapi type.
fn rendered(dir: &str) -> Result<Vec<Value>> {
    let docs = render(dir)?;
    check_types(dir, &docs)?;
    Ok(docs)
}

#[test]
fn every_kustomization_renders_into_valid_typed_objects() -> Result<()> {
    for dir in KUSTOMIZATIONS {
        let docs = rendered(dir)?;
        check_agent(dir, &docs)?;
        let ds = daemonset(&docs)?;
        if dir.ends_with("kubecost") {
            let labels = pod_labels(&ds);
            ensure!(
                labels.get("app.kubernetes.io/name").map(String::as_str) == Some("network-costs"),
                "{dir}: {labels:?}"
            );
            ensure!(
                labels.get("app.kubernetes.io/instance").map(String::as_str) == Some("kubecost"),
                "{dir}: {labels:?}"
            );
            ensure!(
                docs.iter().all(|d| d["kind"] == "Namespace"
                    || d["kind"] == "ClusterRole"
                    || d["kind"] == "ClusterRoleBinding"
                    || d["metadata"]["namespace"] == "kubecost"),
                "{dir}: everything in the kubecost namespace"
            );
        }
    }
    Ok(())
}

/// The dashboard renders into a ConfigMap Grafana's sidecar loads, holding valid JSON (its
/// queries are run against a real Prometheus in tests/tests/opencost.rs).
#[test]
fn the_dashboard_renders_as_a_grafana_configmap() -> Result<()> {
    let dir = "deploy/grafana";
    let docs = rendered(dir)?;
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .context("ConfigMap")?;
    ensure!(
        cm["metadata"]["labels"]["grafana_dashboard"] == "1",
        "sidecar label"
    );
    let json: Value = serde_json::from_str(
        cm["data"]["netcost.json"]
            .as_str()
            .context("netcost.json")?,
    )?;
    ensure!(
        json["panels"].as_array().is_some_and(|p| p.len() >= 8),
        "panels"
    );
    Ok(())
}

/// The uninstall DaemonSet renders into valid objects, runs `cleanup` with no capability at all,
/// and mounts the same host paths the agent pins and checkpoints in.
#[test]
fn the_cleanup_daemonset_needs_no_capability() -> Result<()> {
    let dir = "deploy/cleanup";
    let docs = rendered(dir)?;
    let ds = daemonset(&docs)?;
    let pod = pod_spec(&ds)?;
    let c = pod.containers.first().context("container")?;
    let args: Vec<&str> = c.args.iter().flatten().map(String::as_str).collect();
    ensure!(
        args == ["cleanup", "--stay", "--pin-dir", "/run/netcost/bpf"],
        "args {args:?}"
    );
    let sc = c.security_context.as_ref().context("securityContext")?;
    let caps = sc.capabilities.as_ref().context("capabilities")?;
    ensure!(caps.add.is_none(), "capabilities added: {:?}", caps.add);
    ensure!(sc.read_only_root_filesystem == Some(true), "read-only root");
    ensure!(
        sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()) == Some("RuntimeDefault"),
        "seccompProfile RuntimeDefault"
    );
    // --pin-dir is the mount of the host's /sys/fs/bpf/netcost, the default state dir the
    // mount of /var/lib/netcost.
    let mounted = |path: &str| {
        c.volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == path)
            .and_then(|m| pod.volumes.iter().flatten().find(|v| v.name == m.name))
            .and_then(|v| v.host_path.as_ref())
            .map(|h| h.path.clone())
    };
    ensure!(
        mounted("/run/netcost/bpf").as_deref() == Some("/sys/fs/bpf/netcost"),
        "pins: {:?}",
        mounted("/run/netcost/bpf")
    );
    let defaults = agent::config::StateConfig::default();
    let hosts: Vec<String> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.host_path.as_ref().map(|h| h.path.clone()))
        .collect();
    for path in [&defaults.pin_dir, &defaults.dir] {
        ensure!(
            hosts.iter().any(|h| path.starts_with(h)),
            "{} is on no hostPath volume: {hosts:?}",
            path.display()
        );
    }
    Ok(())
}

/// No container engine runs here, so the image is not built. What can be proven is: the
/// Containerfile is multi-stage with a distroless (shell-less) final stage that holds the agent
/// alone, runs it as uid 0 in exec form with the DaemonSet's arguments, and the binary it copies
/// (the one every root test runs) needs no library beyond what that base image has.
#[test]
fn the_containerfile_ships_the_tested_binary_on_a_shell_less_base() -> Result<()> {
    let text = std::fs::read_to_string(root().join("deploy/Containerfile"))?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    ensure!(
        froms.len() == 2,
        "want a build stage and a final stage: {froms:?}"
    );
    ensure!(
        froms[1].contains("gcr.io/distroless/cc-debian12"),
        "final stage {}",
        froms[1]
    );
    let final_stage = &lines[lines.iter().position(|l| l == froms[1]).unwrap_or(0)..];
    ensure!(
        final_stage
            .iter()
            .filter(|l| l.starts_with("COPY") || l.starts_with("ADD") || l.starts_with("RUN"))
            .copied()
            .eq(["COPY --from=build /netcost-agent /netcost-agent"]),
        "the final stage must add the agent and nothing else: {final_stage:?}"
    );
    ensure!(final_stage.contains(&"USER 0:0"), "USER");
    ensure!(
        final_stage.contains(&"ENTRYPOINT [\"/netcost-agent\"]"),
        "exec-form ENTRYPOINT"
    );
    // The binary links only what distroless/cc-debian12 provides (glibc 2.36, libgcc).
    let bin = netcost_tests::agent::agent_bin()?;
    let ldd = netcost_tests::run(&["ldd", &bin.to_string_lossy()])?;
    let allowed = [
        "linux-vdso.so.1",
        "libc.so.6",
        "libm.so.6",
        "libgcc_s.so.1",
        "ld-linux-x86-64.so.2",
        "libdl.so.2",
        "libpthread.so.0",
        "librt.so.1",
    ];
    for lib in ldd.lines().filter_map(|l| l.split_whitespace().next()) {
        let name = lib.rsplit('/').next().unwrap_or(lib);
        ensure!(
            allowed.contains(&name),
            "the agent needs {name}, which the base image lacks:\n{ldd}"
        );
    }
    let glibc = netcost_tests::run(&["ldd", "--version"])?;
    ensure!(
        glibc.lines().next().is_some_and(|l| l.ends_with(" 2.36")),
        "built against another glibc than the base image's 2.36: {glibc}"
    );
    Ok(())
}

#[test]
fn prometheus_rules_pass_promtool_and_their_unit_tests() -> Result<()> {
    let docs = render("deploy/overlays/prometheus-operator")?;
    let rule = docs
        .iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .context("no PrometheusRule")?;
    check_rules(&rule["spec"])
}
