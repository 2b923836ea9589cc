use super::*;
use crate::classify::nat::conntrack::{Connection, Event};

use crate::classify::nat::conntrack::test_tuple as t;

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
