//! What counts as one client for bans and limits: an IPv4 address, or an IPv6 /64.
//!
//! One IPv6 host usually owns a whole /64 (SLAAC, privacy addresses, any cloud VM), so
//! counting single IPv6 addresses would let one attacker look like 2^64 clients; sshd's
//! `PerSourceNetBlockSize` and SFTPGo's defender group the same way. IPv4-mapped IPv6
//! addresses (`::ffff:192.0.2.1`, from a dual-stack listener) count as the IPv4 address.

use std::net::{IpAddr, Ipv6Addr};

/// The bits of an IPv6 address that name its source network.
const IPV6_SOURCE_PREFIX: u32 = 64;

/// The key `ip` is counted under: itself for IPv4, its /64 network for IPv6.
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let mask = u128::MAX << (128 - IPV6_SOURCE_PREFIX);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_addresses_of_one_64_are_one_source() {
        assert_eq!(
            source_of(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            source_of(ip("2001:db8:1:2::1")),
            source_of(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"))
        );
        assert_ne!(
            source_of(ip("2001:db8:1:2::1")),
            source_of(ip("2001:db8:1:3::1")),
            "the next /64 is another source"
        );
    }

    #[test]
    fn ipv4_addresses_stay_single_and_mapped_ones_are_ipv4() {
        assert_eq!(source_of(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_ne!(source_of(ip("192.0.2.7")), source_of(ip("192.0.2.8")));
        assert_eq!(source_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
    }
}
