//! Text preparation for the knowledge base (I2): normalisation, content hashes and
//! chunking by characters with overlap, on paragraph and sentence boundaries.

use sha2::{Digest, Sha256};
use unicode_normalization::UnicodeNormalization;

/// English function words: left out of embeddings' features and of keyword queries,
/// where they would match nearly every passage and pass for evidence of relevance.
const STOPWORDS: &[&str] = &[
    "a", "an", "the", "and", "or", "but", "of", "to", "in", "on", "at", "by", "for", "with",
    "from", "as", "is", "are", "was", "were", "be", "been", "being", "it", "its", "this", "that",
    "these", "those", "there", "here", "what", "which", "who", "whom", "how", "why", "when",
    "where", "do", "does", "did", "can", "could", "should", "would", "will", "shall", "may",
    "might", "must", "i", "you", "he", "she", "we", "they", "me", "my", "our", "your", "their",
    "them", "us", "about", "into", "than", "then", "so", "if", "not", "no", "any", "all", "some",
    "such", "more", "most", "other", "also", "only", "very", "just", "have", "has", "had", "each",
    "per", "up", "out",
];

/// Whether a lower-cased word is one of [`STOPWORDS`].
pub(crate) fn is_stopword(lower: &str) -> bool {
    STOPWORDS.contains(&lower)
}

/// Canonical text: Unicode NFC, `\n` line ends, no control characters, single spaces,
/// trimmed lines and at most one blank line between paragraphs. Identical documents
/// normalise to identical text, so their content hashes match.
pub fn normalise(text: &str) -> String {
    let nfc: String = text.nfc().collect();
    let unified = nfc.replace("\r\n", "\n").replace('\r', "\n");
    let mut out = String::with_capacity(unified.len());
    let mut blank_run = 0;
    for line in unified.split('\n') {
        let cleaned: String = line
            .chars()
            .map(|c| if c == '\t' || c == '\u{a0}' { ' ' } else { c })
            .filter(|c| !c.is_control())
            .collect();
        let collapsed = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
        if collapsed.is_empty() {
            blank_run += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank_run > 0 { "\n\n" } else { "\n" });
        }
        out.push_str(&collapsed);
        blank_run = 0;
    }
    out
}

/// SHA-256 of the normalised text, lower-case hex: the document's identity for idempotency.
pub fn content_hash(normalised: &str) -> String {
    hex::encode(Sha256::digest(normalised.as_bytes()))
}

/// A title for a document that was given none: the `title` of its YAML (`---`) or TOML
/// (`+++`) front matter, else its first line with text after the front matter (Markdown
/// `#` marks removed), at most 120 characters.
pub(crate) fn derive_title(normalised: &str) -> String {
    let (front_matter, body) = split_front_matter(normalised);
    if let Some(title) = front_matter.and_then(front_matter_title) {
        return title.chars().take(120).collect();
    }
    body.lines()
        .map(|line| line.trim_start_matches('#').trim())
        .find(|line| !line.is_empty())
        .unwrap_or_default()
        .chars()
        .take(120)
        .collect()
}

/// The front matter (between the opening and closing `---` or `+++` lines) and the rest.
fn split_front_matter(text: &str) -> (Option<&str>, &str) {
    for fence in ["---", "+++"] {
        let Some(rest) = text.strip_prefix(fence).and_then(|r| r.strip_prefix('\n')) else {
            continue;
        };
        let closing = format!("\n{fence}");
        let end = if rest.starts_with(fence) {
            Some(0)
        } else {
            rest.find(&closing).map(|i| i + 1)
        };
        if let Some(end) = end {
            let after = &rest[end + fence.len()..];
            let front = rest[..end].trim_end_matches('\n');
            return (Some(front), after.trim_start_matches('\n'));
        }
    }
    (None, text)
}

/// `title: ...` (YAML) or `title = "..."` (TOML), unquoted.
fn front_matter_title(front_matter: &str) -> Option<String> {
    front_matter.lines().find_map(|line| {
        let line = line.trim();
        let value = line
            .strip_prefix("title:")
            .or_else(|| line.strip_prefix("title ="))
            .or_else(|| line.strip_prefix("title="))?;
        let value = value.trim();
        let unquoted = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value)
            .trim();
        (!unquoted.is_empty()).then(|| unquoted.to_string())
    })
}

