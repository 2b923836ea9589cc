//! `cargo xtask <build|run|test|bench>`: everything a fresh machine needs, then the job.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

mod bench;
mod fuzz;
mod helm;
mod prices;
mod ranges;
mod run;

const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages the tests and the bench use, each with a command that proves it is there.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("iproute2", "tc"),
    ("ethtool", "ethtool"),
    ("iperf3", "iperf3"),
    ("bpftool", "bpftool"),
    ("iptables", "iptables"),
    ("iptables", "ip6tables"),
    ("prometheus", "prometheus"),
    ("prometheus", "promtool"),
    ("kubernetes-client", "kubectl"),
    ("openssl", "openssl"),
    ("curl", "curl"),
    ("tmux", "tmux"),
    ("conntrack", "conntrack"),
];

const USAGE: &str = "usage: cargo xtask <command>
  build   install missing tools, build the agent (release)
  run [--once [--after 10s]] [--region R] [--kubeconfig FILE]
          build, run the agent on this machine and show it live (q quits; the programs stay
          attached); --once: one plain snapshot; `run cleanup` detaches and removes the pins
  test    install missing tools, run every test (unit tests, then the root netns tests one at a time)
  service-ranges FILE   regenerate the bundled AWS S3/DynamoDB ranges from ip-ranges.json
  prices OFFER [EC2_OFFER] [--out FILE]   reduce AWS Price List offer files to a price file
  helm lint|template [NAMESPACE]|package   the chart deploy/helm/netcost through Helm's library
          (helm-python-sdk in target/helm-venv; for machines without a helm binary)
  bench   per-packet cost and throughput with and without the agent; memory with 250 pods;
          conntrack resolver CPU per 1,000 new connections; a busy node beside conntrack polling
  fuzz [--iterations N] [TARGET]   fuzz every parser of outside input longer than the tests do
          (default 200,000 inputs each; TARGET: config, price_file, kubecost_config,
          service_ranges, cgroup_paths_and_mounts, conntrack_messages, checkpoint, aws_answers)";

fn main() -> Result<()> {
    let mut args = env::args().skip(1);
    let command = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    match command.as_str() {
        "build" => {
            let tools = ensure_tools()?;
            build_agent(&tools)?;
            Ok(())
        }
        "run" => run(&rest),
        "service-ranges" => ranges::run(&rest),
        "prices" => prices::run(&rest),
        "helm" => helm::run(&rest),
        "test" => test(&rest),
        "fuzz" => fuzz::fuzz(&rest),
        "bench" => {
            let tools = ensure_tools()?;
            let agent = build_agent(&tools)?;
            // The empty program the bench measures the statistics' own cost with.
            step("building netcost-bench-probe (release)");
            status(tools.cargo().args([
                "build",
                "--release",
                "-p",
                "agent",
                "--bin",
                "netcost-bench-probe",
            ]))?;
            // Each bench also leaves its figures as JSON here; gathered into one object at the end.
            let json_dir = workspace_root().join("target/bench");
            let _ = std::fs::remove_dir_all(&json_dir);
            std::fs::create_dir_all(&json_dir)
                .with_context(|| format!("creating {}", json_dir.display()))?;
            env::set_var("NETCOST_BENCH_JSON_DIR", &json_dir);
            let datapath = bench::run(&tools, &agent)?;
            destinations_bench(&tools)?;
            kube_bench(&tools, &agent)?;
            nat_bench(&tools, &agent)?;
            scale_bench(&tools, &agent)?;
            gather_bench_json(&json_dir, datapath)
        }
        _ => {
            eprintln!("{USAGE}");
            bail!("unknown command {command:?}")
        }
    }
}

/// Builds the bench binary `bin` of the tests crate (with `nct-traffic`, which the netns benches
/// run) and runs it against `agent`.
fn tests_bench(tools: &Tools, agent: &Path, bin: &str, what: &str) -> Result<()> {
    step(&format!("building {bin}"));
    status(tools.cargo().args([
        "build",
        "--release",
        "-p",
        "netcost-tests",
        "--bin",
        bin,
        "--bin",
        "nct-traffic",
    ]))?;
    step(what);
    status(
        Command::new(workspace_root().join("target/release").join(bin))
            .env("NETCOST_AGENT_BIN", agent),
    )
}

