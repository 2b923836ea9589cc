//! The real agent binary as a child process, and its /metrics.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::Proc;

pub struct Agent {
    proc: Proc,
    pub port: u16,
    /// The CA of the agent's certificate when it serves TLS: requests go through curl.
    pub ca: Option<PathBuf>,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    /// The agent's own pins and checkpoint, when the test did not give a `state:` section.
    /// Declared after `proc`: the agent is killed before its state is unmounted.
    _state: Option<AgentState>,
}

/// Where an agent under test keeps its state: a private bpffs instance for its pins and a tmpfs
/// for its checkpoint, both mounted under a temporary directory and unmounted on drop. Unmounting
/// the bpffs drops every pin in it, so no program of a test outlives it, even after a failure.
/// Both are mounts of their own, so they stay writable when a test makes `/` read-only.
pub struct AgentState {
    pub root: PathBuf,
    pub bpffs: PathBuf,
    pub dir: PathBuf,
}

impl AgentState {
    pub fn new(name: &str) -> Result<AgentState> {
        AgentState::with_size(name, "64m")
    }

    /// The same with a checkpoint file system of `size` (tmpfs `size=`), to fill it up.
    pub fn with_size(name: &str, size: &str) -> Result<AgentState> {
        let root = std::env::temp_dir().join(format!("nct-state-{name}-{}", std::process::id()));
        let _ = Command::new("umount").arg(root.join("bpf")).output();
        let _ = Command::new("umount").arg(root.join("lib")).output();
        let _ = std::fs::remove_dir_all(&root);
        let state = AgentState {
            bpffs: root.join("bpf"),
            dir: root.join("lib"),
            root,
        };
        std::fs::create_dir_all(&state.bpffs)?;
        std::fs::create_dir_all(&state.dir)?;
        crate::run(&["mount", "-t", "bpf", "bpf", &state.bpffs.to_string_lossy()])?;
        crate::run(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "nct-state",
            &state.dir.to_string_lossy(),
        ])?;
        Ok(state)
    }

    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs.join("netcost")
    }

    /// The config section that points an agent here.
    pub fn yaml(&self) -> String {
        format!(
            "state:\n  pin_dir: \"{}\"\n  dir: \"{}\"\n",
            self.pin_dir().display(),
            self.dir.display()
        )
    }
}

impl Drop for AgentState {
    fn drop(&mut self) {
        for m in [&self.bpffs, &self.dir] {
            let _ = Command::new("umount").arg(m).output();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The agent binary: `NETCOST_AGENT_BIN` (set by `cargo xtask test`), else the release build.
pub fn agent_bin() -> Result<PathBuf> {
    let bin = std::env::var_os("NETCOST_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/netcost-agent")
        });
    if !bin.is_file() {
        bail!(
            "agent binary {} is missing: run the tests with `cargo xtask test`",
            bin.display()
        );
    }
    Ok(bin)
}

/// A plain HTTP/1.0 GET on loopback: status and body.
pub fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    http_get_with(port, path, &[])
}

/// The same with request headers.
pub fn http_get_with(port: u16, path: &str, headers: &[(&str, &str)]) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n{extra}\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

