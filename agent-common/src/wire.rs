//! From what the kernel hands a `cgroup_skb` program to what the NIC puts on the wire.
//!
//! A `cgroup_skb` packet's data starts at the IP header and `len` is its L3 length. With offloads
//! the stack hands us super-packets (GSO on send, GRO on receive) that become `segs` packets on the
//! wire, each with its own IP and transport headers: `len + (segs - 1) × header_len` bytes. Counting
//! that, rather than `len`, is what keeps the figures the same with offloads on or off and equal to
//! what AWS bills (IP bytes per packet).
//!
//! Headers are read as 32-bit words in memory order (network byte order within each word): the
//! kernel program then moves addresses with word loads and stores instead of byte loops.

use crate::{FAMILY_IPV4, FAMILY_IPV6};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_SCTP: u8 = 132;
const IPV6_HEADER_LEN: u32 = 40;
const UDP_HEADER_LEN: u32 = 8;

/// The few things the per-packet logic needs from a packet. The kernel program implements it over
/// `__sk_buff`; tests implement it over a byte vector.
pub trait Packet {
    /// `skb->protocol` in host byte order (an `ETH_P_*` value).
    fn protocol(&self) -> u16;
    /// L3 length, including every segment's payload of a super-packet.
    fn l3_len(&self) -> u32;
    fn gso_segs(&self) -> u32;
    fn gso_size(&self) -> u32;
    /// Copies `4 × N` bytes from `offset` (relative to the IP header) as `N` words in memory
    /// order; `None` when out of bounds.
    fn load_words<const N: usize>(&self, offset: u32) -> Option<[u32; N]>;
}

/// The two ends and the wire size of one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Measured {
    pub family: u8,
    /// As in `FlowKey::remote` and `FlowKey::local`.
    pub remote: [u32; 4],
    pub local: [u32; 4],
    /// Network byte order; zero with `protocol` when the packet has no ports we can read.
    pub remote_port: u16,
    pub local_port: u16,
    /// TCP, UDP or SCTP; 0 for other protocols and IPv4 fragments after the first.
    pub protocol: u8,
    pub bytes: u64,
    pub packets: u64,
}

impl Measured {
    /// The per-connection counting key of this packet.
    #[inline(always)]
    pub fn key(&self, cgroup_id: u64, direction: u8) -> crate::FlowKey {
        crate::FlowKey {
            cgroup_id,
            remote: self.remote,
            local: self.local,
            local_port: self.local_port,
            remote_port: self.remote_port,
            family: self.family,
            direction,
            protocol: self.protocol,
            _pad: 0,
        }
    }
}

/// Byte `i` (0 = lowest address) of a word read in memory order.
#[inline(always)]
fn byte(word: u32, i: usize) -> u8 {
    word.to_ne_bytes()[i]
}

/// Wire bytes and packets of a (possibly super-) packet of `len` L3 bytes whose per-segment headers
/// (IP + transport) are `header_len` bytes. `gso_segs` is trusted when set; an skb from an untrusted
/// source (SKB_GSO_DODGY) may carry only `gso_size`, and then the count is derived from it.
#[inline(always)]
pub fn wire_size(len: u32, gso_segs: u32, gso_size: u32, header_len: u32) -> (u64, u64) {
    let segs = if gso_segs > 0 {
        gso_segs
    } else if gso_size > 0 && len > header_len {
        (len - header_len).div_ceil(gso_size)
    } else {
        1
    };
    if segs <= 1 {
        return (len as u64, 1);
    }
    (
        len as u64 + (segs as u64 - 1) * header_len as u64,
        segs as u64,
    )
}

/// Whether the headers must be parsed to size this packet: only super-packets need them, so the
/// common small packet costs no transport-header load.
#[inline(always)]
fn needs_header_len(gso_segs: u32, gso_size: u32) -> bool {
    gso_segs > 1 || (gso_segs == 0 && gso_size > 0)
}

