//! Values with units on the command line and in `S3SFTP_*` variables: listen addresses such
//! as `:2222`, durations such as `10m` (humantime) and sizes such as `8MiB` (bytesize).
//!
//! A plain number keeps the unit the flag always had (`--idle-timeout 600` is seconds,
//! `--part-size-mib 8` is MiB), so existing command lines and environment files still work.

use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytesize::ByteSize;

const MIB: u64 = 1024 * 1024;

/// An SSH listen address: `ADDRESS:PORT` (`0.0.0.0:2222`, `[::]:2222`), or `:PORT` for every
/// address, IPv6 and IPv4, as Go's `net.Listen` reads it (`[::]:PORT`, which the server binds
/// dual-stack).
pub fn listen_addr(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Some(port) = text.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{port:?} is not a port number (0-65535)"))?;
        return Ok(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)));
    }
    text.parse().map_err(|_| {
        "expected ADDRESS:PORT, e.g. 0.0.0.0:2222, [::]:2222, 127.0.0.1:2222, or :2222 for \
         every address"
            .to_owned()
    })
}

/// A duration whose plain-number form counts `unit`s.
fn duration(text: &str, unit: Duration, unit_name: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(n) = text.parse::<u32>() {
        return Ok(unit * n);
    }
    humantime::parse_duration(text).map_err(|e| {
        format!("{e}; give a number of {unit_name} or a duration with units, e.g. 30s, 10m, 1h")
    })
}

/// A duration; a plain number is seconds (`600`), units are allowed (`10m`, `30s`, `1h`).
pub fn seconds(text: &str) -> Result<Duration, String> {
    duration(text, Duration::from_secs(1), "seconds")
}

/// A duration; a plain number is hours (`24`), units are allowed (`90m`, `2d`).
pub fn hours(text: &str) -> Result<Duration, String> {
    duration(text, Duration::from_secs(3600), "hours")
}

/// A duration; a plain number is milliseconds (`500`), units are allowed (`1s`, `250ms`).
pub fn millis(text: &str) -> Result<Duration, String> {
    duration(text, Duration::from_millis(1), "milliseconds")
}

/// A size in bytes; a plain number is MiB (`8`), units are allowed (`8MiB`, `1GiB`, `512KiB`;
/// `MB` and `GB` are powers of 1000).
pub fn mebibytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if let Ok(n) = text.parse::<u64>() {
        return n
            .checked_mul(MIB)
            .ok_or_else(|| format!("{n} MiB is too large"));
    }
    // bytesize reads a bare number as bytes, which is handled above; anything else needs a
    // unit it knows.
    text.parse::<ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|e| format!("{e}; give a number of MiB or a size with units, e.g. 8MiB, 1GiB"))
}

/// `bytes` for messages: `8 MiB`, `1.5 GiB`.
pub fn show_size(bytes: u64) -> String {
    ByteSize(bytes).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_takes_a_bare_port_as_every_address() {
        assert_eq!(
            listen_addr(":2222").unwrap(),
            "[::]:2222".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            listen_addr("0.0.0.0:22").unwrap(),
            "0.0.0.0:22".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            listen_addr("[::1]:2222").unwrap(),
            "[::1]:2222".parse::<SocketAddr>().unwrap()
        );
        for bad in [":", ":70000", ":ssh", "2222", "localhost:2222", ""] {
            assert!(listen_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_take_plain_numbers_in_the_flags_unit_or_units() {
        assert_eq!(seconds("600").unwrap(), Duration::from_secs(600));
        assert_eq!(seconds("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(seconds("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(seconds("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(seconds("1m 30s").unwrap(), Duration::from_secs(90));
        assert_eq!(seconds("0").unwrap(), Duration::ZERO);
        assert_eq!(hours("24").unwrap(), Duration::from_secs(24 * 3600));
        assert_eq!(hours("90m").unwrap(), Duration::from_secs(90 * 60));
        assert_eq!(millis("500").unwrap(), Duration::from_millis(500));
        assert_eq!(millis("1s").unwrap(), Duration::from_secs(1));
        for bad in ["10x", "-5", "ten", "", "1.5"] {
            let err = seconds(bad).expect_err(bad);
            assert!(err.contains("e.g. 30s, 10m, 1h"), "{err}");
        }
    }

    #[test]
    fn sizes_take_plain_mib_or_units() {
        assert_eq!(mebibytes("8").unwrap(), 8 * MIB);
        assert_eq!(mebibytes("8MiB").unwrap(), 8 * MIB);
        assert_eq!(mebibytes("8 MiB").unwrap(), 8 * MIB);
        assert_eq!(mebibytes("1GiB").unwrap(), 1024 * MIB);
        assert_eq!(mebibytes("512KiB").unwrap(), MIB / 2);
        assert_eq!(mebibytes("5MB").unwrap(), 5_000_000);
        for bad in ["8 parsecs", "MiB", "-1", ""] {
            let err = mebibytes(bad).expect_err(bad);
            assert!(err.contains("e.g. 8MiB, 1GiB"), "{err}");
        }
        assert!(mebibytes(&u64::MAX.to_string()).is_err());
        assert_eq!(show_size(8 * MIB), "8.0 MiB");
    }
}
