//! Kubernetes resource quantities (`8Gi`, `512Mi`, `4G`, `1.5Gi`, `500m`, `2e9`), read exactly
//! as the API server reads them: for OMERO's JVM sizing, for validation, and to compare a
//! quantity as written with the canonical form the API server returns (`0.5` and `500m`,
//! `1Gi` and `1073741824` are the same quantity).

/// The quantity in nano-units (10^-9), exactly, or `None` when it is not a quantity.
pub fn nanos(quantity: &str) -> Option<i128> {
    let q = quantity.trim();
    let split =
        q.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let (negative, number) = match number.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, number.strip_prefix('+').unwrap_or(number)),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty())
        || !whole.bytes().all(|c| c.is_ascii_digit())
        || !fraction.bytes().all(|c| c.is_ascii_digit())
        || fraction.len() > 18
    {
        return None;
    }
    // The number as digits / 10^scale.
    let digits: i128 = format!("{whole}{fraction}").parse().ok()?;
    let scale = fraction.len() as i32;
    let (multiplier, exponent): (i128, i32) = match suffix {
        "" => (1, 0),
        "n" => (1, -9),
        "u" => (1, -6),
        "m" => (1, -3),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        exp if exp.len() > 1 && exp.starts_with(['e', 'E']) => (1, exp[1..].parse::<i32>().ok()?),
        _ => return None,
    };
    // digits * multiplier * 10^(exponent - scale + 9) nano-units.
    let power = exponent - scale + 9;
    let value = digits.checked_mul(multiplier)?;
    let value = if power >= 0 {
        value.checked_mul(10i128.checked_pow(u32::try_from(power).ok()?)?)?
    } else {
        // Finer than a nano-unit: the API server rounds up.
        let divisor = 10i128.checked_pow(u32::try_from(-power).ok()?)?;
        (value + divisor - 1) / divisor
    };
    Some(if negative { -value } else { value })
}

/// The number of bytes `quantity` means (rounded up), or `None` when it is not a non-negative
/// quantity.
pub fn bytes(quantity: &str) -> Option<u128> {
    let nanos = nanos(quantity)?;
    (nanos >= 0).then(|| u128::try_from(nanos).unwrap_or_default().div_ceil(1_000_000_000))
}

/// Whole mebibytes, rounded down.
pub fn mebibytes(quantity: &str) -> Option<u64> {
    bytes(quantity).map(|b| u64::try_from(b / (1024 * 1024)).unwrap_or(u64::MAX))
}

/// Whether two spellings name the same quantity (`500m` and `0.5`).
pub fn same(a: &str, b: &str) -> bool {
    a == b || nanos(a).is_some_and(|x| Some(x) == nanos(b))
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
        for q in ["lots", "", "Gi", "8 Gi", "8GB", "1.2.3Gi", "--1", "1e", "0x10"] {
            assert_eq!(nanos(q), None, "{q}");
        }
        assert_eq!(bytes("-1Gi"), None, "not a size");
    }

    #[test]
    fn spellings_the_api_server_canonicalises_are_the_same_quantity() {
        for (a, b) in [
            ("500m", "0.5"),
            ("1000m", "1"),
            ("1Gi", "1073741824"),
            ("1G", "1e9"),
            ("100m", "0.1"),
            ("1.5", "1500m"),
        ] {
            assert!(same(a, b), "{a} = {b}");
        }
        for (a, b) in [("400m", "500m"), ("1Gi", "1G"), ("1", "1001m")] {
            assert!(!same(a, b), "{a} != {b}");
        }
    }
}