/// Transport header length at `offset`; 0 for protocols that are never segmented.
#[inline(always)]
fn transport_header_len<P: Packet>(packet: &P, proto: u8, offset: u32) -> u32 {
    match proto {
        // TCP data offset: the high nibble of byte 12 counts 32-bit words.
        IPPROTO_TCP => match packet.load_words::<1>(offset + 12) {
            Some([w]) => ((byte(w, 0) >> 4) as u32) * 4,
            None => 20,
        },
        IPPROTO_UDP => UDP_HEADER_LEN,
        _ => 0,
    }
}

/// Source and destination ports (network byte order) of a TCP, UDP or SCTP header at `offset`:
/// all three start with them. `None` for other protocols.
#[inline(always)]
fn ports<P: Packet>(packet: &P, proto: u8, offset: u32) -> Option<(u16, u16)> {
    match proto {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => {
            let [w] = packet.load_words::<1>(offset)?;
            let b = w.to_ne_bytes();
            Some((
                u16::from_ne_bytes([b[0], b[1]]),
                u16::from_ne_bytes([b[2], b[3]]),
            ))
        }
        _ => None,
    }
}

/// Measures one packet. `egress` selects the remote end: the destination of what we send, the
/// source of what we receive. `None` for non-IP packets or a header that cannot be read (such a
/// packet is not ours to count: nothing on an AWS bill is non-IP).
#[inline(always)]
pub fn measure<P: Packet>(packet: &P, egress: bool) -> Option<Measured> {
    let len = packet.l3_len();
    let gso_segs = packet.gso_segs();
    let gso_size = packet.gso_size();
    let segmented = needs_header_len(gso_segs, gso_size);
    let (family, src, dst, proto, l4, header_len) = match packet.protocol() {
        ETH_P_IP => {
            let ip: [u32; 5] = packet.load_words(0)?;
            let ip_len = ((byte(ip[0], 0) & 0x0f) as u32) * 4;
            let proto = byte(ip[2], 1);
            let header_len = if segmented {
                ip_len + transport_header_len(packet, proto, ip_len)
            } else {
                0
            };
            // Fragment offset (low 13 bits of bytes 6–7): later fragments carry no ports.
            let first_fragment = byte(ip[1], 2) & 0x1f == 0 && byte(ip[1], 3) == 0;
            let l4 = if first_fragment { Some(ip_len) } else { None };
            // Words 3 and 4: source and destination.
            (
                FAMILY_IPV4,
                [ip[3], 0, 0, 0],
                [ip[4], 0, 0, 0],
                proto,
                l4,
                header_len,
            )
        }
        ETH_P_IPV6 => {
            let ip: [u32; 10] = packet.load_words(0)?;
            let proto = byte(ip[1], 2);
            // Extension headers are not walked: the kernel only segments TCP and UDP, which follow
            // the fixed header directly in every stack we know of.
            let header_len = if segmented {
                IPV6_HEADER_LEN + transport_header_len(packet, proto, IPV6_HEADER_LEN)
            } else {
                0
            };
            // Words 2..6 source, 6..10 destination.
            (
                FAMILY_IPV6,
                [ip[2], ip[3], ip[4], ip[5]],
                [ip[6], ip[7], ip[8], ip[9]],
                proto,
                Some(IPV6_HEADER_LEN),
                header_len,
            )
        }
        _ => return None,
    };
    let (bytes, packets) = wire_size(len, gso_segs, gso_size, header_len);
    let (sport, dport, protocol) = match l4.and_then(|at| ports(packet, proto, at)) {
        Some((s, d)) => (s, d, proto),
        None => (0, 0, 0),
    };
    let (remote, local, remote_port, local_port) = if egress {
        (dst, src, dport, sport)
    } else {
        (src, dst, sport, dport)
    };
    Some(Measured {
        family,
        remote,
        local,
        remote_port,
        local_port,
        protocol,
        bytes,
        packets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FlowKey;
    use std::vec::Vec;

    struct FakeSkb {
        protocol: u16,
        data: Vec<u8>,
        len: u32,
        gso_segs: u32,
        gso_size: u32,
    }

    impl Packet for FakeSkb {
        fn protocol(&self) -> u16 {
            self.protocol
        }
        fn l3_len(&self) -> u32 {
            self.len
        }
        fn gso_segs(&self) -> u32 {
            self.gso_segs
        }
        fn gso_size(&self) -> u32 {
            self.gso_size
        }
        fn load_words<const N: usize>(&self, offset: u32) -> Option<[u32; N]> {
            let start = offset as usize;
            let bytes = self.data.get(start..start + 4 * N)?;
            let mut out = [0u32; N];
            for (i, w) in out.iter_mut().enumerate() {
                *w = u32::from_ne_bytes(bytes[i * 4..i * 4 + 4].try_into().ok()?);
            }
            Some(out)
        }
    }

    fn octets(m: &Measured) -> [u8; 16] {
        FlowKey::new(0, m.remote, m.family, 0).remote_octets()
    }

    fn ipv4_tcp(src: [u8; 4], dst: [u8; 4], tcp_options: usize, payload: usize) -> Vec<u8> {
        let mut p = std::vec![0u8; 20 + 20 + tcp_options + payload];
        p[0] = 0x45;
        p[9] = IPPROTO_TCP;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20 + 12] = (((20 + tcp_options) / 4) as u8) << 4;
        p
    }

    /// Segments a payload the way a NIC does (MSS-sized, the last one shorter) and adds up the IP
    /// bytes of the segments: the independent truth for `wire_size`.
    fn segmented_wire_bytes(header_len: u32, payload: u32, mss: u32) -> (u64, u64) {
        let mut left = payload;
        let (mut bytes, mut packets) = (0u64, 0u64);
        while left > 0 {
            let seg = left.min(mss);
            bytes += (header_len + seg) as u64;
            packets += 1;
            left -= seg;
        }
        (bytes, packets)
    }

    #[test]
    fn plain_packet_is_its_length() {
        assert_eq!(wire_size(1500, 0, 0, 52), (1500, 1));
        assert_eq!(wire_size(60, 1, 0, 0), (60, 1));
    }

    #[test]
    fn super_packet_matches_segmenting_it() {
        for (header_len, payload, mss) in [
            (52u32, 65_000u32, 1448u32),
            (40, 1, 1460),
            (60, 64_000, 8948),
            (28, 30_000, 1472),
            (72, 1448 * 45, 1448),
        ] {
            let segs = payload.div_ceil(mss);
            let len = header_len + payload;
            let want = segmented_wire_bytes(header_len, payload, mss);
            assert_eq!(wire_size(len, segs, mss, header_len), want, "gso_segs set");
            assert_eq!(
                wire_size(len, 0, mss, header_len),
                want,
                "only gso_size set"
            );
        }
    }

    #[test]
    fn measures_ipv4_tcp_super_packet_and_picks_remote_by_direction() {
        let data = ipv4_tcp([10, 0, 0, 1], [203, 0, 113, 7], 12, 10 * 1448);
        let skb = FakeSkb {
            protocol: ETH_P_IP,
            len: data.len() as u32,
            data,
            gso_segs: 10,
            gso_size: 1448,
        };
        let out = measure(&skb, true).unwrap();
        assert_eq!(out.family, FAMILY_IPV4);
        assert_eq!(&octets(&out)[..4], &[203, 0, 113, 7]);
        assert_eq!(&octets(&out)[4..], &[0; 12]);
        assert_eq!(
            (out.bytes, out.packets),
            segmented_wire_bytes(52, 10 * 1448, 1448)
        );
        let back = measure(&skb, false).unwrap();
        assert_eq!(&octets(&back)[..4], &[10, 0, 0, 1]);
    }

    #[test]
    fn connection_tuple_is_read_from_the_point_of_view_of_the_local_socket() {
        let mut data = ipv4_tcp([10, 0, 1, 2], [172, 20, 0, 10], 0, 100);
        data[20..22].copy_from_slice(&40_000u16.to_be_bytes());
        data[22..24].copy_from_slice(&80u16.to_be_bytes());
        let skb = FakeSkb {
            protocol: ETH_P_IP,
            len: data.len() as u32,
            data,
            gso_segs: 0,
            gso_size: 0,
        };
        let out = measure(&skb, true).unwrap();
        let key = out.key(9, crate::DIRECTION_EGRESS);
        assert!(key.is_connection());
        assert_eq!(&key.remote_octets()[..4], &[172, 20, 0, 10]);
        assert_eq!(&key.local_octets()[..4], &[10, 0, 1, 2]);
        assert_eq!(u16::from_be(key.remote_port), 80);
        assert_eq!(u16::from_be(key.local_port), 40_000);
        assert_eq!(key.protocol, IPPROTO_TCP);
        // Received: the source is the remote end.
        let back = measure(&skb, false).unwrap();
        assert_eq!(u16::from_be(back.remote_port), 40_000);
        assert_eq!(&back.key(9, 1).local_octets()[..4], &[172, 20, 0, 10]);
        // The per-remote form drops the tuple and nothing else.
        let reduced = key.per_remote();
        assert!(!reduced.is_connection());
        assert_eq!(reduced, FlowKey::new(9, key.remote, FAMILY_IPV4, 0));
    }

    #[test]
    fn later_fragments_and_portless_protocols_have_no_tuple() {
        let mut data = ipv4_tcp([10, 0, 1, 2], [203, 0, 113, 7], 0, 100);
        data[6] = 0x00;
        data[7] = 0xb9; // fragment offset 185 × 8 bytes
        let fragment = FakeSkb {
            protocol: ETH_P_IP,
            len: data.len() as u32,
            data: data.clone(),
            gso_segs: 0,
            gso_size: 0,
        };
        let out = measure(&fragment, true).unwrap();
        assert_eq!((out.protocol, out.remote_port, out.local_port), (0, 0, 0));
        assert_eq!(out.bytes, data.len() as u64);
        data[6] = 0x40; // DF, offset 0
        data[7] = 0;
        data[9] = 1; // ICMP
        let icmp = FakeSkb {
            protocol: ETH_P_IP,
            len: data.len() as u32,
            data,
            gso_segs: 0,
            gso_size: 0,
        };
        assert_eq!(measure(&icmp, true).unwrap().protocol, 0);
    }

    #[test]
    fn measures_ipv6_udp_gso() {
        let mut data = std::vec![0u8; 40 + 8 + 4 * 1200];
        data[0] = 0x60;
        data[6] = IPPROTO_UDP;
        data[8..24].copy_from_slice(&[0xfd; 16]);
        let dst = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        data[24..40].copy_from_slice(&dst);
        let skb = FakeSkb {
            protocol: ETH_P_IPV6,
            len: data.len() as u32,
            data,
            gso_segs: 4,
            gso_size: 1200,
        };
        let out = measure(&skb, true).unwrap();
        assert_eq!(out.family, FAMILY_IPV6);
        assert_eq!(octets(&out), dst);
        assert_eq!(octets(&measure(&skb, false).unwrap()), [0xfd; 16]);
        assert_eq!(
            (out.bytes, out.packets),
            segmented_wire_bytes(48, 4800, 1200)
        );
    }

    #[test]
    fn non_ip_and_truncated_packets_are_not_counted() {
        let arp = FakeSkb {
            protocol: 0x0806,
            data: std::vec![0; 28],
            len: 28,
            gso_segs: 0,
            gso_size: 0,
        };
        assert_eq!(measure(&arp, true), None);
        let short = FakeSkb {
            protocol: ETH_P_IP,
            data: std::vec![0x45; 10],
            len: 10,
            gso_segs: 0,
            gso_size: 0,
        };
        assert_eq!(measure(&short, true), None);
    }
}
