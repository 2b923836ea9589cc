//! ctnetlink's message format: the connections it describes (two tuples each), the dump
//! request we send, and the decoder of what the kernel sends back (dump rows and NEW/DESTROY
//! events), bounded by the datagram it reads.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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

pub(super) const NETLINK_NETFILTER: libc::c_int = 12;
pub(super) const NFNL_SUBSYS_CTNETLINK: u16 = 1;
pub(super) const IPCTNL_MSG_CT_NEW: u16 = 0;
pub(super) const IPCTNL_MSG_CT_GET: u16 = 1;
pub(super) const IPCTNL_MSG_CT_DELETE: u16 = 2;
/// Legacy multicast group bits: NFNLGRP_CONNTRACK_NEW (1) and _DESTROY (3).
pub(super) const GROUP_NEW: u32 = 1 << 0;
pub(super) const GROUP_DESTROY: u32 = 1 << 2;
pub(super) const NLMSG_HDR: usize = 16;
pub(super) const NFGENMSG: usize = 4;
pub(super) const NLMSG_NOOP: u16 = 1;
pub(super) const NLMSG_ERROR: u16 = 2;
pub(super) const NLMSG_DONE: u16 = 3;
pub(super) const NLM_F_REQUEST: u16 = 1;
pub(super) const NLM_F_DUMP: u16 = 0x300;

pub(super) const CTA_TUPLE_ORIG: u16 = 1;
pub(super) const CTA_TUPLE_REPLY: u16 = 2;
pub(super) const CTA_TUPLE_IP: u16 = 1;
pub(super) const CTA_TUPLE_PROTO: u16 = 2;
pub(super) const CTA_IP_V4_SRC: u16 = 1;
pub(super) const CTA_IP_V4_DST: u16 = 2;
pub(super) const CTA_IP_V6_SRC: u16 = 3;
pub(super) const CTA_IP_V6_DST: u16 = 4;
pub(super) const CTA_PROTO_NUM: u16 = 1;
pub(super) const CTA_PROTO_SRC_PORT: u16 = 2;
pub(super) const CTA_PROTO_DST_PORT: u16 = 3;
/// Attribute type bits that are flags, not part of the type.
pub(super) const NLA_TYPE_MASK: u16 = !(0x8000 | 0x4000);

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
#[path = "netlink_tests.rs"]
mod tests;
