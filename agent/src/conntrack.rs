//! The kernel's connection tracking table, read over ctnetlink: a dump of what exists and the
//! NEW/DESTROY events after it. Only the two tuples of each connection are decoded — they are what
//! says where NAT really sent a connection (original: pod → Service; reply: backend → pod).
//!
//! Written against the socket directly rather than with a netlink crate: we need one request, two
//! multicast groups and four attributes, and we need to see ENOBUFS (events dropped because we
//! fell behind) to resynchronise with a dump — a tiny, fully tested decoder does that plainly.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    time::Duration,
};

const NETLINK_NETFILTER: libc::c_int = 12;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
/// Legacy multicast group bits: NFNLGRP_CONNTRACK_NEW (1) and _DESTROY (3).
const GROUP_NEW: u32 = 1 << 0;
const GROUP_DESTROY: u32 = 1 << 2;
const NLMSG_HDR: usize = 16;
const NFGENMSG: usize = 4;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
/// Attribute type bits that are flags, not part of the type.
const NLA_TYPE_MASK: u16 = !(0x8000 | 0x4000);

/// One direction of a connection as the packets carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub protocol: u8,
    pub src: IpAddr,
    pub src_port: u16,
    pub dst: IpAddr,
    pub dst_port: u16,
}

/// A TCP tuple from text, for the tests of this module and of `nat`.
#[cfg(test)]
pub(crate) fn test_tuple(src: &str, sport: u16, dst: &str, dport: u16) -> Tuple {
    Tuple {
        protocol: 6,
        src: src.parse().unwrap(),
        src_port: sport,
        dst: dst.parse().unwrap(),
        dst_port: dport,
    }
}

/// A tracked connection: what the originator sent (`original`) and what the answer looks like
/// (`reply`). Without NAT each is the other reversed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    pub original: Tuple,
    pub reply: Tuple,
}

impl Connection {
    /// Destination NAT: the originator sent to an address that is not the one answering.
    pub fn dnat(&self) -> bool {
        self.original.dst != self.reply.src || self.original.dst_port != self.reply.src_port
    }
    /// Source NAT: the answer goes to an address that is not the originator's.
    pub fn snat(&self) -> bool {
        self.original.src != self.reply.dst || self.original.src_port != self.reply.dst_port
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A new connection (also every row of a dump).
    New(Connection),
    Destroy(Connection),
}

/// What one received datagram held.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Received {
    pub events: Vec<Event>,
    /// Messages that could not be decoded, with the reason (the rest of the datagram is kept).
    pub malformed: Vec<String>,
    /// A dump's end marker was seen.
    pub done: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("opening a ctnetlink socket: {0} (the kernel needs nf_conntrack_netlink, and we need CAP_NET_ADMIN)")]
    Open(io::Error),
    #[error("entering network namespace {path}: {source}")]
    Netns { path: String, source: io::Error },
    #[error("the kernel refused the conntrack dump: {0}")]
    Refused(io::Error),
    #[error("reading ctnetlink: {0}")]
    Io(#[from] io::Error),
}

