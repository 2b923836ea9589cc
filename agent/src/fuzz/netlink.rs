//! The conntrack decoder's fuzzing: mutations that keep the netlink attribute structure (so
//! inputs get past the framing into the attribute decoder) besides the byte-level ones.

use super::*;

/// One netlink attribute: its type (with the nested flag) and payload or children.
#[derive(Clone)]
struct Attr {
    kind: u16,
    payload: Vec<u8>,
    children: Option<Vec<Attr>>,
}

fn parse_attrs(mut b: &[u8], depth: u32) -> Option<Vec<Attr>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let kind = u16::from_ne_bytes([b[2], b[3]]);
        if len < 4 || len > b.len() {
            return None;
        }
        let payload = &b[4..len];
        let children = if kind & 0x8000 != 0 && depth < 4 {
            parse_attrs(payload, depth + 1)
        } else {
            None
        };
        out.push(Attr {
            kind,
            payload: payload.to_vec(),
            children,
        });
        b = &b[((len + 3) & !3).min(b.len())..];
    }
    Some(out)
}

fn encode_attrs(attrs: &[Attr], out: &mut Vec<u8>) {
    for a in attrs {
        let body = match &a.children {
            Some(c) => {
                let mut v = Vec::new();
                encode_attrs(c, &mut v);
                v
            }
            None => a.payload.clone(),
        };
        out.extend_from_slice(&((4 + body.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&a.kind.to_ne_bytes());
        out.extend_from_slice(&body);
        out.resize((out.len() + 3) & !3, 0);
    }
}

/// Every attribute of the tree, depth first, as paths of indices.
fn paths(attrs: &[Attr], prefix: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
    for (i, a) in attrs.iter().enumerate() {
        prefix.push(i);
        out.push(prefix.clone());
        if let Some(c) = &a.children {
            paths(c, prefix, out);
        }
        prefix.pop();
    }
}

fn at<'a>(attrs: &'a mut Vec<Attr>, path: &[usize]) -> (&'a mut Vec<Attr>, usize) {
    if path.len() == 1 {
        return (attrs, path[0]);
    }
    let next = attrs[path[0]].children.get_or_insert_with(Vec::new);
    at(next, &path[1..])
}

/// Netlink-aware mutations of the first message: an attribute grows or shrinks, changes type,
/// is duplicated or removed, and every length is made consistent again.
fn mutate_netlink(rng: &mut Rng, data: &mut Vec<u8>) -> bool {
    const HEAD: usize = 16 + 4;
    if data.len() < HEAD {
        return false;
    }
    let len = (u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize).min(data.len());
    let Some(mut attrs) = parse_attrs(&data[HEAD.min(len)..len], 0) else {
        return false;
    };
    let mut all = Vec::new();
    paths(&attrs, &mut Vec::new(), &mut all);
    if all.is_empty() {
        return false;
    }
    let path = all[rng.below(all.len())].clone();
    let (siblings, i) = at(&mut attrs, &path);
    match rng.below(5) {
        0 => {
            let a = &mut siblings[i];
            if a.children.is_none() {
                let grow = rng.below(9) as isize - 4;
                let new_len = (a.payload.len() as isize + grow).max(0) as usize;
                a.payload.resize(new_len, rng.next() as u8);
            }
        }
        1 => siblings[i].kind = (rng.next() as u16) & 0x3f | (siblings[i].kind & 0x8000),
        2 => siblings[i].kind ^= 0x8000,
        3 => {
            let copy = siblings[i].clone();
            siblings.insert(i, copy);
        }
        _ => {
            siblings.remove(i);
        }
    }
    let mut body = Vec::new();
    encode_attrs(&attrs, &mut body);
    let mut out = data[..HEAD].to_vec();
    out.extend_from_slice(&body);
    let total = out.len() as u32;
    out[..4].copy_from_slice(&total.to_ne_bytes());
    out.extend_from_slice(&data[len..]);
    *data = out;
    true
}

#[test]
fn fuzz_conntrack_messages() {
    use crate::classify::nat::{
        conntrack::{test_tuple, Connection, Event},
        netlink::encode,
    };
    let c = Connection {
        original: test_tuple("10.0.1.2", 40_000, "172.20.0.10", 80),
        reply: test_tuple("10.0.16.9", 8080, "10.0.1.2", 40_000),
    };
    let v6 = Connection {
        original: test_tuple("fd00:0:1::11", 40_001, "fd00:ffff::10", 80),
        reply: test_tuple("fd00:0:16::10", 8080, "fd00:0:1::11", 40_001),
    };
    let mut batch = encode::event(&Event::New(c));
    batch.extend(encode::event(&Event::Destroy(v6)));
    batch.extend(encode::done());
    let seeds = [
        encode::event(&Event::New(c)),
        encode::event(&Event::Destroy(v6)),
        batch,
        crate::classify::nat::netlink::dump_request(7),
    ];
    let seeds: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
    let tokens: &[&[u8]] = &[&[0, 0, 0, 0], &[0xff, 0xff], &[4, 0], &[0x80], &[1, 1]];
    fuzz_with("conntrack", &seeds, tokens, mutate_netlink, |b| {
        let r = crate::classify::nat::netlink::decode(b);
        format!(
            "{} {} {} {:?}",
            r.events.len(),
            r.malformed.len(),
            r.done,
            r.malformed.first()
        )
    });
}
