//! A plain answer's `chat.completion` object. The upstream's text is kept as it came and
//! written out as it is, with the fields the gateway adds (`sources`, `degraded`,
//! `cached`) appended to it; only what the gateway reads (the token counts, whether
//! `choices` is an array) is parsed, into a small typed view. Parsing the whole answer
//! into a `serde_json::Value` and writing it out twice (the cache entry, the response)
//! was 15 % of a proxied request's instructions (docs/benchmarks.md, "A plain answer
//! kept as its text"). The whole value is built only when something reads it whole (a
//! session's history, an answer replayed as a stream, a trace) or changes it in place.

use std::sync::OnceLock;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

use super::chunk::{object_view, parse_text, Checked};

/// The fields the gateway adds to an answer, in the order of their bits in
/// [`CompletionView::present`].
const OWN_FIELDS: [&str; 3] = ["sources", "degraded", "cached"];

/// The answer's token counts, as `completion["usage"][field].as_u64()` reads them.
#[derive(Debug, Clone, Default)]
struct UsageView {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

object_view!(
    UsageView,
    &["prompt_tokens", "completion_tokens"],
    |usage, at, map| match at {
        0 => usage.prompt_tokens = map.next_value::<Value>()?.as_u64(),
        _ => usage.completion_tokens = map.next_value::<Value>()?.as_u64(),
    }
);

/// What the gateway reads of an answer it keeps as text. Every other field is still read
/// through (`Checked`), so a text the view accepts is one a `Value` accepts too; a key
/// given twice counts as its last value, as in a `Value`.
#[derive(Debug, Clone, Default)]
struct CompletionView {
    /// `None` when absent or `null`.
    usage: Option<UsageView>,
    /// Whether `choices` is an array.
    choices: bool,
    /// Which of [`OWN_FIELDS`] the object has (bit `i` for `OWN_FIELDS[i]`).
    present: u8,
}

object_view!(
    CompletionView,
    &["usage", "choices", "sources", "degraded", "cached"],
    |view, at, map| match at {
        0 => view.usage = map.next_value()?,
        1 => view.choices = map.next_value::<Option<Vec<Checked>>>()?.is_some(),
        _ => {
            map.next_value::<Checked>()?;
            view.present |= 1 << (at - 2);
        }
    }
);

/// A `chat.completion` object: the upstream's text (plus appended fields) for as long as
/// nothing changes it in place, else a value. Read it whole through `Deref` (built on
/// first use), its token counts through [`Completion::prompt_tokens`] and
/// [`Completion::completion_tokens`]; add the gateway's fields with
/// [`Completion::insert`].
#[derive(Debug, Clone)]
pub struct Completion {
    /// A JSON object's text, with no whitespace around it, whenever set; `view` is read
    /// from it. `None` once the answer is changed as a value.
    text: Option<String>,
    view: CompletionView,
    value: OnceLock<Value>,
}

/// JSON's whitespace, and only it (`str::trim` also trims Unicode spaces).
fn trim_json(text: &str) -> &str {
    text.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'))
}

impl Completion {
    /// An answer from the upstream's body; why not, when the body is not JSON.
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        if let Ok(text) = std::str::from_utf8(body) {
            let text = trim_json(text);
            if let Ok(view) = serde_json::from_str::<CompletionView>(text) {
                return Ok(Self::kept(text.to_owned(), view));
            }
        }
        // Not valid UTF-8, not an object, or a shape the view does not read (`usage`
        // that is not an object...): read as a value, as before the view.
        let value: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        Ok(Self::from(value))
    }

    /// An answer from a cache entry's text. `RawValue` checks less than a `Value` does
    /// (lone surrogates, number ranges, depth): a text neither reads is refused, so the
    /// entry counts as a miss rather than being served as `null`.
    fn from_text(text: String) -> Result<Self, serde_json::Error> {
        match serde_json::from_str::<CompletionView>(&text) {
            Ok(view) => Ok(Self::kept(text, view)),
            Err(_) => serde_json::from_str::<Value>(&text).map(Self::from),
        }
    }

    fn kept(text: String, view: CompletionView) -> Self {
        Self {
            text: Some(text),
            view,
            value: OnceLock::new(),
        }
    }

    /// Whether the answer has a `choices` array (an answer without one is refused).
    pub fn has_choices(&self) -> bool {
        match &self.text {
            Some(_) => self.view.choices,
            None => self["choices"].is_array(),
        }
    }

    /// `usage.prompt_tokens`, when it is a whole number.
    pub fn prompt_tokens(&self) -> Option<u64> {
        match &self.text {
            Some(_) => self.view.usage.as_ref()?.prompt_tokens,
            None => self["usage"]["prompt_tokens"].as_u64(),
        }
    }

    /// `usage.completion_tokens`, when it is a whole number.
    pub fn completion_tokens(&self) -> Option<u64> {
        match &self.text {
            Some(_) => self.view.usage.as_ref()?.completion_tokens,
            None => self["usage"]["completion_tokens"].as_u64(),
        }
    }

