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

/// The region that phones without a country code belong to, unless a call names one:
/// the `phone_region` setting, `US` until the service sets it.
static DEFAULT_REGION: std::sync::RwLock<Option<phonenumber::country::Id>> =
    std::sync::RwLock::new(None);

/// Why a phone region name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a two-letter region code such as US, CA or GB, found {0:?}")]
pub struct UnknownRegion(pub String);

/// A region code (`US`, `ca`) as the phone library knows it.
pub fn phone_region(code: &str) -> Result<phonenumber::country::Id, UnknownRegion> {
    let upper = code.trim().to_ascii_uppercase();
    if upper.len() != 2 {
        return Err(UnknownRegion(code.to_owned()));
    }
    upper
        .parse::<phonenumber::country::Id>()
        .map_err(|_| UnknownRegion(code.to_owned()))
}

/// Sets the region of phones written without a country code, for the whole process,
/// and loads the phone library's metadata now (half a second in a debug build), so
/// that the first run to read a phone does not spend its time limit on it.
pub fn set_default_region(code: &str) -> Result<(), UnknownRegion> {
    let id = phone_region(code)?;
    *DEFAULT_REGION.write().unwrap_or_else(|p| p.into_inner()) = Some(id);
    let _ = normalize_phone("+1 303 555 0100", id);
    Ok(())
}

/// The region of phones written without a country code.
pub fn default_region() -> phonenumber::country::Id {
    DEFAULT_REGION
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .unwrap_or(phonenumber::country::Id::US)
}

/// A phone in E.164 (`+13035550122`), read in `region` when it has no country code.
/// `None` when the text is not a phone number of that region or any other.
pub fn normalize_phone(phone: &str, region: phonenumber::country::Id) -> Option<String> {
    let cleaned: String = phone.chars().filter(|c| !is_invisible(*c)).collect();
    let cleaned = cleaned.trim();
    if cleaned.is_empty() || cleaned.len() > 64 {
        return None;
    }
    // The phone library indexes into its input in places; a number it cannot handle
    // must never take the run down with it.
    let parsed = std::panic::catch_unwind(|| phonenumber::parse(Some(region), cleaned)).ok()?;
    let number = parsed.ok()?;
    let valid = std::panic::catch_unwind(|| phonenumber::is_valid(&number)).unwrap_or(false);
    if !valid {
        return None;
    }
    let text =
        std::panic::catch_unwind(|| number.format().mode(phonenumber::Mode::E164).to_string())
            .ok()?;
    Some(text)
}

/// Words that belong to the last name that follows them ("van der Berg").
const NAME_PARTICLES: &[&str] = &[
    "van", "von", "der", "den", "de", "del", "della", "di", "da", "du", "la", "le", "st.", "st",
    "bin", "ibn", "al", "ter", "ten", "dos", "das", "y",
];

/// Words that end a name without being its last name ("Baker Jr.").
const NAME_SUFFIXES: &[&str] = &[
    "jr", "jr.", "sr", "sr.", "ii", "iii", "iv", "v", "md", "m.d.", "phd", "ph.d.", "esq", "esq.",
];

/// A full name in its parts. `middle` holds any names between the first and the last.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameParts {
    pub first: String,
    pub middle: String,
    pub last: String,
}

/// Splits a full name as people type it into forms: "Jane Baker", "Baker, Jane",
/// "Jane Q. Baker", "Ludwig van Beethoven", "Jane Baker Jr.", or a single word (a
/// first name). White space is collapsed and the parts are in NFC; letter case is kept.
pub fn split_name(full: &str) -> NameParts {
    let full = normalize_label(full);
    let is_suffix = |w: &str| NAME_SUFFIXES.contains(&w.to_lowercase().trim_end_matches(','));

    // "Last, First Middle", unless what follows the comma is a suffix ("Baker, Jr.").
    if let Some((last, rest)) = full.split_once(',') {
        let rest = rest.trim();
        let rest_words: Vec<&str> = rest.split_whitespace().collect();
        if !rest_words.is_empty() && !rest_words.iter().all(|w| is_suffix(w)) {
            let last = last.trim().to_owned();
            let mut words = rest_words.into_iter().filter(|w| !is_suffix(w));
            let first = words.next().unwrap_or_default().to_owned();
            let middle = words.collect::<Vec<_>>().join(" ");
            return NameParts {
                first,
                middle,
                last,
            };
        }
    }

    let words: Vec<String> = full
        .replace(',', " ")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let mut core: Vec<&str> = words.iter().map(String::as_str).collect();
    let mut suffixes = Vec::new();
    while core.len() > 2 && core.last().is_some_and(|w| is_suffix(w)) {
        suffixes.insert(0, core.pop().unwrap_or_default());
    }
    match core.len() {
        0 => NameParts::default(),
        1 => NameParts {
            first: core[0].to_owned(),
            ..NameParts::default()
        },
        n => {
            // The last name starts at the last word, or earlier at a particle.
            let mut start = n - 1;
            while start > 1 && NAME_PARTICLES.contains(&core[start - 1].to_lowercase().as_str()) {
                start -= 1;
            }
            let mut last = core[start..].join(" ");
            if !suffixes.is_empty() {
                last = format!("{last} {}", suffixes.join(" "));
            }
            NameParts {
                first: core[0].to_owned(),
                middle: core[1..start].join(" "),
                last,
            }
        }
    }
}

