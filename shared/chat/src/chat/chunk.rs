//! One streamed chunk. What the gateway reads of every chunk (its choices' deltas and
//! finish, its usage) is parsed straight from the upstream's text into a small typed
//! view; the whole JSON value is built only for a chunk that is changed or read whole
//! (the first, a continued one, a traced one). Parsing every chunk into a
//! `serde_json::Value` (a map with a hashed index and a string for each key) was 31 % of
//! a relayed stream's instructions (docs/benchmarks.md, "A typed view of each chunk").

use std::sync::OnceLock;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// What the relay, the assembler and the first-content check read of every chunk. A
/// field that is absent and one that is `null` are both `Value::Null`, as `chunk["field"]`
/// reads them; fields the gateway does not read are skipped, not kept. (The id, creation
/// time and model are read from the first chunk's whole value, which is built anyway.)
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub(crate) struct ChunkView {
    pub usage: Value,
    pub system_fingerprint: Value,
    /// `None` unless `choices` is an array.
    #[serde(deserialize_with = "objects")]
    pub choices: Option<Vec<ChoiceView>>,
}

/// One choice of a chunk.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub(crate) struct ChoiceView {
    pub index: Value,
    #[serde(deserialize_with = "object")]
    pub delta: DeltaView,
    pub logprobs: Value,
    pub finish_reason: Value,
}

/// One choice's delta.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub(crate) struct DeltaView {
    pub role: Value,
    pub content: Value,
    pub refusal: Value,
    pub tool_calls: Value,
    pub function_call: Value,
}

/// A struct read only from a JSON object: serde's derived structs also take an array of
/// their fields in order, which `value["field"]` would read as nothing.
struct ObjectOnly<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Object<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Object<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(Object(std::marker::PhantomData))
            .map(ObjectOnly)
    }
}

fn object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<T, D::Error> {
    ObjectOnly::deserialize(deserializer).map(|ObjectOnly(inner)| inner)
}

fn objects<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<ChoiceView>>, D::Error> {
    let choices = Option::<Vec<ObjectOnly<ChoiceView>>>::deserialize(deserializer)?;
    Ok(choices.map(|choices| choices.into_iter().map(|ObjectOnly(c)| c).collect()))
}

impl ChunkView {
    /// The view of a chunk already parsed as a value (a changed chunk, one the gateway
    /// wrote, or one the typed parse refused).
    pub fn of(chunk: &Value) -> Self {
        let choices = chunk["choices"].as_array().map(|choices| {
            choices
                .iter()
                .map(|c| {
                    let delta = &c["delta"];
                    ChoiceView {
                        index: c["index"].clone(),
                        delta: DeltaView {
                            role: delta["role"].clone(),
                            content: delta["content"].clone(),
                            refusal: delta["refusal"].clone(),
                            tool_calls: delta["tool_calls"].clone(),
                            function_call: delta["function_call"].clone(),
                        },
                        logprobs: c["logprobs"].clone(),
                        finish_reason: c["finish_reason"].clone(),
                    }
                })
                .collect()
        });
        Self {
            usage: chunk["usage"].clone(),
            system_fingerprint: chunk["system_fingerprint"].clone(),
            choices,
        }
    }

    /// Whether the chunk carries part of the answer (text, a tool call, a refusal, the
    /// finish, or the usage), not only the role.
    pub fn has_content(&self) -> bool {
        self.choices.iter().flatten().any(|c| {
            let delta = &c.delta;
            delta.content.as_str().is_some_and(|t| !t.is_empty())
                || !delta.tool_calls.is_null()
                || !delta.refusal.is_null()
                || !delta.function_call.is_null()
                || !c.finish_reason.is_null()
        }) || !self.usage.is_null()
    }

    /// Whether the chunk only reports usage (no choices).
    pub fn is_usage_only(&self) -> bool {
        self.choices.as_ref().is_some_and(|c| c.is_empty()) && !self.usage.is_null()
    }
}