/// Moves the calling thread into the network namespace at `path` (a `/run/netns/X` or
/// `/proc/PID/ns/net` file). Sockets opened afterwards belong to it.
pub fn enter_netns(path: &Path) -> Result<(), ConntrackError> {
    let err = |source| ConntrackError::Netns {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(err)?;
    // SAFETY: setns takes a descriptor we own and a flag.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(())
}

/// A ctnetlink socket: either subscribed to NEW and DESTROY events, or used for dumps.
pub struct ConntrackSocket {
    fd: OwnedFd,
    buf: Vec<u8>,
    seq: u32,
}

impl ConntrackSocket {
    fn open(groups: u32, receive_buffer: usize, timeout: Duration) -> Result<Self, ConntrackError> {
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            return Err(ConntrackError::Open(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // A storm of new connections must not overflow the queue between two reads; FORCE
        // lifts the rmem_max cap (we have CAP_NET_ADMIN), plain RCVBUF is the fallback.
        let size = receive_buffer as libc::c_int;
        if setsockopt(&fd, libc::SO_RCVBUFFORCE, &size).is_err() {
            let _ = setsockopt(&fd, libc::SO_RCVBUF, &size);
        }
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        setsockopt(&fd, libc::SO_RCVTIMEO, &tv).map_err(ConntrackError::Open)?;
        // SAFETY: zeroed sockaddr_nl is valid; we set family and groups.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = groups;
        // SAFETY: addr is a valid sockaddr_nl of the given length.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if ret != 0 {
            return Err(ConntrackError::Open(io::Error::last_os_error()));
        }
        Ok(ConntrackSocket {
            fd,
            buf: vec![0; 256 * 1024],
            seq: 0,
        })
    }

    /// Subscribed to new and destroyed connections.
    pub fn events(receive_buffer: usize, timeout: Duration) -> Result<Self, ConntrackError> {
        Self::open(GROUP_NEW | GROUP_DESTROY, receive_buffer, timeout)
    }

    /// For dumps.
    pub fn dumper(timeout: Duration) -> Result<Self, ConntrackError> {
        Self::open(0, 4 * 1024 * 1024, timeout)
    }

    /// Dumps the whole table (IPv4 and IPv6), calling `each` per batch of rows.
    pub fn dump(&mut self, mut each: impl FnMut(Received)) -> Result<(), ConntrackError> {
        self.seq = self.seq.wrapping_add(1);
        let request = dump_request(self.seq);
        // SAFETY: sending a byte buffer we own to the kernel (destination: the default, pid 0).
        let sent = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                request.as_ptr() as *const libc::c_void,
                request.len(),
                0,
            )
        };
        if sent < 0 {
            return Err(ConntrackError::Refused(io::Error::last_os_error()));
        }
        loop {
            let got = self.recv()?;
            let done = got.done;
            each(got);
            if done {
                return Ok(());
            }
        }
    }

    /// Reads one datagram. `ErrorKind::WouldBlock`/`TimedOut` when nothing came within the
    /// timeout; `ENOBUFS` when the kernel dropped events because we fell behind.
    pub fn recv(&mut self) -> Result<Received, ConntrackError> {
        self.recv_with(0)
    }

    /// Reads one datagram if one is queued (`ErrorKind::WouldBlock` otherwise).
    pub fn try_recv(&mut self) -> Result<Received, ConntrackError> {
        self.recv_with(libc::MSG_DONTWAIT)
    }

    fn recv_with(&mut self, flags: libc::c_int) -> Result<Received, ConntrackError> {
        // SAFETY: receiving into a buffer we own, of its length.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                self.buf.as_mut_ptr() as *mut libc::c_void,
                self.buf.len(),
                flags,
            )
        };
        if n < 0 {
            return Err(ConntrackError::Io(io::Error::last_os_error()));
        }
        Ok(decode(&self.buf[..n as usize]))
    }
}

