//! The chat completion request as callers send it (C1): validated up front so a bad
//! request gets a clear 400 and never reaches a provider.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::error::ChatError;

/// Roles OpenAI accepts in `messages`.
const ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// Fields of ours that OpenAI clients may send as extra body fields; never forwarded.
const EXTENSION_FIELDS: &[&str] = &["session_id", "retrieval", "cache"];

/// Fields that do not change the answer, left out of the cache key.
const NOT_IN_CACHE_KEY: &[&str] = &["stream", "stream_options", "user", "metadata", "store"];

/// A validated chat completion request.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The body to forward upstream (our extension fields removed).
    pub body: Map<String, Value>,
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    pub temperature: Option<f64>,
    /// `retrieval: false` turns knowledge-base passages off for this request.
    pub retrieval: bool,
    /// `cache: false` (or `Cache-Control: no-cache`) skips the response cache.
    pub cache: bool,
    pub session_id: Option<String>,
}

fn bad(message: impl Into<String>) -> ChatError {
    ChatError::Invalid(message.into())
}

fn validate_message(index: usize, message: &Value) -> Result<(), ChatError> {
    let Some(object) = message.as_object() else {
        return Err(bad(format!("messages[{index}] must be an object")));
    };
    match object.get("role") {
        Some(Value::String(role)) if ROLES.contains(&role.as_str()) => {}
        Some(Value::String(role)) => {
            return Err(bad(format!(
                "messages[{index}].role `{role}` is not one of {}",
                ROLES.join(", ")
            )))
        }
        Some(_) => return Err(bad(format!("messages[{index}].role must be a string"))),
        None => return Err(bad(format!("messages[{index}].role is required"))),
    }
    match object.get("content") {
        Some(Value::String(_)) | Some(Value::Null) => Ok(()),
        Some(Value::Array(parts)) => {
            for (p, part) in parts.iter().enumerate() {
                if !part.is_object() || !part.get("type").is_some_and(Value::is_string) {
                    return Err(bad(format!(
                        "messages[{index}].content[{p}] must be an object with a `type`"
                    )));
                }
            }
            Ok(())
        }
        // Assistant messages may carry tool calls instead of content.
        None if object.contains_key("tool_calls") || object.contains_key("function_call") => Ok(()),
        None => Err(bad(format!("messages[{index}].content is required"))),
        Some(_) => Err(bad(format!(
            "messages[{index}].content must be a string or an array of parts"
        ))),
    }
}

