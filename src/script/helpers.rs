//! The data-quality functions of the `text::` and `time::` script modules: each takes
//! what a form sends (a string, a number, `()`), returns `()` for `()`, and names
//! what it expected when it gets something else.

use rhai::{Dynamic, EvalAltResult, Module};

use super::engine::runtime_error;
use crate::{text, time};

type Result<T> = std::result::Result<T, Box<EvalAltResult>>;

/// The text of a string or a number; `None` for `()`; an error for anything else.
fn text_of(call: &str, what: &str, value: &Dynamic) -> Result<Option<String>> {
    if value.is_unit() {
        return Ok(None);
    }
    if value.is_string() || value.is_int() || value.is_char() {
        return Ok(Some(value.to_string()));
    }
    if let Ok(f) = value.as_float() {
        // A JSON number such as 3035550122 may arrive as a float.
        if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e15 {
            return Ok(Some(format!("{}", f as i64)));
        }
        return Ok(Some(f.to_string()));
    }
    Err(runtime_error(format!(
        "{call}: expected {what}, found {}",
        value.type_name()
    )))
}

/// A string argument that must be given.
fn required_text(call: &str, what: &str, value: &Dynamic) -> Result<String> {
    if value.is_string() {
        return Ok(value.to_string());
    }
    Err(runtime_error(format!(
        "{call}: expected {what} as a string, found {}",
        value.type_name()
    )))
}

fn region_of(call: &str, region: &Dynamic) -> Result<phonenumber::country::Id> {
    let code = required_text(call, "a region code such as \"US\"", region)?;
    text::phone_region(&code).map_err(|e| runtime_error(format!("{call}: {e}")))
}

fn phone(call: &str, value: &Dynamic, region: phonenumber::country::Id) -> Result<Dynamic> {
    let Some(raw) = text_of(call, "a phone as a string or a number", value)? else {
        return Ok(Dynamic::UNIT);
    };
    Ok(match text::normalize_phone(&raw, region) {
        Some(e164) => e164.into(),
        None => Dynamic::UNIT,
    })
}

/// Adds `normalize_phone`, `split_name` and `title_case` to the `text::` module.
pub fn add_text_functions(m: &mut Module) {
    super::modules::set(m, "normalize_phone", |value: Dynamic| -> Result<Dynamic> {
        phone("text::normalize_phone", &value, text::default_region())
    });
    super::modules::set(
        m,
        "normalize_phone",
        |value: Dynamic, region: Dynamic| -> Result<Dynamic> {
            let call = "text::normalize_phone";
            let region = region_of(call, &region)?;
            phone(call, &value, region)
        },
    );
    super::modules::set(m, "split_name", |value: Dynamic| -> Result<Dynamic> {
        let Some(full) = text_of("text::split_name", "a name as a string", &value)? else {
            return Ok(Dynamic::UNIT);
        };
        let parts = text::split_name(&full);
        let mut map = rhai::Map::new();
        map.insert("first".into(), parts.first.into());
        map.insert("middle".into(), parts.middle.into());
        map.insert("last".into(), parts.last.into());
        Ok(map.into())
    });
    super::modules::set(m, "title_case", |value: Dynamic| -> Result<Dynamic> {
        match text_of("text::title_case", "a string", &value)? {
            Some(s) => Ok(text::title_case(&s).into()),
            None => Ok(Dynamic::UNIT),
        }
    });
}

/// A time from a script value: a string in any format [`time::parse`] reads, a Unix
/// timestamp, or a map of `year`, `month` and `day`. `Ok(None)` for `()`.
fn when_of(call: &str, value: &Dynamic, zone: chrono_tz::Tz) -> Result<Option<time::When>> {
    if value.is_unit() {
        return Ok(None);
    }
    if let Ok(n) = value.as_int() {
        return Ok(time::from_timestamp(n));
    }
    if let Some(map) = value.read_lock::<rhai::Map>() {
        let part = |key: &str| map.get(key).map(|v| v.to_string()).unwrap_or_default();
        return Ok(time::from_parts(
            &part("year"),
            &part("month"),
            &part("day"),
        ));
    }
    if value.is_string() {
        return Ok(time::parse(&value.to_string(), zone));
    }
    Err(runtime_error(format!(
        "{call}: expected a date or time as a string, a timestamp or a map of year, month \
         and day, found {}",
        value.type_name()
    )))
}