fn setsockopt<T>(fd: &OwnedFd, option: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live T of the size passed.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            value as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `IPCTNL_MSG_CT_GET` with `NLM_F_DUMP` for every family.
pub fn dump_request(seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(NLMSG_HDR + NFGENMSG);
    let len = (NLMSG_HDR + NFGENMSG) as u32;
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET).to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: AF_UNSPEC (all families), version 0, resource id 0.
    m.extend_from_slice(&[0, 0, 0, 0]);
    m
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Decodes every netlink message of one datagram.
pub fn decode(buf: &[u8]) -> Received {
    let mut out = Received::default();
    let mut at = 0;
    let mut index = 0;
    while at + NLMSG_HDR <= buf.len() {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap_or_default()) as usize;
        let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
        if len < NLMSG_HDR || at + len > buf.len() {
            out.malformed.push(format!(
                "netlink message {index}: length {len} does not fit the {} bytes left",
                buf.len() - at
            ));
            break;
        }
        let body = &buf[at + NLMSG_HDR..at + len];
        match kind {
            NLMSG_DONE => out.done = true,
            NLMSG_NOOP => {}
            NLMSG_ERROR => {
                let code = body
                    .get(..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().unwrap_or_default()))
                    .unwrap_or(0);
                if code != 0 {
                    out.malformed.push(format!(
                        "netlink message {index}: error {code} from the kernel"
                    ));
                    out.done = true;
                }
            }
            _ if kind >> 8 == NFNL_SUBSYS_CTNETLINK => {
                let event = match kind & 0xff {
                    IPCTNL_MSG_CT_NEW => Some(true),
                    IPCTNL_MSG_CT_DELETE => Some(false),
                    _ => None,
                };
                if let Some(new) = event {
                    match body
                        .get(NFGENMSG..)
                        .ok_or_else(|| "shorter than its nfgenmsg header".to_owned())
                        .and_then(connection)
                    {
                        Ok(Some(c)) if new => out.events.push(Event::New(c)),
                        Ok(Some(c)) => out.events.push(Event::Destroy(c)),
                        Ok(None) => {}
                        Err(e) => out
                            .malformed
                            .push(format!("conntrack message {index}: {e}")),
                    }
                }
            }
            _ => {}
        }
        at += align4(len);
        index += 1;
    }
    out
}

/// Attributes (type without flag bits, payload) of a netlink attribute stream.
fn attributes(mut buf: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), String>> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            buf = &[];
            return Some(Err(format!(
                "attribute {kind} has length {len}, outside its message"
            )));
        }
        let payload = &buf[4..len];
        buf = &buf[align4(len).min(buf.len())..];
        Some(Ok((kind, payload)))
    })
}

fn find(buf: &[u8], want: u16) -> Result<Option<&[u8]>, String> {
    for attr in attributes(buf) {
        let (kind, payload) = attr?;
        if kind == want {
            return Ok(Some(payload));
        }
    }
    Ok(None)
}

/// Both tuples of a conntrack message; `None` for protocols without ports (ICMP…), which we do not
/// count per connection.
fn connection(attrs: &[u8]) -> Result<Option<Connection>, String> {
    let original = find(attrs, CTA_TUPLE_ORIG)?.ok_or("no CTA_TUPLE_ORIG")?;
    let reply = find(attrs, CTA_TUPLE_REPLY)?.ok_or("no CTA_TUPLE_REPLY")?;
    let (Some(original), Some(reply)) = (
        tuple(original).map_err(|e| format!("CTA_TUPLE_ORIG: {e}"))?,
        tuple(reply).map_err(|e| format!("CTA_TUPLE_REPLY: {e}"))?,
    ) else {
        return Ok(None);
    };
    Ok(Some(Connection { original, reply }))
}

fn address(kind: u16, payload: &[u8]) -> Result<IpAddr, String> {
    match payload.len() {
        4 => Ok(IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(payload).unwrap_or_default(),
        ))),
        16 => Ok(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(payload).unwrap_or_default(),
        ))),
        n => Err(format!("address attribute {kind} has {n} bytes")),
    }
}

