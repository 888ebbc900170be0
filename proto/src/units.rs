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
