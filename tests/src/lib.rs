//! Harness for the root integration tests: a simulated Kubernetes node built from network
//! namespaces, kubelet-style cgroups, an independent wire-byte meter, and the real agent binary.
//!
//! Everything a test creates carries the `nct-` prefix (namespaces) or lives under
//! `<cgroup2>/netcost-test.slice` (cgroups); guards remove it on drop, and `cleanup_leftovers` removes
//! what a crashed run left before the next run starts. No packet leaves the namespaces the tests
//! make: no interface or route of the root namespace is touched.

pub mod agent;
pub mod apiserver;
pub mod awsapi;
pub mod ctmodel;
pub mod kubenode;
pub mod meter;
pub mod openmetrics;
pub mod prometheus;
pub mod rbac;
pub mod simnode;
pub mod truth;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, MutexGuard},
};

use anyhow::{bail, Context, Result};

pub const NETNS_PREFIX: &str = "nct-";
pub const CGROUP_BASE: &str = "netcost-test.slice";

static SERIAL: Mutex<()> = Mutex::new(());

/// Tests share the cgroup tree and namespace names: one at a time, even under plain `cargo test`.
pub fn serial() -> MutexGuard<'static, ()> {
    let guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    cleanup_leftovers();
    guard
}

/// Runs a command, failing with its stderr.
pub fn run(argv: &[&str]) -> Result<String> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .with_context(|| format!("running {argv:?}"))?;
    if !out.status.success() {
        bail!(
            "{argv:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command inside a network namespace. `nsenter --net` rather than `ip netns exec`, which
/// remounts /sys and would hide cgroup2 and bpffs.
pub fn in_ns(ns: &str, argv: &[&str]) -> Result<String> {
    let netns = format!("--net=/run/netns/{ns}");
    let mut full = vec!["nsenter", netns.as_str(), "--"];
    full.extend_from_slice(argv);
    run(&full)
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(suffix: &str) -> Result<Netns> {
        let name = format!("{NETNS_PREFIX}{suffix}");
        run(&["ip", "netns", "add", &name])?;
        let ns = Netns { name };
        in_ns(&ns.name, &["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn exec(&self, argv: &[&str]) -> Result<String> {
        in_ns(&self.name, argv)
    }

    /// `ip` inside this namespace, e.g. `ns.ip("addr add 10.0.0.1/24 dev eth0")`.
    pub fn ip(&self, args: &str) -> Result<String> {
        let mut argv = vec!["ip"];
        argv.extend(args.split_whitespace());
        self.exec(&argv)
    }

    pub fn sysctl(&self, key_value: &str) -> Result<()> {
        self.exec(&["sysctl", "-q", "-w", key_value]).map(drop)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

/// The cgroup v2 mount point, wherever /proc/mounts says it is.
pub fn cgroup2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
        })
        .context("no cgroup2 mount in /proc/mounts")
}

/// What `bpftool cgroup show` lists at the cgroup v2 root: the programs attached there.
pub fn programs_at_cgroup_root() -> Result<String> {
    let root = cgroup2_root()?;
    run(&["bpftool", "cgroup", "show", &root.to_string_lossy()])
}

/// The test cgroup subtree, removed (processes killed first) on drop.
pub struct CgroupTree {
    pub base: PathBuf,
}

impl CgroupTree {
    pub fn new() -> Result<CgroupTree> {
        let base = cgroup2_root()?.join(CGROUP_BASE);
        std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
        Ok(CgroupTree { base })
    }

    /// Creates a cgroup below the test base, e.g. `kubepods/besteffort/pod<uid>/<container>`.
    pub fn create(&self, relative: &str) -> Result<PathBuf> {
        let p = self.base.join(relative);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(p)
    }

    /// Removes one cgroup (and what is below it), ending its processes first.
    pub fn remove(&self, path: &Path) -> Result<()> {
        if !path.starts_with(&self.base) {
            bail!("{} is not below the test cgroup tree", path.display());
        }
        remove_cgroup_tree(path);
        if path.exists() {
            bail!("could not remove cgroup {}", path.display());
        }
        Ok(())
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.base);
    }
}

fn remove_cgroup_tree(base: &Path) {
    if !base.exists() {
        return;
    }
    // cgroup.kill (Linux 5.14+) ends every process in the subtree.
    let _ = std::fs::write(base.join("cgroup.kill"), "1");
    for _ in 0..50 {
        if rmdir_depth_first(base) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn rmdir_depth_first(dir: &Path) -> bool {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_depth_first(&e.path());
            }
        }
    }
    std::fs::remove_dir(dir).is_ok() || !dir.exists()
}

/// Removes what an earlier, crashed run may have left.
pub fn cleanup_leftovers() {
    if let Ok(list) = run(&["ip", "netns", "list"]) {
        for line in list.lines() {
            if let Some(name) = line.split_whitespace().next() {
                if name.starts_with(NETNS_PREFIX) {
                    let _ = run(&["ip", "netns", "del", name]);
                }
            }
        }
    }
    if let Ok(root) = cgroup2_root() {
        remove_cgroup_tree(&root.join(CGROUP_BASE));
    }
}

/// A child process killed on drop.
pub struct Proc {
    child: Option<Child>,
    pub what: String,
}

impl Proc {
    /// Owns `child`: killed and reaped on drop.
    pub fn new(child: Child, what: &str) -> Proc {
        Proc {
            child: Some(child),
            what: what.to_owned(),
        }
    }

    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("process already finished")
    }

    /// Waits for the process and fails unless it exited successfully.
    pub fn finish(mut self) -> Result<()> {
        let child = self.child.take().expect("process already finished");
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "{} failed ({}): {}",
                self.what,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `argv` inside cgroup `cgroup` (joined before exec, so every socket it opens belongs to
/// that cgroup) and, if given, network namespace `ns`.
pub fn spawn_in(
    cgroup: &Path,
    ns: Option<&str>,
    argv: &[&str],
    piped_stdout: bool,
) -> Result<Proc> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
        .arg(cgroup);
    let netns;
    if let Some(ns) = ns {
        netns = format!("--net=/run/netns/{ns}");
        cmd.args(["nsenter", netns.as_str(), "--"]);
    }
    cmd.args(argv)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .stdout(if piped_stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let child = cmd.spawn().with_context(|| format!("spawning {argv:?}"))?;
    Ok(Proc {
        child: Some(child),
        what: format!("{argv:?} in {}", cgroup.display()),
    })
}

/// RFC 3339 in UTC with seconds, as Kubernetes and AWS write times.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Percent-encoding of everything but RFC 3986's unreserved characters (what URLs and SigV4's
/// canonical query strings need).
pub fn uri_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `promtool check metrics` on a Prometheus text exposition: clean means no output at all.
pub fn promtool_check_metrics(body: &str) -> Result<()> {
    use std::io::Write as _;
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting promtool (Debian package `prometheus`)")?;
    lint.stdin
        .take()
        .context("stdin")?
        .write_all(body.as_bytes())?;
    let out = lint.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() || !text.trim().is_empty() {
        bail!("promtool check metrics:\n{text}");
    }
    Ok(())
}

/// A bench's figures as JSON, for `cargo xtask bench` to gather into one object: written to
/// `$NETCOST_BENCH_JSON_DIR/<name>.json` when that is set (nothing otherwise).
pub fn bench_json(name: &str, value: &serde_json::Value) -> Result<()> {
    let Some(dir) = std::env::var_os("NETCOST_BENCH_JSON_DIR") else {
        return Ok(());
    };
    let path = std::path::Path::new(&dir).join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Socket file descriptors process `pid` holds.
pub fn sockets_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Sets a client socket's receive buffer to about `bytes` (the kernel doubles it, with a
/// floor): a reader that never reads then stalls the server's answer early.
pub fn small_receive_buffer(s: &std::net::TcpStream, bytes: libc::c_int) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: a valid socket and a c_int option value of the right size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}
