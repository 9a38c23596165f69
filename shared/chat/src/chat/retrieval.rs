//! Retrieval for chat (C3): knowledge-base passages for the last user message, put into
//! the system prompt within a token budget, and the retrieval-only answer that ends the
//! fallback chain (C4).

use serde_json::{json, Value};

use crate::kb::SearchResult;

/// About four characters per token: OpenAI's rule of thumb, good enough for budgets.
pub fn estimate_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4).max(1)
}

/// Passages that made it into the prompt.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub passages: Vec<SearchResult>,
    /// The knowledge base did not answer: "no passages" then means "could not search",
    /// not "nothing matches".
    pub unreachable: bool,
}

impl Context {
    /// Keeps the best passages that fit in `token_budget` (at least the first one,
    /// shortened if it alone is too long).
    pub(crate) fn within_budget(results: Vec<SearchResult>, token_budget: usize) -> Self {
        let mut used = 0;
        let mut passages = Vec::new();
        for mut r in results {
            let cost = estimate_tokens(&r.snippet) + estimate_tokens(&r.title) + 8;
            if used + cost > token_budget {
                if passages.is_empty() {
                    r.snippet = r.snippet.chars().take(token_budget * 4).collect();
                    passages.push(r);
                }
                break;
            }
            used += cost;
            passages.push(r);
        }
        Self {
            passages,
            unreachable: false,
        }
    }

    /// No passages because the knowledge base could not be searched.
    pub fn unreachable() -> Self {
        Self {
            passages: Vec::new(),
            unreachable: true,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.passages.is_empty()
    }

    /// Distinct document ids, best first.
    pub fn sources(&self) -> Vec<String> {
        let mut ids: Vec<String> = Vec::new();
        for p in &self.passages {
            if !ids.contains(&p.document_id) {
                ids.push(p.document_id.clone());
            }
        }
        ids
    }

    /// The system message that carries the passages.
    pub(crate) fn system_message(&self) -> Value {
        let mut text = String::from(
            "Answer using the knowledge-base passages below when they are relevant, and say so when they do not contain the answer.\n",
        );
        for (i, p) in self.passages.iter().enumerate() {
            text.push_str(&format!(
                "\n[{}] {} (document {})\n{}\n",
                i + 1,
                p.title,
                p.document_id,
                p.snippet
            ));
        }
        json!({"role": "system", "content": text})
    }

    /// Inserts the passages after the caller's own system messages.
    pub(crate) fn augment(&self, messages: &[Value]) -> Vec<Value> {
        let at = messages
            .iter()
            .take_while(|m| m["role"] == "system" || m["role"] == "developer")
            .count();
        let mut out = Vec::with_capacity(messages.len() + 1);
        out.extend_from_slice(&messages[..at]);
        out.push(self.system_message());
        out.extend_from_slice(&messages[at..]);
        out
    }

    /// The retrieval-only answer: the passages themselves, plainly labelled, never
    /// worded as if a model had written it.
    pub(crate) fn retrieval_only_answer(&self, reason: &str) -> String {
        if self.unreachable {
            return format!(
                "No language model is available ({reason}), and the knowledge base could not be reached either, so no passages can be given. Try again shortly."
            );
        }
        if self.passages.is_empty() {
            return format!(
                "No language model is available ({reason}) and the knowledge base has no passage that matches this question."
            );
        }
        let mut text = format!(
            "No language model is available ({reason}). The most relevant knowledge-base passages are:\n"
        );
        for (i, p) in self.passages.iter().enumerate() {
            text.push_str(&format!(
                "\n[{}] {} (document {}): {}\n",
                i + 1,
                p.title,
                p.document_id,
                p.snippet
            ));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(doc: &str, snippet: &str) -> SearchResult {
        SearchResult {
            document_id: doc.into(),
            chunk_id: format!("{doc}#0"),
            title: format!("Title {doc}"),
            score: 1.0,
            similarity: Some(0.5),
            snippet: snippet.into(),
        }
    }

    #[test]
    fn the_budget_bounds_the_passages_and_sources_are_distinct() {
        let results = vec![
            result("a", &"x".repeat(400)),
            result("a", &"y".repeat(400)),
            result("b", &"z".repeat(400)),
        ];
        let context = Context::within_budget(results.clone(), 250);
        assert_eq!(context.passages.len(), 2);
        assert_eq!(context.sources(), vec!["a".to_string()]);
        let tiny = Context::within_budget(results, 20);
        assert_eq!(tiny.passages.len(), 1);
        assert_eq!(tiny.passages[0].snippet.len(), 80);
    }

    #[test]
    fn passages_go_after_the_callers_system_messages() {
        let context = Context::within_budget(vec![result("a", "RRF fuses lists.")], 500);
        let messages = vec![
            json!({"role": "system", "content": "Be brief."}),
            json!({"role": "user", "content": "What is RRF?"}),
        ];
        let out = context.augment(&messages);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0]["content"], "Be brief.");
        assert!(out[1]["content"]
            .as_str()
            .unwrap()
            .contains("RRF fuses lists."));
        assert_eq!(out[2]["role"], "user");
        let answer = context.retrieval_only_answer("no provider configured");
        assert!(answer.starts_with("No language model is available"));
        assert!(answer.contains("document a"));
    }
}
