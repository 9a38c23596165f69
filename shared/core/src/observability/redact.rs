//! Redaction of secrets and personal data (X2, X6).
//!
//! Applied to every formatted log line, so it covers messages and fields alike,
//! including text that came from a dependency's error message.

use std::borrow::Cow;
use std::sync::{LazyLock, OnceLock};

use regex::{Captures, Regex, RegexSet};

/// A pattern and its replacement. The pattern is compiled when a line first needs it:
/// the set below decides whether any rule matches, so most processes never compile
/// most rules (compiling all nine took 4 ms of a cold start, docs/benchmarks.md).
struct Rule {
    source: &'static str,
    pattern: OnceLock<Regex>,
    replace: fn(&Captures) -> String,
}

const fn rule(source: &'static str, replace: fn(&Captures) -> String) -> Rule {
    Rule {
        source,
        pattern: OnceLock::new(),
        replace,
    }
}

impl Rule {
    fn pattern(&self) -> &Regex {
        self.pattern
            .get_or_init(|| Regex::new(self.source).expect("redaction pattern compiles"))
    }
}

/// Luhn check, so long numbers that are not card numbers (ids, counters) are left alone.
fn luhn_valid(digits: &str) -> bool {
    let mut sum = 0;
    let mut double = false;
    for c in digits.chars().rev().filter(char::is_ascii_digit) {
        let mut d = c.to_digit(10).unwrap_or(0);
        if double {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
        double = !double;
    }
    sum % 10 == 0
}

static RULES: [Rule; 9] = [
    // user:password@ in any URL.
    rule(
        r"([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s\x22]*:)[^@\s\x22/]+@",
        |c| format!("{}[REDACTED]@", &c[1]),
    ),
    // Authorization: Bearer <token> (and Basic credentials)
    rule(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{4,}", |c| {
        format!("{} [REDACTED]", &c[1])
    }),
    // Provider-style keys (OpenAI sk-..., AWS access key ids).
    rule(r"\bsk-[A-Za-z0-9_-]{8,}|\bAKIA[0-9A-Z]{16}\b", |_| {
        "[REDACTED_KEY]".to_string()
    }),
    // key=value / "key":"value" for names that carry secrets, in plain or JSON-escaped text.
    rule(
        r#"(?i)\b((?:x-)?api[_-]?key|password|passwd|secret|client[_-]?secret|access[_-]?token|refresh[_-]?token|token)(\\?"?\s*[:=]\s*\\?"?)([^\s"\\,&;}]+)"#,
        |c| format!("{}{}[REDACTED]", &c[1], &c[2]),
    ),
    rule(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}", |_| {
        "[REDACTED_EMAIL]".to_string()
    }),
    // Number-shaped rules only match standalone numbers: group 1 is what precedes the
    // number (start of text, or anything but a word character or `.`), so the digits
    // of a decimal such as `"duration_ms":0.4111111111111111` are never taken for one.
    // Chinese resident ID numbers (18 characters, last may be X).
    rule(r"(^|[^0-9A-Za-z_.])\d{17}[\dXx]\b", |c| {
        format!("{}[REDACTED_ID]", &c[1])
    }),
    // Card numbers: 13-19 digits, optionally grouped, passing Luhn.
    rule(r"(^|[^0-9A-Za-z_.])((?:\d[ -]?){12,18}\d)\b", |c| {
        if luhn_valid(&c[2]) {
            format!("{}[REDACTED_CARD]", &c[1])
        } else {
            c[0].to_string()
        }
    }),
    // Phone numbers: international (+CC ...), North American (555) 123-4567, Chinese mobiles.
    rule(
        r"\+\d{1,3}[\s-]?\(?\d{1,4}\)?(?:[\s-]?\d{2,4}){2,4}\b|\(\d{3}\)\s?\d{3}[\s.-]\d{4}\b",
        |_| "[REDACTED_PHONE]".to_string(),
    ),
    rule(
        r"(^|[^0-9A-Za-z_.])(?:\d{3}[.-]\d{3}[.-]\d{4}|1[3-9]\d{9})\b",
        |c| format!("{}[REDACTED_PHONE]", &c[1]),
    ),
];

/// All patterns in one automaton: a clean line (the common case) costs one scan.
static ANY_RULE: LazyLock<RegexSet> =
    LazyLock::new(|| RegexSet::new(RULES.iter().map(|r| r.source)).expect("patterns compile"));

/// Compiles what every process needs (the set every log line is scanned with, and the
/// URL rule start-up logs use) on a thread of its own, so that the first log line and
/// the first request do not wait for it (3-4 ms).
pub fn prepare_in_background() {
    // If no thread can be started, the first use compiles them instead.
    std::thread::Builder::new()
        .name("redact-compile".into())
        .spawn(|| {
            LazyLock::force(&ANY_RULE);
            RULES[0].pattern();
        })
        .ok();
}

