//! Exists so that `agent` can name this crate as a build dependency (cargo then rebuilds the agent
//! when the kernel programs or the shared ABI change). The programs are in `main.rs`.
#![no_std]
