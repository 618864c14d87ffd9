//! Decoding of a webhook request body into the `event.body` and `event.files` of a script,
//! and the form-field nesting rules (`a[b]`, `a[]`, repeated keys) that query strings share.
//!
//! # Accepted bodies
//!
//! | Content-Type | `body` | `files` |
//! | --- | --- | --- |
//! | `application/json`, `text/json`, any `+json` | the JSON as is; an empty body is null | none |
//! | `application/x-www-form-urlencoded` | a map built by [`nest_pairs`] | none |
//! | `multipart/form-data` | the text parts, as a map built by [`nest_pairs`] | the file parts |
//! | `text/plain` | a string | none |
//! | none, with an empty body | null | none |
//!
//! The type is matched case-insensitively and its parameters are ignored, except the
//! multipart `boundary`. Text that is not valid UTF-8 is decoded lossily (U+FFFD).
//!
//! # Form nesting
//!
//! A key is `base[seg][seg]...`: a non-empty base followed by bracket groups, none of which
//! contains a bracket. Any other key (`input_1.3`, `[a]`, `a[b`, `a[b]c`, `a[b[c]]`) is
//! one flat key, kept as it is. Values are always strings. Then:
//!
//! - `a[b]=1` sets key `b` in map `a`; `a[b][c]=1` goes one level deeper. Digits are keys
//!   like any other: `a[0]=x` gives `{"a": {"0": "x"}}`.
//! - `a[]=1&a[]=2` and a repeated key `a=1&a=2` both give the array `["1", "2"]`.
//! - `a[][x]=..` adds to the array's last element when that element is a map in which the
//!   rest of the path is still free, else it starts a new map: `i[][n]=A&i[][q]=1&i[][n]=B`
//!   gives `[{"n": "A", "q": "1"}, {"n": "B"}]`.
//! - When a map is needed where a string or an array already stands, that value moves
//!   under the key `""` of a new map; a string or an array item that meets a map goes under
//!   its `""` key too. So `a=1&a[b]=2` and `a[b]=2&a=1` both keep both values:
//!   `{"a": {"": "1", "b": "2"}}` (in arrival order), and `a=1&a[b]=2&a=3` gives
//!   `{"a": {"": ["1", "3"], "b": "2"}}`. No value is ever dropped.
//! - At most [`MAX_NESTING_DEPTH`] bracket groups nest; the groups beyond are kept as one
//!   literal key, brackets included (`"[x][y]"`), in the deepest map.

use bytes::{Bytes, BytesMut};
use serde_json::{Map, Value};

/// How many bracket groups of a form key nest; the rest of the key stays one literal key.
pub const MAX_NESTING_DEPTH: usize = 32;

const JSON: &str = "application/json";
const FORM: &str = "application/x-www-form-urlencoded";
const MULTIPART: &str = "multipart/form-data";

/// A decoded request body: what a script sees as `event.body` and `event.files`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decoded {
    /// The body: JSON as sent, form fields as a nested map, text as a string, or null.
    pub body: Value,
    /// The file parts of a multipart body, in the order they came.
    pub files: Vec<UploadedFile>,
}

/// One file part of a multipart body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedFile {
    /// The part's form field name (`""` when the part has none).
    pub field: String,
    /// The file name the client gave; `None` when it was empty, as browsers send it for a
    /// file input left blank.
    pub filename: Option<String>,
    /// The part's own `Content-Type` header, as sent.
    pub content_type: Option<String>,
    /// The file's bytes, exactly as sent.
    pub bytes: Bytes,
}

/// Bounds on what a body may expand into, on top of the body size limit of the HTTP layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeLimits {
    /// The most multipart parts, or form-urlencoded fields, one body may hold.
    pub max_parts: usize,
    /// The most bytes one multipart text field may hold.
    pub max_field_bytes: usize,
    /// The most bytes one multipart file may hold.
    pub max_file_bytes: usize,
}

impl Default for DecodeLimits {
    /// 1000 parts, 256 KiB a text field, and files bounded only by the body limit.
    fn default() -> Self {
        DecodeLimits {
            max_parts: 1000,
            max_field_bytes: 256 * 1024,
            max_file_bytes: usize::MAX,
        }
    }
}

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The Content-Type is none that this module decodes (HTTP 415).
    #[error(
        "expected a body of type application/json, application/x-www-form-urlencoded, \
         multipart/form-data or text/plain, found {}",
        describe_found(.found)
    )]
    UnsupportedMediaType {
        /// The media type found, lowercased, without parameters; `"none"` when absent.
        found: String,
    },
    /// The body does not parse as its Content-Type, or breaks a [`DecodeLimits`] bound
    /// (HTTP 400).
    #[error("malformed {media} body: {detail}")]
    Malformed {
        /// The media type the body was decoded as.
        media: &'static str,
        /// What is wrong, and where when the parser says.
        detail: String,
    },
}

impl DecodeError {
    /// The HTTP status that answers this error: 415 or 400.
    pub fn http_status(&self) -> u16 {
        match self {
            DecodeError::UnsupportedMediaType { .. } => 415,
            DecodeError::Malformed { .. } => 400,
        }
    }
}

fn describe_found(found: &str) -> String {
    if found == "none" {
        "none (no Content-Type header)".to_string()
    } else {
        found.to_string()
    }
}

fn malformed(media: &'static str, detail: impl Into<String>) -> DecodeError {
    DecodeError::Malformed {
        media,
        detail: detail.into(),
    }
}

/// The kinds of body this module decodes.
enum Media {
    Json,
    Form,
    Multipart,
    Text,
}

fn classify(essence: &str) -> Option<Media> {
    match essence {
        "application/json" | "text/json" => Some(Media::Json),
        FORM => Some(Media::Form),
        MULTIPART => Some(Media::Multipart),
        "text/plain" => Some(Media::Text),
        // Structured-syntax suffix (RFC 6839): application/vnd.api+json and friends.
        _ if essence.contains('/') && essence.ends_with("+json") => Some(Media::Json),
        _ => None,
    }
}

/// The media type of a header value: before the first `;`, trimmed, lowercased.
fn essence(content_type: &str) -> String {
    let media = content_type
        .split_once(';')
        .map_or(content_type, |(media, _)| media);
    media.trim().to_ascii_lowercase()
}