/// The text of a message's content (string, or the text parts of an array).
pub fn message_text(message: &Value) -> String {
    match &message["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

impl ChatRequest {
    /// Parses and validates a request body. `default_model` fills a missing `model`;
    /// `max_messages` bounds `messages`; `no_cache_header` is `Cache-Control: no-cache`.
    pub fn parse(
        bytes: &[u8],
        default_model: &str,
        max_messages: usize,
        no_cache_header: bool,
    ) -> Result<Self, ChatError> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("the body is not valid JSON: {e}")))?;
        let Value::Object(mut body) = value else {
            return Err(bad("the body must be a JSON object"));
        };
        let model = match body.get("model") {
            None | Some(Value::Null) => default_model.to_string(),
            Some(Value::String(m)) if !m.trim().is_empty() => m.trim().to_string(),
            Some(_) => return Err(bad("`model` must be a non-empty string")),
        };
        body.insert("model".into(), Value::String(model.clone()));
        let messages = match body.get("messages") {
            None => return Err(bad("`messages` is required")),
            Some(Value::Array(m)) if m.is_empty() => {
                return Err(bad("`messages` must not be empty"))
            }
            Some(Value::Array(m)) => m,
            Some(_) => return Err(bad("`messages` must be an array")),
        };
        if messages.len() > max_messages {
            return Err(ChatError::TooLarge(format!(
                "{} messages; at most {max_messages} are accepted",
                messages.len()
            )));
        }
        for (i, m) in messages.iter().enumerate() {
            validate_message(i, m)?;
        }
        // The JSON escape is the only way a NUL gets into a body: look for it only then.
        if bytes.windows(6).any(|w| w.eq_ignore_ascii_case(b"\\u0000")) {
            let nul = body.iter().find_map(|(k, v)| match k.contains('\0') {
                true => Some("a top-level key".to_string()),
                false => crate::canonical::nul_at(v, k),
            });
            if let Some(path) = nul {
                return Err(bad(format!(
                    "{path} contains a NUL character (U+0000), which no field accepts \
                     (session stores cannot keep it)"
                )));
            }
        }
        let stream = match body.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(bad("`stream` must be a boolean")),
        };
        let include_usage = match body.get("stream_options") {
            None | Some(Value::Null) => false,
            Some(Value::Object(o)) => match o.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(bad("`stream_options.include_usage` must be a boolean")),
            },
            Some(_) => return Err(bad("`stream_options` must be an object")),
        };
        let temperature = match body.get("temperature") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_f64() {
                Some(t) if (0.0..=2.0).contains(&t) => Some(t),
                _ => return Err(bad("`temperature` must be between 0 and 2")),
            },
            Some(_) => return Err(bad("`temperature` must be a number")),
        };
        let flag = |name: &str| -> Result<bool, ChatError> {
            match body.get(name) {
                None | Some(Value::Null) => Ok(true),
                Some(Value::Bool(b)) => Ok(*b),
                Some(_) => Err(bad(format!("`{name}` must be a boolean"))),
            }
        };
        let retrieval = flag("retrieval")?;
        let cache = flag("cache")? && !no_cache_header;
        let session_id = match body.get("session_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if valid_session_id(s) => Some(s.clone()),
            Some(_) => return Err(bad("`session_id` must be 1-128 of A-Z a-z 0-9 - _ . :")),
        };
        for field in EXTENSION_FIELDS {
            body.remove(*field);
        }
        Ok(Self {
            body,
            model,
            stream,
            include_usage,
            temperature,
            retrieval,
            cache,
            session_id,
        })
    }

    pub fn messages(&self) -> &[Value] {
        self.body["messages"].as_array().map_or(&[], Vec::as_slice)
    }

    pub(crate) fn set_messages(&mut self, messages: Vec<Value>) {
        self.body.insert("messages".into(), Value::Array(messages));
    }

    /// The last user message's text: what retrieval searches for.
    pub(crate) fn last_user_text(&self) -> Option<String> {
        self.messages()
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .map(message_text)
            .filter(|t| !t.trim().is_empty())
    }

    /// Normalised request (whitespace collapsed in texts, fields that do not change the
    /// answer removed, keys sorted) hashed: never the raw payload. Written straight into
    /// the hash; only a message whose text changes when normalised is copied.
    pub fn cache_key(&self, generation: &str) -> String {
        let messages: Option<Value> = self.body.get("messages").and_then(|m| {
            let Value::Array(items) = m else { return None };
            let changed = items.iter().any(|m| match m.get("content") {
                Some(Value::String(text)) => !is_normalised(text),
                _ => false,
            });
            changed.then(|| {
                Value::Array(
                    items
                        .iter()
                        .map(|m| {
                            let mut m = m.clone();
                            if let Some(Value::String(text)) = m.get_mut("content") {
                                *text = normalise_text(text);
                            }
                            m
                        })
                        .collect(),
                )
            })
        });
        let mut entries: Vec<(&String, &Value)> = self
            .body
            .iter()
            .filter(|(k, _)| !NOT_IN_CACHE_KEY.contains(&k.as_str()))
            .map(|(k, v)| match (k.as_str(), &messages) {
                ("messages", Some(normalised)) => (k, normalised),
                _ => (k, v),
            })
            .collect();
        // Canonical: the same request with its keys in another order is the same request.
        entries.sort_by(|a, b| a.0.cmp(b.0));
        // The text first, then one hash update: the canonical writer's many small writes
        // each cost the hasher a buffer step.
        let mut text = Vec::with_capacity(256 + generation.len());
        text.extend_from_slice(generation.as_bytes());
        text.push(0);
        crate::canonical::write_object(entries, &mut text).expect("writing to a Vec does not fail");
        key_of("completion:", &text)
    }

    /// The key of the last good answer to this question, for the fallback chain.
    pub(crate) fn question_key(&self) -> Option<String> {
        let mut question = self.last_user_text()?;
        // The same as `to_lowercase` on ASCII, in place and without decoding each char.
        if question.is_ascii() {
            question.make_ascii_lowercase();
        } else {
            question = question.to_lowercase();
        }
        if is_normalised(&question) {
            return Some(key_of("last-answer:", question.as_bytes()));
        }
        Some(key_of("last-answer:", normalise_text(&question).as_bytes()))
    }
}

/// `prefix` and the hex SHA-256 of `text`, written into one string. Through a buffer:
/// `hex::encode` collects its digits one `char` at a time (about 1,700 instructions per
/// key, twice per request).
fn key_of(prefix: &str, text: &[u8]) -> String {
    let digest = Sha256::digest(text);
    let mut digits = [0u8; 64];
    hex::encode_to_slice(digest, &mut digits).expect("64 digits for 32 bytes");
    let mut key = String::with_capacity(prefix.len() + digits.len());
    key.push_str(prefix);
    key.push_str(std::str::from_utf8(&digits).expect("hex digits are ASCII"));
    key
}

