//! Kubernetes resource quantities (`8Gi`, `512Mi`, `4G`, `1.5Gi`, `2e9`), read as the API server
//! reads them, for the node's memory limit (OMERO's JVM sizing).

/// The number of bytes `quantity` means, or `None` when it is not a quantity the API server
/// would accept for memory.
pub fn bytes(quantity: &str) -> Option<u128> {
    let q = quantity.trim();
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    if number.is_empty() || number.starts_with('.') || number.matches('.').count() > 1 {
        return None;
    }
    let multiplier: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "m" => 1e-3,
        exp if exp.starts_with(['e', 'E']) => 10f64.powi(exp[1..].parse::<i32>().ok()?),
        _ => return None,
    };
    let value = number.parse::<f64>().ok()? * multiplier;
    (value.is_finite() && value >= 0.0).then(|| value.ceil() as u128)
}

/// Whole mebibytes, rounded down.
pub fn mebibytes(quantity: &str) -> Option<u64> {
    bytes(quantity).map(|b| u64::try_from(b / (1024 * 1024)).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_decimal_and_exponent_forms() {
        assert_eq!(bytes("8Gi"), Some(8 * 1024 * 1024 * 1024));
        assert_eq!(bytes("512Mi"), Some(512 * 1024 * 1024));
        assert_eq!(bytes("4G"), Some(4_000_000_000));
        assert_eq!(bytes("1.5Gi"), Some(1_610_612_736));
        assert_eq!(bytes("2e9"), Some(2_000_000_000));
        assert_eq!(bytes("1024"), Some(1024));
        assert_eq!(mebibytes("4Gi"), Some(4096));
        assert_eq!(mebibytes("4G"), Some(3814));
    }

    #[test]
    fn what_is_not_a_quantity() {
        for q in ["lots", "", "Gi", "8 Gi", "8GB", "1.2.3Gi", ".5Gi", "-1Gi"] {
            assert_eq!(bytes(q), None, "{q}");
        }
    }
}