/// A time that must be readable: an error quotes the text that was not.
fn required_when(call: &str, value: &Dynamic) -> Result<time::When> {
    match when_of(call, value, chrono_tz::UTC)? {
        Some(when) => Ok(when),
        None if value.is_unit() => Err(runtime_error(format!(
            "{call}: expected a date or time, found ()"
        ))),
        None => Err(runtime_error(format!(
            "{call}: cannot read {:?} as a date or time; expected a form such as \
             2025-03-14, 03/14/2025, March 14, 2025 or 2025-03-14T09:30:00Z",
            value.to_string()
        ))),
    }
}

fn zone_of(call: &str, zone: &Dynamic) -> Result<chrono_tz::Tz> {
    let name = required_text(call, "a time zone such as \"America/Denver\"", zone)?;
    time::zone(&name).map_err(|e| runtime_error(format!("{call}: {e}")))
}

fn parse(value: &Dynamic, zone: chrono_tz::Tz) -> Result<Dynamic> {
    Ok(match when_of("time::parse", value, zone)? {
        Some(when) => when.to_text().into(),
        None => Dynamic::UNIT,
    })
}

fn format(value: &Dynamic, pattern: &Dynamic, zone: Option<chrono_tz::Tz>) -> Result<Dynamic> {
    let call = "time::format";
    if value.is_unit() {
        return Ok(Dynamic::UNIT);
    }
    let pattern = required_text(call, "a format such as \"%B %-d, %Y\"", pattern)?;
    let when = required_when(call, value)?;
    time::format(&when, &pattern, zone)
        .map(Dynamic::from)
        .map_err(|e| runtime_error(format!("{call}: {e}")))
}