/// One streamed chunk, with the upstream's own text of it for as long as it is
/// unchanged: the relay passes such a chunk on as it came (the provider's own spelling of
/// numbers and strings, no second serialisation). Read its parts through
/// [`Chunk::view`], or the whole value through `Deref` (built on first use); change it
/// only through [`Chunk::value_mut`], which lets the text go and renews the view. An
/// object with a key given twice parses as its last value but is relayed with both, as
/// the provider sent it.
#[derive(Debug, Clone)]
pub struct Chunk {
    view: ChunkView,
    /// Valid JSON whenever `value` is not built yet.
    text: Option<String>,
    value: OnceLock<Value>,
}

impl Chunk {
    /// A chunk from the upstream's event text; why not, when the text is not JSON.
    pub fn parse(text: String) -> Result<Self, String> {
        let typed = serde_json::from_str::<ObjectOnly<ChunkView>>(&text);
        if let Ok(ObjectOnly(view)) = typed {
            return Ok(Self {
                view,
                text: Some(text),
                value: OnceLock::new(),
            });
        }
        // Not the shape the view expects (a `null` delta, a key given twice, not an
        // object...): read as a value, as before the view, so nothing is lost.
        let value: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        Ok(Self {
            view: ChunkView::of(&value),
            text: Some(text),
            value: OnceLock::from(value),
        })
    }

    /// What the gateway reads of the chunk.
    pub(crate) fn view(&self) -> &ChunkView {
        &self.view
    }

    /// The chunk to change; from now on it is written from its value. The view is
    /// renewed when the returned guard is dropped.
    pub fn value_mut(&mut self) -> ChunkMut<'_> {
        let value = match self.value.take() {
            Some(value) => value,
            None => parse_text(self.text.as_deref()),
        };
        self.text = None;
        ChunkMut { chunk: self, value }
    }

    /// The upstream's text of the chunk, while the chunk is unchanged and the text fits
    /// on one `data:` line.
    pub fn text(&self) -> Option<&str> {
        // Bytes, not chars: `str::contains` with a set of chars decodes every character
        // (5 % of a relayed stream's instructions).
        self.text
            .as_deref()
            .filter(|text| memchr::memchr2(b'\n', b'\r', text.as_bytes()).is_none())
    }
}

fn parse_text(text: Option<&str>) -> Value {
    // `text` parsed once already (`Chunk::parse`); `Null` only if that broke.
    text.and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default()
}

impl From<Value> for Chunk {
    fn from(value: Value) -> Self {
        Self {
            view: ChunkView::of(&value),
            text: None,
            value: OnceLock::from(value),
        }
    }
}

impl std::ops::Deref for Chunk {
    type Target = Value;
    fn deref(&self) -> &Value {
        self.value.get_or_init(|| parse_text(self.text.as_deref()))
    }
}

impl PartialEq for Chunk {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text && **self == **other
    }
}

/// A chunk being changed: its value, written back (with a renewed view) when dropped.
pub struct ChunkMut<'a> {
    chunk: &'a mut Chunk,
    value: Value,
}

impl std::ops::Deref for ChunkMut<'_> {
    type Target = Value;
    fn deref(&self) -> &Value {
        &self.value
    }
}

impl std::ops::DerefMut for ChunkMut<'_> {
    fn deref_mut(&mut self) -> &mut Value {
        &mut self.value
    }
}

