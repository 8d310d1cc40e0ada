//! A parser for the Prometheus text exposition format, version 0.0.4, one line at a time:
//! comments, `# HELP` and `# TYPE`, and samples `name{label="value",...} value [timestamp]`
//! with escaped label values. It follows the rules of Prometheus' own parser (`expfmt`): any
//! malformed line fails the whole body, as it fails a Prometheus scrape.
//!
//! Written here because the crates on crates.io for this are unmaintained or parse with
//! regular expressions. Quoted UTF-8 metric names (`{"my.metric"}`), which a server sends only
//! when the client asks for them, are reported as unsupported rather than misread.

use std::borrow::Cow;
use std::fmt;

/// One line of an exposition.
#[derive(Debug, Clone, PartialEq)]
pub enum Line<'a> {
    /// An empty line, or a comment other than HELP and TYPE (OpenMetrics' `# EOF` included).
    Blank,
    Help {
        metric: &'a str,
        text: Cow<'a, str>,
    },
    Type {
        metric: &'a str,
        kind: MetricType,
    },
    Sample(Sample<'a>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

/// One sample; label values are unescaped.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    pub labels: Vec<(&'a str, Cow<'a, str>)>,
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: Option<i64>,
}

impl fmt::Display for Sample<'_> {
    /// The series as Prometheus writes it: `name{label="value"}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)?;
        if self.labels.is_empty() {
            return Ok(());
        }
        f.write_str("{")?;
        for (index, (name, value)) in self.labels.iter().enumerate() {
            let separator = if index == 0 { "" } else { "," };
            let escaped = value.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n");
            write!(f, "{separator}{name}=\"{escaped}\"")?;
        }
        f.write_str("}")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct ParseError {
    pub line: usize,
    /// In characters, from 1.
    pub column: usize,
    pub message: String,
}

/// The lines of `text`, parsed in order. The iteration ends after the first error. A text
/// whose last line lacks its newline is an error: it may have been cut short.
pub fn lines(text: &str) -> Lines<'_> {
    Lines { rest: text, number: 0, done: false }
}

pub struct Lines<'a> {
    rest: &'a str,
    number: usize,
    done: bool,
}

impl<'a> Iterator for Lines<'a> {
    type Item = Result<Line<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.rest.is_empty() {
            return None;
        }
        self.number += 1;
        let Some((line, rest)) = self.rest.split_once('\n') else {
            self.done = true;
            let column = self.rest.chars().count() + 1;
            let message = "the last line does not end with a newline: the body may be truncated".to_owned();
            return Some(Err(ParseError { line: self.number, column, message }));
        };
        self.rest = rest;
        // Tolerate CRLF line ends; a carriage return is never part of a token.
        let line = line.strip_suffix('\r').unwrap_or(line);
        let parsed = parse_line(line).map_err(|(offset, message)| ParseError {
            line: self.number,
            column: line[..offset].chars().count() + 1,
            message: message.into_owned(),
        });
        self.done = parsed.is_err();
        Some(parsed)
    }
}

type LineError = (usize, Cow<'static, str>);

/// Parses one line without its newline. The error holds the byte offset of the problem.
pub fn parse_line(line: &str) -> Result<Line<'_>, LineError> {
    let mut cursor = Cursor { line, pos: 0 };
    cursor.skip_blanks();
    match cursor.peek() {
        None => Ok(Line::Blank),
        Some(b'#') => {
            cursor.pos += 1;
            comment(cursor)
        }
        Some(b'{') => Err(cursor.error("quoted (UTF-8) metric names are not supported")),
        Some(_) => sample(cursor).map(Line::Sample),
    }
}