/// The `time::` module.
pub fn time_module() -> Module {
    let mut m = Module::new();
    super::modules::set(&mut m, "now", || -> Result<String> { Ok(time::now()) });
    super::modules::set(&mut m, "parse", |value: Dynamic| -> Result<Dynamic> {
        parse(&value, chrono_tz::UTC)
    });
    super::modules::set(
        &mut m,
        "parse",
        |value: Dynamic, zone: Dynamic| -> Result<Dynamic> {
            parse(&value, zone_of("time::parse", &zone)?)
        },
    );
    super::modules::set(
        &mut m,
        "format",
        |value: Dynamic, pattern: Dynamic| -> Result<Dynamic> { format(&value, &pattern, None) },
    );
    super::modules::set(
        &mut m,
        "format",
        |value: Dynamic, pattern: Dynamic, zone: Dynamic| -> Result<Dynamic> {
            let zone = zone_of("time::format", &zone)?;
            format(&value, &pattern, Some(zone))
        },
    );
    super::modules::set(
        &mut m,
        "days_between",
        |a: Dynamic, b: Dynamic| -> Result<Dynamic> {
            if a.is_unit() || b.is_unit() {
                return Ok(Dynamic::UNIT);
            }
            let call = "time::days_between";
            let (a, b) = (required_when(call, &a)?, required_when(call, &b)?);
            Ok(time::days_between(&a, &b).into())
        },
    );
    m
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rhai::Dynamic;

    /// Evaluates a script with the pure modules; the value, or the error's message.
    fn eval(script: &str) -> Result<Dynamic, String> {
        let engine = super::super::engine::expressions();
        engine
            .eval::<Dynamic>(script)
            .map_err(|e| super::super::engine::plain_message(&e))
    }

    fn text(script: &str) -> String {
        eval(script).unwrap().to_string()
    }

    #[test]
    fn phones_from_strings_and_numbers() {
        assert_eq!(
            text(r#"text::normalize_phone("(303) 555-0122")"#),
            "+13035550122"
        );
        assert_eq!(text("text::normalize_phone(3035550122)"), "+13035550122");
        assert_eq!(text("text::normalize_phone(3035550122.0)"), "+13035550122");
        assert_eq!(
            text(r#"text::normalize_phone("020 7946 0958", "GB")"#),
            "+442079460958"
        );
        assert!(eval("text::normalize_phone(())").unwrap().is_unit());
        assert!(eval(r#"text::normalize_phone("")"#).unwrap().is_unit());
        assert!(
            eval(r#"text::normalize_phone("call me")"#)
                .unwrap()
                .is_unit()
        );
        let err = eval(r#"text::normalize_phone(#{ a: 1 })"#).unwrap_err();
        assert!(
            err.contains("expected a phone as a string or a number, found map"),
            "{err}"
        );
        let err = eval(r#"text::normalize_phone("3035550122", "USA")"#).unwrap_err();
        assert!(err.contains("two-letter region"), "{err}");
        let err = eval(r#"text::normalize_phone("3035550122", 1)"#).unwrap_err();
        assert!(err.contains("found i64"), "{err}");
    }

    #[test]
    fn names_split_and_title_case() {
        assert_eq!(text(r#"text::split_name("Baker, Jane").first"#), "Jane");
        assert_eq!(text(r#"text::split_name("Baker, Jane").last"#), "Baker");
        assert_eq!(text(r#"text::split_name("  jane  q  baker ").middle"#), "q");
        assert_eq!(text(r#"text::split_name("Cher").last"#), "");
        assert_eq!(text(r#"text::split_name("").first"#), "");
        assert!(eval("text::split_name(())").unwrap().is_unit());
        let err = eval("text::split_name([1])").unwrap_err();
        assert!(
            err.contains("expected a name as a string, found array"),
            "{err}"
        );
        assert_eq!(text(r#"text::title_case("JANE o'BRIEN")"#), "Jane O'Brien");
        assert!(eval("text::title_case(())").unwrap().is_unit());
        assert_eq!(text("text::title_case(42)"), "42");
        let err = eval("text::title_case(true)").unwrap_err();
        assert!(err.contains("expected a string, found bool"), "{err}");
    }

    #[test]
    fn times_parse_format_and_count() {
        assert_eq!(text(r#"time::parse("03/14/2025")"#), "2025-03-14");
        assert_eq!(text(r#"time::parse("March 14, 2025")"#), "2025-03-14");
        assert_eq!(text("time::parse(1741944600)"), "2025-03-14T09:30:00Z");
        assert_eq!(
            text(r#"time::parse(#{ month: "03", day: "14", year: "2025" })"#),
            "2025-03-14"
        );
        assert_eq!(
            text(r#"time::parse("2025-03-14 09:30", "America/Denver")"#),
            "2025-03-14T09:30:00-06:00"
        );
        assert!(eval(r#"time::parse("someday")"#).unwrap().is_unit());
        assert!(eval(r#"time::parse("")"#).unwrap().is_unit());
        assert!(eval("time::parse(())").unwrap().is_unit());
        let err = eval("time::parse(true)").unwrap_err();
        assert!(err.contains("found bool"), "{err}");
        let err = eval(r#"time::parse("2025-03-14", "Mars/Base")"#).unwrap_err();
        assert!(err.contains("unknown time zone"), "{err}");

        assert_eq!(
            text(r#"time::format("2025-03-14T15:30:00Z", "%B %-d, %Y")"#),
            "March 14, 2025"
        );
        assert_eq!(
            text(r#"time::format("2025-03-14T15:30:00Z", "%H:%M", "America/Denver")"#),
            "09:30"
        );
        assert!(eval(r#"time::format((), "%Y")"#).unwrap().is_unit());
        let err = eval(r#"time::format("soon", "%Y")"#).unwrap_err();
        assert!(err.contains(r#"cannot read "soon""#), "{err}");
        let err = eval(r#"time::format("2025-03-14", "%Q")"#).unwrap_err();
        assert!(err.contains("invalid format"), "{err}");
        let err = eval(r#"time::format("2025-03-14", 5)"#).unwrap_err();
        assert!(err.contains("as a string, found i64"), "{err}");

        assert_eq!(
            eval(r#"time::days_between("2025-03-01", "03/14/2025")"#)
                .unwrap()
                .as_int()
                .unwrap(),
            13
        );
        assert!(
            eval(r#"time::days_between((), "2025-03-01")"#)
                .unwrap()
                .is_unit()
        );
        let err = eval(r#"time::days_between("x", "2025-03-01")"#).unwrap_err();
        assert!(err.contains(r#"cannot read "x""#), "{err}");
        let now = text("time::now()");
        assert!(now.ends_with('Z') && now.len() == 20, "{now}");
    }
}