/// Returns the text with secrets and personal data replaced by markers.
pub fn redact(text: &str) -> Cow<'_, str> {
    // A clean line (the common case) costs one forward scan; only a line that matches
    // pays for finding which rules did.
    if !ANY_RULE.is_match(text) {
        return Cow::Borrowed(text);
    }
    let matched = ANY_RULE.matches(text);
    let mut current = Cow::Borrowed(text);
    for (index, rule) in RULES.iter().enumerate() {
        // Replacements only insert markers, so a rule that did not match the original
        // text cannot match after earlier rules ran.
        if matched.matched(index) && rule.pattern().is_match(&current) {
            let replaced = rule
                .pattern()
                .replace_all(&current, |c: &Captures| (rule.replace)(c))
                .into_owned();
            current = Cow::Owned(replaced);
        }
    }
    current
}

/// Hides only the password of a URL (for showing configured endpoints).
pub fn redact_url_credentials(url: &str) -> String {
    RULES[0]
        .pattern()
        .replace_all(url, |c: &Captures| (RULES[0].replace)(c))
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_each_kind() {
        let cases = [
            (
                "postgres://app:hunter2@db:5432/x",
                "postgres://app:[REDACTED]@db:5432/x",
                "hunter2",
            ),
            (
                "Authorization: Bearer abcDEF123456",
                "Authorization: Bearer [REDACTED]",
                "abcDEF123456",
            ),
            (
                "using key sk-proj-ABCDEFGH12345678",
                "using key [REDACTED_KEY]",
                "sk-proj",
            ),
            (
                "api_key=topsecretvalue&x=1",
                "api_key=[REDACTED]&x=1",
                "topsecretvalue",
            ),
            (
                r#"{"password":"pa55word"}"#,
                r#"{"password":"[REDACTED]"}"#,
                "pa55word",
            ),
            (
                "mail jane.doe@example.com now",
                "mail [REDACTED_EMAIL] now",
                "jane.doe",
            ),
            (
                "card 4111 1111 1111 1111 ok",
                "card [REDACTED_CARD] ok",
                "4111",
            ),
            ("card 4111-1111-1111-1111", "card [REDACTED_CARD]", "4111"),
            (
                "call +1 415-555-0100 today",
                "call [REDACTED_PHONE] today",
                "555-0100",
            ),
            ("call (415) 555-0100", "call [REDACTED_PHONE]", "555-0100"),
            (
                "手机 13812345678 联系",
                "手机 [REDACTED_PHONE] 联系",
                "13812345678",
            ),
            (
                "身份证 11010519491231002X",
                "身份证 [REDACTED_ID]",
                "11010519491231002X",
            ),
        ];
        for (input, expected, secret) in cases {
            let out = redact(input);
            assert_eq!(out, expected, "input: {input}");
            assert!(!out.contains(secret));
        }
    }

    #[test]
    fn leaves_ordinary_log_content_alone() {
        let line = r#"{"timestamp":"2026-11-23T07:30:03.123456Z","level":"INFO","request_id":"550e8400-e29b-41d4-a716-446655440000","status":200,"duration_ms":12.5,"prompt_tokens":1234,"addr":"127.0.0.1:9000","id":1234567890123}"#;
        assert_eq!(redact(line), line);
    }

    #[test]
    fn never_touches_the_digits_of_decimal_numbers() {
        // Log lines carry floats such as duration_ms; their fraction digits can look like a
        // card (and pass Luhn), a phone or an ID number. None may be rewritten.
        let mut x: u64 = 0x9E3779B97F4A7C15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let value = (x >> 11) as f64 / (1u64 << 53) as f64 * 10f64.powi((x % 4) as i32);
            let line = format!(r#"{{"duration_ms":{value},"score":-{value}}}"#);
            assert_eq!(redact(&line), line);
        }
        assert_eq!(
            redact("took 0.4111111111111111 ms"),
            "took 0.4111111111111111 ms"
        );
        assert_eq!(redact("ratio 0.13812345678"), "ratio 0.13812345678");
        assert_eq!(redact("id x11010519491231002X"), "id x11010519491231002X");
        // Standalone numbers are still redacted, at the start of the text too.
        assert_eq!(redact("4111111111111111"), "[REDACTED_CARD]");
        assert_eq!(redact("call 13812345678"), "call [REDACTED_PHONE]");
        assert_eq!(
            redact(r#"{"phone":"415-555-0100"}"#),
            r#"{"phone":"[REDACTED_PHONE]"}"#
        );
    }

    #[test]
    fn keeps_numbers_that_fail_luhn() {
        assert_eq!(redact("order 1234567890123"), "order 1234567890123");
    }
}
