//! Per-user login limits: the client addresses a user may log in from, how many sessions it
//! may have at once, and when the account expires.
//!
//! This module parses and checks the users-file values and answers questions about them; the
//! SSH layer enforces them at login.

use std::net::IpAddr;

use chrono::{DateTime, FixedOffset, Utc};
use ipnet::IpNet;

use super::User;

impl User {
    /// Whether a client at `ip` may log in as this user: true when `allowed_ips` is empty, else
    /// when one of its networks contains `ip`. An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`,
    /// as a dual-stack socket reports IPv4 peers) is matched as the IPv4 address it carries.
    pub fn ip_allowed(&self, ip: IpAddr) -> bool {
        if self.allowed_ips.is_empty() {
            return true;
        }
        let ip = ip.to_canonical();
        self.allowed_ips.iter().any(|net| net.contains(&ip))
    }

    /// Whether the account has expired at `now`: `expires_at` is set and not after `now`.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
}

/// Parses one `allowed_ips` entry: a network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`,
/// `192.0.2.7/32` for one address). Refuses a bare address and a network with host bits set
/// (`10.0.0.1/8`), which is usually a typo for something narrower or wider than meant.
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    match text.parse::<IpNet>() {
        Ok(net) if net.trunc() != net => Err(format!(
            "{text:?} has bits set after the /{} prefix; write the network as {:?}",
            net.prefix_len(),
            net.trunc().to_string()
        )),
        Ok(net) => Ok(net),
        Err(_) => match text.parse::<IpAddr>() {
            Ok(ip) => {
                let len = if ip.is_ipv4() { 32 } else { 128 };
                Err(format!(
                    "{text:?} is an address, not a network; write \"{ip}/{len}\" for this address alone"
                ))
            }
            Err(_) => Err(format!(
                "{text:?} is not a network in CIDR notation such as \"192.0.2.0/24\" or \"2001:db8::/32\""
            )),
        },
    }
}

/// Parses `expires_at`: an RFC 3339 date and time with an offset, e.g. `2026-12-31T23:59:59Z`.
pub fn parse_expiry(text: &str) -> Result<DateTime<FixedOffset>, String> {
    DateTime::parse_from_rfc3339(text).map_err(|e| {
        format!(
            "{text:?} is not an RFC 3339 date and time such as \"2026-12-31T23:59:59Z\" or \"2026-12-31T23:59:59+01:00\" ({e})"
        )
    })
}

/// Checks a `max_sessions` value: at least 1 (leave the field out for no limit).
pub fn check_max_sessions(n: u32) -> Result<u32, String> {
    if n == 0 {
        Err("max_sessions is 0, which would refuse every login; leave it out for no limit, or set enabled to false".to_owned())
    } else {
        Ok(n)
    }
}

/// How `expires_at` is written back to the file: RFC 3339, seconds precision unless the
/// value has a fraction, `Z` for UTC.
pub(crate) fn format_expiry(at: &DateTime<FixedOffset>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::UsersFile;

    fn user_with(extra: &str) -> User {
        let json = format!(
            r#"{{"users": [{{"username": "u", "public_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIFbu/cWZHRfrWTCIft+VBlVnuhBS1uf9hTja8TpqBxW a"], "key_prefix": "u/"{extra}}}]}}"#
        );
        UsersFile::parse(&json).unwrap().users()[0].clone()
    }

    #[test]
    fn cidrs() {
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert!(parse_cidr("2001:db8::/32").is_ok());
        assert!(parse_cidr("192.0.2.7/32").is_ok());
        assert!(parse_cidr("10.0.0.1/8")
            .unwrap_err()
            .contains("\"10.0.0.0/8\""));
        assert!(parse_cidr("10.0.0.1")
            .unwrap_err()
            .contains("\"10.0.0.1/32\""));
        assert!(parse_cidr("::1").unwrap_err().contains("\"::1/128\""));
        assert!(parse_cidr("10.0.0.0/33").unwrap_err().contains("CIDR"));
        assert!(parse_cidr("nope").unwrap_err().contains("CIDR"));
    }

    #[test]
    fn ip_allowed_matches_networks_and_mapped_addresses() {
        let any = user_with("");
        assert!(any.ip_allowed("203.0.113.9".parse().unwrap()));
        let u = user_with(r#", "allowed_ips": ["10.0.0.0/8", "2001:db8::/32"]"#);
        assert!(u.ip_allowed("10.1.2.3".parse().unwrap()));
        assert!(u.ip_allowed("::ffff:10.1.2.3".parse().unwrap()));
        assert!(u.ip_allowed("2001:db8::1".parse().unwrap()));
        assert!(!u.ip_allowed("11.0.0.1".parse().unwrap()));
        assert!(!u.ip_allowed("::ffff:11.0.0.1".parse().unwrap()));
        assert!(!u.ip_allowed("2001:db9::1".parse().unwrap()));
    }

    #[test]
    fn expiry() {
        let never = user_with("");
        assert!(!never.is_expired(Utc::now()));
        let u = user_with(r#", "expires_at": "2030-01-01T00:00:00+01:00""#);
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        assert!(!u.is_expired(at("2029-12-31T22:59:59Z")));
        assert!(u.is_expired(at("2029-12-31T23:00:00Z")));
        assert!(u.is_expired(at("2031-01-01T00:00:00Z")));
        assert!(parse_expiry("2030-01-01").is_err());
        assert!(
            parse_expiry("2030-01-01T00:00:00").is_err(),
            "offset required"
        );
        let t = parse_expiry("2030-01-01T00:00:00+00:00").unwrap();
        assert_eq!(format_expiry(&t), "2030-01-01T00:00:00Z");
        let t = parse_expiry("2030-01-01T00:00:00.5-05:00").unwrap();
        assert_eq!(format_expiry(&t), "2030-01-01T00:00:00.500-05:00");
    }

    #[test]
    fn max_sessions() {
        assert_eq!(check_max_sessions(3), Ok(3));
        assert!(check_max_sessions(0).unwrap_err().contains("no limit"));
    }
}
