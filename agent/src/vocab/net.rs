//! Addresses and prefixes: the CIDR type every stage parses and compares with, and the
//! longest-prefix table the topology, the AWS service ranges and Kubecost's rules look up in.

use std::{collections::HashMap, fmt, net::IpAddr, str::FromStr};

/// An IPv4 or IPv6 prefix. IPv4 is kept as an IPv4-mapped IPv6 prefix so one comparison serves
/// both families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: u128,
    /// Prefix length in the IPv6 (mapped) space.
    bits: u8,
}

#[derive(Debug, PartialEq, Eq)]
pub struct CidrError(&'static str);

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for CidrError {}

fn mapped(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn mask(bits: u8) -> u128 {
    if bits == 0 {
        0
    } else {
        u128::MAX << (128 - bits as u32)
    }
}

impl Cidr {
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, CidrError> {
        let bits = match addr {
            IpAddr::V4(_) if prefix <= 32 => prefix + 96,
            IpAddr::V6(_) if prefix <= 128 => prefix,
            IpAddr::V4(_) => return Err(CidrError("IPv4 prefix length must be 0..=32")),
            IpAddr::V6(_) => return Err(CidrError("IPv6 prefix length must be 0..=128")),
        };
        Ok(Cidr {
            network: mapped(addr) & mask(bits),
            bits,
        })
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        mapped(addr) & mask(self.bits) == self.network
    }

    pub fn prefix_bits(&self) -> u8 {
        self.bits
    }

    /// The single address `addr`.
    pub fn host(addr: IpAddr) -> Cidr {
        Cidr {
            network: mapped(addr),
            bits: 128,
        }
    }

    /// The network address in its own family and the prefix length in that family.
    pub fn parts(&self) -> (IpAddr, u8) {
        let v6 = std::net::Ipv6Addr::from(self.network);
        match v6.to_ipv4_mapped() {
            Some(v4) if self.bits >= 96 => (IpAddr::V4(v4), self.bits - 96),
            _ => (IpAddr::V6(v6), self.bits),
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (addr, bits) = self.parts();
        write!(f, "{addr}/{bits}")
    }
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (
                a,
                Some(
                    p.parse::<u8>()
                        .map_err(|_| CidrError("prefix length is not a number"))?,
                ),
            ),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| CidrError("not an IPv4 or IPv6 address"))?;
        let prefix = prefix.unwrap_or(if addr.is_ipv4() { 32 } else { 128 });
        Cidr::new(addr, prefix)
    }
}

/// Longest-prefix lookup over IPv4 and IPv6 prefixes: one hash probe per distinct prefix length,
/// longest first. For equal prefixes the first value inserted wins.
#[derive(Clone, Debug, PartialEq)]
pub struct PrefixTable<T> {
    by_length: Vec<(u8, HashMap<u128, T>)>,
}

impl<T> Default for PrefixTable<T> {
    fn default() -> Self {
        PrefixTable {
            by_length: Vec::new(),
        }
    }
}

impl<T> PrefixTable<T> {
    /// Inserts `value` for `cidr` unless that exact prefix already has one.
    pub fn insert(&mut self, cidr: Cidr, value: T) {
        let slot = match self.by_length.iter().position(|(b, _)| *b == cidr.bits) {
            Some(i) => i,
            None => {
                self.by_length.push((cidr.bits, HashMap::new()));
                self.by_length.sort_by_key(|(b, _)| std::cmp::Reverse(*b));
                self.by_length
                    .iter()
                    .position(|(b, _)| *b == cidr.bits)
                    .unwrap_or_default()
            }
        };
        self.by_length[slot].1.entry(cidr.network).or_insert(value);
    }

    /// The value of the longest prefix containing `addr`.
    pub fn lookup(&self, addr: IpAddr) -> Option<&T> {
        let a = mapped(addr);
        self.by_length
            .iter()
            .find_map(|(bits, map)| map.get(&(a & mask(*bits))))
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.by_length.iter().flat_map(|(_, m)| m.values())
    }
}

/// Parses a list of prefixes; the error names the entry (`field[i]`) and what is wrong.
pub fn cidr_list(field: &str, list: &[String]) -> Result<Vec<Cidr>, (String, String)> {
    list.iter()
        .enumerate()
        .map(|(i, text)| {
            text.parse::<Cidr>()
                .map_err(|e| (format!("{field}[{i}]"), format!("{text:?}: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing_rejects_bad_input() {
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0/8".parse::<Cidr>().is_err());
        assert!("::/129".parse::<Cidr>().is_err());
        assert!("10.0.0.0/x".parse::<Cidr>().is_err());
        let host: Cidr = "10.9.9.9".parse().unwrap();
        assert!(host.contains("10.9.9.9".parse().unwrap()));
        assert!(!host.contains("10.9.9.8".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!(!all.contains("2001:db8::1".parse().unwrap()));
    }
}