/// Decodes a request body by its Content-Type header value (`None` when absent).
///
/// An empty body without a Content-Type is a null body; a non-empty one is
/// [`DecodeError::UnsupportedMediaType`] with `found: "none"`. See the module docs for
/// what each accepted type becomes. Never panics, whatever the input.
pub async fn decode(
    content_type: Option<&str>,
    body: Bytes,
    limits: &DecodeLimits,
) -> Result<Decoded, DecodeError> {
    // A blank header says no more than a missing one.
    let content_type = content_type.filter(|ct| !essence(ct).is_empty());
    let Some(content_type) = content_type else {
        if body.is_empty() {
            return Ok(Decoded::default());
        }
        return Err(DecodeError::UnsupportedMediaType {
            found: "none".to_string(),
        });
    };
    let media = essence(content_type);
    match classify(&media) {
        Some(Media::Json) => Ok(Decoded {
            body: decode_json(&body)?,
            files: Vec::new(),
        }),
        Some(Media::Form) => Ok(Decoded {
            body: decode_form(&body, limits)?,
            files: Vec::new(),
        }),
        Some(Media::Multipart) => decode_multipart(content_type, body, limits).await,
        Some(Media::Text) => Ok(Decoded {
            body: Value::String(String::from_utf8_lossy(&body).into_owned()),
            files: Vec::new(),
        }),
        None => Err(DecodeError::UnsupportedMediaType {
            found: shorten(&media),
        }),
    }
}

/// A header value cut to a length fit for an error message.
fn shorten(text: &str) -> String {
    const MAX_CHARS: usize = 100;
    if text.chars().count() <= MAX_CHARS {
        return text.to_string();
    }
    let mut short: String = text.chars().take(MAX_CHARS).collect();
    short.push('…');
    short
}

fn decode_json(body: &[u8]) -> Result<Value, DecodeError> {
    // Some senders (.NET's encoders among them) start UTF-8 with a byte order mark,
    // which serde_json refuses.
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    if body.trim_ascii().is_empty() {
        return Ok(Value::Null);
    }
    // serde_json's message carries the line and column, and its recursion limit keeps
    // deeply nested input from exhausting the stack.
    serde_json::from_slice(body).map_err(|err| malformed(JSON, err.to_string()))
}

fn decode_form(body: &[u8], limits: &DecodeLimits) -> Result<Value, DecodeError> {
    // Counted before nesting so a body of a million `&`-separated keys costs no more
    // than the limit allows.
    let pairs: Vec<(String, String)> = form_urlencoded::parse(body)
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .take(limits.max_parts.saturating_add(1))
        .collect();
    if pairs.len() > limits.max_parts {
        return Err(malformed(
            FORM,
            format!("expected at most {} fields, found more", limits.max_parts),
        ));
    }
    Ok(nest_pairs(pairs))
}

async fn decode_multipart(
    content_type: &str,
    body: Bytes,
    limits: &DecodeLimits,
) -> Result<Decoded, DecodeError> {
    let boundary = header_params(content_type)
        .into_iter()
        .find(|(name, _)| name == "boundary")
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
        .ok_or_else(|| {
            malformed(
                MULTIPART,
                "expected a boundary parameter in the Content-Type \
                 (multipart/form-data; boundary=...), found none",
            )
        })?;
    // A form with nothing in it; not worth a 400.
    if body.trim_ascii().is_empty() {
        return Ok(Decoded {
            body: Value::Object(Map::new()),
            files: Vec::new(),
        });
    }

    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut fields = Vec::new();
    let mut files = Vec::new();
    let mut count = 0usize;
    while let Some(mut part) = multipart.next_field().await.map_err(multipart_error)? {
        count += 1;
        if count > limits.max_parts {
            return Err(malformed(
                MULTIPART,
                format!("expected at most {} parts, found more", limits.max_parts),
            ));
        }
        // Read from the raw header rather than multer's accessors: those give up on
        // `filename*=` (RFC 5987, sent by some HTTP libraries for non-ASCII names) and
        // on header bytes that are not ASCII.
        let disposition = part
            .headers()
            .get("content-disposition")
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
            .unwrap_or_default();
        let disposition = Disposition::parse(&disposition);
        let field = disposition.name.unwrap_or_default();
        match disposition.filename {
            Some(filename) => {
                let bytes = read_part(&mut part, limits.max_file_bytes, "file", &field).await?;
                let content_type = part
                    .headers()
                    .get("content-type")
                    .map(|value| String::from_utf8_lossy(value.as_bytes()).trim().to_string());
                files.push(UploadedFile {
                    field,
                    filename: Some(filename).filter(|name| !name.is_empty()),
                    content_type,
                    bytes,
                });
            }
            None => {
                let bytes = read_part(&mut part, limits.max_field_bytes, "field", &field).await?;
                fields.push((field, String::from_utf8_lossy(&bytes).into_owned()));
            }
        }
    }
    Ok(Decoded {
        body: nest_pairs(fields),
        files,
    })
}

/// Reads one part whole, refusing it once it passes `limit` bytes.
async fn read_part(
    part: &mut multer::Field<'_>,
    limit: usize,
    kind: &str,
    name: &str,
) -> Result<Bytes, DecodeError> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = part.chunk().await.map_err(multipart_error)? {
        total = total.saturating_add(chunk.len());
        if total > limit {
            let detail = format!("expected a {kind} of at most {limit} bytes, found");
            return Err(malformed(
                MULTIPART,
                format!("{detail} {kind} {name:?} larger"),
            ));
        }
        chunks.push(chunk);
    }
    // The body is already in memory: one chunk is a slice of it, with no copy.
    if chunks.len() <= 1 {
        return Ok(chunks.pop().unwrap_or_default());
    }
    let mut joined = BytesMut::with_capacity(total);
    for chunk in chunks {
        joined.extend_from_slice(&chunk);
    }
    Ok(joined.freeze())
}

fn multipart_error(err: multer::Error) -> DecodeError {
    let detail = match err {
        multer::Error::IncompleteStream => {
            "the body ends before the closing boundary (--boundary--)".to_string()
        }
        other => other.to_string(),
    };
    malformed(MULTIPART, detail)
}

/// The `name` and file name of a part's Content-Disposition header.
struct Disposition {
    name: Option<String>,
    /// `Some` when the header has a `filename` or `filename*` parameter, even an empty one:
    /// that, not the content, is what makes a part a file.
    filename: Option<String>,
}

impl Disposition {
    fn parse(header: &str) -> Disposition {
        let mut name = None;
        let mut plain = None;
        let mut extended = None;
        for (key, value) in header_params(header) {
            match key.as_str() {
                "name" if name.is_none() => name = Some(value),
                "filename" if plain.is_none() => plain = Some(value),
                "filename*" if extended.is_none() => extended = Some(decode_ext_value(&value)),
                _ => {}
            }
        }
        // RFC 6266: `filename*` wins over `filename` when a client sends both.
        Disposition {
            name,
            filename: extended.or(plain),
        }
    }
}