    /// Sets one of the gateway's own fields (`sources`, `degraded`, `cached`), as
    /// `completion[key] = value` would: a new key goes last, a present one keeps its
    /// place. A new key is appended to the kept text; any other change is made to the
    /// value.
    pub fn insert(&mut self, key: &'static str, value: Value) {
        let own = OWN_FIELDS.iter().position(|field| *field == key);
        if let (Some(text), Some(bit)) = (&mut self.text, own) {
            // `text` is an object's (`{` ... `}`, at least 2 bytes): the view read it as one.
            if self.view.present & (1 << bit) == 0 && text.len() >= 2 && text.ends_with('}') {
                if trim_json(&text[1..text.len() - 1]).is_empty() {
                    text.truncate(1);
                } else {
                    text.pop();
                    text.push(',');
                }
                text.push('"');
                text.push_str(key);
                text.push_str("\":");
                // Written straight after the text (no string of its own); serde_json
                // writes UTF-8, so the check below never replaces anything.
                let mut bytes = std::mem::take(text).into_bytes();
                let _ = serde_json::to_writer(&mut bytes, &value);
                bytes.push(b'}');
                *text = String::from_utf8(bytes)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
                self.view.present |= 1 << bit;
                // A value built from the text before is out of date.
                self.value = OnceLock::new();
                return;
            }
        }
        if let Some(map) = self.value_mut().as_object_mut() {
            map.insert(key.to_string(), value);
        }
    }

    /// The answer to change in place; from now on it is written from its value.
    pub fn value_mut(&mut self) -> &mut Value {
        if self.value.get().is_none() {
            let value = parse_text(self.text.as_deref());
            self.value = OnceLock::from(value);
        }
        self.text = None;
        self.value.get_mut().expect("built above")
    }

    /// The answer as a value.
    pub fn into_value(mut self) -> Value {
        std::mem::take(self.value_mut())
    }

    /// The kept text's length in bytes, while the answer is kept as text.
    pub fn text_len(&self) -> Option<usize> {
        self.text.as_ref().map(String::len)
    }

    /// Writes the answer's JSON: the kept text as it is, else the value.
    pub fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        match &self.text {
            Some(text) => {
                out.extend_from_slice(text.as_bytes());
                Ok(())
            }
            None => serde_json::to_writer(out, &**self),
        }
    }
}

impl From<Value> for Completion {
    fn from(value: Value) -> Self {
        Self {
            text: None,
            view: CompletionView::default(),
            value: OnceLock::from(value),
        }
    }
}

impl std::ops::Deref for Completion {
    type Target = Value;
    fn deref(&self) -> &Value {
        self.value.get_or_init(|| parse_text(self.text.as_deref()))
    }
}

