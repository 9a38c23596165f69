use super::*;

#[test]
fn ids_are_validated_and_derived_from_titles() {
    assert!(valid_document_id("readme.md"));
    assert!(!valid_document_id("a b"));
    assert!(!valid_document_id(""));
    assert_eq!(
        derive_id("Refund Policy (2026)", "abc"),
        "refund-policy-2026"
    );
    assert_eq!(
        derive_id("退款", "0123456789abcdef0123"),
        "doc-0123456789abcdef"
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