/// An RFC 5987 `charset'language'percent-encoded` value. UTF-8 and ISO-8859-1 are the
/// charsets the RFC requires; anything else is read as UTF-8, lossily.
fn decode_ext_value(value: &str) -> String {
    let mut pieces = value.splitn(3, '\'');
    let (charset, encoded) = match (pieces.next(), pieces.next(), pieces.next()) {
        (Some(charset), Some(_language), Some(encoded)) => (charset, encoded),
        // Not in the extended form: take it as it is.
        _ => ("utf-8", value),
    };
    let bytes = percent_decode(encoded);
    if charset.eq_ignore_ascii_case("iso-8859-1") {
        bytes.iter().map(|&byte| char::from(byte)).collect()
    } else {
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// `%XX` escapes to bytes; a `%` not followed by two hex digits stays as it is. Unlike
/// form-urlencoding, `+` is a plus.
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        let escaped = match (byte, bytes.get(at + 1), bytes.get(at + 2)) {
            (b'%', Some(&high), Some(&low)) => hex_value(high)
                .zip(hex_value(low))
                .map(|(high, low)| high * 16 + low),
            _ => None,
        };
        match escaped {
            Some(decoded) => {
                out.push(decoded);
                at += 3;
            }
            None => {
                out.push(byte);
                at += 1;
            }
        }
    }
    out
}

fn hex_value(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|value| u8::try_from(value).ok())
}

/// The `name=value` parameters after the first `;` of a header value, names lowercased,
/// quoted values unquoted. Quote-aware, so a `;` inside a quoted file name stays in it.
fn header_params(header: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let Some((_, mut rest)) = header.split_once(';') else {
        return params;
    };
    loop {
        let name_end = rest.find(['=', ';']).unwrap_or(rest.len());
        let (name, after_name) = rest.split_at(name_end);
        let name = name.trim().to_ascii_lowercase();
        let (value, after_value) = match after_name.strip_prefix('=') {
            Some(raw) => {
                let raw = raw.trim_start();
                match raw.strip_prefix('"') {
                    Some(quoted) => unquote(quoted),
                    None => {
                        let end = raw.find(';').unwrap_or(raw.len());
                        let (value, after) = raw.split_at(end);
                        (value.trim().to_string(), after)
                    }
                }
            }
            None => (String::new(), after_name),
        };
        if !name.is_empty() {
            params.push((name, value));
        }
        match after_value.split_once(';') {
            Some((_, next)) => rest = next,
            None => return params,
        }
    }
}

