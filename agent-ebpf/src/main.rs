//! netcost's kernel side: two `cgroup_skb` programs attached once at the cgroup v2 root.
//!
//! Why `cgroup_skb` at the root rather than TC on pod veths: it sees every packet of every local
//! socket keyed by the socket's cgroup, whatever the network namespace — pod-network pods,
//! hostNetwork pods (which share the node's IP, so TC could only split their bytes by guessing) and
//! node processes alike — with one attach and no per-pod lifecycle. Its packet data starts at the IP
//! header and `len` is the L3 length, which is what AWS bills.
//!
//! Per packet: headers read in place (direct packet access), two array lookups (active buffer, this
//! CPU's write-combining slot) and, when the flow differs from the slot's, one hash lookup and an
//! atomic add; only a flow's first packet also asks its owner's quota. No per-packet event or log
//! leaves the kernel.
#![no_std]
#![no_main]
// `atomic_xadd` without a used result lowers to BPF_XADD, the one atomic add this target has
// (`AtomicU64::fetch_add` is not offered on it).
#![allow(internal_features)]
#![feature(core_intrinsics)]

use agent_common::{
    account::{account_via_cache, CounterMap, FlowQuota, LostCounter, Stores, Translated},
    cache_index,
    wire::{measure, Packet},
    CacheEntry, Counter, FlowKey, OverflowKey, TranslatedKey, CACHE_ENTRIES, CONTROL_ACTIVE,
    CONTROL_ENTRIES, CONTROL_FLOW_QUOTA, DEFAULT_FLOW_ENTRIES, DEFAULT_OVERFLOW_ENTRIES,
    DEFAULT_QUOTA_ENTRIES, DEFAULT_TRANSLATED_ENTRIES, DIRECTION_EGRESS, DIRECTION_INGRESS,
    FILL_ENTRIES, LOST_ENTRIES, TRANSLATED_HOST_LOOKUP,
};
use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_skb_cgroup_id, bpf_skb_load_bytes},
    macros::{cgroup_skb, map},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, PerCpuArray, PerCpuHashMap},
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
#[map]
static CACHE: PerCpuArray<CacheEntry> = PerCpuArray::with_max_entries(CACHE_ENTRIES, 0);
/// Flow entries each owner created in buffer 0 / 1 (shared by all CPUs, added atomically).
#[map]
static QUOTA_0: HashMap<u64, u64> = HashMap::with_max_entries(DEFAULT_QUOTA_ENTRIES, 0);
#[map]
static QUOTA_1: HashMap<u64, u64> = HashMap::with_max_entries(DEFAULT_QUOTA_ENTRIES, 0);
/// Flow entries created in each buffer, per CPU.
#[map]
static FILL: PerCpuArray<u64> = PerCpuArray::with_max_entries(FILL_ENTRIES, 0);
/// Remote prefixes whose flows are counted per connection (user space fills it: Service CIDRs,
/// addresses conntrack showed being rewritten, the node's own addresses).
#[map]
static TRANSLATED: LpmTrie<TranslatedKey, u8> =
    LpmTrie::with_max_entries(DEFAULT_TRANSLATED_ENTRIES, 0);

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

/// Does nothing. `cargo xtask bench` attaches it alone to measure what the kernel's run-time
/// statistics charge for any program on the machine, so the agent's own cost can be told apart.
/// The agent never loads it.
#[cgroup_skb]
pub fn netcost_probe(_ctx: SkBuffContext) -> i32 {
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
    fn l3_len(&self) -> u32 {
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
    fn load_words<const N: usize>(&self, offset: u32) -> Option<[u32; N]> {
        // Headers are nearly always in the skb's linear part: read them in place. cgroup_skb may
        // read packet data directly (CAP_BPF); the bounds check is what the verifier requires.
        let (data, data_end) = unsafe {
            let skb = &*self.0.skb.skb;
            (skb.data as usize, skb.data_end as usize)
        };
        let start = data + offset as usize;
        if start + N * 4 <= data_end {
            return Some(unsafe { core::ptr::read_unaligned(start as *const [u32; N]) });
        }
        // Otherwise copy them out. Uninitialised on purpose: zeroing it would cost a byte loop per
        // packet, and the helper either fills all of it or fails.
        let mut buf = MaybeUninit::<[u32; N]>::uninit();
        let ret = unsafe {
            bpf_skb_load_bytes(
                self.0.skb.skb as *const _,
                offset,
                buf.as_mut_ptr() as *mut _,
                (N * 4) as u32,
            )
        };
        // SAFETY: on success the helper wrote all N words.
        (ret == 0).then(|| unsafe { buf.assume_init() })
    }
}

struct KernelMap<'a, K>(&'a PerCpuHashMap<K, Counter>);