impl Drop for ChunkMut<'_> {
    fn drop(&mut self) {
        let value = std::mem::take(&mut self.value);
        self.chunk.view = ChunkView::of(&value);
        self.chunk.value = OnceLock::from(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The typed parse reads every chunk as the value-based view does, whatever its
    /// shape; odd shapes take the whole parse.
    #[test]
    fn the_typed_view_reads_what_the_value_says() {
        let texts = [
            r#"{"id":"c1","object":"chat.completion.chunk","created":7,"model":"m","system_fingerprint":"fp","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"{"id":"c1","choices":[{"index":0,"delta":{"content":"Hel\u006co \"x\""}}]}"#,
            r#"{"id":"c1","choices":[{"index":1,"delta":{"tool_calls":[{"index":0,"id":"t","type":"function","function":{"name":"f","arguments":"{\"a\":"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"function_call":{"name":"f","arguments":""}},"logprobs":{"content":[{"token":"a","logprob":-0.1}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#,
            r#"{"choices":[{"index":0,"delta":{"refusal":"no"}}],"extra":{"nested":[1,{"a":null}]}}"#,
            // Odd shapes: the whole parse.
            r#"{"choices":[{"index":0,"delta":null,"finish_reason":"stop"}]}"#,
            r#"{"choices":{"index":0}}"#,
            r#"{"choices":null,"usage":null}"#,
            r#"{"choices":[{"index":"0","delta":{"content":5}}]}"#,
            r#"{"id":"a","id":"b","choices":[]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"a","content":"b"}}]}"#,
            r#"{"choices":[[0,{"content":"x"}]]}"#,
            r#"[{"choices":[]}]"#,
            r#"42"#,
            r#""text""#,
            "  {\"choices\" : [ { \"index\" : 0 , \"delta\" : { \"content\" : \"a\" } } ] }  ",
        ];
        for text in texts {
            let chunk = Chunk::parse(text.to_string()).unwrap();
            let value: Value = serde_json::from_str(text).unwrap();
            assert_eq!(chunk.view(), &ChunkView::of(&value), "{text}");
            assert_eq!(*chunk, value, "{text}");
            assert_eq!(chunk.text(), Some(text), "{text}");
        }
        assert!(Chunk::parse("{\"choices\":[".into()).is_err());
        assert!(Chunk::parse("not json".into()).is_err());
        assert!(Chunk::parse("{} trailing".into()).is_err());
    }

    #[test]
    fn a_changed_chunk_is_written_anew_with_its_view_renewed() {
        let text = r#"{"id":"c1","choices":[{"index":0,"delta":{"role":"assistant","content":"a"}}],"usage":{"prompt_tokens":1}}"#;
        let mut chunk = Chunk::parse(text.to_string()).unwrap();
        assert!(chunk.view().has_content());
        chunk.value_mut()["usage"]["prompt_tokens"] = json!(9);
        assert_eq!(chunk.text(), None);
        assert_eq!(chunk.view().usage, json!({"prompt_tokens": 9}));
        assert_eq!(chunk["usage"]["prompt_tokens"], 9);
        {
            let mut value = chunk.value_mut();
            value["choices"] = json!([]);
        }
        assert!(chunk.view().is_usage_only());
        assert_eq!(chunk.view().choices, Some(Vec::new()));
        // A chunk made from a value has no upstream text.
        let made = Chunk::from(json!({"choices": [{"index": 0, "delta": {"content": ""}}]}));
        assert_eq!(made.text(), None);
        assert!(!made.view().has_content());
    }

    #[test]
    fn content_is_text_a_call_a_refusal_a_finish_or_usage() {
        let has = |text: &str| Chunk::parse(text.into()).unwrap().view().has_content();
        assert!(!has(
            r#"{"choices":[{"index":0,"delta":{"role":"assistant"}}]}"#
        ));
        assert!(!has(r#"{"choices":[{"index":0,"delta":{"content":""}}]}"#));
        assert!(has(r#"{"choices":[{"index":0,"delta":{"content":"a"}}]}"#));
        assert!(has(
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[]}}]}"#
        ));
        assert!(has(r#"{"choices":[{"index":0,"delta":{"refusal":"no"}}]}"#));
        assert!(has(
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#
        ));
        assert!(has(r#"{"choices":[],"usage":{"total_tokens":1}}"#));
        assert!(!has(r#"{"choices":[],"usage":null}"#));
    }
}
