//! A model of the conntrack-polling design that netcost replaces (Kubecost's `network-costs`
//! DaemonSet, as its documentation describes it): with `nf_conntrack_acct=1`, read the whole
//! conntrack table every interval, take each entry's byte counters minus what the previous read
//! saw of the same entry, and classify every entry by its remote address. It is a model of that
//! design, written here as tightly as we could (one netlink dump, a hash of the previous
//! counters, a binary search per entry), not Kubecost's binary: its cost is a floor for the
//! design, not a measurement of their code.

use std::{
    collections::HashMap,
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const NETLINK_NETFILTER: i32 = 12;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
/// `NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET`.
const CT_GET: u16 = 0x0101;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_IP: u16 = 1;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_COUNTERS_ORIG: u16 = 9;
const CTA_COUNTERS_REPLY: u16 = 10;
const CTA_COUNTERS_BYTES: u16 = 2;
const CTA_ID: u16 = 12;

/// One conntrack entry as the dump gives it: the original direction's tuple and both counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EntryKey {
    pub id: u32,
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Entry {
    pub key: EntryKey,
    pub orig_bytes: u64,
    pub reply_bytes: u64,
}

/// Where the model sends a remote address: a sorted list of IPv4 ranges with their class.
#[derive(Default)]
pub struct Prefixes {
    ranges: Vec<(u32, u32, u8)>,
}

impl Prefixes {
    pub fn new(mut ranges: Vec<(Ipv4Addr, u8, u8)>) -> Prefixes {
        ranges.sort();
        Prefixes {
            ranges: ranges
                .into_iter()
                .map(|(a, len, class)| {
                    let start = u32::from(a);
                    let size = if len == 0 {
                        u32::MAX
                    } else {
                        (1u32 << (32 - len)) - 1
                    };
                    (start, start | size, class)
                })
                .collect(),
        }
    }

    pub fn class(&self, addr: u32) -> Option<u8> {
        let i = self.ranges.partition_point(|r| r.0 <= addr);
        let (start, end, class) = *self.ranges.get(i.checked_sub(1)?)?;
        (start <= addr && addr <= end).then_some(class)
    }
}

/// The poller: the previous read's counters and the bytes it attributed so far.
pub struct Poller {
    socket: OwnedFd,
    buf: Vec<u8>,
    seq: u32,
    previous: HashMap<EntryKey, (u64, u64)>,
    /// Local addresses (the node's and its pods'): the other end of an entry is the remote.
    locals: HashMap<u32, u16>,
    prefixes: Prefixes,
    /// Bytes per (local owner, class, 0 = egress / 1 = ingress); class 255 = unplaced.
    pub totals: HashMap<(u16, u8, u8), u64>,
}

/// What one poll did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Poll {
    pub entries: usize,
    pub cpu_ns: u64,
}

