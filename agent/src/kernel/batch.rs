//! Batch reads and deletes of a per-CPU hash: `BPF_MAP_LOOKUP_BATCH` and `BPF_MAP_DELETE_BATCH`
//! (kernel ≥ 5.6) move thousands of entries per syscall, where iterating keys, looking each up
//! and deleting each costs three syscalls per entry (most of the drain's time at 100,000 flows).
//! aya 0.14 has no wrapper; each call is one bpf(2) with the `batch` member of `union bpf_attr`.
//!
//! Reading never deletes: the drain deletes only after the totals holding the entries are
//! checkpointed (see `drain`).

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

use agent_common::Counter;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// Entries asked for per call: one hash bucket must fit (the kernel answers ENOSPC otherwise,
/// and the chunk is doubled).
const CHUNK: usize = 4096;

/// `union bpf_attr`'s `batch` member: in_batch, out_batch, keys, values (u64 each), count,
/// map_fd (u32 each), elem_flags, flags (u64 each); zero-padded to the size the other bpf(2)
/// calls use.
#[repr(C, align(8))]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
    _rest: [u64; 11],
}

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid, zero-padded bpf_attr for `cmd`; the pointers in it point to
    // buffers that live, and are as large as `count` says, for the whole call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Whether an error means the kernel has no batch operations for this map (then the caller
/// goes entry by entry).
pub fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::ENOTSUP) | Some(524 /* ENOTSUPP */)
    )
}

/// Every entry of a per-CPU hash whose values are `Counter`s, summed over `cpus` (the possible
/// CPUs, as the kernel lays per-CPU values out).
pub fn lookup_all<K: aya::Pod>(map: BorrowedFd<'_>, cpus: usize) -> io::Result<Vec<(K, Counter)>> {
    // Per-CPU values are 8-byte aligned; a Counter is 16 bytes.
    let per_key = cpus * std::mem::size_of::<Counter>();
    let mut chunk = CHUNK;
    let mut out = Vec::new();
    // The kernel's position between calls (a bucket index for hashes: 4 bytes; room for 8).
    let (mut token, mut next) = (0u64, 0u64);
    let mut first = true;
    loop {
        // SAFETY: K is Pod: any bytes are a valid K, zeroes included.
        let mut keys: Vec<K> = vec![unsafe { std::mem::zeroed() }; chunk];
        let mut values: Vec<Counter> = vec![Counter::default(); chunk * cpus];
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &token as *const u64 as u64
            },
            out_batch: &mut next as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        // The kernel says how many it filled in, also with ENOENT on the last call.
        let filled = (attr.count as usize).min(chunk);
        debug_assert_eq!(
            values.len() * std::mem::size_of::<Counter>(),
            chunk * per_key
        );
        for (i, key) in keys.iter().take(filled).enumerate() {
            let mut sum = Counter::default();
            for c in &values[i * cpus..(i + 1) * cpus] {
                sum.bytes = sum.bytes.wrapping_add(c.bytes);
                sum.packets = sum.packets.wrapping_add(c.packets);
            }
            out.push((*key, sum));
        }
        match result {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            // A bucket holds more entries than we asked for: ask for more.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && filled == 0 => {
                chunk *= 2;
                continue;
            }
            Err(e) => return Err(e),
        }
        token = next;
        first = false;
    }
}

/// Deletes `keys`; returns those that could not be deleted (a key already gone is not one).
pub fn delete_all<K: aya::Pod>(map: BorrowedFd<'_>, keys: &[K]) -> io::Result<Vec<K>> {
    let mut failed = Vec::new();
    let mut rest = keys;
    while !rest.is_empty() {
        let n = rest.len().min(CHUNK);
        let mut attr = BatchAttr {
            keys: rest.as_ptr() as u64,
            count: n as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        let result = bpf(BPF_MAP_DELETE_BATCH, &mut attr);
        // On error the kernel stops at the key it could not delete; `count` is how many were.
        let deleted = (attr.count as usize).min(n);
        match result {
            Ok(()) => rest = &rest[n..],
            Err(e)
                if deleted == 0
                    && unsupported(&e)
                    && failed.is_empty()
                    && rest.len() == keys.len() =>
            {
                return Err(e)
            }
            Err(e) => {
                if e.raw_os_error() != Some(libc::ENOENT) {
                    failed.push(rest[deleted]);
                }
                rest = &rest[deleted + 1..];
            }
        }
    }
    Ok(failed)
}
