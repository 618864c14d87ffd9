//! JSON:API documents of the Spectora Clients API, read tolerantly and written plainly:
//! resources to clients, list pages with their pagination, error documents (JSON:API
//! and the gateway's own shape) to [`ApiError`]s, write bodies, multipart parts, and
//! the query string of a list.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, Value, json};

use crate::clients::{ApiError, Client, ListQuery, MAX_PAGE_SIZE, Page, READ_ONLY};

/// Everything but the unreserved characters of RFC 3986 is percent-encoded, in keys
/// (`filter%5Bfulltext%5D`) and values (`O%27Brien%20%26%20Sons`, `%2B`) alike.
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes one query key or value, or one path segment.
pub fn encode(text: &str) -> String {
    utf8_percent_encode(text, QUERY).to_string()
}

/// The page size a list asks for: 1 to 200, and 200 for 0.
pub fn page_size(query: &ListQuery) -> u32 {
    match query.page_size {
        0 => MAX_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

/// The query string of a list request, without the `?`.
pub fn list_query(query: &ListQuery) -> String {
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    if let Some(id) = &query.id {
        pairs.push(("filter[id]", id));
    }
    if let Some(buyer) = &query.buyer_id {
        pairs.push(("filter[buyer_id]", buyer));
    }
    if let Some(text) = &query.fulltext {
        pairs.push(("filter[fulltext]", text));
    }
    match query.tags.as_slice() {
        [] => {}
        [tag] => pairs.push(("filter[tag]", tag)),
        tags => pairs.extend(tags.iter().map(|t| ("filter[tag][]", t.as_str()))),
    }
    let sort = query.sort.map(|s| s.as_param());
    if let Some(sort) = &sort {
        pairs.push(("sort", sort));
    }
    let number = query.page.max(1).to_string();
    let size = page_size(query).to_string();
    pairs.push(("page[number]", &number));
    pairs.push(("page[size]", &size));
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The body of a create (no `id`) or an update: `{"data": {"type": "contact", ...}}`.
/// Read-only attributes are never sent.
pub fn write_body(id: Option<&str>, attributes: &Map<String, Value>) -> Value {
    let attributes: Map<String, Value> = attributes
        .iter()
        .filter(|(k, _)| !READ_ONLY.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut data = json!({ "type": "contact", "attributes": attributes });
    if let (Some(id), Some(map)) = (id, data.as_object_mut()) {
        map.insert("id".into(), Value::String(id.to_owned()));
    }
    json!({ "data": data })
}

/// The text parts of a multipart write: one part per attribute, named
/// `data[attributes][<field>]`; lists as repeated `[]` parts, maps as nested names.
pub fn form_parts(attributes: &Map<String, Value>) -> Vec<(String, String)> {
    let mut parts = Vec::new();
    for (key, value) in attributes {
        if READ_ONLY.contains(&key.as_str()) || key == "image" {
            continue;
        }
        flatten(&format!("data[attributes][{key}]"), value, &mut parts);
    }
    parts
}

fn flatten(name: &str, value: &Value, parts: &mut Vec<(String, String)>) {
    match value {
        Value::Null => parts.push((name.to_owned(), String::new())),
        Value::String(s) => parts.push((name.to_owned(), s.clone())),
        Value::Bool(_) | Value::Number(_) => parts.push((name.to_owned(), value.to_string())),
        // An empty list still goes, as one empty item, so that it clears the list.
        Value::Array(items) if items.is_empty() => parts.push((format!("{name}[]"), String::new())),
        Value::Array(items) => {
            for item in items {
                flatten(&format!("{name}[]"), item, parts);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                flatten(&format!("{name}[{k}]"), v, parts);
            }
        }
    }
}

/// An id given as a string or a number.
fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A number given as a JSON number or a numeric string.
fn number(value: Option<&Value>) -> Option<u64> {
    match value? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A resource object to a client: `id` as a string, every attribute kept, `buyer_id`
/// from the attributes or else from `relationships.buyer.data.id`.
pub fn client(resource: &Value) -> Result<Client, String> {
    let object = resource
        .as_object()
        .ok_or("a resource that is not an object")?;
    let id = object
        .get("id")
        .and_then(id_text)
        .ok_or("a resource without an id")?;
    let mut attributes = match object.get("attributes") {
        Some(Value::Object(map)) => map.clone(),
        None | Some(Value::Null) => Map::new(),
        Some(_) => return Err(format!("resource {id} has attributes that are not a map")),
    };
    let buyer = match attributes.get("buyer_id") {
        Some(value) if !value.is_null() => id_text(value),
        _ => resource
            .pointer("/relationships/buyer/data/id")
            .and_then(id_text),
    };
    if let Some(buyer) = buyer {
        attributes.insert("buyer_id".into(), Value::String(buyer));
    }
    Ok(Client { id, attributes })
}

/// A document with one resource under `data`.
pub fn single(document: &Value) -> Result<Client, String> {
    client(document.get("data").ok_or("a document without data")?)
}

/// A list document to a page. `next` comes from `meta.pagination.next`; without one,
/// from the record count against the records seen up to this page (see [`seen`]).
pub fn page(document: &Value, query: &ListQuery) -> Result<Page, String> {
    let items = match document.get("data") {
        Some(Value::Array(items)) => items,
        Some(Value::Null) | None => return Err("a list document without data".into()),
        Some(_) => return Err("a list document whose data is not an array".into()),
    };
    let clients = items.iter().map(client).collect::<Result<Vec<_>, _>>()?;
    let pagination = document.pointer("/meta/pagination");
    let total = number(pagination.and_then(|p| p.get("records")));
    let current = u64::from(query.page.max(1));
    let next = match number(pagination.and_then(|p| p.get("next"))) {
        Some(next) => u32::try_from(next).ok(),
        None => match total {
            Some(total) if !clients.is_empty() && seen(current, clients.len(), query) < total => {
                u32::try_from(current + 1).ok()
            }
            _ => None,
        },
    };
    Ok(Page {
        clients,
        next,
        total,
    })
}

/// The records up to and including this page. A full page gives no sign of the server's
/// page size beyond its own length; a short page is the server's last of the size asked
/// for, so the pages before it held the size asked for each.
fn seen(current: u64, len: usize, query: &ListQuery) -> u64 {
    let len = len as u64;
    let asked = u64::from(page_size(query));
    if len < asked {
        current.saturating_sub(1) * asked + len
    } else {
        current * len
    }
}

/// The API's own words about a failure: the JSON:API `errors` (each `title: detail`)
/// and the first `source.pointer`, or the gateway's `code` and `message`, or the start
/// of whatever else the body holds.
pub fn failure_detail(body: &[u8]) -> (String, Option<String>) {
    let Ok(document) = serde_json::from_slice::<Value>(body) else {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        if text.is_empty() {
            return ("no detail given".into(), None);
        }
        let short: String = text.chars().take(200).collect();
        return (short, None);
    };
    if let Some(Value::Array(errors)) = document.get("errors") {
        let mut words = Vec::new();
        let mut pointer = None;
        for error in errors {
            let field = |name: &str| {
                error
                    .get(name)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
            };
            let text = match (field("title"), field("detail")) {
                (Some(t), Some(d)) if t != d => format!("{t}: {d}"),
                (Some(t), _) => t.to_owned(),
                (None, Some(d)) => d.to_owned(),
                (None, None) => field("code").unwrap_or("an error").to_owned(),
            };
            words.push(text);
            if pointer.is_none() {
                pointer = error
                    .pointer("/source/pointer")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
            }
        }
        if !words.is_empty() {
            return (words.join("; "), pointer);
        }
    }
    let code = document.get("code").and_then(Value::as_str);
    let message = document.get("message").and_then(Value::as_str);
    match (code, message) {
        (Some(c), Some(m)) => (format!("{c}: {m}"), None),
        (Some(t), None) | (None, Some(t)) => (t.to_owned(), None),
        (None, None) => {
            let short: String = document.to_string().chars().take(200).collect();
            (short, None)
        }
    }
}

/// The error of an answer that is not a success.
pub fn api_error(operation: &'static str, status: u16, body: &[u8]) -> ApiError {
    let (mut detail, pointer) = failure_detail(body);
    if status == 401 || status == 403 {
        detail = format!("the API key was refused ({detail}); check SPECTORA_API_KEY");
    }
    ApiError {
        operation,
        status: Some(status),
        detail,
        pointer,
        transient: status >= 500 || status == 429 || status == 408,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::clients::Sort;

    #[test]
    fn query_values_are_percent_encoded() {
        let mut q = ListQuery::first_page();
        q.fulltext = Some("O'Brien & Sons +1 Zoë/?#".into());
        let text = list_query(&q);
        assert_eq!(
            text,
            "filter%5Bfulltext%5D=O%27Brien%20%26%20Sons%20%2B1%20Zo%C3%AB%2F%3F%23\
             &page%5Bnumber%5D=1&page%5Bsize%5D=200"
        );
        let decoded: Vec<(String, String)> = form_urlencoded::parse(text.as_bytes())
            .into_owned()
            .collect();
        assert_eq!(decoded[0].1, "O'Brien & Sons +1 Zoë/?#");
    }

    #[test]
    fn query_names_filters_tags_sort_and_page() {
        let mut q = ListQuery::first_page();
        q.id = Some("7".into());
        q.buyer_id = Some("9".into());
        q.tags = vec!["a b".into(), "c".into()];
        q.sort = Sort::parse("-last_first_name");
        q.page = 3;
        q.page_size = 500;
        let decoded: Vec<(String, String)> = form_urlencoded::parse(list_query(&q).as_bytes())
            .into_owned()
            .collect();
        let expect = [
            ("filter[id]", "7"),
            ("filter[buyer_id]", "9"),
            ("filter[tag][]", "a b"),
            ("filter[tag][]", "c"),
            ("sort", "-last_first_name"),
            ("page[number]", "3"),
            ("page[size]", "200"),
        ];
        let expect: Vec<(String, String)> = expect
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(decoded, expect);
        q.tags = vec!["one".into()];
        assert!(list_query(&q).contains("filter%5Btag%5D=one"));
    }

    #[test]
    fn write_bodies_leave_read_only_attributes_out() {
        let attributes = json!({ "first_name": "Jo", "id": "1", "image_url": "x", "custom": 1 });
        let body = write_body(Some("12"), attributes.as_object().unwrap());
        assert_eq!(
            body,
            json!({ "data": { "type": "contact", "attributes": { "first_name": "Jo", "custom": 1 }, "id": "12" } })
        );
        let body = write_body(None, attributes.as_object().unwrap());
        assert!(body["data"].get("id").is_none());
    }

    #[test]
    fn form_parts_flatten_lists_and_maps() {
        let attributes = json!({ "first_name": "Jo", "tags": ["a", "b"], "n": 2, "m": { "k": true }, "empty": [] });
        let parts = form_parts(attributes.as_object().unwrap());
        let parts: Vec<(&str, &str)> = parts
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            parts,
            [
                ("data[attributes][first_name]", "Jo"),
                ("data[attributes][tags][]", "a"),
                ("data[attributes][tags][]", "b"),
                ("data[attributes][n]", "2"),
                ("data[attributes][m][k]", "true"),
                ("data[attributes][empty][]", ""),
            ]
        );
    }

    #[test]
    fn resources_are_read_tolerantly() {
        let c = client(&json!({ "id": 12, "type": "contact", "attributes": { "first_name": "A", "x_custom": [1] } })).unwrap();
        assert_eq!(c.id, "12");
        assert_eq!(c.attributes["x_custom"], json!([1]));
        let c = client(&json!({
            "id": "5", "attributes": { "buyer_id": null },
            "relationships": { "buyer": { "data": { "id": 77, "type": "buyer" } } }
        }))
        .unwrap();
        assert_eq!(c.str_attr("buyer_id"), Some("77"));
        let c = client(&json!({ "id": "5", "attributes": { "buyer_id": 3 } })).unwrap();
        assert_eq!(c.str_attr("buyer_id"), Some("3"));
        let c = client(&json!({ "id": "5" })).unwrap();
        assert!(c.attributes.is_empty());
        assert!(client(&json!({ "attributes": {} })).is_err());
        assert!(client(&json!({ "id": "1", "attributes": [] })).is_err());
        assert!(single(&json!({ "meta": {} })).is_err());
    }

    #[test]
    fn pages_follow_next_then_the_record_count() {
        let q = ListQuery::first_page();
        let doc = json!({ "data": [{ "id": "1" }], "meta": { "pagination": { "current": 1, "next": "2", "records": 412 } } });
        let p = page(&doc, &q).unwrap();
        assert_eq!((p.next, p.total), (Some(2), Some(412)));
        // No next, but a record count: 2 records a page, 5 records, page 1 of 3.
        let doc = json!({ "data": [{ "id": "1" }, { "id": "2" }], "meta": { "pagination": { "records": "5" } } });
        assert_eq!(page(&doc, &q).unwrap().next, Some(2));
        let mut q3 = q.clone();
        q3.page = 3;
        let doc = json!({ "data": [{ "id": "5" }], "meta": { "pagination": { "records": 5 } } });
        assert_eq!(page(&doc, &q3).unwrap().next, None);
        // Neither: one page.
        let doc = json!({ "data": [{ "id": "1" }] });
        assert_eq!(page(&doc, &q).unwrap().next, None);
        assert!(page(&json!({ "data": {} }), &q).is_err());
        assert!(page(&json!({}), &q).is_err());
    }

    #[test]
    fn errors_read_every_shape() {
        let body = br#"{"errors":[{"status":"422","title":"Invalid","detail":"email has already been taken","source":{"pointer":"/data/attributes/email"}},{"status":422,"detail":"x"}]}"#;
        let e = api_error("create", 422, body);
        assert_eq!(e.detail, "Invalid: email has already been taken; x");
        assert_eq!(e.pointer.as_deref(), Some("/data/attributes/email"));
        assert!(!e.transient);
        let e = api_error(
            "list",
            401,
            br#"{"code":"UNAUTHORIZED","message":"bad key"}"#,
        );
        assert!(e.detail.contains("UNAUTHORIZED: bad key"), "{}", e.detail);
        assert!(e.detail.contains("SPECTORA_API_KEY"));
        let e = api_error("get", 502, b"<html>Bad Gateway</html>");
        assert_eq!(e.detail, "<html>Bad Gateway</html>");
        assert!(e.transient);
        assert!(api_error("get", 429, b"").transient);
        assert_eq!(api_error("get", 500, b"").detail, "no detail given");
        assert_eq!(
            api_error("get", 404, br#"{"errors":[{"code":"not_found"}]}"#).detail,
            "not_found"
        );
    }
}