impl Serialize for Completion {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // For serde_json only (the cache and the idempotency store are JSON): a kept text
        // is written as it is, through serde_json's `RawValue`.
        match &self.text {
            Some(text) => match serde_json::from_str::<&RawValue>(text) {
                Ok(raw) => raw.serialize(serializer),
                Err(_) => (**self).serialize(serializer),
            },
            None => (**self).serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Completion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        let text: Box<str> = raw.into();
        Self::from_text(text.into()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const UPSTREAM: &str = r#"{"id":"c1","object":"chat.completion","created":7,"model":"m","system_fingerprint":"fp","choices":[{"index":0,"message":{"role":"assistant","content":"Hi \"there\" é"},"finish_reason":"stop","logprobs":null}],"usage":{"prompt_tokens":13,"completion_tokens":25,"total_tokens":38}}"#;

    fn written(completion: &Completion) -> String {
        let mut out = Vec::new();
        completion.write_json(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// The same changes to a kept text and to a value give the same JSON, key order
    /// included, so keeping the text changes nothing a client sees.
    #[test]
    fn appended_fields_read_and_write_as_the_value_does() {
        let mut kept = Completion::parse(format!("\n {UPSTREAM} \r\n").as_bytes()).unwrap();
        assert!(kept.text.is_some(), "an ordinary answer keeps its text");
        let mut value: Value = serde_json::from_str(UPSTREAM).unwrap();
        for (key, field) in [
            ("sources", json!([{"title": "Refunds", "score": 0.5}])),
            ("degraded", json!("fallback-model")),
            ("cached", json!(true)),
        ] {
            kept.insert(key, field.clone());
            value[key] = field;
            assert_eq!(written(&kept), serde_json::to_string(&value).unwrap());
            assert_eq!(*kept, value, "the value read from the text");
        }
        assert!(kept.text.is_some(), "new fields are appended to the text");
        // A field already there keeps its place, as in a value.
        kept.insert("degraded", json!("cached-answer"));
        value["degraded"] = json!("cached-answer");
        assert_eq!(written(&kept), serde_json::to_string(&value).unwrap());
        assert!(
            kept.text.is_none(),
            "a changed field is changed in the value"
        );
    }

    #[test]
    fn an_upstream_field_named_like_the_gateways_own_is_replaced_in_place() {
        let text = r#"{"sources":"upstream","choices":[],"cached":1}"#;
        let mut kept = Completion::parse(text.as_bytes()).unwrap();
        kept.insert("sources", json!([]));
        kept.insert("cached", json!(true));
        assert_eq!(
            written(&kept),
            r#"{"sources":[],"choices":[],"cached":true}"#
        );
        let mut empty = Completion::parse(b"{ }").unwrap();
        empty.insert("sources", json!([]));
        assert_eq!(written(&empty), r#"{"sources":[]}"#);
    }

    /// The view's reading of the token counts and of `choices` is the value's, for
    /// every shape: kept or not, the same answers.
    #[test]
    fn token_counts_and_choices_read_as_the_value_reads_them() {
        for text in [
            UPSTREAM,
            r#"{"choices":[],"usage":null}"#,
            r#"{"choices":{},"usage":{"prompt_tokens":-1,"completion_tokens":2.5}}"#,
            r#"{"choices":null,"usage":{"prompt_tokens":"3"}}"#,
            r#"{"usage":7}"#,
            r#"{"usage":{"prompt_tokens":1},"usage":{"completion_tokens":2},"choices":[1]}"#,
            r#"[1,2]"#,
        ] {
            let parsed = Completion::parse(text.as_bytes()).unwrap();
            let value = Completion::from(serde_json::from_str::<Value>(text).unwrap());
            assert_eq!(parsed.has_choices(), value.has_choices(), "{text}");
            assert_eq!(parsed.prompt_tokens(), value.prompt_tokens(), "{text}");
            assert_eq!(
                parsed.completion_tokens(),
                value.completion_tokens(),
                "{text}"
            );
        }
        let parsed = Completion::parse(UPSTREAM.as_bytes()).unwrap();
        assert_eq!(
            (parsed.prompt_tokens(), parsed.completion_tokens()),
            (Some(13), Some(25))
        );
        assert!(parsed.has_choices());
    }

    #[test]
    fn a_body_that_is_not_json_is_refused() {
        for body in [
            &b"not json"[..],
            b"{\"a\":1",
            b"{\"a\":\"\xff\"}",
            b"{\"a\":\"\\q\"}",
            b"",
        ] {
            assert!(Completion::parse(body).is_err(), "{body:?}");
        }
    }

    /// A cache entry holds the answer's text as it is, and reads back to the same
    /// answer, still kept as text.
    #[test]
    fn an_answer_round_trips_through_its_cache_entry_as_text() {
        let mut kept = Completion::parse(UPSTREAM.as_bytes()).unwrap();
        kept.insert("sources", json!([]));
        let entry = serde_json::to_string(&json!({"g": 1, "v": {"completion": &kept}})).unwrap();
        assert!(entry.contains(&written(&kept)), "{entry}");
        #[derive(Deserialize)]
        struct Entry {
            v: Inner,
        }
        #[derive(Deserialize)]
        struct Inner {
            completion: Completion,
        }
        let read: Entry = serde_json::from_str(&entry).unwrap();
        assert!(read.v.completion.text.is_some());
        assert_eq!(written(&read.v.completion), written(&kept));
        assert_eq!(read.v.completion.prompt_tokens(), Some(13));
        // A value-built answer round-trips too.
        let built = Completion::from(json!({"choices": [], "usage": {"prompt_tokens": 2}}));
        let read: Completion =
            serde_json::from_str(&serde_json::to_string(&built).unwrap()).unwrap();
        assert_eq!(*read, *built);
        assert_eq!(read.prompt_tokens(), Some(2));
    }

    /// A cache entry whose answer `RawValue` accepts but a `Value` refuses is an error
    /// (the entry is then a miss), not an answer of `null`.
    #[test]
    fn a_cache_entry_no_value_reads_is_refused() {
        for entry in [
            r#"{"choices":[],"x":1e400}"#,
            r#"{"choices":[],"x":"\udc00"}"#,
        ] {
            assert!(
                serde_json::from_str::<Box<RawValue>>(entry).is_ok(),
                "{entry}"
            );
            assert!(
                serde_json::from_str::<Completion>(entry).is_err(),
                "{entry}"
            );
        }
    }

    /// Reading the whole value, then appending, gives the appended value (not the one
    /// built before).
    #[test]
    fn a_value_read_before_an_append_is_renewed() {
        let mut kept = Completion::parse(UPSTREAM.as_bytes()).unwrap();
        assert_eq!(kept["model"], "m");
        kept.insert("sources", json!(["a"]));
        assert_eq!(kept["sources"], json!(["a"]));
        let value = kept.clone().into_value();
        assert_eq!(value["sources"], json!(["a"]));
        assert_eq!(value["usage"]["total_tokens"], 38);
    }
}
