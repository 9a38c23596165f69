//! Streamed chunks to one chat completion and back, losing nothing a client can see:
//! every choice, `tool_calls` (ids, names, arguments), `function_call`, `refusal`,
//! `logprobs`, `finish_reason` and `system_fingerprint`. The response cache keeps
//! answers as completions, so a streamed answer asked again plainly, or a plain one
//! asked again as a stream, is the same answer.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::chunk::ChunkView;

/// One tool call being assembled from its deltas.
#[derive(Debug, Default)]
struct ToolCall {
    id: Option<Value>,
    kind: Option<Value>,
    name: String,
    arguments: String,
}

/// One choice being assembled.
#[derive(Debug, Default)]
struct Choice {
    role: Option<Value>,
    content: Option<String>,
    refusal: Option<String>,
    tool_calls: BTreeMap<u64, ToolCall>,
    function_call: Option<(String, String)>,
    logprobs: Option<Map<String, Value>>,
    finish_reason: Option<Value>,
}

/// What the answer takes from the stream's first chunk.
#[derive(Debug)]
struct First {
    id: Value,
    created: Value,
    model: Value,
}

/// Collects the chunks of a stream into the completion they add up to.
#[derive(Debug, Default)]
pub(crate) struct Assembler {
    first: Option<First>,
    choices: BTreeMap<u64, Choice>,
    usage: Option<Value>,
    system_fingerprint: Option<Value>,
}

fn append(into: &mut Option<String>, piece: &Value) {
    if let Some(text) = piece.as_str() {
        into.get_or_insert_with(String::new).push_str(text);
    }
}

impl Assembler {
    /// Takes the answer's id, creation time and model from the stream's first chunk.
    pub fn start(&mut self, first: &Value) {
        self.first = Some(First {
            id: first["id"].clone(),
            created: first["created"].clone(),
            model: first["model"].clone(),
        });
    }

    /// Whether [`Assembler::start`] was called.
    pub fn started(&self) -> bool {
        self.first.is_some()
    }

    pub fn push(&mut self, chunk: &ChunkView) {
        if !chunk.usage.is_null() {
            self.usage = Some(chunk.usage.clone());
        }
        if !chunk.system_fingerprint.is_null() {
            self.system_fingerprint = Some(chunk.system_fingerprint.clone());
        }
        for c in chunk.choices.iter().flatten() {
            let choice = self
                .choices
                .entry(c.index.as_u64().unwrap_or(0))
                .or_default();
            let delta = &c.delta;
            if !delta.role.is_null() {
                choice.role = Some(delta.role.clone());
            }
            append(&mut choice.content, &delta.content);
            append(&mut choice.refusal, &delta.refusal);
            for call in delta.tool_calls.as_array().into_iter().flatten() {
                let entry = choice
                    .tool_calls
                    .entry(call["index"].as_u64().unwrap_or(0))
                    .or_default();
                if !call["id"].is_null() {
                    entry.id = Some(call["id"].clone());
                }
                if !call["type"].is_null() {
                    entry.kind = Some(call["type"].clone());
                }
                entry
                    .name
                    .push_str(call["function"]["name"].as_str().unwrap_or_default());
                entry
                    .arguments
                    .push_str(call["function"]["arguments"].as_str().unwrap_or_default());
            }
            if delta.function_call.is_object() {
                let (name, arguments) = choice.function_call.get_or_insert_default();
                name.push_str(delta.function_call["name"].as_str().unwrap_or_default());
                arguments.push_str(
                    delta.function_call["arguments"]
                        .as_str()
                        .unwrap_or_default(),
                );
            }
            if let Some(logprobs) = c.logprobs.as_object() {
                let into = choice.logprobs.get_or_insert_with(Map::new);
                for (field, value) in logprobs {
                    match (into.get_mut(field), value) {
                        (Some(Value::Array(have)), Value::Array(more)) => {
                            have.extend(more.iter().cloned())
                        }
                        _ => {
                            into.insert(field.clone(), value.clone());
                        }
                    }
                }
            }
            if !c.finish_reason.is_null() {
                choice.finish_reason = Some(c.finish_reason.clone());
            }
        }
    }

    /// The answer so far, when another model can continue it: one unfinished choice of
    /// plain text (no tool or function call, no refusal) with some text.
    pub fn continuable_text(&self) -> Option<String> {
        if self.choices.len() != 1 {
            return None;
        }
        let (index, c) = self.choices.iter().next()?;
        let plain = *index == 0
            && c.tool_calls.is_empty()
            && c.function_call.is_none()
            && c.refusal.is_none()
            && c.finish_reason.is_none();
        c.content.clone().filter(|text| plain && !text.is_empty())
    }

    /// Everything the model has produced so far, every choice's text and calls together
    /// (what a cut answer is billed on).
    pub fn produced(&self) -> String {
        let mut text = String::new();
        for c in self.choices.values() {
            text.push_str(c.content.as_deref().unwrap_or_default());
            text.push_str(c.refusal.as_deref().unwrap_or_default());
            for call in c.tool_calls.values() {
                text.push_str(&call.name);
                text.push_str(&call.arguments);
            }
        }
        text
    }

    /// Whether every choice seen so far has finished (a stream that ends otherwise was cut).
    pub fn finished(&self) -> bool {
        !self.choices.is_empty() && self.choices.values().all(|c| c.finish_reason.is_some())
    }

