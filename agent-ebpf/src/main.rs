//! netcost's kernel side: two `cgroup_skb` programs attached once at the cgroup v2 root.
//!
//! Why `cgroup_skb` at the root rather than TC on pod veths: it sees every packet of every local
//! socket keyed by the socket's cgroup, whatever the network namespace — pod-network pods,
//! hostNetwork pods (which share the node's IP, so TC could only split their bytes by guessing) and
//! node processes alike — with one attach and no per-pod lifecycle. Its packet data starts at the IP
//! header and `len` is the L3 length, which is what AWS bills.
//!
//! Per packet: one array lookup (active buffer), one hash lookup and an in-place add on this CPU's
//! slot of a per-CPU hash. The BPF target has no atomic fetch-add; per-CPU values need none, and an
//! ingress and an egress program nesting on one CPU never share a key (the key holds the direction).
//! No per-packet event or log leaves the kernel.
#![no_std]
#![no_main]

use agent_common::{
    account::{account, CounterMap, LostCounter},
    wire::{measure, Packet},
    Counter, FlowKey, OverflowKey, CONTROL_ACTIVE, CONTROL_ENTRIES, DEFAULT_FLOW_ENTRIES,
    DEFAULT_OVERFLOW_ENTRIES, DIRECTION_EGRESS, DIRECTION_INGRESS, LOST_ENTRIES,
};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_skb_cgroup_id, bpf_skb_load_bytes},
    macros::{cgroup_skb, map},
    maps::{Array, PerCpuArray, PerCpuHashMap},
    programs::SkBuffContext,
};

#[map]
static CONTROL: Array<u32> = Array::with_max_entries(CONTROL_ENTRIES, 0);
#[map]
static FLOWS_0: PerCpuHashMap<FlowKey, Counter> =
    PerCpuHashMap::with_max_entries(DEFAULT_FLOW_ENTRIES, 0);
#[map]
static FLOWS_1: PerCpuHashMap<FlowKey, Counter> =
    PerCpuHashMap::with_max_entries(DEFAULT_FLOW_ENTRIES, 0);
#[map]
static OVERFLOW_0: PerCpuHashMap<OverflowKey, Counter> =
    PerCpuHashMap::with_max_entries(DEFAULT_OVERFLOW_ENTRIES, 0);
#[map]
static OVERFLOW_1: PerCpuHashMap<OverflowKey, Counter> =
    PerCpuHashMap::with_max_entries(DEFAULT_OVERFLOW_ENTRIES, 0);
#[map]
static LOST: PerCpuArray<Counter> = PerCpuArray::with_max_entries(LOST_ENTRIES, 0);

/// cgroup_skb verdict: let the packet through. We observe; we never drop.
const ALLOW: i32 = 1;

#[cgroup_skb(egress)]
pub fn netcost_egress(ctx: SkBuffContext) -> i32 {
    count(&ctx, DIRECTION_EGRESS);
    ALLOW
}

#[cgroup_skb(ingress)]
pub fn netcost_ingress(ctx: SkBuffContext) -> i32 {
    count(&ctx, DIRECTION_INGRESS);
    ALLOW
}

struct Skb<'a>(&'a SkBuffContext);

impl Packet for Skb<'_> {
    #[inline(always)]
    fn protocol(&self) -> u16 {
        // `skb->protocol` is in network byte order.
        u16::from_be(unsafe { (*self.0.skb.skb).protocol } as u16)
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        self.0.len()
    }
    #[inline(always)]
    fn gso_segs(&self) -> u32 {
        unsafe { (*self.0.skb.skb).gso_segs }
    }
    #[inline(always)]
    fn gso_size(&self) -> u32 {
        unsafe { (*self.0.skb.skb).gso_size }
    }
    #[inline(always)]
    fn load<const N: usize>(&self, offset: u32) -> Option<[u8; N]> {
        let mut buf = [0u8; N];
        let ret = unsafe {
            bpf_skb_load_bytes(
                self.0.skb.skb as *const _,
                offset,
                buf.as_mut_ptr() as *mut _,
                N as u32,
            )
        };
        (ret == 0).then_some(buf)
    }
}

struct KernelMap<'a, K>(&'a PerCpuHashMap<K, Counter>);

impl<K> CounterMap<K> for KernelMap<'_, K> {
    #[inline(always)]
    fn add_existing(&self, key: &K, bytes: u64, packets: u64) -> bool {
        match self.0.get_ptr_mut(key) {
            // This CPU's slot: nothing else writes it while we run.
            Some(counter) => {
                unsafe { (*counter).add(bytes, packets) };
                true
            }
            None => false,
        }
    }
    #[inline(always)]
    fn insert_new(&self, key: &K, value: &Counter) -> Result<(), i64> {
        self.0
            .insert(key, value, BPF_NOEXIST as u64)
            .map_err(|e| e as i64)
    }
}

struct KernelLost;

impl LostCounter for KernelLost {
    #[inline(always)]
    fn add(&self, direction: u8, bytes: u64, packets: u64) {
        if let Some(counter) = LOST.get_ptr_mut(direction as u32) {
            unsafe { (*counter).add(bytes, packets) };
        }
    }
}

#[inline(always)]
fn count(ctx: &SkBuffContext, direction: u8) {
    let Some(m) = measure(&Skb(ctx), direction == DIRECTION_EGRESS) else {
        return;
    };
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let key = FlowKey::new(cgroup_id, m.remote, m.family, direction);
    let active = CONTROL.get(CONTROL_ACTIVE).copied().unwrap_or(0);
    // Two call sites rather than one map pointer chosen at run time: the verifier then knows which
    // map each helper call uses and can inline the lookups.
    if active == 0 {
        account(
            &KernelMap(&FLOWS_0),
            &KernelMap(&OVERFLOW_0),
            &KernelLost,
            &key,
            m.bytes,
            m.packets,
        );
    } else {
        account(
            &KernelMap(&FLOWS_1),
            &KernelMap(&OVERFLOW_1),
            &KernelLost,
            &key,
            m.bytes,
            m.packets,
        );
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