/// A short excerpt of `text` around the first query word it contains.
pub(crate) fn snippet(text: &str, query: &str, max_chars: usize) -> String {
    let lower = text.to_lowercase();
    let start_byte = super::embed::tokens(query)
        .iter()
        .filter_map(|t| lower.find(t.as_str()))
        .min()
        .unwrap_or(0);
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let start_char = chars
        .iter()
        .position(|(b, _)| *b >= start_byte)
        .unwrap_or(0);
    let from = start_char.saturating_sub(max_chars / 4);
    let to = (from + max_chars).min(chars.len());
    let mut out: String = chars[from..to].iter().map(|(_, c)| *c).collect();
    if from > 0 {
        out.insert(0, '…');
    }
    if to < chars.len() {
        out.push('…');
    }
    out
}

/// One chunk of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Stable: the same document id and chunk text always give the same id.
    pub id: String,
    pub index: usize,
    pub text: String,
}

/// Chunk size and overlap in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkConfig {
    pub size: usize,
    pub overlap: usize,
}

impl Default for ChunkConfig {
    fn default() -> Self {
        Self {
            size: 1000,
            overlap: 150,
        }
    }
}

/// Unique within a document: its position is part of the id, so a passage repeated in
/// one document (200 identical log lines, a disclaimer on every page) is two chunks, not
/// two rows fighting over one key.
fn chunk_id(document_id: &str, index: usize, text: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(document_id.as_bytes());
    hasher.update([0]);
    hasher.update((index as u64).to_le_bytes());
    hasher.update(text.as_bytes());
    hex::encode(&hasher.finalize()[..12])
}

/// Sentence ends: `.`, `!`, `?` followed by a space, and CJK full stops.
fn sentences(paragraph: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = paragraph.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let end = i + c.len_utf8();
        let boundary = match c {
            '。' | '！' | '？' => true,
            '.' | '!' | '?' => matches!(chars.peek(), Some((_, ' ' | '\n'))),
            _ => false,
        };
        if boundary {
            let piece = paragraph[start..end].trim();
            if !piece.is_empty() {
                out.push(piece);
            }
            start = end;
        }
    }
    let rest = paragraph[start..].trim();
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

/// Splits a unit longer than `size` at whitespace (or anywhere, for text without spaces).
fn hard_split(unit: &str, size: usize) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut current = String::new();
    for word in unit.split(' ') {
        let word_len = word.chars().count();
        if word_len > size {
            if !current.is_empty() {
                pieces.push(std::mem::take(&mut current));
            }
            let chars: Vec<char> = word.chars().collect();
            for part in chars.chunks(size) {
                pieces.push(part.iter().collect());
            }
            continue;
        }
        let needed = if current.is_empty() {
            word_len
        } else {
            word_len + 1
        };
        if current.chars().count() + needed > size && !current.is_empty() {
            pieces.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(word);
    }
    if !current.is_empty() {
        pieces.push(current);
    }
    pieces
}