/// Collapses runs of whitespace and trims.
pub(crate) fn normalise_text(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether [`normalise_text`] would leave `text` as it is (no leading, trailing or
/// repeated whitespace, every space a plain one), without building the copy.
pub(crate) fn is_normalised(text: &str) -> bool {
    // At the start a space would be leading, so it counts as following one.
    let mut after_space = true;
    for c in text.chars() {
        if c.is_whitespace() {
            if c != ' ' || after_space {
                return false;
            }
            after_space = true;
        } else {
            after_space = false;
        }
    }
    !after_space || text.is_empty()
}

pub fn valid_session_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<ChatRequest, ChatError> {
        ChatRequest::parse(body.as_bytes(), "m", 4, false)
    }

    #[test]
    fn bad_requests_are_named() {
        for (body, fragment) in [
            ("{", "not valid JSON"),
            ("[]", "JSON object"),
            (r#"{"model":"m"}"#, "`messages` is required"),
            (r#"{"messages":[]}"#, "must not be empty"),
            (r#"{"messages":"hi"}"#, "must be an array"),
            (r#"{"messages":[{"role":"user"}]}"#, "content is required"),
            (
                r#"{"messages":[{"role":"boss","content":"x"}]}"#,
                "is not one of",
            ),
            (
                r#"{"messages":[{"role":"user","content":5}]}"#,
                "string or an array",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
                "boolean",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"temperature":3}"#,
                "between 0 and 2",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"model":7}"#,
                "non-empty string",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"session_id":"a b"}"#,
                "session_id",
            ),
        ] {
            let err = parse(body).unwrap_err();
            assert!(matches!(err, ChatError::Invalid(_)), "{body}: {err:?}");
            assert!(err.to_string().contains(fragment), "{body}: {err}");
        }
        let too_many = r#"{"messages":[{"role":"user","content":"1"},{"role":"user","content":"2"},{"role":"user","content":"3"},{"role":"user","content":"4"},{"role":"user","content":"5"}]}"#;
        assert!(matches!(
            parse(too_many).unwrap_err(),
            ChatError::TooLarge(_)
        ));
    }

    #[test]
    fn extensions_are_read_and_never_forwarded() {
        let r = parse(r#"{"messages":[{"role":"user","content":"hi"}],"retrieval":false,"cache":false,"session_id":"s-1","stream":true,"stream_options":{"include_usage":true}}"#).unwrap();
        assert_eq!(r.model, "m");
        assert!(!r.retrieval && !r.cache && r.stream && r.include_usage);
        assert_eq!(r.session_id.as_deref(), Some("s-1"));
        for field in EXTENSION_FIELDS {
            assert!(!r.body.contains_key(*field));
        }
        assert_eq!(r.body["model"], "m");
    }

    #[test]
    fn cache_keys_ignore_whitespace_and_streaming_but_not_parameters() {
        let a =
            parse(r#"{"messages":[{"role":"user","content":"What  is\nRRF?"}],"temperature":0}"#)
                .unwrap();
        let b = parse(r#"{"messages":[{"role":"user","content":"What is RRF? "}],"temperature":0,"stream":true}"#).unwrap();
        let c = parse(r#"{"messages":[{"role":"user","content":"What is RRF?"}],"temperature":0,"max_tokens":5}"#).unwrap();
        assert_eq!(a.cache_key("g1"), b.cache_key("g1"));
        assert_ne!(a.cache_key("g1"), c.cache_key("g1"));
        assert_ne!(a.cache_key("g1"), a.cache_key("g2"));
        assert!(!a.cache_key("g1").contains("RRF"));
        assert_eq!(a.question_key(), c.question_key());
    }

    /// A question is the same whatever its case, ASCII (lowered in place) or not.
    #[test]
    fn question_keys_ignore_case_in_any_script() {
        let key = |text: &str| {
            parse(&serde_json::json!({"messages": [{"role": "user", "content": text}]}).to_string())
                .unwrap()
                .question_key()
                .unwrap()
        };
        assert_eq!(key("What is RRF?"), key("WHAT IS  rrf?"));
        assert_eq!(key("ÉTÉ à Straße"), key("été À straße"));
        assert_ne!(key("What is RRF?"), key("What is BM25?"));
        assert_ne!(key("été"), key("ete"));
    }

    #[test]
    fn the_normalisation_check_agrees_with_the_normalisation() {
        for text in [
            "",
            " ",
            "a",
            "a b",
            "a  b",
            " a",
            "a ",
            "a\tb",
            "a\nb",
            "a\u{a0}b",
            "é ü",
            "a b c",
            "a \u{3000}b",
            "\u{2003}",
            "x y  ",
            "what is RRF?",
        ] {
            assert_eq!(
                is_normalised(text),
                normalise_text(text) == text,
                "{text:?}"
            );
        }
    }

    /// The key written straight into the hash is the hash of the old construction (the
    /// normalised copy, serialised canonically), so cached answers survive the change.
    #[test]
    fn the_cache_key_hashes_the_normalised_canonical_request() {
        let r = parse(r#"{"temperature":0,"messages":[{"role":"user","content":" What  is\tRRF? "},{"content":"ok","role":"assistant"}],"stream":true,"model":"m","user":"u"}"#).unwrap();
        let mut normalised = r.body.clone();
        for field in NOT_IN_CACHE_KEY {
            normalised.remove(*field);
        }
        if let Some(Value::Array(messages)) = normalised.get_mut("messages") {
            for m in messages.iter_mut() {
                if let Some(Value::String(text)) = m.get_mut("content") {
                    *text = normalise_text(text);
                }
            }
        }
        let mut hasher = Sha256::new();
        hasher.update(b"g1");
        hasher.update([0]);
        hasher.update(crate::canonical::canonical_json(&Value::Object(normalised)).as_bytes());
        let expected = format!("completion:{}", hex::encode(hasher.finalize()));
        assert_eq!(r.cache_key("g1"), expected);
    }
}
