use super::text::snippet;
use super::*;

#[test]
fn ids_are_validated_and_derived_from_the_text_alone() {
    assert!(valid_document_id("readme.md"));
    assert!(!valid_document_id("a b"));
    assert!(!valid_document_id(""));
    let shared_first_line =
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/";
    let curl = content_id(&format!("{shared_first_line}\nUpstream-Name: curl"));
    let apt = content_id(&format!("{shared_first_line}\nUpstream-Name: apt"));
    assert_ne!(curl, apt, "a shared first line never makes a shared id");
    assert!(curl.starts_with("doc-") && curl.len() == 20 && valid_document_id(&curl));
    assert_eq!(
        curl,
        content_id(&format!("{shared_first_line}\nUpstream-Name: curl")),
        "the same text gets the same id"
    );
}

#[test]
fn titles_skip_front_matter_and_use_its_title() {
    assert_eq!(
        text::derive_title("# Refund policy\nWithin 14 days."),
        "Refund policy"
    );
    assert_eq!(
        text::derive_title("---\ntitle: \"Office Wi-Fi\"\ntags: [it]\n---\n# Heading\nText"),
        "Office Wi-Fi"
    );
    assert_eq!(
        text::derive_title("---\nauthor: someone\n---\n\n# Heading\nText"),
        "Heading",
        "without a title key, the first line after the front matter"
    );
    assert_eq!(
        text::derive_title("+++\ntitle = 'Release notes'\n+++\nBody"),
        "Release notes"
    );
    assert_eq!(text::derive_title("---\n---\nBody"), "Body");
    assert_eq!(
        text::derive_title("--- not front matter\nSecond"),
        "--- not front matter"
    );
}

#[test]
fn snippets_centre_on_the_first_match() {
    let text = format!(
        "{} The refund window is 14 days. {}",
        "intro ".repeat(60),
        "outro ".repeat(60)
    );
    let s = snippet(&text, "refund", 80);
    assert!(s.contains("refund window"), "{s}");
    assert!(s.starts_with('…') && s.ends_with('…'));
    assert_eq!(snippet("short", "zzz", 80), "short");
}