    /// The completion the chunks add up to.
    pub fn completion(&self) -> Value {
        let (id, created, model) = match &self.first {
            Some(first) => (first.id.clone(), first.created.clone(), first.model.clone()),
            None => (Value::Null, Value::Null, Value::Null),
        };
        let choices: Vec<Value> = self
            .choices
            .iter()
            .map(|(index, c)| {
                let mut message = json!({"role": c.role.clone().unwrap_or(json!("assistant"))});
                let has_calls = !c.tool_calls.is_empty() || c.function_call.is_some();
                message["content"] = match &c.content {
                    Some(text) if !(text.is_empty() && has_calls) => json!(text),
                    None if !has_calls => json!(""),
                    _ => Value::Null,
                };
                if let Some(refusal) = &c.refusal {
                    message["refusal"] = json!(refusal);
                }
                if !c.tool_calls.is_empty() {
                    message["tool_calls"] = c
                        .tool_calls
                        .values()
                        .map(|t| {
                            json!({
                                "id": t.id.clone().unwrap_or(Value::Null),
                                "type": t.kind.clone().unwrap_or(json!("function")),
                                "function": {"name": t.name, "arguments": t.arguments},
                            })
                        })
                        .collect();
                }
                if let Some((name, arguments)) = &c.function_call {
                    message["function_call"] = json!({"name": name, "arguments": arguments});
                }
                json!({
                    "index": index,
                    "message": message,
                    "finish_reason": c.finish_reason.clone().unwrap_or(json!("stop")),
                    "logprobs": c.logprobs.clone().map(Value::Object).unwrap_or(Value::Null),
                })
            })
            .collect();
        let mut completion = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": choices,
            "usage": self.usage.clone().unwrap_or(json!({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0})),
        });
        if let Some(fingerprint) = &self.system_fingerprint {
            completion["system_fingerprint"] = fingerprint.clone();
        }
        completion
    }
}

/// A completion as the chunks of a stream (without `[DONE]`): per choice, the role, then
/// its content, refusal and calls whole, then its finish; usage last when asked for.
pub fn chunks(completion: &Value, include_usage: bool) -> Vec<Value> {
    let mut base = json!({
        "id": completion["id"],
        "object": "chat.completion.chunk",
        "created": completion["created"],
        "model": completion["model"],
    });
    if !completion["system_fingerprint"].is_null() {
        base["system_fingerprint"] = completion["system_fingerprint"].clone();
    }
    let chunk = |index: &Value, delta: Value, finish: Value, logprobs: Value| {
        let mut c = base.clone();
        c["choices"] = json!([{"index": index, "delta": delta, "finish_reason": finish, "logprobs": logprobs}]);
        c
    };
    let mut out = Vec::new();
    for choice in completion["choices"].as_array().into_iter().flatten() {
        let index = &choice["index"];
        let message = &choice["message"];
        let opening = if message["content"].is_null() {
            json!({"role": "assistant", "content": null})
        } else {
            json!({"role": "assistant", "content": ""})
        };
        out.push(chunk(index, opening, Value::Null, Value::Null));
        let mut delta = Map::new();
        for field in ["content", "refusal", "function_call"] {
            let value = &message[field];
            if !value.is_null() && value != &json!("") {
                delta.insert(field.to_string(), value.clone());
            }
        }
        if let Some(calls) = message["tool_calls"].as_array() {
            let calls: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(i, call)| {
                    let mut call = call.clone();
                    call["index"] = json!(i);
                    call
                })
                .collect();
            delta.insert("tool_calls".into(), Value::Array(calls));
        }
        if !delta.is_empty() || !choice["logprobs"].is_null() {
            out.push(chunk(
                index,
                Value::Object(delta),
                Value::Null,
                choice["logprobs"].clone(),
            ));
        }
        let finish = choice["finish_reason"].clone();
        out.push(chunk(
            index,
            json!({}),
            if finish.is_null() {
                json!("stop")
            } else {
                finish
            },
            Value::Null,
        ));
    }
    if include_usage {
        let mut usage = base.clone();
        usage["choices"] = json!([]);
        usage["usage"] = completion["usage"].clone();
        out.push(usage);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_of(completion: &Value) -> Assembler {
        let mut assembler = Assembler::default();
        let chunks = chunks(completion, true);
        assembler.start(&chunks[0]);
        for chunk in &chunks {
            assembler.push(&ChunkView::of(chunk));
        }
        assembler
    }

    #[test]
    fn tool_calls_two_choices_and_fingerprints_survive_both_ways() {
        let completion = json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "system_fingerprint": "fp_1",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}},
                    {"id": "call_b", "type": "function", "function": {"name": "time", "arguments": "{}"}}
                ]}, "finish_reason": "tool_calls", "logprobs": null},
                {"index": 1, "message": {"role": "assistant", "content": "Second", "refusal": "no"},
                 "finish_reason": "stop", "logprobs": {"content": [{"token": "Second", "logprob": -0.1}]}}
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
        });
        let assembled = stream_of(&completion);
        assert!(assembled.finished());
        assert_eq!(assembled.completion(), completion);
    }

    #[test]
    fn deltas_in_pieces_add_up() {
        let mut a = Assembler::default();
        let piece =
            |choices: Value| json!({"id": "x", "created": 2, "model": "m", "choices": choices});
        a.start(&piece(json!([])));
        a.push(&ChunkView::of(&piece(json!([{"index": 0, "delta": {"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "look", "arguments": ""}}]}}]))));
        a.push(&ChunkView::of(&piece(json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"q\":"}}]}}]))));
        a.push(&ChunkView::of(&piece(json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\"x\"}"}}]}}]))));
        assert!(!a.finished());
        a.push(&ChunkView::of(&piece(
            json!([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]),
        )));
        assert!(a.finished());
        let c = a.completion();
        assert_eq!(c["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(
            c["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"q\":\"x\"}"
        );
        assert_eq!(c["choices"][0]["finish_reason"], "tool_calls");
    }
}
