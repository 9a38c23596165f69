//! One streamed chunk. What the gateway reads of every chunk (its choices' deltas and
//! finish, its usage) is parsed straight from the upstream's text into a small typed
//! view; the whole JSON value is built only for a chunk that is changed or read whole
//! (the first, a continued one, a traced one). Parsing every chunk into a
//! `serde_json::Value` (a map with a hashed index and a string for each key) was 31 % of
//! a relayed stream's instructions (docs/benchmarks.md, "A typed view of each streamed chunk").

use std::sync::OnceLock;

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// What the relay, the assembler and the first-content check read of every chunk. A
/// field that is absent and one that is `null` are both `Value::Null`, as `chunk["field"]`
/// reads them; a key given twice counts as its last value, as in a `Value`. (The id,
/// creation time and model are read from the first chunk's whole value, built anyway.)
///
/// Read by hand rather than derived: every field the view does not keep is still read
/// through (`Checked`), so a text the view accepts is one a `Value` accepts too (serde's
/// way of skipping a field checks neither escapes, nor number ranges, nor depth), and a
/// derived struct would also take an array of its fields in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ChunkView {
    pub usage: Value,
    pub system_fingerprint: Value,
    /// `None` unless `choices` is an array.
    pub choices: Option<Vec<ChoiceView>>,
}

/// One choice of a chunk.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ChoiceView {
    pub index: Value,
    pub delta: DeltaView,
    pub logprobs: Value,
    pub finish_reason: Value,
}

/// One choice's delta.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct DeltaView {
    pub role: Value,
    pub content: Value,
    pub refusal: Value,
    pub tool_calls: Value,
    pub function_call: Value,
}

/// Any JSON value, read as a `Value` reads it (escapes, number ranges, depth) and not
/// kept: a string without escapes is not even copied.
pub(super) struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(CheckedVisitor)
            .map(|()| Checked)
    }
}

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key::<Checked>()?.is_some() {
            map.next_value::<Checked>()?;
        }
        Ok(())
    }
}

/// A key of an object the view reads: its place among `names`, or `None` for a key the
/// view does not keep.
pub(super) struct FieldOf(pub(super) &'static [&'static str]);

impl<'de> DeserializeSeed<'de> for FieldOf {
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for FieldOf {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().position(|name| *name == key))
    }
}

/// Reads an object's keys with `names`, handing each kept one to `keep` and reading the
/// others through.
pub(super) fn read_object<'de, A: MapAccess<'de>>(
    mut map: A,
    names: &'static [&'static str],
    mut keep: impl FnMut(usize, &mut A) -> Result<(), A::Error>,
) -> Result<(), A::Error> {
    while let Some(field) = map.next_key_seed(FieldOf(names))? {
        match field {
            Some(at) => keep(at, &mut map)?,
            None => {
                map.next_value::<Checked>()?;
            }
        }
    }
    Ok(())
}

/// A view read from a JSON object only.
macro_rules! object_view {
    ($view:ty, $names:expr, |$target:ident, $at:ident, $map:ident| $keep:expr) => {
        impl<'de> serde::Deserialize<'de> for $view {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct ViewVisitor;
                impl<'de> serde::de::Visitor<'de> for ViewVisitor {
                    type Value = $view;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("an object")
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        map: A,
                    ) -> Result<$view, A::Error> {
                        let mut $target = <$view>::default();
                        $crate::chat::chunk::read_object(map, $names, |$at, $map| {
                            $keep;
                            Ok(())
                        })?;
                        Ok($target)
                    }
                }
                deserializer.deserialize_map(ViewVisitor)
            }
        }
    };
}
pub(super) use object_view;

object_view!(
    ChunkView,
    &["usage", "system_fingerprint", "choices"],
    |view, at, map| match at {
        0 => view.usage = map.next_value()?,
        1 => view.system_fingerprint = map.next_value()?,
        _ => view.choices = map.next_value()?,
    }
);

object_view!(
    ChoiceView,
    &["index", "delta", "logprobs", "finish_reason"],
    |choice, at, map| match at {
        0 => choice.index = map.next_value()?,
        1 => choice.delta = map.next_value()?,
        2 => choice.logprobs = map.next_value()?,
        _ => choice.finish_reason = map.next_value()?,
    }
);