/// One JSON object of every bench's figures, written beside them and named on stderr.
fn gather_bench_json(dir: &Path, datapath: serde_json::Value) -> Result<()> {
    let mut all = serde_json::Map::new();
    all.insert("datapath".into(), datapath);
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let Some(name) = path.file_stem().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        if path.extension().and_then(|x| x.to_str()) != Some("json") || name == "results" {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        all.insert(name, value);
    }
    let out = dir.join("results.json");
    std::fs::write(
        &out,
        serde_json::to_vec_pretty(&serde_json::Value::Object(all))?,
    )?;
    step(&format!(
        "every figure of this run as one JSON object: {}",
        out.display()
    ));
    Ok(())
}

/// What destination series cost in user space at 250 pods: steady remote ends only, then with a
/// spray of new ones at every drain.
fn destinations_bench(tools: &Tools) -> Result<()> {
    step("building destinations_bench (release)");
    status(tools.cargo().args([
        "build",
        "--release",
        "-p",
        "agent",
        "--example",
        "destinations_bench",
    ]))?;
    step("destination series with 250 pods");
    let bin = workspace_root().join("target/release/examples/destinations_bench");
    status(Command::new(&bin).args(["0", "--header"]))?;
    status(Command::new(&bin).arg("30"))
}

/// Memory and API requests with 250 pods, 1,000 nodes and 20,000 endpoints in the Kubernetes
/// API double.
fn kube_bench(tools: &Tools, agent: &Path) -> Result<()> {
    tests_bench(
        tools,
        agent,
        "nct-kube-bench",
        "agent memory and API requests with 250 pods, 1,000 nodes and 20,000 endpoints through churn",
    )
}

/// The conntrack resolver's CPU per 1,000 new connections through a DNATed ClusterIP.
fn nat_bench(tools: &Tools, agent: &Path) -> Result<()> {
    tests_bench(
        tools,
        agent,
        "nct-nat-bench",
        "resolver CPU per 1,000 new connections (storms through a ClusterIP on the netns node)",
    )
}

/// A busy node (250 pods, 10,000 remote peers, 10,000 and 100,000 flows per interval) beside a
/// model of conntrack polling on the same traffic and table.
fn scale_bench(tools: &Tools, agent: &Path) -> Result<()> {
    tests_bench(
        tools,
        agent,
        "nct-scale-bench",
        "a busy node: user space at 100,000 flows per drain, beside a model of conntrack polling",
    )
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits inside the workspace")
        .to_owned()
}

fn step(message: &str) {
    eprintln!("xtask: {message}");
}

/// What the builds need on PATH.
pub struct Tools {
    /// PATH with the directory holding bpf-linker in front.
    pub path: OsString,
}

impl Tools {
    pub fn cargo(&self) -> Command {
        let mut c = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        c.env("PATH", &self.path).current_dir(workspace_root());
        c
    }
}

fn status(cmd: &mut Command) -> Result<()> {
    let s = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !s.success() {
        bail!("{cmd:?} failed with {s}");
    }
    Ok(())
}

pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn have(program: &str) -> bool {
    env::var_os("PATH")
        .is_some_and(|paths| env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

fn ensure_tools() -> Result<Tools> {
    // Nightly with rust-src builds the kernel crate (-Z build-std=core).
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"])).context(
        "the nightly toolchain is needed for the eBPF crate (rustup toolchain install nightly)",
    )?;
    let sysroot = PathBuf::from(sysroot.trim());
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        step("installing rust-src for nightly");
        status(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    // bpf-linker, built against the nightly toolchain's own LLVM (no matching system LLVM here).
    let bin_dir = cargo_home().join("bin");
    let mut path = env::split_paths(&env::var_os("PATH").unwrap_or_default()).collect::<Vec<_>>();
    if !path.contains(&bin_dir) {
        path.insert(0, bin_dir.clone());
    }
    let path = env::join_paths(path).context("building PATH")?;
    let linker_ok = Command::new("rustup")
        .args(["run", "nightly", "bpf-linker", "--version"])
        .env("PATH", &path)
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        });
    if !linker_ok {
        install_bpf_linker(&sysroot, &bin_dir)?;
    }

    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(_, cmd)| !have(cmd) && !Path::new("/usr/sbin").join(cmd).is_file())
        .map(|(pkg, _)| *pkg)
        .collect();
    if !missing.is_empty() {
        let mut pkgs = missing.clone();
        pkgs.dedup();
        step(&format!("installing Debian packages: {}", pkgs.join(" ")));
        status(Command::new("apt-get").arg("update").arg("-qq"))?;
        status(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&pkgs)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    Ok(Tools { path })
}

