//! What a reader of a node's journal asks for (`GET /api/v1/logs?…`, `herd logs`): how many lines, of
//! which unit, since when, and whether to follow. Parsed strictly on the node (every field checked, an
//! unknown one refused) and written by the CLI, so both sides agree on one form.

/// Lines sent when the reader names no number.
pub const DEFAULT_LINES: u32 = 100;
/// Most lines one reply carries before it follows (`n`).
pub const MAX_LINES: u32 = 10_000;
/// Longest unit name (systemd's own limit on a unit name is 255 characters).
const MAX_UNIT: usize = 255;

/// One reader's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogQuery {
    /// The last this many lines (then new ones, when following).
    pub lines: u32,
    /// Only this systemd unit's lines.
    pub unit: Option<String>,
    /// Only lines from this time on (seconds since 1970, UTC).
    pub since: Option<i64>,
    /// Keep the reply open and send new lines as they come.
    pub follow: bool,
}

impl Default for LogQuery {
    fn default() -> LogQuery {
        LogQuery {
            lines: DEFAULT_LINES,
            unit: None,
            since: None,
            follow: false,
        }
    }
}

impl LogQuery {
    /// Parses a query string (`n=50&unit=ssh.service&since=1765000000&follow=1`); every key is
    /// optional, none may repeat, and anything else is refused by name.
    pub fn parse(query: &str) -> Result<LogQuery, String> {
        let mut q = LogQuery::default();
        let mut seen = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value =
                decode(value).ok_or_else(|| format!("{key}: not valid percent-encoding"))?;
            if seen.contains(&key) {
                return Err(format!("{key} given twice"));
            }
            seen.push(key);
            match key {
                "n" => {
                    q.lines = value
                        .parse()
                        .ok()
                        .filter(|n| *n <= MAX_LINES)
                        .ok_or_else(|| {
                            format!("n={value:.20}: a number of lines from 0 to {MAX_LINES}")
                        })?;
                }
                "unit" => {
                    check_unit(&value)?;
                    q.unit = Some(value);
                }
                "since" => {
                    q.since = Some(value.parse().ok().filter(|s| *s >= 0).ok_or_else(|| {
                        format!("since={value:.24}: seconds since 1970 (UTC), a whole number")
                    })?);
                }
                "follow" => {
                    q.follow = match value.as_str() {
                        "1" | "true" => true,
                        "0" | "false" => false,
                        _ => return Err(format!("follow={value:.10}: 1 or 0")),
                    }
                }
                other => {
                    return Err(format!(
                        "unknown parameter {:?}: this endpoint takes n, unit, since and follow",
                        other.chars().take(40).collect::<String>()
                    ))
                }
            }
        }
        Ok(q)
    }

    /// The query string [`LogQuery::parse`] reads back as `self`.
    pub fn to_query(&self) -> String {
        let mut s = format!("n={}", self.lines);
        if let Some(unit) = &self.unit {
            // A checked unit name needs no escaping but '@' and ':' are kept as they are.
            s += &format!("&unit={unit}");
        }
        if let Some(since) = self.since {
            s += &format!("&since={since}");
        }
        if self.follow {
            s += "&follow=1";
        }
        s
    }
}

/// A systemd unit name as `journalctl --unit` takes it: letters, digits and `:_.@-\`, not starting with
/// '-' (never an option), at most 255 characters. A name without a type suffix is a service.
pub fn check_unit(unit: &str) -> Result<(), String> {
    let shown = unit.chars().take(40).collect::<String>();
    if unit.is_empty() || unit.len() > MAX_UNIT {
        return Err(format!(
            "unit {shown:?}: a unit name of 1 to {MAX_UNIT} characters"
        ));
    }
    if unit.starts_with('-') {
        return Err(format!("unit {shown:?}: a unit name cannot start with '-'"));
    }
    if let Some(c) = unit
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ":_.@-\\".contains(*c)))
    {
        return Err(format!(
            "unit {shown:?}: {c:?} is not in a unit name (letters, digits and :_.@-\\)"
        ));
    }
    Ok(())
}

/// Percent-decoding of a query value (`+` is a space), `None` when it is not valid UTF-8 or `%` is not
/// followed by two hex digits.
fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_reads_back_as_it_was_written() {
        let q = LogQuery {
            lines: 20,
            unit: Some("getty@tty1.service".into()),
            since: Some(1_765_000_000),
            follow: true,
        };
        assert_eq!(LogQuery::parse(&q.to_query()), Ok(q));
        assert_eq!(LogQuery::parse(""), Ok(LogQuery::default()));
        assert_eq!(
            LogQuery::parse("unit=ssh%2Eservice")
                .unwrap()
                .unit
                .as_deref(),
            Some("ssh.service")
        );
    }

    #[test]
    fn bad_fields_are_refused_by_name() {
        for (query, says) in [
            ("n=10001", "n=10001"),
            ("n=-1", "n=-1"),
            ("n=ten", "n=ten"),
            ("unit=--all", "cannot start with '-'"),
            ("unit=a%20b", "' ' is not in a unit name"),
            ("unit=a;reboot", "';'"),
            ("unit=", "1 to 255"),
            ("since=yesterday", "since=yesterday"),
            ("since=-5", "since=-5"),
            ("follow=yes", "follow=yes"),
            ("n=1&n=2", "n given twice"),
            ("grep=x", "unknown parameter \"grep\""),
            ("unit=%zz", "percent-encoding"),
            ("unit=%ff", "percent-encoding"),
        ] {
            let e = LogQuery::parse(query).unwrap_err();
            assert!(e.contains(says), "{query}: {e}");
        }
        assert!(check_unit(&"a".repeat(256)).is_err());
        assert!(check_unit(&"a".repeat(255)).is_ok());
    }
}
