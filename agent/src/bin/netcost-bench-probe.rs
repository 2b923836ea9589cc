//! For `cargo xtask bench` only: attaches the object's empty `netcost_probe` program at the cgroup
//! v2 root (egress and ingress) until SIGTERM or Ctrl-C, so the bench can measure the per-run cost
//! the kernel's statistics charge for a program that does nothing.
use std::{fs::File, path::PathBuf};

use agent::attribute::identity::find_cgroup2_mount;
use anyhow::Context as _;
use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType};

fn main() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    let root: PathBuf = find_cgroup2_mount(&mounts).context("no cgroup2 mount")?;
    let mut ebpf = aya::Ebpf::load(agent::kernel::EBPF_OBJECT)?;
    let program: &mut CgroupSkb = ebpf
        .program_mut("netcost_probe")
        .context("no netcost_probe in the object")?
        .try_into()?;
    program.load()?;
    let cgroup = File::open(&root)?;
    for t in [CgroupSkbAttachType::Egress, CgroupSkbAttachType::Ingress] {
        program.attach(&cgroup, t, CgroupAttachMode::Single)?;
    }
    println!("attached");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    })
}