/// An HTTPS GET through curl, checking the certificate against `ca`: status and body.
pub fn https_get(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    ca: &std::path::Path,
) -> Result<(u16, String)> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(["-w", "\n%{http_code}"]);
    for (k, v) in headers {
        cmd.arg("-H").arg(format!("{k}: {v}"));
    }
    let out = cmd
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .context("running curl")?;
    if !out.status.success() {
        bail!("curl: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').context("no status from curl")?;
    Ok((
        code.trim().parse().context("curl's status")?,
        body.to_owned(),
    ))
}

/// A free TCP port on loopback.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl Agent {
    /// Starts the agent with `config` (YAML without `listen`, which is added) and waits until it
    /// is ready (programs attached, one drain done, inventory synced if it uses the API).
    pub fn start(name: &str, config: &str) -> Result<Agent> {
        Agent::start_waiting_for(name, config, "/readyz", &[], &[], None)
    }

    /// Starts the agent with these environment variables (e.g. AWS credentials and endpoint
    /// overrides) and waits until it is ready.
    pub fn start_with_env(name: &str, config: &str, env: &[(&str, &str)]) -> Result<Agent> {
        Agent::start_waiting_for(name, config, "/readyz", &[], env, None)
    }

    /// Starts an agent that serves TLS with a certificate signed by `ca`, and waits until it is
    /// ready.
    pub fn start_tls(name: &str, config: &str, ca: &std::path::Path) -> Result<Agent> {
        Agent::start_waiting_for(name, config, "/readyz", &[], &[], Some(ca))
    }

    /// Starts the agent through `wrapper` (a command that ends by running the argv it is given,
    /// e.g. `setpriv … --`), and waits until it is ready.
    pub fn start_wrapped(name: &str, config: &str, wrapper: &[&str]) -> Result<Agent> {
        Agent::start_waiting_for(name, config, "/readyz", wrapper, &[], None)
    }

    /// Starts the agent and waits only until it is alive (`/healthz`): for tests where its
    /// Kubernetes API is not there yet.
    pub fn start_unready(name: &str, config: &str) -> Result<Agent> {
        Agent::start_waiting_for(name, config, "/healthz", &[], &[], None)
    }

    fn start_waiting_for(
        name: &str,
        config: &str,
        probe: &str,
        wrapper: &[&str],
        env: &[(&str, &str)],
        ca: Option<&std::path::Path>,
    ) -> Result<Agent> {
        let port = free_port()?;
        let dir = std::env::temp_dir();
        let config_path = dir.join(format!("nct-{name}.yaml"));
        let log_path = dir.join(format!("nct-{name}.log"));
        let state = if config.lines().any(|l| l.starts_with("state:")) {
            None
        } else {
            Some(AgentState::new(name)?)
        };
        let state_yaml = state.as_ref().map(AgentState::yaml).unwrap_or_default();
        std::fs::write(
            &config_path,
            format!("listen: \"127.0.0.1:{port}\"\n{config}{state_yaml}"),
        )?;
        let log = std::fs::File::create(&log_path)?;
        let bin = agent_bin()?;
        let mut command = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        // The agent sees only the AWS settings the test gives it: a developer's own credentials
        // or endpoints must not change what a test proves (nor send anything to AWS).
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("AWS_") {
                command.env_remove(key);
            }
        }
        let child = command
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the agent")?;
        let mut agent = Agent {
            proc: Proc {
                child: Some(child),
                what: "netcost-agent".into(),
            },
            port,
            ca: ca.map(std::path::Path::to_owned),
            config_path,
            log_path,
            _state: state,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = agent.proc.child().try_wait()? {
                bail!("agent exited with {status}: {}", agent.log());
            }
            if agent.get(probe).is_ok_and(|(code, _)| code == 200) {
                return Ok(agent);
            }
            if Instant::now() > deadline {
                bail!("agent not ready after 30 s: {}", agent.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The agent's process id.
    pub fn pid(&mut self) -> u32 {
        self.proc.child().id()
    }

    /// The agent's `/proc/<pid>/status` (wrappers exec into the agent: same pid).
    pub fn status(&mut self) -> Result<String> {
        let pid = self.proc.child().id();
        Ok(std::fs::read_to_string(format!("/proc/{pid}/status"))?)
    }

    /// Resident and peak resident memory of the agent process, KiB (`VmRSS`, `VmHWM`).
    pub fn memory_kib(&mut self) -> Result<(u64, u64)> {
        let pid = self.proc.child().id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .with_context(|| format!("{name} missing in /proc/{pid}/status"))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// CPU time (ns, from schedstat) of each of the agent's threads, by thread name, summed over
    /// threads of the same name.
    pub fn thread_cpu_ns(&mut self) -> Result<BTreeMap<String, u64>> {
        let pid = self.proc.child().id();
        let mut out = BTreeMap::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let dir = task?.path();
            let (Ok(comm), Ok(stat)) = (
                std::fs::read_to_string(dir.join("comm")),
                std::fs::read_to_string(dir.join("schedstat")),
            ) else {
                continue; // the thread ended meanwhile
            };
            let ns: u64 = stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .context("unreadable schedstat")?;
            *out.entry(comm.trim().to_owned()).or_default() += ns;
        }
        Ok(out)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// A GET on loopback (HTTPS through curl when the agent serves TLS).
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        self.get_with(path, &[])
    }

    /// The same with request headers.
    pub fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Result<(u16, String)> {
        match &self.ca {
            None => http_get_with(self.port, path, headers),
            Some(ca) => https_get(self.port, path, headers, ca),
        }
    }

    pub fn metrics(&self) -> Result<Samples> {
        let (code, body) = self.get("/metrics")?;
        if code != 200 {
            bail!("/metrics answered {code}");
        }
        Ok(Samples::parse(&body))
    }

    /// Waits until two consecutive scrapes, a few drains apart, agree on every netcost counter:
    /// everything the kernel counted so far has been drained.
    pub fn settled_metrics(&self, drain_interval: Duration) -> Result<Samples> {
        let mut last = self.metrics()?;
        for _ in 0..20 {
            std::thread::sleep(drain_interval * 3);
            let now = self.metrics()?;
            if now.pod_series() == last.pod_series() {
                return Ok(now);
            }
            last = now;
        }
        bail!("pod counters still moving after 20 tries")
    }

    /// Kills the agent with SIGKILL (no final drain, no checkpoint) and waits for it to be gone.
    pub fn kill(mut self) -> Result<()> {
        let child = self.proc.child();
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Stops the agent with SIGTERM and waits for it.
    pub fn stop(mut self) -> Result<String> {
        let pid = self.proc.child().id().to_string();
        crate::run(&["kill", "-TERM", &pid])?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.proc.child().try_wait()? {
                let log = self.log();
                if !status.success() {
                    bail!("agent exited with {status}: {log}");
                }
                return Ok(log);
            }
            if Instant::now() > deadline {
                bail!("agent did not stop within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config_path);
    }
}

pub type Labels = BTreeMap<String, String>;

/// Parsed exposition: metric name → (label set, value) pairs.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Samples {
    pub series: BTreeMap<String, Vec<(Labels, f64)>>,
}

impl Samples {
    pub fn parse(text: &str) -> Samples {
        let mut series: BTreeMap<String, Vec<_>> = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (head, value) = match line.rsplit_once(' ') {
                Some(x) => x,
                None => continue,
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match head.split_once('{') {
                Some((n, rest)) => (n, parse_labels(rest.trim_end_matches('}'))),
                None => (head, BTreeMap::new()),
            };
            series
                .entry(name.to_owned())
                .or_default()
                .push((labels, value));
        }
        Samples { series }
    }

    /// Value of the one series of `name` whose labels include all of `want`; `None` if absent.
    pub fn value(&self, name: &str, want: &[(&str, &str)]) -> Option<f64> {
        self.series.get(name)?.iter().find_map(|(labels, v)| {
            want.iter()
                .all(|(k, val)| labels.get(*k).map(String::as_str) == Some(*val))
                .then_some(*v)
        })
    }

    /// Sum over every series of `name` whose labels include all of `want`.
    pub fn sum(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.series.get(name).map_or(0.0, |s| {
            s.iter()
                .filter(|(labels, _)| {
                    want.iter()
                        .all(|(k, val)| labels.get(*k).map(String::as_str) == Some(*val))
                })
                .map(|(_, v)| v)
                .sum()
        })
    }

    fn pod_series(&self) -> Vec<(Labels, f64)> {
        let mut v: Vec<_> = self
            .series
            .get("netcost_network_bytes_total")
            .into_iter()
            .flatten()
            .filter(|(l, _)| l.get("owner").map(String::as_str) == Some("pod"))
            .cloned()
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

fn parse_labels(text: &str) -> Labels {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let Some(end) = after.find('"') else { break };
        out.insert(
            key.trim_start_matches(',').trim().to_owned(),
            after[..end].to_owned(),
        );
        rest = &after[end + 1..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exposition_lines() {
        let s = Samples::parse(
            "# TYPE a counter\na_total{owner=\"pod\",pod_uid=\"u\",traffic_class=\"internet\"} 12\nb 3\n# EOF\n",
        );
        assert_eq!(s.value("a_total", &[("pod_uid", "u")]), Some(12.0));
        assert_eq!(s.value("b", &[]), Some(3.0));
        assert_eq!(s.value("a_total", &[("pod_uid", "v")]), None);
        assert_eq!(s.sum("a_total", &[("owner", "pod")]), 12.0);
    }
}
