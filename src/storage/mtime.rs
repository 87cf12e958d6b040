//! Modification times as rclone's S3 backend stores them: user metadata `mtime`
//! (`x-amz-meta-mtime`), seconds since the epoch as a decimal, with a fractional part
//! when the time has one ("1700000000" or "1700000000.5"). Keeping rclone's format makes
//! `rclone lsl` on the bucket itself show the times SFTP clients set.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `t` as the metadata value. Times before the epoch are stored as the epoch.
pub(crate) fn format(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let nanos = since.subsec_nanos();
    if nanos == 0 {
        return since.as_secs().to_string();
    }
    let fraction = format!("{nanos:09}");
    format!("{}.{}", since.as_secs(), fraction.trim_end_matches('0'))
}

/// The time a metadata value stands for; `None` if it is not a plain decimal number of
/// seconds (negative and absurd values included: nothing to show for them).
pub(crate) fn parse(value: &str) -> Option<SystemTime> {
    let value = value.trim();
    let (secs, fraction) = value.split_once('.').unwrap_or((value, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: u64 = secs.parse().ok()?;
    let digits: String = fraction.chars().take(9).collect();
    let nanos: u32 = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<9}").parse().ok()?
    };
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// Whole seconds since the epoch (what SFTP v3 attributes carry).
pub(crate) fn whole_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_seconds_have_no_fraction() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(format(t), "1700000000");
        assert_eq!(parse("1700000000"), Some(t));
    }

    #[test]
    fn fractions_round_trip_as_rclone_writes_them() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 500_000_000);
        assert_eq!(format(t), "1700000000.5");
        assert_eq!(parse("1700000000.500000000"), Some(t));
        assert_eq!(parse("1700000000.5"), Some(t));
    }

    #[test]
    fn nonsense_is_no_time() {
        for v in ["", "-1", "abc", "1e9", "1.2.3", ".5"] {
            assert_eq!(parse(v), None, "{v}");
        }
    }
}
