//! The capabilities the agent needs, and which of them this process lacks: the kernel answers a
//! missing one with a bare EPERM, so the agent names it itself.

/// (capability number, name, what it is needed for). CAP_SYS_ADMIN stands in for CAP_BPF and
/// CAP_PERFMON (kernels before 5.8 have only it), not for CAP_NET_ADMIN.
pub const REQUIRED: [(u32, &str, &str); 3] = [
    (39, "CAP_BPF", "create maps and load programs"),
    (
        38,
        "CAP_PERFMON",
        "the verifier's direct packet access for cgroup_skb programs",
    ),
    (
        12,
        "CAP_NET_ADMIN",
        "attach cgroup_skb programs and read conntrack",
    ),
];
const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_NET_ADMIN: u32 = 12;

/// Drops every capability of the calling thread but `keep` (effective, permitted and
/// inheritable sets; ambient ones cleared; no new privileges on exec). Capabilities are per
/// thread: threads created afterwards inherit the smaller sets, threads that exist already keep
/// theirs (the caller makes sure none does).
pub fn drop_all_except(keep: &[u32]) -> std::io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut data = [Data::default(); 2];
    for &cap in keep {
        let (word, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
        data[word].effective |= bit;
        data[word].permitted |= bit;
    }
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    // SAFETY: plain prctl calls, and capset with a v3 header and two data words, as the kernel
    // expects them.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // Fails with EINVAL on kernels without ambient capabilities: nothing to clear there.
        let _ = libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        if libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The effective capability set from a `/proc/<pid>/status` text.
pub fn effective(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// The required capabilities missing from an effective set.
pub fn missing_from(effective: u64) -> Vec<(&'static str, &'static str)> {
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    // CAP_SYS_ADMIN grants what CAP_BPF and CAP_PERFMON grant, not CAP_NET_ADMIN's part.
    let covered = |cap: u32| has(cap) || (cap != 12 && has(CAP_SYS_ADMIN));
    REQUIRED
        .iter()
        .filter(|(cap, ..)| !covered(*cap))
        .map(|(_, name, why)| (*name, *why))
        .collect()
}

/// The required capabilities this process lacks (empty if it cannot tell).
pub fn missing_capabilities() -> Vec<(&'static str, &'static str)> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| effective(&s))
        .map(missing_from)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_can_drop_what_it_does_not_keep() {
        // On a thread of its own: the test process keeps its capabilities.
        std::thread::spawn(|| {
            drop_all_except(&[CAP_NET_ADMIN]).unwrap();
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            let eff = effective(&status).unwrap();
            assert_eq!(eff & !(1 << CAP_NET_ADMIN), 0, "{status}");
            let permitted = status
                .lines()
                .find_map(|l| l.strip_prefix("CapPrm:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .unwrap();
            assert_eq!(permitted & !(1 << CAP_NET_ADMIN), 0);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn names_what_is_missing() {
        let status = "Name:\tx\nCapEff:\t000000c000001000\n";
        assert_eq!(effective(status), Some(0xc0_0000_1000));
        assert!(missing_from(0xc0_0000_1000).is_empty());
        let names = |e: u64| missing_from(e).into_iter().map(|m| m.0).collect::<Vec<_>>();
        assert_eq!(names(0x80_0000_1000), vec!["CAP_PERFMON"]);
        assert_eq!(names(0x40_0000_1000), vec!["CAP_BPF"]);
        assert_eq!(names(0xc0_0000_0000), vec!["CAP_NET_ADMIN"]);
        // CAP_SYS_ADMIN covers BPF and PERFMON, not NET_ADMIN.
        assert_eq!(names(1 << 21), vec!["CAP_NET_ADMIN"]);
    }
}
