//! Data-quality helpers shared by the API layer and the `text::` script module:
//! the one place that says when two emails, names or tags are the same.

use unicode_normalization::UnicodeNormalization;

/// Characters that forms and copy-paste leave inside addresses and that no one means.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200B}' | '\u{200C}' | '\u{200D}' | '\u{2060}' | '\u{FEFF}' | '\u{00AD}'
    )
}

/// An email as it is compared and stored: trimmed, without zero-width characters,
/// lowercased, in Unicode NFC. Returns an empty string for an empty or blank input.
pub fn normalize_email(email: &str) -> String {
    email
        .chars()
        .filter(|c| !is_invisible(*c))
        .collect::<String>()
        .trim()
        .nfc()
        .collect::<String>()
        .to_lowercase()
}

/// Whether a normalized email looks like an address: something, one `@`, a dotted
/// domain, no white space. A plausibility check, not a validation.
pub fn looks_like_email(normalized: &str) -> bool {
    let Some((local, domain)) = normalized.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !normalized.chars().any(char::is_whitespace)
}

/// A name or tag as it is compared and stored: trimmed, inner runs of white space
/// collapsed to one space, in Unicode NFC.
pub fn normalize_label(text: &str) -> String {
    let cleaned: String = text.chars().filter(|c| !is_invisible(*c)).collect();
    cleaned
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .nfc()
        .collect()
}

/// Trims white space and invisible characters at both ends.
pub fn trim(text: &str) -> String {
    text.trim_matches(|c: char| c.is_whitespace() || is_invisible(c))
        .to_owned()
}

/// The digits of a phone number with a leading `+` kept, for comparing two phones
/// written differently (`(303) 555-0100` and `303.555.0100`).
pub fn phone_digits(phone: &str) -> String {
    let trimmed = phone.trim();
    let mut out = String::new();
    if trimmed.starts_with('+') {
        out.push('+');
    }
    out.extend(trimmed.chars().filter(char::is_ascii_digit));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_compare_without_case_space_or_zero_width() {
        assert_eq!(normalize_email("  Jane@Example.COM \n"), "jane@example.com");
        assert_eq!(
            normalize_email("ja\u{200B}ne@example.com"),
            "jane@example.com"
        );
        assert_eq!(normalize_email("   "), "");
    }

    #[test]
    fn email_plausibility() {
        assert!(looks_like_email("jane@example.com"));
        assert!(!looks_like_email("jane"));
        assert!(!looks_like_email("jane@example"));
        assert!(!looks_like_email("ja ne@example.com"));
        assert!(!looks_like_email("@example.com"));
    }

    #[test]
    fn labels_are_nfc_and_collapsed() {
        // "e" followed by a combining acute accent composes to one character.
        assert_eq!(
            normalize_label("  Rene\u{301}e   Smith "),
            "Ren\u{e9}e Smith"
        );
    }

    #[test]
    fn phone_digits_ignore_punctuation() {
        assert_eq!(phone_digits("(303) 555-0100"), "3035550100");
        assert_eq!(phone_digits("+1 303.555.0100"), "+13035550100");
    }
}
