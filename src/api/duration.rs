//! Durations as the spec writes them: `90s`, `10m`, `1h30m`, `500ms`. The same grammar is the
//! schema's `pattern`, so what `kubectl apply` accepts is exactly what parses here.

use std::{fmt, str::FromStr};

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The schema pattern for a duration: one or more `<integer><unit>` with unit `h`, `m`, `s`
/// or `ms`, largest first is not required (Go's `time.ParseDuration` does not require it either).
pub const DURATION_PATTERN: &str = "^([0-9]+(h|ms|m|s))+$";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(std::time::Duration);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("'{0}' is not a duration: write it as a number and a unit (h, m, s, ms), e.g. 90s, 10m or 1h30m")]
    Malformed(String),
    #[error("'{0}' is too long a duration")]
    Overflow(String),
}

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }

    pub const fn std(self) -> std::time::Duration {
        self.0
    }

    pub fn as_millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Self(d)
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = || DurationError::Malformed(s.to_string());
        let overflow = || DurationError::Overflow(s.to_string());
        if s.is_empty() {
            return Err(malformed());
        }
        let mut total_ms: u64 = 0;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(malformed());
            }
            let value: u64 = rest[..digits].parse().map_err(|_| overflow())?;
            rest = &rest[digits..];
            let (unit_ms, len) = if rest.starts_with("ms") {
                (1, 2)
            } else if rest.starts_with('h') {
                (3_600_000, 1)
            } else if rest.starts_with('m') {
                (60_000, 1)
            } else if rest.starts_with('s') {
                (1_000, 1)
            } else {
                return Err(malformed());
            };
            rest = &rest[len..];
            let part = value.checked_mul(unit_ms).ok_or_else(overflow)?;
            total_ms = total_ms.checked_add(part).ok_or_else(overflow)?;
        }
        Ok(Self::from_millis(total_ms))
    }
}

/// Prints the shortest exact form, e.g. `1h30m`, `45s`, `1500ms`.
impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        if !ms.is_multiple_of(1000) {
            return write!(f, "{ms}ms");
        }
        let secs = ms / 1000;
        let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 {
            write!(f, "{s}s")?;
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "x-kubernetes-validations": [{
                "rule": "duration(self) > duration('0s')",
                "message": "must be a positive duration, e.g. 30s, 10m or 1h"
            }]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_compound_units() {
        assert_eq!("90s".parse::<Duration>().unwrap(), Duration::from_secs(90));
        assert_eq!("10m".parse::<Duration>().unwrap(), Duration::from_secs(600));
        assert_eq!("1h30m".parse::<Duration>().unwrap(), Duration::from_secs(5400));
        assert_eq!("1500ms".parse::<Duration>().unwrap(), Duration::from_millis(1500));
        assert_eq!("1m500ms".parse::<Duration>().unwrap(), Duration::from_millis(60_500));
    }

    #[test]
    fn rejects_what_the_schema_pattern_rejects() {
        for bad in ["", "10", "m", "1.5h", "10 m", "-1s", "1d", "1hh", "10M"] {
            assert!(matches!(bad.parse::<Duration>(), Err(DurationError::Malformed(_))), "{bad}");
        }
        assert!(matches!("99999999999999999999h".parse::<Duration>(), Err(DurationError::Overflow(_))));
    }

    #[test]
    fn displays_shortest_exact_form_and_round_trips() {
        for (text, shown) in [("5400s", "1h30m"), ("60m", "1h"), ("1500ms", "1500ms"), ("0s", "0s")] {
            let d: Duration = text.parse().unwrap();
            assert_eq!(d.to_string(), shown);
            assert_eq!(shown.parse::<Duration>().unwrap(), d);
        }
    }

    #[test]
    fn serde_uses_the_string_form() {
        let d: Duration = serde_json::from_str("\"2m\"").unwrap();
        assert_eq!(d, Duration::from_secs(120));
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"2m\"");
        let err = serde_json::from_str::<Duration>("\"2 minutes\"").unwrap_err();
        assert!(err.to_string().contains("is not a duration"), "{err}");
    }
}