/// A quoted string after its opening quote: the unescaped value and what follows the
/// closing quote (nothing, when the quote is never closed).
fn unquote(quoted: &str) -> (String, &str) {
    let mut value = String::new();
    let mut escaped = false;
    for (at, c) in quoted.char_indices() {
        if escaped {
            value.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '"' {
            let (_, after) = quoted.split_at(at + c.len_utf8());
            return (value, after);
        } else {
            value.push(c);
        }
    }
    (value, "")
}

/// One step of a form key's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seg<'a> {
    /// `base` or `[name]`: a key of a map.
    Key(&'a str),
    /// `[]`: a new item of an array.
    Push,
}

/// Nests form fields by their bracketed keys into a map, by the rules of the module docs.
/// Used for form-urlencoded and multipart bodies and for query strings alike.
pub fn nest_pairs<I>(pairs: I) -> Value
where
    I: IntoIterator<Item = (String, String)>,
{
    let mut root = Map::new();
    for (key, value) in pairs {
        let (base, path) = split_key(&key);
        insert(root.entry(base).or_insert(Value::Null), &path, value);
    }
    Value::Object(root)
}

/// A key's base and bracket groups; a key that is not `base[..]..[..]` is all base.
fn split_key(key: &str) -> (&str, Vec<Seg<'_>>) {
    let flat = (key, Vec::new());
    let Some(open) = key.find('[') else {
        return flat;
    };
    if open == 0 {
        return flat;
    }
    let (base, mut rest) = key.split_at(open);
    let mut path = Vec::new();
    let mut literal = None;
    while !rest.is_empty() {
        let Some(inner) = rest.strip_prefix('[') else {
            return flat;
        };
        let Some((name, after)) = inner.split_once(']') else {
            return flat;
        };
        if name.contains('[') {
            return flat;
        }
        if path.len() < MAX_NESTING_DEPTH {
            path.push(if name.is_empty() {
                Seg::Push
            } else {
                Seg::Key(name)
            });
        } else if literal.is_none() {
            // Past the cap: the rest of the key, brackets and all, is one key.
            literal = Some(rest);
        }
        rest = after;
    }
    if let Some(literal) = literal {
        path.push(Seg::Key(literal));
    }
    (base, path)
}

/// Sets `value` at `path` below `slot`. `Value::Null` marks a slot not yet filled: form
/// values are strings, so a null is never a value, and every null is filled on the way.
fn insert(slot: &mut Value, path: &[Seg<'_>], value: String) {
    let Some((first, rest)) = path.split_first() else {
        put_leaf(slot, value);
        return;
    };
    match first {
        Seg::Key(name) => {
            make_map(slot);
            if let Value::Object(map) = slot {
                insert(map.entry(*name).or_insert(Value::Null), rest, value);
            }
        }
        Seg::Push => {
            if let Value::Object(map) = slot {
                // A list that meets a map goes under the map's "" key, as a string does.
                insert(map.entry("").or_insert(Value::Null), path, value);
                return;
            }
            make_array(slot);
            if let Value::Array(items) = slot {
                if rest.is_empty() {
                    items.push(Value::String(value));
                    return;
                }
                // `a[][x]=1&a[][y]=2` fills one element; a second `a[][x]` starts the next.
                let fill_last = items.last().is_some_and(|last| !collides(last, rest));
                if !fill_last {
                    items.push(Value::Null);
                }
                if let Some(last) = items.last_mut() {
                    insert(last, rest, value);
                }
            }
        }
    }
}

/// Stores a string where a path ends.
fn put_leaf(slot: &mut Value, value: String) {
    match slot {
        Value::Null => *slot = Value::String(value),
        Value::Array(items) => items.push(Value::String(value)),
        // A string that meets a map keeps to the map's "" key.
        Value::Object(map) => put_leaf(map.entry("").or_insert(Value::Null), value),
        // A repeated key: the values so far and this one, in order.
        other => {
            let old = std::mem::take(other);
            *other = Value::Array(vec![old, Value::String(value)]);
        }
    }
}

/// Makes `slot` a map, moving a string or array there under the key `""`.
fn make_map(slot: &mut Value) {
    match slot {
        Value::Object(_) => {}
        Value::Null => *slot = Value::Object(Map::new()),
        other => {
            let mut map = Map::new();
            map.insert(String::new(), std::mem::take(other));
            *other = Value::Object(map);
        }
    }
}

/// Makes `slot` an array, a string there becoming its first item. Maps are never passed.
fn make_array(slot: &mut Value) {
    match slot {
        Value::Array(_) => {}
        Value::Null => *slot = Value::Array(Vec::new()),
        other => {
            let old = std::mem::take(other);
            *other = Value::Array(vec![old]);
        }
    }
}

/// Whether setting `path` inside `existing` would meet a value already there or pass
/// through something that is not a map: then `a[][..]` starts a new array element.
fn collides(existing: &Value, path: &[Seg<'_>]) -> bool {
    match path.split_first() {
        None => true,
        Some((Seg::Push, _)) => !existing.is_array(),
        Some((Seg::Key(name), rest)) => match existing {
            Value::Object(map) => map.get(*name).is_some_and(|child| collides(child, rest)),
            _ => true,
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limits() -> DecodeLimits {
        DecodeLimits::default()
    }

    async fn run(content_type: Option<&str>, body: impl Into<Bytes>) -> Decoded {
        decode(content_type, body.into(), &limits()).await.unwrap()
    }

    async fn run_err(content_type: Option<&str>, body: impl Into<Bytes>) -> DecodeError {
        decode(content_type, body.into(), &limits())
            .await
            .unwrap_err()
    }

    async fn form(body: &'static str) -> Value {
        run(Some(FORM), body).await.body
    }

    fn pairs(list: &[(&str, &str)]) -> Value {
        nest_pairs(
            list.iter()
                .map(|(key, value)| (key.to_string(), value.to_string())),
        )
    }

    /// A multipart body built by hand: (headers of the part, content) for each part.
    fn multipart_body(boundary: &str, parts: &[(&str, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (headers, content) in parts {
            body.extend_from_slice(format!("--{boundary}\r\n{headers}\r\n\r\n").as_bytes());
            body.extend_from_slice(content);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        body
    }

    fn text_part(name: &str) -> String {
        format!("Content-Disposition: form-data; name=\"{name}\"")
    }

    // --- JSON ---

    #[tokio::test]
    async fn json_is_kept_as_is_in_key_order() {
        let body = r#"{"zeta": 1, "alpha": {"b": [true, null, 2.5]}, "mid": "x"}"#;
        let decoded = run(Some("application/json"), body).await;
        assert_eq!(
            decoded.body,
            json!({"zeta": 1, "alpha": {"b": [true, null, 2.5]}, "mid": "x"})
        );
        let keys: Vec<&String> = decoded.body.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["zeta", "alpha", "mid"]);
        assert!(decoded.files.is_empty());
    }

    #[tokio::test]
    async fn json_types_match_case_insensitively_with_parameters_and_suffixes() {
        for content_type in [
            "Application/JSON; charset=UTF-8",
            "application/json;charset=utf-8",
            "  application/json  ",
            "application/vnd.api+json",
            "application/problem+JSON; charset=utf-8",
            "text/json",
        ] {
            let decoded = run(Some(content_type), r#"{"a": 1}"#).await;
            assert_eq!(decoded.body, json!({"a": 1}), "{content_type}");
        }
    }

    #[tokio::test]
    async fn json_top_level_scalars_and_arrays_are_accepted() {
        assert_eq!(run(Some(JSON), "[1, 2]").await.body, json!([1, 2]));
        assert_eq!(run(Some(JSON), "\"hi\"").await.body, json!("hi"));
        assert_eq!(run(Some(JSON), "null").await.body, Value::Null);
    }

    #[tokio::test]
    async fn empty_or_blank_json_is_null() {
        assert_eq!(run(Some(JSON), "").await.body, Value::Null);
        assert_eq!(run(Some(JSON), " \r\n\t").await.body, Value::Null);
    }

    #[tokio::test]
    async fn json_with_a_byte_order_mark_parses() {
        let body = b"\xEF\xBB\xBF{\"a\": \"b\"}".to_vec();
        assert_eq!(run(Some(JSON), body).await.body, json!({"a": "b"}));
    }

    #[tokio::test]
    async fn malformed_json_names_line_and_column() {
        let err = run_err(Some(JSON), "{\n  \"a\": 1,\n  \"b\" 2\n}").await;
        let DecodeError::Malformed { media, detail } = &err else {
            panic!("expected Malformed, got {err:?}");
        };
        assert_eq!(*media, "application/json");
        assert!(detail.contains("line 3 column 7"), "{detail}");
        assert_eq!(
            err.to_string(),
            format!("malformed application/json body: {detail}")
        );
        assert_eq!(err.http_status(), 400);
    }

    #[tokio::test]
    async fn json_too_deep_is_malformed_not_a_crash() {
        let body = "[".repeat(100_000);
        let err = run_err(Some(JSON), body).await;
        assert!(matches!(err, DecodeError::Malformed { media: JSON, .. }));
        let body = "{\"a\":".repeat(10_000);
        assert!(matches!(
            run_err(Some(JSON), body).await,
            DecodeError::Malformed { .. }
        ));
    }

    #[tokio::test]
    async fn invalid_utf8_in_json_is_malformed() {
        let err = run_err(Some(JSON), b"{\"a\": \"\xFF\"}".to_vec()).await;
        assert!(matches!(err, DecodeError::Malformed { media: JSON, .. }));
    }

    // --- form-urlencoded ---

    #[tokio::test]
    async fn form_fields_are_strings_in_order() {
        let body = form("email=jane%40example.com&first_name=Jane&age=42").await;
        assert_eq!(
            body,
            json!({"email": "jane@example.com", "first_name": "Jane", "age": "42"})
        );
        let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["email", "first_name", "age"]);
    }

    #[tokio::test]
    async fn form_plus_is_a_space_and_percent_escapes_decode() {
        let body = form("full+name=Jane+Q%2E+Doe&note=a%2Bb%20c&city=S%C3%A3o+Paulo").await;
        assert_eq!(
            body,
            json!({"full name": "Jane Q. Doe", "note": "a+b c", "city": "São Paulo"})
        );
    }

    #[tokio::test]
    async fn form_percent_encoded_brackets_nest() {
        let body = form("name%5Bfirst%5D=Jane&name%5Blast%5D=Doe&tags%5B%5D=a&tags%5B%5D=b").await;
        assert_eq!(
            body,
            json!({"name": {"first": "Jane", "last": "Doe"}, "tags": ["a", "b"]})
        );
    }

    #[tokio::test]
    async fn form_content_type_matches_case_insensitively() {
        let decoded = run(
            Some("Application/X-WWW-Form-Urlencoded; charset=UTF-8"),
            "a=1",
        )
        .await;
        assert_eq!(decoded.body, json!({"a": "1"}));
    }

    #[tokio::test]
    async fn form_empty_values_and_bare_keys_are_empty_strings() {
        let body = form("a=&b&c=3&&=orphan").await;
        assert_eq!(body, json!({"a": "", "b": "", "c": "3", "": "orphan"}));
    }

    #[tokio::test]
    async fn empty_form_is_an_empty_map() {
        assert_eq!(form("").await, json!({}));
    }

    #[tokio::test]
    async fn form_invalid_utf8_is_decoded_lossily() {
        let body = form("name=caf%E9&raw=%FF%FE").await;
        assert_eq!(
            body,
            json!({"name": "caf\u{FFFD}", "raw": "\u{FFFD}\u{FFFD}"})
        );
        let decoded = run(Some(FORM), b"k=\xFFv".to_vec()).await;
        assert_eq!(decoded.body, json!({"k": "\u{FFFD}v"}));
    }

    #[tokio::test]
    async fn form_with_too_many_fields_is_malformed() {
        let tight = DecodeLimits {
            max_parts: 3,
            ..DecodeLimits::default()
        };
        let ok = decode(Some(FORM), Bytes::from("a=1&b=2&c=3"), &tight).await;
        assert_eq!(ok.unwrap().body, json!({"a": "1", "b": "2", "c": "3"}));
        let err = decode(Some(FORM), Bytes::from("a=1&b=2&c=3&d=4"), &tight)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "malformed application/x-www-form-urlencoded body: \
             expected at most 3 fields, found more"
        );
    }

    // --- nesting rules (nest_pairs) ---

    #[test]
    fn nesting_of_brackets() {
        assert_eq!(pairs(&[("a[b]", "1")]), json!({"a": {"b": "1"}}));
        assert_eq!(
            pairs(&[("a[b][c]", "1"), ("a[b][d]", "2"), ("a[e]", "3")]),
            json!({"a": {"b": {"c": "1", "d": "2"}, "e": "3"}})
        );
    }

    #[test]
    fn jotform_style_keys_nest() {
        let body = pairs(&[
            ("q3_name[first]", "Jane"),
            ("q3_name[last]", "Doe"),
            ("q4_email", "jane@example.com"),
        ]);
        assert_eq!(
            body,
            json!({"q3_name": {"first": "Jane", "last": "Doe"}, "q4_email": "jane@example.com"})
        );
    }

    #[test]
    fn empty_brackets_make_an_array() {
        assert_eq!(
            pairs(&[("a[]", "1"), ("a[]", "2")]),
            json!({"a": ["1", "2"]})
        );
        assert_eq!(pairs(&[("a[]", "only")]), json!({"a": ["only"]}));
        assert_eq!(
            pairs(&[("a[b][]", "1"), ("a[b][]", "2")]),
            json!({"a": {"b": ["1", "2"]}})
        );
    }

    #[test]
    fn repeated_plain_keys_make_an_array() {
        assert_eq!(pairs(&[("a", "1"), ("a", "2")]), json!({"a": ["1", "2"]}));
        assert_eq!(
            pairs(&[("a", "1"), ("b", "x"), ("a", "2"), ("a", "3")]),
            json!({"a": ["1", "2", "3"], "b": "x"})
        );
        assert_eq!(
            pairs(&[("a[b]", "1"), ("a[b]", "2")]),
            json!({"a": {"b": ["1", "2"]}})
        );
        // Repeated and bracketed forms of one list mix.
        assert_eq!(
            pairs(&[("a", "1"), ("a[]", "2"), ("a", "3")]),
            json!({"a": ["1", "2", "3"]})
        );
        assert_eq!(pairs(&[("a[]", "1"), ("a", "2")]), json!({"a": ["1", "2"]}));
    }

    #[test]
    fn repeated_empty_values_are_kept() {
        assert_eq!(pairs(&[("a", ""), ("a", "")]), json!({"a": ["", ""]}));
    }

    #[test]
    fn dots_digits_and_odd_keys_stay_flat() {
        let body = pairs(&[
            ("input_1.3", "Jane"),
            ("input_1.6", "Doe"),
            ("42", "x"),
            ("[a]", "1"),
            ("a[b", "2"),
            ("c]", "3"),
            ("d[e]f", "4"),
            ("g[h[i]]", "5"),
            ("j[k]]", "6"),
            ("[]", "7"),
        ]);
        assert_eq!(
            body,
            json!({
                "input_1.3": "Jane", "input_1.6": "Doe", "42": "x", "[a]": "1", "a[b": "2",
                "c]": "3", "d[e]f": "4", "g[h[i]]": "5", "j[k]]": "6", "[]": "7",
            })
        );
    }

    #[test]
    fn numeric_segments_are_map_keys() {
        assert_eq!(
            pairs(&[("a[0]", "x"), ("a[1]", "y"), ("a[0]", "z")]),
            json!({"a": {"0": ["x", "z"], "1": "y"}})
        );
    }

    #[test]
    fn conflict_string_then_map_keeps_both_under_empty_key() {
        assert_eq!(
            pairs(&[("a", "1"), ("a[b]", "2")]),
            json!({"a": {"": "1", "b": "2"}})
        );
        assert_eq!(
            pairs(&[("a[b]", "2"), ("a", "1")]),
            json!({"a": {"b": "2", "": "1"}})
        );
        assert_eq!(
            pairs(&[("a", "1"), ("a[b]", "2"), ("a", "3")]),
            json!({"a": {"": ["1", "3"], "b": "2"}})
        );
    }

    #[test]
    fn conflict_array_and_map_keep_both() {
        assert_eq!(
            pairs(&[("a[]", "1"), ("a[b]", "2")]),
            json!({"a": {"": ["1"], "b": "2"}})
        );
        assert_eq!(
            pairs(&[("a[b]", "1"), ("a[]", "2"), ("a[]", "3")]),
            json!({"a": {"b": "1", "": ["2", "3"]}})
        );
        assert_eq!(
            pairs(&[("a", "1"), ("a", "2"), ("a[b]", "3")]),
            json!({"a": {"": ["1", "2"], "b": "3"}})
        );
    }

    #[test]
    fn conflict_deeper_string_then_map() {
        assert_eq!(
            pairs(&[("a[b]", "1"), ("a[b][c]", "2"), ("a[b][c][d]", "3")]),
            json!({"a": {"b": {"": "1", "c": {"": "2", "d": "3"}}}})
        );
    }

    #[test]
    fn array_of_maps_fills_the_last_element_until_a_key_repeats() {
        let body = pairs(&[
            ("items[][name]", "A"),
            ("items[][qty]", "1"),
            ("items[][name]", "B"),
            ("items[][qty]", "2"),
            ("items[][tags][]", "x"),
            ("items[][tags][]", "y"),
        ]);
        assert_eq!(
            body,
            json!({"items": [
                {"name": "A", "qty": "1"},
                {"name": "B", "qty": "2", "tags": ["x", "y"]},
            ]})
        );
        assert_eq!(
            pairs(&[("a[][x][y]", "1"), ("a[][x][z]", "2"), ("a[][x][y]", "3")]),
            json!({"a": [{"x": {"y": "1", "z": "2"}}, {"x": {"y": "3"}}]})
        );
    }

    #[test]
    fn array_of_maps_after_plain_items_starts_a_new_element() {
        assert_eq!(
            pairs(&[("a[]", "1"), ("a[][x]", "2"), ("a[]", "3")]),
            json!({"a": ["1", {"x": "2"}, "3"]})
        );
        assert_eq!(
            pairs(&[("a[][]", "1"), ("a[][]", "2")]),
            json!({"a": [["1", "2"]]})
        );
    }

    #[test]
    fn nesting_depth_is_capped_with_the_rest_kept_literally() {
        let groups: String = (0..MAX_NESTING_DEPTH).map(|i| format!("[k{i}]")).collect();
        let deep = pairs(&[(&format!("a{groups}"), "v")]);
        let mut at = &deep["a"];
        for i in 0..MAX_NESTING_DEPTH {
            at = &at[format!("k{i}")];
        }
        assert_eq!(at, &json!("v"));

        let key = format!("a{groups}[x][]][y]");
        // Malformed after the cap (`]]`) is still a malformed key: flat.
        assert_eq!(pairs(&[(&key, "v")]), json!({ key.clone(): "v" }));

        let key = format!("a{groups}[x][][y]");
        let capped = pairs(&[(&key, "v")]);
        let mut at = &capped["a"];
        for i in 0..MAX_NESTING_DEPTH {
            at = &at[format!("k{i}")];
        }
        assert_eq!(at, &json!({"[x][][y]": "v"}));
    }

    #[test]
    fn huge_keys_do_not_overflow() {
        let key = format!("a{}", "[]".repeat(100_000));
        let body = pairs(&[(&key, "v")]);
        let mut depth = 0;
        let mut at = &body["a"];
        while let Some(first) = at.as_array().and_then(|items| items.first()) {
            at = first;
            depth += 1;
        }
        assert_eq!(depth, MAX_NESTING_DEPTH);
        assert!(at.is_object());
    }

    #[test]
    fn nest_pairs_takes_owned_pairs_from_anywhere() {
        let query = form_urlencoded::parse(b"page=2&filter[tag]=lead")
            .map(|(key, value)| (key.into_owned(), value.into_owned()));
        assert_eq!(
            nest_pairs(query),
            json!({"page": "2", "filter": {"tag": "lead"}})
        );
        assert_eq!(nest_pairs(Vec::new()), json!({}));
    }

    // --- multipart ---

    #[tokio::test]
    async fn multipart_text_fields_nest_and_files_are_kept_apart() {
        let png: &[u8] = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\x00--not-a-boundary\r\n";
        let body = multipart_body(
            "XyZ123",
            &[
                (&text_part("email"), b"jane@example.com"),
                (&text_part("name[first]"), b"Jane"),
                (&text_part("name[last]"), b"Doe"),
                (
                    "Content-Disposition: form-data; name=\"photo\"; filename=\"me.png\"\r\n\
                     Content-Type: image/png",
                    png,
                ),
            ],
        );
        let decoded = run(Some("multipart/form-data; boundary=XyZ123"), body).await;
        assert_eq!(
            decoded.body,
            json!({"email": "jane@example.com", "name": {"first": "Jane", "last": "Doe"}})
        );
        assert_eq!(decoded.files.len(), 1);
        let file = &decoded.files[0];
        assert_eq!(file.field, "photo");
        assert_eq!(file.filename.as_deref(), Some("me.png"));
        assert_eq!(file.content_type.as_deref(), Some("image/png"));
        assert_eq!(file.bytes.len(), png.len());
        assert_eq!(&file.bytes[..], png);
    }

    #[tokio::test]
    async fn jotform_like_multipart_keeps_raw_request_as_a_string() {
        let raw = r#"{"q3_name":{"first":"Jane","last":"Doe"},"q4_email":"jane@example.com"}"#;
        let body = multipart_body(
            "------------------------d74496d66958873e",
            &[
                (&text_part("formID"), b"230000000000001"),
                (&text_part("submissionID"), b"5700000000000000001"),
                (&text_part("q3_name[first]"), b"Jane"),
                (&text_part("q3_name[last]"), b"Doe"),
                (&text_part("rawRequest"), raw.as_bytes()),
                (
                    &text_part("pretty"),
                    b"Name:Jane Doe, E-mail:jane@example.com",
                ),
            ],
        );
        let content_type = concat!(
            "multipart/form-data; ",
            "boundary=------------------------d74496d66958873e"
        );
        let decoded = run(Some(content_type), body).await;
        assert!(decoded.files.is_empty());
        assert_eq!(decoded.body["formID"], json!("230000000000001"));
        assert_eq!(
            decoded.body["q3_name"],
            json!({"first": "Jane", "last": "Doe"})
        );
        let raw_field = decoded.body["rawRequest"].as_str().unwrap();
        assert_eq!(raw_field, raw);
        let parsed: Value = serde_json::from_str(raw_field).unwrap();
        assert_eq!(parsed["q4_email"], json!("jane@example.com"));
    }

    #[tokio::test]
    async fn multipart_repeated_and_array_fields() {
        let body = multipart_body(
            "b",
            &[
                (&text_part("tags[]"), b"a"),
                (&text_part("tags[]"), b"b"),
                (&text_part("choice"), b"x"),
                (&text_part("choice"), b"y"),
                (&text_part("empty"), b""),
            ],
        );
        let decoded = run(Some("multipart/form-data; boundary=b"), body).await;
        assert_eq!(
            decoded.body,
            json!({"tags": ["a", "b"], "choice": ["x", "y"], "empty": ""})
        );
    }

    #[tokio::test]
    async fn multipart_empty_file_is_still_a_file() {
        let body = multipart_body(
            "b",
            &[
                (
                    "Content-Disposition: form-data; name=\"doc\"; filename=\"empty.txt\"",
                    b"",
                ),
                (
                    "Content-Disposition: form-data; name=\"blank\"; filename=\"\"\r\n\
                     Content-Type: application/octet-stream",
                    b"",
                ),
            ],
        );
        let decoded = run(Some("multipart/form-data; boundary=b"), body).await;
        assert_eq!(decoded.body, json!({}));
        assert_eq!(decoded.files.len(), 2);
        assert_eq!(decoded.files[0].field, "doc");
        assert_eq!(decoded.files[0].filename.as_deref(), Some("empty.txt"));
        assert_eq!(decoded.files[0].content_type, None);
        assert!(decoded.files[0].bytes.is_empty());
        assert_eq!(decoded.files[1].field, "blank");
        assert_eq!(decoded.files[1].filename, None);
        assert_eq!(
            decoded.files[1].content_type.as_deref(),
            Some("application/octet-stream")
        );
    }

    #[tokio::test]
    async fn multipart_file_names_in_every_spelling() {
        let body = multipart_body(
            "b",
            &[
                (
                    "Content-Disposition: form-data; name=\"a\"; \
                     filename*=UTF-8''%E2%82%AC%20rates+1.pdf",
                    b"1",
                ),
                (
                    "Content-Disposition: form-data; name=\"b\"; filename=\"plain.pdf\"; \
                     filename*=utf-8''fancy%C3%A9.pdf",
                    b"2",
                ),
                (
                    "content-disposition: form-data; NAME=\"c\"; \
                     FILENAME=\"semi;colon \\\"q\\\".txt\"",
                    b"3",
                ),
                (
                    "Content-Disposition: form-data; name=\"d\"; \
                     filename*=iso-8859-1'en'caf%E9.txt",
                    b"4",
                ),
                (
                    "Content-Disposition: form-data; name=\"e\"; filename=\"résumé.pdf\"",
                    b"5",
                ),
            ],
        );
        let decoded = run(Some("multipart/form-data; boundary=b"), body).await;
        let names: Vec<(&str, Option<&str>)> = decoded
            .files
            .iter()
            .map(|file| (file.field.as_str(), file.filename.as_deref()))
            .collect();
        assert_eq!(
            names,
            [
                ("a", Some("€ rates+1.pdf")),
                ("b", Some("fancyé.pdf")),
                ("c", Some("semi;colon \"q\".txt")),
                ("d", Some("café.txt")),
                ("e", Some("résumé.pdf")),
            ]
        );
    }

    #[tokio::test]
    async fn multipart_non_utf8_text_part_is_lossy() {
        let body = multipart_body("b", &[(&text_part("name"), b"caf\xE9")]);
        let decoded = run(Some("multipart/form-data; boundary=b"), body).await;
        assert_eq!(decoded.body, json!({"name": "caf\u{FFFD}"}));
    }

    #[tokio::test]
    async fn multipart_boundary_quoted_and_case_insensitive() {
        let body = multipart_body("a b:c", &[(&text_part("x"), b"1")]);
        let content_type = "Multipart/Form-Data; charset=utf-8; BOUNDARY=\"a b:c\"";
        let decoded = run(Some(content_type), body).await;
        assert_eq!(decoded.body, json!({"x": "1"}));
    }

    #[tokio::test]
    async fn multipart_part_without_a_name_goes_under_empty_key() {
        let body = multipart_body("b", &[("Content-Disposition: form-data", b"v")]);
        let decoded = run(Some("multipart/form-data; boundary=b"), body).await;
        assert_eq!(decoded.body, json!({"": "v"}));
    }

    #[tokio::test]
    async fn multipart_empty_body_is_an_empty_form() {
        let decoded = run(Some("multipart/form-data; boundary=b"), "").await;
        assert_eq!(
            decoded,
            Decoded {
                body: json!({}),
                files: Vec::new()
            }
        );
    }

    #[tokio::test]
    async fn multipart_without_boundary_is_malformed() {
        for content_type in [
            "multipart/form-data",
            "multipart/form-data; charset=utf-8",
            "multipart/form-data; boundary=",
            "multipart/form-data; boundary=\"\"",
        ] {
            let err = run_err(Some(content_type), "--x\r\n").await;
            assert_eq!(
                err,
                DecodeError::Malformed {
                    media: "multipart/form-data",
                    detail: "expected a boundary parameter in the Content-Type \
                             (multipart/form-data; boundary=...), found none"
                        .to_string(),
                },
                "{content_type}"
            );
        }
    }

    #[tokio::test]
    async fn multipart_with_too_many_parts_is_malformed() {
        let tight = DecodeLimits {
            max_parts: 2,
            ..DecodeLimits::default()
        };
        let two = multipart_body("b", &[(&text_part("a"), b"1"), (&text_part("b"), b"2")]);
        let ok = decode(Some("multipart/form-data; boundary=b"), two.into(), &tight).await;
        assert_eq!(ok.unwrap().body, json!({"a": "1", "b": "2"}));

        let three = multipart_body(
            "b",
            &[
                (&text_part("a"), b"1"),
                (&text_part("b"), b"2"),
                (
                    "Content-Disposition: form-data; name=\"f\"; filename=\"f\"",
                    b"3",
                ),
            ],
        );
        let err = decode(
            Some("multipart/form-data; boundary=b"),
            three.into(),
            &tight,
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "malformed multipart/form-data body: expected at most 2 parts, found more"
        );
    }

    #[tokio::test]
    async fn multipart_default_part_limit_is_a_thousand() {
        assert_eq!(DecodeLimits::default().max_parts, 1000);
        let part = text_part("k");
        let parts: Vec<(&str, &[u8])> = (0..1001).map(|_| (part.as_str(), &b"v"[..])).collect();
        let body = multipart_body("b", &parts);
        let err = run_err(Some("multipart/form-data; boundary=b"), body).await;
        assert!(err.to_string().contains("at most 1000 parts"), "{err}");
    }

    #[tokio::test]
    async fn multipart_field_and_file_size_limits() {
        let tight = DecodeLimits {
            max_parts: 10,
            max_field_bytes: 4,
            max_file_bytes: 6,
        };
        let content_type = Some("multipart/form-data; boundary=b");
        let fits = multipart_body(
            "b",
            &[
                (&text_part("a"), b"1234"),
                (
                    "Content-Disposition: form-data; name=\"f\"; filename=\"f\"",
                    b"123456",
                ),
            ],
        );
        let decoded = decode(content_type, fits.into(), &tight).await.unwrap();
        assert_eq!(decoded.body, json!({"a": "1234"}));
        assert_eq!(&decoded.files[0].bytes[..], b"123456");

        let big_field = multipart_body("b", &[(&text_part("note"), b"12345")]);
        let err = decode(content_type, big_field.into(), &tight)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "malformed multipart/form-data body: \
             expected a field of at most 4 bytes, found field \"note\" larger"
        );

        let big_file = multipart_body(
            "b",
            &[(
                "Content-Disposition: form-data; name=\"f\"; filename=\"f\"",
                b"1234567",
            )],
        );
        let err = decode(content_type, big_file.into(), &tight)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("expected a file of at most 6 bytes, found file \"f\" larger"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn truncated_or_foreign_multipart_is_malformed() {
        let mut body = multipart_body("b", &[(&text_part("a"), b"1")]);
        body.truncate(body.len() - 8);
        let err = run_err(Some("multipart/form-data; boundary=b"), body).await;
        assert!(
            matches!(
                err,
                DecodeError::Malformed {
                    media: MULTIPART,
                    ..
                }
            ),
            "{err:?}"
        );

        let err = run_err(Some("multipart/form-data; boundary=b"), "just some text").await;
        assert!(
            matches!(
                err,
                DecodeError::Malformed {
                    media: MULTIPART,
                    ..
                }
            ),
            "{err:?}"
        );
        let body = multipart_body("other", &[(&text_part("a"), b"1")]);
        let err = run_err(Some("multipart/form-data; boundary=b"), body).await;
        assert!(
            matches!(
                err,
                DecodeError::Malformed {
                    media: MULTIPART,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    // --- text/plain, missing and unsupported types ---

    #[tokio::test]
    async fn text_plain_is_a_string_lossily() {
        let decoded = run(Some("text/plain; charset=utf-8"), "hello\nworld").await;
        assert_eq!(decoded.body, json!("hello\nworld"));
        let decoded = run(Some("TEXT/PLAIN"), b"caf\xE9".to_vec()).await;
        assert_eq!(decoded.body, json!("caf\u{FFFD}"));
        assert_eq!(run(Some("text/plain"), "").await.body, json!(""));
    }

    #[tokio::test]
    async fn missing_content_type_with_empty_body_is_null() {
        assert_eq!(run(None, "").await, Decoded::default());
        assert_eq!(run(Some("  "), "").await.body, Value::Null);
        assert_eq!(run(Some("; charset=utf-8"), "").await.body, Value::Null);
    }

    #[tokio::test]
    async fn missing_content_type_with_a_body_is_unsupported() {
        let err = run_err(None, "{\"a\":1}").await;
        assert_eq!(
            err,
            DecodeError::UnsupportedMediaType {
                found: "none".to_string()
            }
        );
        assert_eq!(
            err.to_string(),
            "expected a body of type application/json, application/x-www-form-urlencoded, \
             multipart/form-data or text/plain, found none (no Content-Type header)"
        );
        assert_eq!(err.http_status(), 415);
        assert!(matches!(
            run_err(Some(""), "x").await,
            DecodeError::UnsupportedMediaType { found } if found == "none"
        ));
    }

    #[tokio::test]
    async fn other_types_are_unsupported_and_named() {
        let err = run_err(Some("Image/PNG; q=1"), b"\x89PNG".to_vec()).await;
        assert_eq!(
            err,
            DecodeError::UnsupportedMediaType {
                found: "image/png".to_string()
            }
        );
        assert_eq!(
            err.to_string(),
            "expected a body of type application/json, application/x-www-form-urlencoded, \
             multipart/form-data or text/plain, found image/png"
        );
        assert_eq!(err.http_status(), 415);
        for content_type in [
            "text/html",
            "application/xml",
            "multipart/mixed; boundary=b",
            "json",
            "+json",
            "application/octet-stream",
        ] {
            assert!(
                matches!(
                    run_err(Some(content_type), "").await,
                    DecodeError::UnsupportedMediaType { .. }
                ),
                "{content_type}"
            );
        }
    }

    #[tokio::test]
    async fn a_huge_unsupported_type_is_shortened_in_the_message() {
        let content_type = format!("application/{}", "x".repeat(5000));
        let err = run_err(Some(&content_type), "b").await;
        let DecodeError::UnsupportedMediaType { found } = err else {
            panic!("expected UnsupportedMediaType");
        };
        assert_eq!(found.chars().count(), 101);
        assert!(found.ends_with('…'));
    }

    // --- helpers ---

    #[test]
    fn header_params_are_quote_aware() {
        assert_eq!(
            header_params("form-data; name=\"a;b\"; filename=\"x\\\"y\"; FLAG; k = v ;"),
            [
                ("name".to_string(), "a;b".to_string()),
                ("filename".to_string(), "x\"y".to_string()),
                ("flag".to_string(), String::new()),
                ("k".to_string(), "v".to_string()),
            ]
        );
        assert!(header_params("form-data").is_empty());
        assert_eq!(
            header_params("x; a=\"never closed"),
            [("a".to_string(), "never closed".to_string())]
        );
    }

    #[test]
    fn percent_decoding_keeps_stray_percents() {
        assert_eq!(percent_decode("a%20b%zz%4"), b"a b%zz%4");
        assert_eq!(percent_decode("%"), b"%");
        assert_eq!(percent_decode("%C3%A9+"), "é+".as_bytes());
    }

    /// A cheap deterministic generator, so the no-panic sweep needs no extra crate.
    fn noise(seed: &mut u64, len: usize) -> Vec<u8> {
        const ALPHABET: &[u8] = b"[]%=&+;\"\\-\r\n abcXYZ019\xff\xc3";
        (0..len)
            .map(|_| {
                *seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let pick = usize::try_from(*seed >> 33).unwrap() % ALPHABET.len();
                ALPHABET[pick]
            })
            .collect()
    }

    #[tokio::test]
    async fn arbitrary_input_never_panics() {
        let mut seed = 7;
        let content_types = [
            None,
            Some(JSON),
            Some(FORM),
            Some("multipart/form-data; boundary=b"),
            Some("multipart/form-data; boundary=\"unterminated"),
            Some("text/plain"),
            Some("image/png"),
        ];
        for round in 0..400 {
            let mut body = noise(&mut seed, round % 97);
            if round % 3 == 0 {
                body = [
                    b"--b\r\nContent-Disposition: form-data; name=\"".as_slice(),
                    &body,
                ]
                .concat();
            }
            for content_type in content_types {
                let _ = decode(content_type, Bytes::from(body.clone()), &limits()).await;
            }
            let text = String::from_utf8_lossy(&body).into_owned();
            let _ = nest_pairs([(text.clone(), text.clone()), (text.clone(), text)]);
        }
    }
}
