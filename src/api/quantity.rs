//! Kubernetes resource quantities (`100m`, `0.5`, `64Mi`, `1G`, `129e6`).

/// A quantity could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {0:?}")]
pub struct QuantityError(pub String);

fn split(q: &str) -> Result<(f64, f64), QuantityError> {
    let q = q.trim();
    let err = || QuantityError(q.to_string());
    let idx = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(idx);
    let n: f64 = num.parse().map_err(|_| err())?;
    let mult = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse::<i32>().map_err(|_| err())?),
        _ => return Err(err()),
    };
    if n < 0.0 {
        return Err(err());
    }
    Ok((n, mult))
}

/// A byte quantity (memory, storage), rounded up.
pub fn bytes(q: &str) -> Result<u64, QuantityError> {
    let (n, m) = split(q)?;
    Ok((n * m).ceil() as u64)
}

/// A CPU quantity in millicores, rounded up.
pub fn millicores(q: &str) -> Result<u64, QuantityError> {
    let (n, m) = split(q)?;
    Ok((n * m * 1000.0).ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(millicores("100m").unwrap(), 100);
        assert_eq!(millicores("0.5").unwrap(), 500);
        assert_eq!(millicores("2").unwrap(), 2000);
        assert_eq!(bytes("64Mi").unwrap(), 64 * 1024 * 1024);
        assert_eq!(bytes("1G").unwrap(), 1_000_000_000);
        assert_eq!(bytes("129e6").unwrap(), 129_000_000);
        assert_eq!(bytes("1.5Ki").unwrap(), 1536);
        assert_eq!(bytes("123").unwrap(), 123);
        for bad in ["", "abc", "10Xi", "-1", "1.2.3"] {
            assert!(bytes(bad).is_err(), "{bad}");
        }
    }
}