fn tuple(attrs: &[u8]) -> Result<Option<Tuple>, String> {
    let ip = find(attrs, CTA_TUPLE_IP)?.ok_or("no CTA_TUPLE_IP")?;
    let proto = find(attrs, CTA_TUPLE_PROTO)?.ok_or("no CTA_TUPLE_PROTO")?;
    let (mut src, mut dst) = (None, None);
    for attr in attributes(ip) {
        let (kind, payload) = attr?;
        match kind {
            CTA_IP_V4_SRC | CTA_IP_V6_SRC => src = Some(address(kind, payload)?),
            CTA_IP_V4_DST | CTA_IP_V6_DST => dst = Some(address(kind, payload)?),
            _ => {}
        }
    }
    let (mut protocol, mut src_port, mut dst_port) = (None, None, None);
    for attr in attributes(proto) {
        let (kind, payload) = attr?;
        let port = || -> Result<u16, String> {
            <[u8; 2]>::try_from(payload)
                .map(u16::from_be_bytes)
                .map_err(|_| format!("port attribute {kind} has {} bytes", payload.len()))
        };
        match kind {
            CTA_PROTO_NUM => protocol = payload.first().copied(),
            CTA_PROTO_SRC_PORT => src_port = Some(port()?),
            CTA_PROTO_DST_PORT => dst_port = Some(port()?),
            _ => {}
        }
    }
    let src = src.ok_or("no source address")?;
    let dst = dst.ok_or("no destination address")?;
    let protocol = protocol.ok_or("no CTA_PROTO_NUM")?;
    let (Some(src_port), Some(dst_port)) = (src_port, dst_port) else {
        return Ok(None);
    };
    Ok(Some(Tuple {
        protocol,
        src,
        src_port,
        dst,
        dst_port,
    }))
}

/// Builds ctnetlink messages the way the kernel does, for the parser's tests.
#[cfg(test)]
pub(crate) mod encode {
    use super::*;

    fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
        out.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(payload);
        out.resize(align4(out.len()), 0);
    }

    fn nested(out: &mut Vec<u8>, kind: u16, inner: &[u8]) {
        attr(out, kind | 0x8000, inner);
    }

    fn tuple(t: &Tuple) -> Vec<u8> {
        let mut ip = Vec::new();
        match (t.src, t.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                attr(&mut ip, CTA_IP_V4_SRC, &s.octets());
                attr(&mut ip, CTA_IP_V4_DST, &d.octets());
            }
            (s, d) => {
                let v6 = |a: IpAddr| match a {
                    IpAddr::V6(a) => a.octets(),
                    IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                };
                attr(&mut ip, CTA_IP_V6_SRC, &v6(s));
                attr(&mut ip, CTA_IP_V6_DST, &v6(d));
            }
        }
        let mut proto = Vec::new();
        attr(&mut proto, CTA_PROTO_NUM, &[t.protocol]);
        attr(&mut proto, CTA_PROTO_SRC_PORT, &t.src_port.to_be_bytes());
        attr(&mut proto, CTA_PROTO_DST_PORT, &t.dst_port.to_be_bytes());
        let mut out = Vec::new();
        nested(&mut out, CTA_TUPLE_IP, &ip);
        nested(&mut out, CTA_TUPLE_PROTO, &proto);
        out
    }

    /// One ctnetlink event message (NEW or DESTROY) for `c`.
    pub fn event(e: &Event) -> Vec<u8> {
        let (kind, c) = match e {
            Event::New(c) => (IPCTNL_MSG_CT_NEW, c),
            Event::Destroy(c) => (IPCTNL_MSG_CT_DELETE, c),
        };
        let mut attrs = Vec::new();
        nested(&mut attrs, CTA_TUPLE_ORIG, &tuple(&c.original));
        nested(&mut attrs, CTA_TUPLE_REPLY, &tuple(&c.reply));
        // CTA_STATUS, which we do not read, as the kernel sends it.
        attr(&mut attrs, 3 | 0x4000, &0x1a8u32.to_be_bytes());
        let mut m = Vec::new();
        let len = (NLMSG_HDR + NFGENMSG + attrs.len()) as u32;
        m.extend_from_slice(&len.to_ne_bytes());
        m.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | kind).to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&[2, 0, 0, 0]);
        m.extend_from_slice(&attrs);
        m
    }

    pub fn done() -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&20u32.to_ne_bytes());
        m.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        m.extend_from_slice(&[0; 14]);
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::conntrack::test_tuple as t;

    fn cluster_ip() -> Connection {
        Connection {
            original: t("10.0.1.2", 40_000, "172.20.0.10", 80),
            reply: t("10.0.16.10", 8080, "10.0.1.2", 40_000),
        }
    }

    #[test]
    fn events_round_trip_through_the_kernel_encoding() {
        let v6 = Connection {
            original: t("fd00:0:1::2", 5, "fd00:ffff::a", 443),
            reply: t("fd00:0:16::10", 8443, "fd00::1", 61_000),
        };
        let mut datagram = encode::event(&Event::New(cluster_ip()));
        datagram.extend(encode::event(&Event::Destroy(v6)));
        datagram.extend(encode::done());
        let got = decode(&datagram);
        assert_eq!(
            got.events,
            vec![Event::New(cluster_ip()), Event::Destroy(v6)]
        );
        assert!(got.done);
        assert!(got.malformed.is_empty(), "{:?}", got.malformed);
        assert!(cluster_ip().dnat() && !cluster_ip().snat());
        assert!(v6.dnat() && v6.snat());
    }

    #[test]
    fn a_malformed_message_is_named_and_the_others_are_kept() {
        let good = encode::event(&Event::New(cluster_ip()));
        // The same message with the reply tuple's length inflated past the end.
        let mut bad = good.clone();
        let reply_at = {
            // Find CTA_TUPLE_REPLY (nested flag set) after the headers.
            let mut at = NLMSG_HDR + NFGENMSG;
            loop {
                let kind = u16::from_ne_bytes([bad[at + 2], bad[at + 3]]) & NLA_TYPE_MASK;
                if kind == CTA_TUPLE_REPLY {
                    break at;
                }
                at += align4(u16::from_ne_bytes([bad[at], bad[at + 1]]) as usize);
            }
        };
        bad[reply_at..reply_at + 2].copy_from_slice(&4000u16.to_ne_bytes());
        let mut datagram = bad;
        datagram.extend(&good);
        let got = decode(&datagram);
        assert_eq!(got.events, vec![Event::New(cluster_ip())]);
        assert_eq!(got.malformed.len(), 1);
        assert!(
            got.malformed[0].contains("attribute 2 has length 4000"),
            "{:?}",
            got.malformed
        );
        // A truncated datagram: named, nothing invented.
        let got = decode(&good[..good.len() - 8]);
        assert!(got.events.is_empty());
        assert!(
            got.malformed[0].contains("does not fit"),
            "{:?}",
            got.malformed
        );
    }

    #[test]
    fn protocols_without_ports_are_skipped_without_error() {
        let mut m = encode::event(&Event::New(cluster_ip()));
        // Remove the port attributes by decoding a hand-built ICMP-like tuple instead.
        let icmp = {
            let mut ip = Vec::new();
            let a = |out: &mut Vec<u8>, kind: u16, p: &[u8]| {
                out.extend_from_slice(&((4 + p.len()) as u16).to_ne_bytes());
                out.extend_from_slice(&kind.to_ne_bytes());
                out.extend_from_slice(p);
                out.resize(align4(out.len()), 0);
            };
            a(&mut ip, CTA_IP_V4_SRC, &[10, 0, 1, 2]);
            a(&mut ip, CTA_IP_V4_DST, &[10, 0, 2, 10]);
            let mut proto = Vec::new();
            a(&mut proto, CTA_PROTO_NUM, &[1]);
            let mut tuple = Vec::new();
            a(&mut tuple, CTA_TUPLE_IP | 0x8000, &ip);
            a(&mut tuple, CTA_TUPLE_PROTO | 0x8000, &proto);
            tuple
        };
        assert_eq!(tuple(&icmp), Ok(None));
        m.truncate(0);
        assert!(decode(&m).events.is_empty());
    }

    #[test]
    fn dump_request_is_a_ctnetlink_get_dump() {
        let r = dump_request(7);
        assert_eq!(r.len(), 20);
        assert_eq!(u16::from_ne_bytes([r[4], r[5]]), 0x0101);
        assert_eq!(u16::from_ne_bytes([r[6], r[7]]), 0x301);
    }
}
