//! Root tests of `cargo xtask run`, the README's main command, as a user runs it: the plain
//! snapshot (`--once --after`) while the simulated node's pods send, cell for cell against the
//! agent's `/metrics` (and per pod and direction against the meters), and the live view under
//! tmux (Debian's package): keys for sort, namespace filter and quit, the health line, and the
//! terminal given back. Both run the agent with `deploy/config/local.yaml` on port 3001 and its
//! default pins, removed before and after with `cargo xtask run cleanup`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use netcost_tests::{
    agent::http_get,
    apiserver::{ApiServer, ApiState},
    kubenode::{cluster, names, NODE},
    serial,
    simnode::{Family, Offloads, SimNode},
    truth::{run_plan, PLAN, TOLERANCE},
};

const TRAFFIC: &str = env!("CARGO_BIN_EXE_nct-traffic");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `cargo xtask …` from the workspace, as a user types it.
fn xtask(args: &[&str]) -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.arg("xtask").args(args).current_dir(root());
    c
}

/// Detaches the local run's programs and removes its pins and checkpoint, before and after.
struct LocalRun;

impl LocalRun {
    fn clean() -> Result<LocalRun> {
        let out = xtask(&["run", "cleanup"]).output()?;
        ensure!(
            out.status.success(),
            "cargo xtask run cleanup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(LocalRun)
    }
}

impl Drop for LocalRun {
    fn drop(&mut self) {
        let _ = xtask(&["run", "cleanup"]).output();
    }
}

/// The local agent's exposition, once it answers.
fn local_metrics() -> Option<String> {
    match http_get(3001, "/metrics") {
        Ok((200, body)) => Some(body),
        _ => None,
    }
}

/// netcost_network_bytes_total by (pod UID, class, direction), pods only.
fn cells(exposition: &str) -> Result<BTreeMap<(String, String, String), f64>> {
    let samples = agent::report::parse_exposition("/metrics", exposition)?;
    let mut out = BTreeMap::new();
    for s in samples
        .get("netcost_network_bytes_total")
        .into_iter()
        .flatten()
    {
        let l = &s.labels;
        if l.get("owner").map(String::as_str) != Some("pod") {
            continue;
        }
        let get = |k: &str| l.get(k).cloned().unwrap_or_default();
        *out.entry((get("pod_uid"), get("traffic_class"), get("direction")))
            .or_default() += s.value;
    }
    Ok(out)
}

#[test]
fn the_once_snapshot_equals_the_metrics_for_every_cell() -> Result<()> {
    let _serial = serial();
    let node = SimNode::build(TRAFFIC.as_ref(), Offloads::Default)?;
    let _clean = LocalRun::clean()?;
    let started = Instant::now();
    let run = xtask(&["run", "--once", "--after", "40s"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    while local_metrics().is_none() {
        ensure!(
            started.elapsed() < Duration::from_secs(180),
            "the agent of cargo xtask run never answered"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let before: BTreeMap<String, BTreeMap<(String, String), u64>> = ["pod1", "pod2", "hostpod"]
        .iter()
        .map(|p| Ok((p.to_string(), node.pod(p).truth()?)))
        .collect::<Result<_>>()?;
    run_plan(&node, PLAN)?;
    // Settled: two drains (5 s apart in local.yaml) without a change in any pod cell.
    let mut last = (cells(&local_metrics().context("metrics")?)?, Instant::now());
    let settled = loop {
        std::thread::sleep(Duration::from_secs(6));
        let now = cells(&local_metrics().context("metrics")?)?;
        if now == last.0 {
            break now;
        }
        last = (now, Instant::now());
    };
    let out = run.wait_with_output()?;
    let stdout = String::from_utf8(out.stdout)?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        out.status.success(),
        "cargo xtask run --once failed:\n{stderr}\n{stdout}"
    );
    eprintln!("{stdout}");
    // The build is quiet: one line per step, nothing from the compilers.
    ensure!(
        !stderr.contains("Compiling") && !stderr.contains("warning:"),
        "the build was not quiet:\n{stderr}"
    );
    ensure!(
        !stdout.contains("ERROR") && !stderr.contains("ERROR"),
        "an ERROR line:\n{stderr}"
    );
    ensure!(
        stdout.contains("unpriced: pass --region"),
        "no unpriced note:\n{stdout}"
    );

    // The snapshot's header names the cells; each pod's row gives them in that order.
    let lines: Vec<&str> = stdout.lines().collect();
    let header: Vec<&str> = lines
        .get(1)
        .context("no header")?
        .split("  ")
        .filter(|c| !c.is_empty())
        .map(str::trim)
        .collect();
    let mut failures = Vec::new();
    let mut compared = 0;
    for pod in ["pod1", "pod2", "hostpod"] {
        let uid = &node.pod(pod).uid;
        let row = lines
            .iter()
            .find(|l| l.starts_with(&format!("pod {uid}")))
            .with_context(|| format!("no row for {pod} ({uid}) in\n{stdout}"))?;
        let values: Vec<&str> = row.split_whitespace().collect();
        // "pod", the UID, then an empty workload (no API), then the cells.
        for (i, column) in header.iter().enumerate().skip(2) {
            let Some((class, direction)) = column.split_once(' ') else {
                continue;
            };
            if !matches!(direction, "egress" | "ingress") {
                continue;
            }
            let shown: f64 = values.get(i).context("short row")?.parse()?;
            let want = settled
                .get(&(uid.clone(), class.to_owned(), direction.to_owned()))
                .copied()
                .unwrap_or(0.0);
            compared += 1;
            if shown != want {
                failures.push(format!(
                    "{pod} {class} {direction}: view {shown}, /metrics {want}"
                ));
            }
        }
        // And so the meters: each pod's bytes per direction, all classes together.
        let truth = node.pod(pod).truth()?;
        for direction in ["egress", "ingress"] {
            let metered: u64 = truth
                .iter()
                .filter(|((_, d), _)| d == direction)
                .map(|(k, v)| v - before[pod].get(k).copied().unwrap_or(0))
                .sum();
            let counted: f64 = settled
                .iter()
                .filter(|((u, _, d), _)| u == uid && d == direction)
                .map(|(_, v)| v)
                .sum();
            if metered > 0 && (counted - metered as f64).abs() > metered as f64 * TOLERANCE {
                failures.push(format!(
                    "{pod} {direction}: counted {counted}, metered {metered}"
                ));
            }
        }
    }
    ensure!(compared >= 6, "only {compared} cells compared:\n{stdout}");
    ensure!(failures.is_empty(), "{}\n{stdout}", failures.join("\n"));
    Ok(())
}

/// A tmux server of its own, killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()?;
        ensure!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn pane(&self) -> Result<String> {
        self.cmd(&["capture-pane", "-p", "-t", "view"])
    }

    fn wait_for(&self, what: &str, f: impl Fn(&str) -> bool, limit: Duration) -> Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            let pane = self.pane()?;
            if f(&pane) {
                return Ok(pane);
            }
            if Instant::now() > deadline {
                bail!("waited {limit:?} for {what}; the pane:\n{pane}");
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn keys(&self, keys: &str) -> Result<()> {
        self.cmd(&["send-keys", "-t", "view", keys]).map(drop)
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

#[test]
fn the_live_view_answers_keys_and_gives_the_terminal_back() -> Result<()> {
    let _serial = serial();
    let node = SimNode::build(TRAFFIC.as_ref(), Offloads::Default)?;
    let state = Arc::new(ApiState::new());
    cluster(&node, &state, &["pod1", "pod2", "hostpod"]);
    let api = ApiServer::start(state)?;
    let kubeconfig =
        std::env::temp_dir().join(format!("nct-view-kubeconfig-{}", std::process::id()));
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: double, cluster: {{server: \"{}\"}}}}]\nusers: [{{name: anyone, user: {{}}}}]\ncontexts: [{{name: double, context: {{cluster: double, user: anyone}}}}]\ncurrent-context: double\n",
            api.url()
        ),
    )?;
    let _clean = LocalRun::clean()?;
    let tmux = Tmux {
        socket: format!("nct-view-{}", std::process::id()),
    };
    tmux.cmd(&[
        "new-session",
        "-d",
        "-s",
        "view",
        "-x",
        "230",
        "-y",
        "50",
        "bash --norc --noprofile",
    ])?;
    tmux.keys(&format!(
        "cd {} && NODE_NAME={NODE} cargo xtask run --kubeconfig {}",
        root().display(),
        kubeconfig.display()
    ))?;
    tmux.keys("Enter")?;
    tmux.wait_for(
        "the view",
        |p| p.contains("sorted by cost"),
        Duration::from_secs(180),
    )?;
    ensure!(
        tmux.cmd(&["display", "-p", "-t", "view", "#{alternate_on}"])?
            .trim()
            == "1",
        "the view is not on the alternate screen"
    );
    // Traffic from every pod; the view shows them by name once the agent has drained.
    for pod in ["pod1", "pod2", "hostpod"] {
        node.transfer(pod, "internet", Family::V4, &["send", "2000000"])?;
        node.transfer(pod, "cross_zone", Family::V4, &["recv", "1000000"])?;
    }
    let (ns1, pod1, ..) = names("pod1");
    let (ns2, pod2, ..) = names("pod2");
    let shown = |p: &str, ns: &str, pod: &str| p.contains(&format!("{ns}/{pod}"));
    let pane = tmux.wait_for(
        "the pods with their bytes",
        |p| shown(p, ns1, pod1) && shown(p, ns2, pod2) && p.contains("internet out"),
        Duration::from_secs(30),
    )?;
    eprintln!("--- the view ---\n{pane}---");
    for part in [
        "drains",
        "every 5.0 s",
        "kubernetes synced",
        "unpriced: pass --region",
        "top destinations of",
        "q quit",
    ] {
        ensure!(pane.contains(part), "no {part:?} on the screen:\n{pane}");
    }
    // The selected owner's destinations are listed, one per line, direction first.
    ensure!(
        pane.contains("│egress ") || pane.contains("│ingress "),
        "no destination lines:\n{pane}"
    );
    tmux.keys("s")?;
    tmux.wait_for(
        "sort by bytes",
        |p| p.contains("sorted by bytes"),
        Duration::from_secs(5),
    )?;
    // n: the first namespace in order ("kube-system"), then the next ("reports").
    tmux.keys("n")?;
    tmux.keys("n")?;
    let pane = tmux.wait_for(
        "the reports namespace",
        |p| p.contains("namespace reports"),
        Duration::from_secs(5),
    )?;
    ensure!(
        shown(&pane, ns2, pod2) && !shown(&pane, ns1, pod1),
        "the filter shows other namespaces:\n{pane}"
    );
    tmux.keys("q")?;
    let pane = tmux.wait_for(
        "the shell again",
        |p| p.contains("agent stopped"),
        Duration::from_secs(30),
    )?;
    ensure!(
        tmux.cmd(&["display", "-p", "-t", "view", "#{alternate_on}"])?
            .trim()
            == "0",
        "still on the alternate screen:\n{pane}"
    );
    ensure!(
        tmux.cmd(&["display", "-p", "-t", "view", "#{cursor_flag}"])?
            .trim()
            == "1",
        "the cursor is hidden:\n{pane}"
    );
    let _ = std::fs::remove_file(&kubeconfig);
    Ok(())
}