fn comment(mut c: Cursor<'_>) -> Result<Line<'_>, LineError> {
    c.skip_blanks();
    let keyword = c.token();
    if keyword != "HELP" && keyword != "TYPE" {
        return Ok(Line::Blank);
    }
    c.skip_blanks();
    let metric = c.metric_name().ok_or_else(|| c.error("expected a metric name"))?;
    if keyword == "HELP" {
        if !c.at_end() {
            c.expect_blank()?;
        }
        c.skip_blanks();
        let text = c.escaped_until_end()?;
        return Ok(Line::Help { metric, text });
    }
    c.expect_blank()?;
    c.skip_blanks();
    let at = c.pos;
    let kind = match c.token() {
        "counter" => MetricType::Counter,
        "gauge" => MetricType::Gauge,
        "histogram" => MetricType::Histogram,
        "summary" => MetricType::Summary,
        "untyped" => MetricType::Untyped,
        "" => return Err(c.error("expected a metric type")),
        other => return Err((at, format!("unknown metric type {other:?}").into())),
    };
    c.expect_end()?;
    Ok(Line::Type { metric, kind })
}

fn sample(mut c: Cursor<'_>) -> Result<Sample<'_>, LineError> {
    let name = c.metric_name().ok_or_else(|| c.error("expected a metric name"))?;
    let name_end = c.pos;
    let mut labels = Vec::new();
    c.skip_blanks();
    if c.peek() == Some(b'{') {
        c.pos += 1;
        labels = label_set(&mut c)?;
        c.skip_blanks();
    } else if c.pos == name_end && !c.at_end() {
        // The name ran into a character that may not follow it, e.g. `name-x 1`.
        return Err(c.error("unexpected character after the metric name"));
    }
    let at = c.pos;
    let value = match c.token() {
        "" => return Err(c.error("expected a value")),
        token => token.parse::<f64>().map_err(|_| (at, format!("invalid value {token:?}").into()))?,
    };
    let mut timestamp_ms = None;
    if !c.at_end() {
        c.expect_blank()?;
        c.skip_blanks();
        let at = c.pos;
        let token = c.token();
        if !token.is_empty() {
            let ms = token.parse::<i64>().map_err(|_| (at, format!("invalid timestamp {token:?}").into()))?;
            timestamp_ms = Some(ms);
        }
    }
    c.expect_end()?;
    Ok(Sample { name, labels, value, timestamp_ms })
}

fn label_set<'a>(c: &mut Cursor<'a>) -> Result<Vec<(&'a str, Cow<'a, str>)>, LineError> {
    let mut labels: Vec<(&'a str, Cow<'a, str>)> = Vec::new();
    loop {
        c.skip_blanks();
        if c.eat(b'}') {
            return Ok(labels);
        }
        let at = c.pos;
        let name = c.label_name().ok_or_else(|| c.error("expected a label name or '}'"))?;
        if name == "__name__" {
            return Err((at, "the label name __name__ is reserved".into()));
        }
        if labels.iter().any(|(existing, _)| *existing == name) {
            return Err((at, format!("duplicate label {name:?}").into()));
        }
        c.skip_blanks();
        if !c.eat(b'=') {
            return Err(c.error("expected '=' after the label name"));
        }
        c.skip_blanks();
        if !c.eat(b'"') {
            return Err(c.error("expected '\"' to open the label value"));
        }
        labels.push((name, c.quoted_value()?));
        c.skip_blanks();
        if c.eat(b'}') {
            return Ok(labels);
        }
        if !c.eat(b',') {
            return Err(c.error("expected ',' or '}' after the label value"));
        }
    }
}

/// A position in one line. Every delimiter is ASCII, so byte positions found by scanning for
/// one are always character boundaries.
struct Cursor<'a> {
    line: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.line.as_bytes().get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos == self.line.len()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        self.pos += usize::from(found);
        found
    }

    fn error(&self, message: &'static str) -> LineError {
        (self.pos, message.into())
    }

    fn skip_blanks(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn expect_blank(&self) -> Result<(), LineError> {
        match self.peek() {
            Some(b' ' | b'\t') => Ok(()),
            _ => Err(self.error("expected a blank")),
        }
    }

    fn expect_end(&mut self) -> Result<(), LineError> {
        self.skip_blanks();
        if self.at_end() { Ok(()) } else { Err(self.error("unexpected text at the end of the line")) }
    }

    /// Up to the next blank or the end of the line.
    fn token(&mut self) -> &'a str {
        let start = self.pos;
        while !matches!(self.peek(), None | Some(b' ' | b'\t')) {
            self.pos += 1;
        }
        &self.line[start..self.pos]
    }

    fn take_name(&mut self, first: fn(u8) -> bool, rest: fn(u8) -> bool) -> Option<&'a str> {
        let start = self.pos;
        if !self.peek().is_some_and(first) {
            return None;
        }
        self.pos += 1;
        while self.peek().is_some_and(rest) {
            self.pos += 1;
        }
        Some(&self.line[start..self.pos])
    }

    /// `[a-zA-Z_:][a-zA-Z0-9_:]*`
    fn metric_name(&mut self) -> Option<&'a str> {
        self.take_name(
            |b| b.is_ascii_alphabetic() || b == b'_' || b == b':',
            |b| b.is_ascii_alphanumeric() || b == b'_' || b == b':',
        )
    }

    /// `[a-zA-Z_][a-zA-Z0-9_]*`
    fn label_name(&mut self) -> Option<&'a str> {
        self.take_name(|b| b.is_ascii_alphabetic() || b == b'_', |b| b.is_ascii_alphanumeric() || b == b'_')
    }

    /// A label value after its opening quote, through its closing quote: `\\`, `\"`, `\n`.
    fn quoted_value(&mut self) -> Result<Cow<'a, str>, LineError> {
        self.unescape(Some(b'"'), b"\\\"")
    }

    /// HELP text to the end of the line: `\\`, `\n`.
    fn escaped_until_end(&mut self) -> Result<Cow<'a, str>, LineError> {
        self.unescape(None, b"\\")
    }

    /// Text up to `close` (consumed) or the end of the line, unescaping `\n` and `\<c>` for
    /// each `c` in `literal`; any other escape is an error, as in Prometheus.
    fn unescape(&mut self, close: Option<u8>, literal: &[u8]) -> Result<Cow<'a, str>, LineError> {
        let start = self.pos;
        let mut owned: Option<String> = None;
        let mut run = start;
        loop {
            match self.peek() {
                None if close.is_none() => break,
                None => return Err((start, "unterminated label value".into())),
                Some(b) if Some(b) == close => break,
                Some(b'\\') => {
                    let text = owned.get_or_insert_with(String::new);
                    text.push_str(&self.line[run..self.pos]);
                    let escaped = self.line.as_bytes().get(self.pos + 1).copied();
                    match escaped {
                        Some(b'n') => text.push('\n'),
                        Some(c) if literal.contains(&c) => text.push(char::from(c)),
                        _ => return Err(self.error("invalid escape sequence")),
                    }
                    self.pos += 2;
                    run = self.pos;
                }
                Some(_) => self.pos += 1,
            }
        }
        let tail = &self.line[run..self.pos];
        if close.is_some() {
            self.pos += 1;
        }
        Ok(match owned {
            Some(mut text) => {
                text.push_str(tail);
                Cow::Owned(text)
            }
            None => Cow::Borrowed(tail),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(line: &str) -> Sample<'_> {
        match parse_line(line) {
            Ok(Line::Sample(sample)) => sample,
            other => panic!("{line:?} parsed as {other:?}"),
        }
    }

    fn error(line: &str) -> (usize, String) {
        match parse_line(line) {
            Err((offset, message)) => (offset, message.into_owned()),
            Ok(parsed) => panic!("{line:?} parsed as {parsed:?}"),
        }
    }

    fn labels<'a>(sample: &'a Sample<'_>) -> Vec<(&'a str, &'a str)> {
        sample.labels.iter().map(|(n, v)| (*n, v.as_ref())).collect()
    }

    #[test]
    fn plain_sample() {
        let s = sample("omero_sessions_active 3");
        assert_eq!((s.name, s.value, s.timestamp_ms), ("omero_sessions_active", 3.0, None));
        assert!(s.labels.is_empty());
    }

    #[test]
    fn sample_with_labels_and_timestamp() {
        let s = sample(r#"http_requests_total{method="post",code="200"} 1027 1395066363000"#);
        assert_eq!(labels(&s), [("method", "post"), ("code", "200")]);
        assert_eq!((s.value, s.timestamp_ms), (1027.0, Some(1395066363000)));
        assert_eq!(sample("a 1 -5").timestamp_ms, Some(-5));
    }

    #[test]
    fn blanks_and_tabs_are_allowed_between_tokens() {
        let s = sample(" \tname { a = \"x\" ,\tb=\"y\" , } \t 2.5 \t 7 \t");
        assert_eq!(labels(&s), [("a", "x"), ("b", "y")]);
        assert_eq!((s.value, s.timestamp_ms), (2.5, Some(7)));
        assert_eq!(sample("name{a=\"x\"}4").value, 4.0);
    }

    #[test]
    fn empty_label_set_and_trailing_comma() {
        assert!(sample("name{} 1").labels.is_empty());
        assert_eq!(labels(&sample(r#"name{a="1",} 1"#)), [("a", "1")]);
        assert_eq!(labels(&sample(r#"name{a=""} 1"#)), [("a", "")]);
    }

    #[test]
    fn label_values_are_unescaped_and_may_hold_any_text() {
        let s = sample(r#"msg{text="a \"quoted\" \\ path\nnext", other="{x=\"1\", y} é"} 1"#);
        assert_eq!(labels(&s), [("text", "a \"quoted\" \\ path\nnext"), ("other", "{x=\"1\", y} é")]);
        assert!(matches!(s.labels[1].1, Cow::Owned(_)));
        assert!(matches!(sample(r#"m{a="plain"} 1"#).labels[0].1, Cow::Borrowed("plain")));
    }

    #[test]
    fn special_values() {
        assert!(sample("a NaN").value.is_nan());
        assert_eq!(sample("a +Inf").value, f64::INFINITY);
        assert_eq!(sample("a -Inf").value, f64::NEG_INFINITY);
        assert_eq!(sample("a 1.5e3").value, 1500.0);
        assert_eq!(sample("a -0").value, 0.0);
    }

    #[test]
    fn metric_names_may_hold_colons_and_underscores() {
        assert_eq!(sample("job:omero_sessions:sum 1").name, "job:omero_sessions:sum");
        assert_eq!(sample("_x 1").name, "_x");
        assert_eq!(sample(":x 1").name, ":x");
    }

    #[test]
    fn help_and_type() {
        assert_eq!(
            parse_line(r"# HELP omero_sessions_active Open sessions \\ per node\nsecond line"),
            Ok(Line::Help {
                metric: "omero_sessions_active",
                text: "Open sessions \\ per node\nsecond line".into()
            })
        );
        assert_eq!(parse_line("# HELP x"), Ok(Line::Help { metric: "x", text: "".into() }));
        assert_eq!(parse_line("#  TYPE x gauge "), Ok(Line::Type { metric: "x", kind: MetricType::Gauge }));
        assert_eq!(parse_line("# TYPE x untyped"), Ok(Line::Type { metric: "x", kind: MetricType::Untyped }));
        assert_eq!(parse_line("#TYPE x summary"), Ok(Line::Type { metric: "x", kind: MetricType::Summary }));
        // HELP text keeps `"` as is: it is not a label value.
        assert_eq!(
            parse_line(r#"# HELP x say "hi""#),
            Ok(Line::Help { metric: "x", text: "say \"hi\"".into() })
        );
    }

    #[test]
    fn other_comments_and_blank_lines() {
        for line in ["", "   ", "\t", "#", "# a comment", "  # HELPER text", "# EOF", "#{not a sample} 1"] {
            assert_eq!(parse_line(line), Ok(Line::Blank), "{line:?}");
        }
    }

    #[test]
    fn malformed_help_and_type() {
        assert_eq!(error("# HELP").1, "expected a metric name");
        assert_eq!(error("# HELP 1x text").1, "expected a metric name");
        assert_eq!(error(r"# HELP x bad \t escape"), (13, "invalid escape sequence".into()));
        assert_eq!(error("# TYPE x").1, "expected a blank");
        assert_eq!(error("# TYPE x ").1, "expected a metric type");
        assert_eq!(error("# TYPE x gauges"), (9, "unknown metric type \"gauges\"".into()));
        assert_eq!(error("# TYPE x gauge extra").1, "unexpected text at the end of the line");
        assert_eq!(error("# TYPE x-y gauge").1, "expected a blank");
    }

    #[test]
    fn malformed_samples() {
        let cases: &[(&str, usize, &str)] = &[
            ("1x 1", 0, "expected a metric name"),
            ("name", 4, "expected a value"),
            ("name ", 5, "expected a value"),
            ("name-x 1", 4, "unexpected character after the metric name"),
            ("  name-x 1", 6, "unexpected character after the metric name"),
            ("name abc", 5, "invalid value \"abc\""),
            ("name 1,5", 5, "invalid value \"1,5\""),
            ("name 1 2 3", 9, "unexpected text at the end of the line"),
            ("name 1 1.5", 7, "invalid timestamp \"1.5\""),
            ("name{a=\"1\"", 10, "expected ',' or '}' after the label value"),
            ("name{a=\"1\" b=\"2\"} 1", 11, "expected ',' or '}' after the label value"),
            ("name{a=\"1} 1", 8, "unterminated label value"),
            ("name{a=1} 1", 7, "expected '\"' to open the label value"),
            ("name{a} 1", 6, "expected '=' after the label name"),
            ("name{1a=\"x\"} 1", 5, "expected a label name or '}'"),
            ("name{,} 1", 5, "expected a label name or '}'"),
            ("name{a=\"1\",a=\"2\"} 1", 11, "duplicate label \"a\""),
            ("name{__name__=\"x\"} 1", 5, "the label name __name__ is reserved"),
            ("name{a=\"\\x\"} 1", 8, "invalid escape sequence"),
            ("name{a=\"1\"} ", 12, "expected a value"),
            ("{\"name.with.dots\"} 1", 0, "quoted (UTF-8) metric names are not supported"),
        ];
        for (line, offset, message) in cases {
            assert_eq!(error(line), (*offset, (*message).to_owned()), "{line:?}");
        }
    }

    #[test]
    fn lines_reports_line_and_character_column() {
        let text = "# HELP a x\na 1\nb{l=\"é\"} nope\nc 3\n";
        let parsed: Vec<_> = lines(text).collect();
        assert_eq!(parsed.len(), 3, "stops after the first error");
        assert_eq!(
            parsed[2],
            Err(ParseError { line: 3, column: 10, message: "invalid value \"nope\"".into() })
        );
        assert_eq!(parsed[2].as_ref().unwrap_err().to_string(), "line 3, column 10: invalid value \"nope\"");
    }

    #[test]
    fn lines_needs_the_final_newline() {
        assert_eq!(lines("").count(), 0);
        let parsed: Vec<_> = lines("a 1\na 2").collect();
        assert!(parsed[0].is_ok());
        let error = parsed[1].as_ref().unwrap_err();
        assert_eq!((error.line, error.column), (2, 4));
        assert!(error.message.contains("truncated"));
    }

    #[test]
    fn lines_accepts_crlf() {
        let parsed: Vec<_> =
            lines("# TYPE a gauge\r\na{x=\"1\"} 1\r\n\r\n").collect::<Result<_, _>>().unwrap();
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[2], Line::Blank);
    }

    #[test]
    fn a_full_exposition() {
        let text = "\
# HELP omero_sessions_active Open OMERO sessions.
# TYPE omero_sessions_active gauge
omero_sessions_active{agent=\"OMERO.web\"} 12
omero_sessions_active{agent=\"OMERO.insight\"} 3 1700000000000

# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 0.52
# TYPE rpc_duration_seconds summary
rpc_duration_seconds{quantile=\"0.5\"} 4773
rpc_duration_seconds_sum 1.7560473e+07
rpc_duration_seconds_count 2693
# EOF
";
        let parsed: Vec<Line<'_>> = lines(text).collect::<Result<_, _>>().unwrap();
        let samples: Vec<String> = parsed
            .iter()
            .filter_map(|line| match line {
                Line::Sample(s) => Some(format!("{s} {}", s.value)),
                _ => None,
            })
            .collect();
        assert_eq!(
            samples,
            [
                "omero_sessions_active{agent=\"OMERO.web\"} 12",
                "omero_sessions_active{agent=\"OMERO.insight\"} 3",
                "process_cpu_seconds_total 0.52",
                "rpc_duration_seconds{quantile=\"0.5\"} 4773",
                "rpc_duration_seconds_sum 17560473",
                "rpc_duration_seconds_count 2693",
            ]
        );
    }

    #[test]
    fn display_escapes_label_values() {
        let s = sample(r#"m{a="x\"y\\z\n",b="2"} 1"#);
        assert_eq!(s.to_string(), r#"m{a="x\"y\\z\n",b="2"}"#);
    }
}