impl<K> CounterMap<K> for KernelMap<'_, K> {
    #[inline(always)]
    fn add_existing(&self, key: &K, bytes: u64, packets: u64) -> bool {
        match self.0.get_ptr_mut(key) {
            // This CPU's value; atomic because a program interrupting us on this CPU may add to it.
            Some(counter) => {
                unsafe {
                    atomic_add(&raw mut (*counter).bytes, bytes);
                    atomic_add(&raw mut (*counter).packets, packets);
                }
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

#[inline(always)]
unsafe fn atomic_add(dst: *mut u64, value: u64) {
    use core::intrinsics::{atomic_xadd, AtomicOrdering};
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(dst, value) };
}

struct KernelTranslated;

impl Translated for KernelTranslated {
    #[inline(always)]
    fn contains(&self, key: &FlowKey) -> bool {
        TRANSLATED
            .get(Key::new(TRANSLATED_HOST_LOOKUP, TranslatedKey::of(key)))
            .is_some()
    }
}

/// The owners' quota of new flows in one buffer. Only asked when a flow entry is about to be
/// created, never for a packet that adds to an existing entry.
struct KernelQuota<'a> {
    used: &'a HashMap<u64, u64>,
    buffer: u32,
}

impl FlowQuota for KernelQuota<'_> {
    #[inline(always)]
    fn allows(&self, cgroup_id: u64) -> bool {
        let limit = CONTROL.get(CONTROL_FLOW_QUOTA).copied().unwrap_or(0);
        if limit == 0 {
            return true;
        }
        match self.used.get_ptr(&cgroup_id) {
            // A plain read racing an add on another CPU: the quota is approximate by a few.
            Some(n) => (unsafe { *n }) < u64::from(limit),
            None => true,
        }
    }

    #[inline(always)]
    fn charge(&self, cgroup_id: u64) {
        if let Some(n) = FILL.get_ptr_mut(self.buffer) {
            // This CPU's slot; a nested program may lose one increment: it is a fill estimate.
            unsafe { *n += 1 };
        }
        match self.used.get_ptr_mut(&cgroup_id) {
            Some(n) => unsafe { atomic_add(n, 1) },
            None => {
                // Another CPU may have inserted it meanwhile: then add to its entry. A full map
                // leaves this owner unlimited for the rest of the interval.
                if self
                    .used
                    .insert(&cgroup_id, &1, BPF_NOEXIST as u64)
                    .is_err()
                {
                    if let Some(n) = self.used.get_ptr_mut(&cgroup_id) {
                        unsafe { atomic_add(n, 1) };
                    }
                }
            }
        }
    }
}

struct KernelLost;

impl LostCounter for KernelLost {
    #[inline(always)]
    fn add(&self, direction: u8, bytes: u64, packets: u64) {
        if let Some(counter) = LOST.get_ptr_mut(direction as u32) {
            unsafe {
                atomic_add(&raw mut (*counter).bytes, bytes);
                atomic_add(&raw mut (*counter).packets, packets);
            }
        }
    }
}

#[inline(always)]
fn count(ctx: &SkBuffContext, direction: u8) {
    let Some(m) = measure(&Skb(ctx), direction == DIRECTION_EGRESS) else {
        return;
    };
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let key = m.key(cgroup_id, direction);
    let active = CONTROL.get(CONTROL_ACTIVE).copied().unwrap_or(0) & 1;
    // SAFETY: this CPU's slot of a per-CPU array; nested runs on this CPU check its busy flag.
    let slot = CACHE
        .get_ptr_mut(cache_index(active, direction))
        .map(|p| unsafe { &mut *p });
    // Two call sites rather than one map pointer chosen at run time: the verifier then knows which
    // map each helper call uses and can inline the lookups.
    if active == 0 {
        account_via_cache(
            slot,
            &Stores {
                flows: &KernelMap(&FLOWS_0),
                overflow: &KernelMap(&OVERFLOW_0),
                lost: &KernelLost,
                translated: &KernelTranslated,
                quota: &KernelQuota {
                    used: &QUOTA_0,
                    buffer: 0,
                },
            },
            &key,
            m.bytes,
            m.packets,
        );
    } else {
        account_via_cache(
            slot,
            &Stores {
                flows: &KernelMap(&FLOWS_1),
                overflow: &KernelMap(&OVERFLOW_1),
                lost: &KernelLost,
                translated: &KernelTranslated,
                quota: &KernelQuota {
                    used: &QUOTA_1,
                    buffer: 1,
                },
            },
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
