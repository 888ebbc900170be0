//! Human-readable sizes ("4MiB", "512K", "2GiB") for command lines and YAML.

use std::fmt;

/// A size string that could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid size {input:?}: expected a number with an optional unit (B, K/KiB, M/MiB, G/GiB, T/TiB; KB/MB/GB/TB are powers of 1000)"
)]
pub struct InvalidSize {
    pub input: String,
}

/// Parse a byte size. Binary units (K, KiB, M, MiB …) are powers of 1024;
/// KB, MB, GB and TB are powers of 1000, as the SI prefixes say.
pub fn parse_size(input: &str) -> Result<u64, InvalidSize> {
    let err = || InvalidSize {
        input: input.to_owned(),
    };
    let s = input.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let unit = unit.trim();
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(err()),
    };
    if num.is_empty() {
        return Err(err());
    }
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult).ok_or_else(err);
    }
    let f: f64 = num.parse().map_err(|_| err())?;
    let v = f * mult as f64;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(err());
    }
    Ok(v.round() as u64)
}

/// Formats a byte count with a binary unit, e.g. `4.0 MiB`.
#[derive(Debug, Clone, Copy)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut v = self.0 as f64;
        let mut i = 0;
        while v >= 1024.0 && i < UNITS.len() - 1 {
            v /= 1024.0;
            i += 1;
        }
        if i == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{v:.1} {}", UNITS[i])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_size("4MiB").ok(), Some(4 << 20));
        assert_eq!(parse_size("4M").ok(), Some(4 << 20));
        assert_eq!(parse_size("512k").ok(), Some(512 << 10));
        assert_eq!(parse_size("2GiB").ok(), Some(2 << 30));
        assert_eq!(parse_size("1.5 KiB").ok(), Some(1536));
        assert_eq!(parse_size("10MB").ok(), Some(10_000_000));
        assert_eq!(parse_size("17").ok(), Some(17));
        for bad in ["", "MiB", "4 parsecs", "-1", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats() {
        assert_eq!(Bytes(4 << 20).to_string(), "4.0 MiB");
        assert_eq!(Bytes(12).to_string(), "12 B");
    }
}

/// A duration string that could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid duration {input:?}: expected a number with a unit: ms, s, m, h or d (e.g. 30s, 5m)"
)]
pub struct InvalidDuration {
    pub input: String,
}

/// Parses `500ms`, `30s`, `5m`, `2h`, `1d`, or combinations like `1h30m`.
pub fn parse_duration(input: &str) -> Result<std::time::Duration, InvalidDuration> {
    let err = || InvalidDuration {
        input: input.to_owned(),
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err());
    }
    let mut total_ms: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        if digits == 0 {
            return Err(err());
        }
        let n: u128 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let mult: u128 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(err()),
        };
        total_ms = total_ms
            .checked_add(n.checked_mul(mult).ok_or_else(err)?)
            .ok_or_else(err)?;
        rest = &rest[unit_len..];
    }
    u64::try_from(total_ms)
        .map(std::time::Duration::from_millis)
        .map_err(|_| err())
}

/// A rate string that could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("invalid rate {input:?}: expected e.g. 50Mbit/s, 100Mbps, 10MiB/s, 0 or unlimited")]
pub struct InvalidRate {
    pub input: String,
}

/// Parses a transfer rate into bytes per second. `0` and `unlimited` mean
/// no limit (returned as 0). Bit units (`kbit/s`, `Mbit/s`, `Gbit/s`,
/// `Mbps` …) are powers of 1000 as networks count them; byte units are
/// those of [`parse_size`] followed by `/s`.
pub fn parse_rate(input: &str) -> Result<u64, InvalidRate> {
    let err = || InvalidRate {
        input: input.to_owned(),
    };
    let s = input.trim();
    if s == "0" || s.eq_ignore_ascii_case("unlimited") {
        return Ok(0);
    }
    let lower = s.to_ascii_lowercase();
    let bits = [
        ("kbit/s", 1e3),
        ("kbps", 1e3),
        ("mbit/s", 1e6),
        ("mbps", 1e6),
        ("gbit/s", 1e9),
        ("gbps", 1e9),
        ("bit/s", 1.0),
        ("bps", 1.0),
    ];
    for (suffix, mult) in bits {
        if let Some(num) = lower.strip_suffix(suffix) {
            let v: f64 = num.trim().parse().map_err(|_| err())?;
            if !v.is_finite() || v < 0.0 {
                return Err(err());
            }
            return Ok((v * mult / 8.0).round() as u64);
        }
    }
    let num = s.strip_suffix("/s").ok_or_else(err)?;
    parse_size(num).map_err(|_| err())
}

#[cfg(test)]
mod time_rate_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").ok(), Some(Duration::from_secs(30)));
        assert_eq!(
            parse_duration("1h30m").ok(),
            Some(Duration::from_secs(5400))
        );
        assert_eq!(
            parse_duration("250ms").ok(),
            Some(Duration::from_millis(250))
        );
        for bad in ["", "30", "s", "3 parsecs", "-1s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("50Mbit/s").ok(), Some(6_250_000));
        assert_eq!(parse_rate("100Mbps").ok(), Some(12_500_000));
        assert_eq!(parse_rate("10MiB/s").ok(), Some(10 << 20));
        assert_eq!(parse_rate("unlimited").ok(), Some(0));
        assert_eq!(parse_rate("0").ok(), Some(0));
        for bad in ["", "50", "fast", "-5Mbps"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
