//! Which networks this host is on, so a download can tell a peer on its
//! own subnet from one across a router.
//!
//! The networks come from the interfaces' own prefixes (`getifaddrs`):
//! those holding the agent's advertised or listen addresses, or, when it
//! listens on the unspecified address and advertises nothing, every
//! non-loopback interface. An address no interface holds (one advertised
//! through NAT) counts as a /24 (IPv4) or /64 (IPv6), the common LAN
//! sizes.

use std::net::IpAddr;

/// Assumed prefix of an IPv4 address no interface reports.
const FALLBACK_V4: u8 = 24;
/// Assumed prefix of an IPv6 address no interface reports.
const FALLBACK_V6: u8 = 64;

/// One network: an address and its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                same_prefix(&a.octets(), &b.octets(), self.prefix.min(32))
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                same_prefix(&a.octets(), &b.octets(), self.prefix.min(128))
            }
            _ => false,
        }
    }
}

/// Whether the first `bits` bits of `a` and `b` agree.
fn same_prefix(a: &[u8], b: &[u8], bits: u8) -> bool {
    let (whole, rest) = ((bits / 8) as usize, bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    a[whole] & mask == b[whole] & mask
}

/// The networks this host is on.
#[derive(Debug, Clone, Default)]
pub struct LocalNets {
    nets: Vec<Net>,
}

impl LocalNets {
    /// The networks of `addrs` (this agent's advertised and listen
    /// addresses; unspecified ones are skipped) as the interfaces report
    /// them; every non-loopback interface's when `addrs` names none.
    pub fn discover(addrs: &[IpAddr]) -> Self {
        let interfaces: Vec<Net> = match if_addrs::get_if_addrs() {
            Ok(list) => list
                .iter()
                .map(|i| match &i.addr {
                    if_addrs::IfAddr::V4(a) => Net {
                        addr: IpAddr::V4(a.ip),
                        prefix: a.prefixlen,
                    },
                    if_addrs::IfAddr::V6(a) => Net {
                        addr: IpAddr::V6(a.ip),
                        prefix: a.prefixlen,
                    },
                })
                .collect(),
            Err(e) => {
                tracing::debug!("cannot list network interfaces, assuming /24 and /64: {e}");
                Vec::new()
            }
        };
        Self::from_parts(addrs, &interfaces)
    }

    fn from_parts(addrs: &[IpAddr], interfaces: &[Net]) -> Self {
        let named: Vec<IpAddr> = addrs
            .iter()
            .copied()
            .filter(|a| !a.is_unspecified())
            .collect();
        let mut nets: Vec<Net> = if named.is_empty() {
            interfaces
                .iter()
                .copied()
                .filter(|n| !n.addr.is_loopback())
                .collect()
        } else {
            named
                .iter()
                .map(|&a| {
                    interfaces
                        .iter()
                        .copied()
                        .find(|n| n.addr == a)
                        .unwrap_or(Net {
                            addr: a,
                            prefix: if a.is_ipv4() {
                                FALLBACK_V4
                            } else {
                                FALLBACK_V6
                            },
                        })
                })
                .collect()
        };
        nets.dedup();
        Self { nets }
    }

    /// Whether `ip` is on one of this host's networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(addr: &str, prefix: u8) -> Net {
        Net {
            addr: addr.parse().expect("an address"),
            prefix,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn prefixes_come_from_the_interface_holding_the_address() {
        let ifs = [
            net("127.0.0.1", 8),
            net("10.20.0.7", 16),
            net("fd00::7", 48),
        ];
        let nets = LocalNets::from_parts(&[ip("10.20.0.7")], &ifs);
        assert!(nets.contains(ip("10.20.250.1")));
        assert!(!nets.contains(ip("10.21.0.1")));
        assert!(
            !nets.contains(ip("fd00::8")),
            "not an address the agent uses"
        );
        let nets = LocalNets::from_parts(&[ip("fd00::7")], &ifs);
        assert!(nets.contains(ip("fd00:0:0:ffff::1")));
        assert!(!nets.contains(ip("fd00:0:1::1")));
    }

    #[test]
    fn odd_prefixes_compare_bits_not_bytes() {
        let nets = LocalNets::from_parts(&[ip("192.168.1.130")], &[net("192.168.1.130", 25)]);
        assert!(nets.contains(ip("192.168.1.129")));
        assert!(!nets.contains(ip("192.168.1.127")));
    }

    #[test]
    fn unknown_addresses_count_as_a_slash_24_and_unspecified_means_every_interface() {
        let nets = LocalNets::from_parts(&[ip("203.0.113.9")], &[]);
        assert!(nets.contains(ip("203.0.113.200")));
        assert!(!nets.contains(ip("203.0.114.9")));
        let ifs = [
            net("127.0.0.1", 8),
            net("10.1.0.2", 24),
            net("10.2.0.2", 24),
        ];
        let nets = LocalNets::from_parts(&[ip("0.0.0.0")], &ifs);
        assert!(nets.contains(ip("10.1.0.9")) && nets.contains(ip("10.2.0.9")));
        assert!(!nets.contains(ip("127.0.0.2")), "loopback is not a LAN");
        assert!(!nets.contains(ip("10.3.0.9")));
    }
}