fn install_bpf_linker(sysroot: &Path, bin_dir: &Path) -> Result<()> {
    let lib = sysroot.join("lib");
    // The toolchain ships e.g. libLLVM.so.22.1-rust-1.97.0-nightly; its major version picks the
    // bpf-linker feature.
    let llvm = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| {
            format!(
                "no libLLVM.so.* in {}: the nightly toolchain must ship LLVM as a shared library",
                lib.display()
            )
        })?;
    let major: String = llvm["libLLVM.so.".len()..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    step(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against the nightly toolchain's LLVM {major} (about a minute)"
    ));
    // llvm-sys looks for lib/libLLVM.so under LLVM_PREFIX; point it at the toolchain's copy.
    let prefix = workspace_root().join("target/xtask/llvm-prefix");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in ["libLLVM.so", llvm.as_str()] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib.join(&llvm), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    let root = bin_dir.parent().context("cargo home has no parent")?;
    status(
        Command::new("cargo")
            .args([
                "install",
                "--locked",
                "--quiet",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .arg("--root")
            .arg(root)
            .env("LLVM_PREFIX", &prefix),
    )
    .context("building bpf-linker")
}

/// Builds the agent in release mode and returns the binary's path. Quiet: the compilers' output
/// (the eBPF build's included) is shown only when the build fails.
fn build_agent(tools: &Tools) -> Result<PathBuf> {
    step("building netcost-agent (release)");
    quiet(tools.cargo().args([
        "build",
        "--release",
        "-p",
        "agent",
        "--bin",
        "netcost-agent",
    ]))?;
    Ok(workspace_root().join("target/release/netcost-agent"))
}

/// Runs `cmd` with its output held back; prints it all if the command fails.
fn quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        eprint!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        bail!("{cmd:?} failed with {}", out.status);
    }
    Ok(())
}

fn run(args: &[String]) -> Result<()> {
    if args.first().map(String::as_str) == Some("cleanup") {
        return run_cleanup(args);
    }
    let options = run::parse(args)?;
    let tools = ensure_tools()?;
    let agent = build_agent(&tools)?;
    ensure_bpffs()?;
    run::run(&agent, &options)
}

/// `cargo xtask run cleanup`: the agent's own cleanup with the local config.
fn run_cleanup(args: &[String]) -> Result<()> {
    let tools = ensure_tools()?;
    let agent = build_agent(&tools)?;
    let config = workspace_root().join("deploy/config/local.yaml");
    let mut cmd = Command::new(&agent);
    cmd.arg("cleanup")
        .arg("--config")
        .arg(&config)
        .args(&args[1..]);
    status(&mut cmd)
}

fn ensure_bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if mounts.lines().any(|l| {
        l.split_whitespace().nth(1) == Some("/sys/fs/bpf")
            && l.split_whitespace().nth(2) == Some("bpf")
    }) {
        return Ok(());
    }
    step("mounting bpffs at /sys/fs/bpf (not mounted on this machine)");
    status(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

fn test(args: &[String]) -> Result<()> {
    let tools = ensure_tools()?;
    let agent = build_agent(&tools)?;
    step("unit tests (no root needed)");
    status(
        tools
            .cargo()
            // The eBPF crate builds only for the BPF target (agent/build.rs does that).
            .args([
                "test",
                "--workspace",
                "--exclude",
                "netcost-tests",
                "--exclude",
                "agent-ebpf",
            ])
            .args(args),
    )?;
    // tests/tests/helm.rs renders the chart with Helm's library.
    helm::ensure_venv()?;
    step("root integration tests: simulated node in network namespaces, one at a time");
    status(
        tools
            .cargo()
            .args(["test", "--release", "-p", "netcost-tests"])
            .args(args)
            .args(["--", "--test-threads=1"])
            .env("NETCOST_AGENT_BIN", &agent),
    )
}
