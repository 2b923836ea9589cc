//! Builds the kernel programs (`agent-ebpf`) for the BPF target with the nightly toolchain and
//! bpf-linker; `cargo xtask` installs both when missing. Nothing else happens here.
fn main() -> anyhow::Result<()> {
    let ebpf = aya_build::Package {
        name: "agent-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../agent-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Nightly)
}