pub fn thread_cpu_ns() -> u64 {
    // SAFETY: clock_gettime writes the timespec we pass.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Poller {
    /// A poller of the calling thread's network namespace.
    pub fn new(locals: HashMap<u32, u16>, prefixes: Prefixes) -> io::Result<Poller> {
        // SAFETY: plain socket(2), owned right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(raw) };
        let size: libc::c_int = 8 << 20;
        // SAFETY: an int option of its size.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &size as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        Ok(Poller {
            socket,
            buf: vec![0; 1 << 20],
            seq: 0,
            previous: HashMap::new(),
            locals,
            prefixes,
            totals: HashMap::new(),
        })
    }

    /// One poll: the whole table, each entry's delta since the last poll, classified.
    pub fn poll(&mut self) -> io::Result<Poll> {
        let start = thread_cpu_ns();
        let entries = self.dump()?;
        let mut current = HashMap::with_capacity(entries.len());
        for e in &entries {
            let (orig, reply) = match self.previous.get(&e.key) {
                // Counters only grow while the entry lives; a smaller value is a new entry.
                Some(&(o, r)) if o <= e.orig_bytes && r <= e.reply_bytes => {
                    (e.orig_bytes - o, e.reply_bytes - r)
                }
                _ => (e.orig_bytes, e.reply_bytes),
            };
            current.insert(e.key, (e.orig_bytes, e.reply_bytes));
            let (owner, remote, out, back) = match self.locals.get(&e.key.src) {
                Some(&owner) => (owner, e.key.dst, orig, reply),
                None => match self.locals.get(&e.key.dst) {
                    Some(&owner) => (owner, e.key.src, reply, orig),
                    None => continue,
                },
            };
            let class = self.prefixes.class(remote).unwrap_or(255);
            *self.totals.entry((owner, class, 0)).or_default() += out;
            *self.totals.entry((owner, class, 1)).or_default() += back;
        }
        // Entries gone since the last poll take what they gained after it with them.
        self.previous = current;
        Ok(Poll {
            entries: entries.len(),
            cpu_ns: thread_cpu_ns() - start,
        })
    }

    fn dump(&mut self) -> io::Result<Vec<Entry>> {
        self.seq = self.seq.wrapping_add(1);
        let mut m = Vec::with_capacity(20);
        m.extend_from_slice(&20u32.to_ne_bytes());
        m.extend_from_slice(&CT_GET.to_ne_bytes());
        m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        m.extend_from_slice(&self.seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
        // SAFETY: sending a buffer we own.
        let sent = unsafe {
            libc::send(
                self.socket.as_raw_fd(),
                m.as_ptr() as *const libc::c_void,
                m.len(),
                0,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::with_capacity(self.previous.len() + 1024);
        loop {
            // SAFETY: receiving into a buffer we own, of its length.
            let n = unsafe {
                libc::recv(
                    self.socket.as_raw_fd(),
                    self.buf.as_mut_ptr() as *mut libc::c_void,
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if decode(&self.buf[..n as usize], &mut out)? {
                return Ok(out);
            }
        }
    }
}

/// Decodes one datagram of dump replies into `out`; true once the dump is done.
fn decode(mut buf: &[u8], out: &mut Vec<Entry>) -> io::Result<bool> {
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap_or_default()) as usize;
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        if len < 16 || len > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad nlmsg length",
            ));
        }
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let code = i32::from_ne_bytes(buf[16..20].try_into().unwrap_or_default());
                if code != 0 {
                    return Err(io::Error::from_raw_os_error(-code));
                }
            }
            _ if len >= 20 => {
                let mut e = Entry::default();
                for (t, v) in attrs(&buf[20..len]) {
                    match t {
                        CTA_TUPLE_ORIG => tuple(v, &mut e.key),
                        CTA_COUNTERS_ORIG => e.orig_bytes = counter(v),
                        CTA_COUNTERS_REPLY => e.reply_bytes = counter(v),
                        CTA_ID if v.len() >= 4 => {
                            e.key.id = u32::from_be_bytes(v[..4].try_into().unwrap_or_default())
                        }
                        _ => {}
                    }
                }
                out.push(e);
            }
            _ => {}
        }
        buf = buf.get((len + 3) & !3..).unwrap_or_default();
    }
    Ok(false)
}

fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            return None;
        }
        let value = &buf[4..len];
        buf = buf.get((len + 3) & !3..).unwrap_or_default();
        Some((kind, value))
    })
}

fn tuple(v: &[u8], key: &mut EntryKey) {
    for (t, inner) in attrs(v) {
        match t {
            CTA_TUPLE_IP => {
                for (a, addr) in attrs(inner) {
                    let Ok(bytes) = <[u8; 4]>::try_from(addr) else {
                        continue;
                    };
                    match a {
                        CTA_IP_V4_SRC => key.src = u32::from_be_bytes(bytes),
                        CTA_IP_V4_DST => key.dst = u32::from_be_bytes(bytes),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (a, p) in attrs(inner) {
                    match (a, p.len()) {
                        (CTA_PROTO_NUM, 1) => key.proto = p[0],
                        (CTA_PROTO_SRC_PORT, 2) => key.sport = u16::from_be_bytes([p[0], p[1]]),
                        (CTA_PROTO_DST_PORT, 2) => key.dport = u16::from_be_bytes([p[0], p[1]]),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}

fn counter(v: &[u8]) -> u64 {
    attrs(v)
        .find(|(t, b)| *t == CTA_COUNTERS_BYTES && b.len() == 8)
        .map_or(0, |(_, b)| {
            u64::from_be_bytes(b.try_into().unwrap_or_default())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_find_the_range_holding_an_address() {
        let p = Prefixes::new(vec![
            (Ipv4Addr::new(100, 64, 1, 0), 24, 1),
            (Ipv4Addr::new(100, 64, 3, 0), 24, 2),
        ]);
        assert_eq!(p.class(u32::from(Ipv4Addr::new(100, 64, 1, 200))), Some(1));
        assert_eq!(p.class(u32::from(Ipv4Addr::new(100, 64, 2, 1))), None);
        assert_eq!(p.class(u32::from(Ipv4Addr::new(100, 64, 3, 0))), Some(2));
        assert_eq!(p.class(u32::from(Ipv4Addr::new(1, 1, 1, 1))), None);
    }
}