object_view!(
    DeltaView,
    &["role", "content", "refusal", "tool_calls", "function_call"],
    |delta, at, map| match at {
        0 => delta.role = map.next_value()?,
        1 => delta.content = map.next_value()?,
        2 => delta.refusal = map.next_value()?,
        3 => delta.tool_calls = map.next_value()?,
        _ => delta.function_call = map.next_value()?,
    }
);

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
        if let Ok(view) = serde_json::from_str::<ChunkView>(&text) {
            return Ok(Self {
                view,
                text: Some(text),
                value: OnceLock::new(),
            });
        }
        // Not the shape the view expects (a `null` delta, `choices` that is not an
        // array, not an object...): read as a value, as before the view.
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

/// The value of a text read through once already (by a view), as a `Value` reads it.
pub(super) fn parse_text(text: Option<&str>) -> Value {
    let value = text.and_then(|t| serde_json::from_str(t).ok());
    debug_assert!(value.is_some(), "a kept text no longer parses");
    value.unwrap_or_default()
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
    /// shape; odd shapes take the whole parse; and a text is accepted exactly when a
    /// `Value` accepts it, so the whole value can always be built later.
    #[test]
    fn the_typed_view_reads_what_the_value_says() {
        // (text, read as a whole value at once)
        let texts = [
            (
                r#"{"id":"c1","object":"chat.completion.chunk","created":7,"model":"m","system_fingerprint":"fp","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":null}"#,
                false,
            ),
            (
                r#"{"id":"c1","choices":[{"index":0,"delta":{"content":"Hel\u006co \"x\""}}]}"#,
                false,
            ),
            (
                r#"{"id":"c1","choices":[{"index":1,"delta":{"tool_calls":[{"index":0,"id":"t","type":"function","function":{"name":"f","arguments":"{\"a\":"}}]}}]}"#,
                false,
            ),
            (
                r#"{"choices":[{"index":0,"delta":{"function_call":{"name":"f","arguments":""}},"logprobs":{"content":[{"token":"a","logprob":-0.1}]}}]}"#,
                false,
            ),
            (
                r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
                false,
            ),
            (
                r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#,
                false,
            ),
            (
                r#"{"choices":[{"index":0,"delta":{"refusal":"no"}}],"extra":{"nested":[1,{"a":null}],"e":"\ud83d\ude00"}}"#,
                false,
            ),
            (r#"{"choices":null,"usage":null}"#, false),
            (
                r#"{"choices":[{"index":"0","delta":{"content":5}}]}"#,
                false,
            ),
            (r#"{"usage":{"a":1},"usage":{"b":2},"choices":[]}"#, false),
            (
                r#"{"choices":[{"index":0,"delta":{"content":"a","content":"b"}}]}"#,
                false,
            ),
            (r#"{"u\u0073age":{"total_tokens":1},"choices":[]}"#, false),
            (
                "  {\"choices\" : [ { \"index\" : 0 , \"delta\" : { \"content\" : \"a\" } } ] }  ",
                false,
            ),
            // Odd shapes: the whole parse.
            (
                r#"{"choices":[{"index":0,"delta":null,"finish_reason":"stop"}]}"#,
                true,
            ),
            (r#"{"choices":{"index":0}}"#, true),
            (r#"{"choices":[[0,{"content":"x"}]]}"#, true),
            (r#"{"choices":[{"index":0,"delta":[null,"x"]}]}"#, true),
            (r#"[{"choices":[]}]"#, true),
            (r#"42"#, true),
            (r#""text""#, true),
        ];
        for (text, whole) in texts {
            let chunk = Chunk::parse(text.to_string()).unwrap();
            assert_eq!(chunk.value.get().is_some(), whole, "{text}");
            let value: Value = serde_json::from_str(text).unwrap();
            assert_eq!(chunk.view(), &ChunkView::of(&value), "{text}");
            assert_eq!(*chunk, value, "{text}");
            assert_eq!(chunk.text(), Some(text), "{text}");
        }
        // What a `Value` refuses, the chunk refuses too, in the fields the view skips as
        // in the ones it keeps.
        let deep = format!(
            r#"{{"choices":[],"extra":{}0{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        let refused = [
            "{\"choices\":[",
            "not json",
            "{} trailing",
            r#"{"id":"\ud800","choices":[]}"#,
            r#"{"\ud800":1,"choices":[]}"#,
            r#"{"created":1e400,"choices":[]}"#,
            r#"{"choices":[{"index":0,"delta":{"reasoning_content":"\udc00"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"\ud800"}}]}"#,
            r#"{"choices":[],"x":"\q"}"#,
            r#"{"choices":[],"x":"tab	inside"}"#,
            deep.as_str(),
        ];
        for text in refused {
            assert!(serde_json::from_str::<Value>(text).is_err(), "{text}");
            assert!(Chunk::parse(text.to_string()).is_err(), "{text}");
        }
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