/// A name in title case, as forms typed in capitals or in lowercase need: "JANE
/// o'brien-smith" becomes "Jane O'Brien-Smith", "mcdonald" "McDonald"; particles
/// inside a name ("van", "de") stay lowercase. The result is in NFC.
pub fn title_case(text: &str) -> String {
    let text = normalize_label(text);
    let mut out = Vec::new();
    for (i, word) in text.split(' ').enumerate() {
        let lower = word.to_lowercase();
        if i > 0 && NAME_PARTICLES.contains(&lower.as_str()) {
            out.push(lower);
            continue;
        }
        out.push(title_word(&lower));
    }
    out.join(" ")
}

/// One lowercase word with a capital at its start and after `-`, `'` and `Mc`.
fn title_word(lower: &str) -> String {
    let mut out = String::with_capacity(lower.len());
    let mut capital = true;
    for c in lower.chars() {
        if capital {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        capital = matches!(c, '-' | '\'' | '\u{2019}' | '(' | '"' | '/');
        // "Mc" names capitalize their third letter: McDonald.
        if out == "Mc" && lower.chars().count() > 3 {
            capital = true;
        }
    }
    // "O'" is a prefix, but "'s" is not: "Baker's" keeps a lowercase s.
    if let Some(rest) = out.strip_suffix("'S") {
        return format!("{rest}'s");
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
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

    #[test]
    fn phones_become_e164_in_the_default_region() {
        let us = phone_region("US").unwrap();
        assert_eq!(
            normalize_phone("(303) 555-0122", us).as_deref(),
            Some("+13035550122")
        );
        assert_eq!(
            normalize_phone("303.555.0122", us).as_deref(),
            Some("+13035550122")
        );
        assert_eq!(
            normalize_phone("+1 303 555 0122", us).as_deref(),
            Some("+13035550122")
        );
        assert_eq!(
            normalize_phone("3035550122", us).as_deref(),
            Some("+13035550122")
        );
        // A number with its own country code keeps it, whatever the default region.
        assert_eq!(
            normalize_phone("+44 20 7946 0958", us).as_deref(),
            Some("+442079460958")
        );
        let gb = phone_region("gb").unwrap();
        assert_eq!(
            normalize_phone("020 7946 0958", gb).as_deref(),
            Some("+442079460958")
        );
    }

    #[test]
    fn text_that_is_not_a_phone_is_none() {
        let us = phone_region("US").unwrap();
        for odd in [
            "",
            "   ",
            "n/a",
            "call me",
            "12",
            "+",
            "+++",
            "()",
            "0",
            "\u{200B}",
            "1-800",
            "99999999999999999999999999",
            "+1 (303) 555-01",
            "@@@@@@@@",
            "٣٠٣٥٥٥٠١٢٢x",
            "tel:",
            "tel:+",
            ";ext=1",
            "+1;ext=",
            "(((((((((",
            "+999 123 456",
        ] {
            assert_eq!(normalize_phone(odd, us), None, "{odd:?}");
        }
    }

    #[test]
    fn regions_are_checked() {
        assert!(phone_region("US").is_ok());
        assert!(phone_region(" ca ").is_ok());
        let err = phone_region("USA").unwrap_err();
        assert!(err.to_string().contains("two-letter region"), "{err}");
        assert!(phone_region("ZZ").is_err());
        assert!(phone_region("").is_err());
    }

    fn parts(first: &str, middle: &str, last: &str) -> NameParts {
        NameParts {
            first: first.into(),
            middle: middle.into(),
            last: last.into(),
        }
    }

    #[test]
    fn names_split_the_ways_forms_write_them() {
        assert_eq!(split_name("Jane Baker"), parts("Jane", "", "Baker"));
        assert_eq!(split_name("  Jane    Baker \n"), parts("Jane", "", "Baker"));
        assert_eq!(split_name("Baker, Jane"), parts("Jane", "", "Baker"));
        assert_eq!(split_name("Baker,Jane Q."), parts("Jane", "Q.", "Baker"));
        assert_eq!(
            split_name("Jane Quinn Baker"),
            parts("Jane", "Quinn", "Baker")
        );
        assert_eq!(
            split_name("Ludwig van Beethoven"),
            parts("Ludwig", "", "van Beethoven")
        );
        assert_eq!(
            split_name("Anna Maria de la Cruz"),
            parts("Anna", "Maria", "de la Cruz")
        );
        assert_eq!(split_name("Jane Baker Jr."), parts("Jane", "", "Baker Jr."));
        assert_eq!(
            split_name("Jane Baker, Jr."),
            parts("Jane", "", "Baker Jr.")
        );
        assert_eq!(split_name("Cher"), parts("Cher", "", ""));
        assert_eq!(split_name(""), parts("", "", ""));
        assert_eq!(split_name(" , "), parts("", "", ""));
        assert_eq!(split_name(","), parts("", "", ""));
        // Composed and decomposed accents give the same parts.
        assert_eq!(split_name("Rene\u{301}e Baker").first, "Ren\u{e9}e");
    }

    #[test]
    fn title_case_fixes_shouting_and_lowercase() {
        assert_eq!(title_case("JANE BAKER"), "Jane Baker");
        assert_eq!(title_case("jane   baker"), "Jane Baker");
        assert_eq!(title_case("mary-jane o'brien"), "Mary-Jane O'Brien");
        assert_eq!(title_case("mcdonald"), "McDonald");
        assert_eq!(title_case("ludwig VAN beethoven"), "Ludwig van Beethoven");
        assert_eq!(title_case("josé ñúñez"), "José Ñúñez");
        assert_eq!(title_case("baker's"), "Baker's");
        assert_eq!(title_case(""), "");
        assert_eq!(title_case("mc"), "Mc");
    }
}