/// Splits normalised text into chunks of at most `size` characters. Units are
/// paragraphs, then sentences, then words; each chunk after the first starts with
/// the previous chunk's trailing units up to `overlap` characters, so a passage cut
/// at a boundary is still found whole in one chunk.
pub fn chunk(document_id: &str, normalised: &str, config: ChunkConfig) -> Vec<Chunk> {
    let size = config.size.max(1);
    let overlap = config.overlap.min(size / 2);
    // Units, each at most `size` characters, with the separator that precedes them.
    let mut units: Vec<(String, &str)> = Vec::new();
    for (p, paragraph) in normalised.split("\n\n").enumerate() {
        let mut first_in_paragraph = true;
        for sentence in sentences(paragraph) {
            for piece in hard_split(sentence, size) {
                let separator = if units.is_empty() {
                    ""
                } else if first_in_paragraph && p > 0 {
                    "\n\n"
                } else {
                    " "
                };
                units.push((piece, separator));
                first_in_paragraph = false;
            }
        }
    }

    let len = |s: &str| s.chars().count();
    let mut chunks: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut current_len = 0;
    for (i, (unit, _)) in units.iter().enumerate() {
        let unit_len = len(unit);
        if !current.is_empty() && current_len + 1 + unit_len > size {
            chunks.push(current.clone());
            // Carry trailing units that fit in the overlap into the next chunk.
            let mut carried = Vec::new();
            let mut carried_len = 0;
            for &j in current.iter().rev() {
                let l = len(&units[j].0);
                if carried_len + l + 1 > overlap || carried_len + l + 1 + unit_len > size {
                    break;
                }
                carried.insert(0, j);
                carried_len += l + 1;
            }
            current = carried;
            current_len = carried_len;
        }
        current_len += unit_len + usize::from(!current.is_empty());
        current.push(i);
    }
    if !current.is_empty() {
        chunks.push(current);
    }

    chunks
        .into_iter()
        .enumerate()
        .map(|(index, members)| {
            let mut text = String::new();
            for (k, &j) in members.iter().enumerate() {
                if k > 0 {
                    text.push_str(if units[j].1 == "\n\n" { "\n\n" } else { " " });
                }
                text.push_str(&units[j].0);
            }
            Chunk {
                id: chunk_id(document_id, index, &text),
                index,
                text,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_makes_equivalent_text_identical() {
        let a = "Caf\u{0065}\u{0301}  menu\r\n\r\n\r\n\tOpen\u{0007} daily  ";
        let b = "Café menu\n\nOpen daily";
        assert_eq!(normalise(a), b);
        assert_eq!(content_hash(&normalise(a)), content_hash(b));
        assert_ne!(content_hash("a"), content_hash("b"));
        assert_eq!(normalise("  \n\n "), "");
    }

    #[test]
    fn short_text_is_one_chunk_with_a_stable_id() {
        let chunks = chunk("doc-1", "One short paragraph.", ChunkConfig::default());
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].text, "One short paragraph.");
        let again = chunk("doc-1", "One short paragraph.", ChunkConfig::default());
        assert_eq!(chunks[0].id, again[0].id);
        let other = chunk("doc-2", "One short paragraph.", ChunkConfig::default());
        assert_ne!(chunks[0].id, other[0].id, "ids are per document");
    }

    #[test]
    fn chunks_respect_size_sentences_and_overlap() {
        let text = (0..40)
            .map(|i| format!("Sentence number {i} talks about topic {}.", i % 7))
            .collect::<Vec<_>>()
            .join(" ");
        let config = ChunkConfig {
            size: 200,
            overlap: 60,
        };
        let chunks = chunk("d", &text, config);
        assert!(chunks.len() > 5);
        for c in &chunks {
            assert!(
                c.text.chars().count() <= 200,
                "{} chars",
                c.text.chars().count()
            );
            assert!(
                c.text.ends_with('.'),
                "chunks end on a sentence: {:?}",
                c.text
            );
            assert!(
                c.text.starts_with("Sentence"),
                "chunks start on a sentence: {:?}",
                c.text
            );
        }
        for pair in chunks.windows(2) {
            let last_sentence = pair[0].text.rsplit(". ").next().unwrap();
            assert!(
                pair[1].text.contains(last_sentence.trim_end_matches('.')),
                "overlap carries the last sentence"
            );
        }
        let indexes: Vec<_> = chunks.iter().map(|c| c.index).collect();
        assert_eq!(indexes, (0..chunks.len()).collect::<Vec<_>>());
    }

    #[test]
    fn paragraphs_are_kept_together_when_they_fit() {
        let text = "First paragraph is here.\n\nSecond paragraph follows.\n\nThird one.";
        let chunks = chunk(
            "d",
            text,
            ChunkConfig {
                size: 60,
                overlap: 0,
            },
        );
        assert_eq!(
            chunks[0].text,
            "First paragraph is here.\n\nSecond paragraph follows."
        );
        assert_eq!(chunks[1].text, "Third one.");
    }

    #[test]
    fn very_long_words_and_cjk_text_are_split() {
        let long = "x".repeat(250);
        let chunks = chunk(
            "d",
            &long,
            ChunkConfig {
                size: 100,
                overlap: 10,
            },
        );
        assert_eq!(chunks.len(), 3);
        assert!(chunks.iter().all(|c| c.text.chars().count() <= 100));
        let cjk = "退款政策规定七天内可以退货。超过七天需要联系客服。会员可以延长到三十天。";
        let chunks = chunk(
            "d",
            cjk,
            ChunkConfig {
                size: 20,
                overlap: 0,
            },
        );
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[1].text, "超过七天需要联系客服。");
    }
}
