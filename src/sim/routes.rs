//! The simulator's routes: the four Clients operations as JSON:API documents, the stored
//! images, and a page of request counts for tests and benchmarks.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};

use super::Sim;
use super::faults::{Paging, Verdict};
use crate::clients::embedded::EmbeddedBackend;
use crate::clients::image::Image;
use crate::clients::{ApiError, Backend, Client, ListQuery, MAX_PAGE_SIZE, Sort};
use crate::triggers::decode::{self, DecodeLimits};

/// The media type of every API answer.
const JSON_API: &str = "application/vnd.api+json";

/// The largest write accepted: an image and its attributes.
const BODY_LIMIT: usize = 20 * 1024 * 1024;

/// The multipart part that carries the image.
const IMAGE_PART: &str = "data[attributes][image]";

pub(super) fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/v2/contacts", get(list).post(create))
        .route("/v2/contacts/{id}", get(show).patch(update))
        .route("/images/{id}/{filename}", get(image))
        .route("/_sim/stats", get(stats))
        .fallback(unknown_route)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(sim)
}

/// A request let through the key check and the fault switches.
struct Admitted {
    backend: EmbeddedBackend,
    /// A wait after the work and before the answer.
    late: Option<Duration>,
}

/// Counts the request, waits the latency, checks the key, and asks the fault switches.
async fn admit(sim: &Sim, headers: &HeaderMap, route: &str) -> Result<Admitted, Response> {
    sim.faults.count(route);
    let latency = sim.faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let company = bearer(headers).and_then(|key| sim.companies.get(key));
    let Some(company) = company else {
        sim.faults.count("401");
        return Err(gateway(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "a valid API key is required in the Authorization header, as Bearer <key>",
        ));
    };
    let backend = sim.store.company(company);
    match sim.faults.verdict(company) {
        Verdict::Serve => Ok(Admitted {
            backend,
            late: None,
        }),
        Verdict::ServeLate(wait) => Ok(Admitted {
            backend,
            late: Some(wait),
        }),
        Verdict::Refuse {
            status,
            retry_after,
        } => {
            sim.faults.count(&status.to_string());
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let mut answer = errors(status, "the simulator failed this request on purpose", None);
            if let Some(value) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
                answer.headers_mut().insert(RETRY_AFTER, value);
            }
            Err(answer)
        }
        Verdict::Limited { retry_after } => {
            sim.faults.count("429");
            let mut answer = gateway(
                StatusCode::TOO_MANY_REQUESTS,
                "TOO_MANY_REQUESTS",
                "rate limit exceeded; try again later",
            );
            if let Some(seconds) = retry_after {
                answer
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(seconds));
            }
            Err(answer)
        }
        Verdict::Hang(wait) => {
            tokio::time::sleep(wait).await;
            sim.faults.count("504");
            Err(gateway(
                StatusCode::GATEWAY_TIMEOUT,
                "GATEWAY_TIMEOUT",
                "the upstream did not answer in time",
            ))
        }
    }
}

/// The key of `Authorization: Bearer <key>`, trimmed.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, key) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| key.trim())
        .filter(|k| !k.is_empty())
}

/// Runs a store operation off the async threads and waits for it.
async fn blocking<T, F>(operation: &'static str, f: F) -> Result<T, ApiError>
where
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|_| Err(ApiError::unavailable(operation, "the store task failed")))
}

/// Waits what a late fault says, then gives the answer.
async fn answer(late: Option<Duration>, response: Response) -> Response {
    if let Some(wait) = late {
        tokio::time::sleep(wait).await;
    }
    response
}

async fn list(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let admitted = match admit(&sim, &headers, "GET /v2/contacts").await {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal,
    };
    let pairs: Vec<(String, String)> = form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    let mut query = match list_query(&pairs) {
        Ok(query) => query,
        Err((parameter, detail)) => return bad_parameter(&parameter, &detail),
    };
    let paging = sim.faults.paging();
    let asked = query.page;
    if paging == Paging::RepeatFirst {
        query.page = 1;
    }
    let backend = admitted.backend.clone();
    let q = query.clone();
    let page = match blocking("list", move || backend.list(&q)).await {
        Ok(page) => page,
        Err(error) => return api_error(&error),
    };
    let base = format!("{}/v2/contacts", origin(&headers));
    let document = list_document(
        &page.clients,
        page.total,
        asked,
        query.page_size,
        paging,
        |n| link(&base, &pairs, n),
    );
    answer(admitted.late, document_response(StatusCode::OK, &document)).await
}

/// The list parameters of `SPECTORA_API.md`; a refusal names the parameter at fault.
fn list_query(pairs: &[(String, String)]) -> Result<ListQuery, (String, String)> {
    let mut query = ListQuery::first_page();
    for (key, value) in pairs {
        match key.as_str() {
            "page[number]" => {
                query.page = value
                    .trim()
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| {
                        (
                            key.clone(),
                            format!("expected a page number from 1, found {value:?}"),
                        )
                    })?;
            }
            "page[size]" => {
                let size: u32 = value
                    .trim()
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| {
                        (
                            key.clone(),
                            format!("expected a page size from 1, found {value:?}"),
                        )
                    })?;
                // Over the maximum is served at the maximum.
                query.page_size = size.min(MAX_PAGE_SIZE);
            }
            "filter[id]" => query.id = Some(value.clone()),
            "filter[buyer_id]" => query.buyer_id = Some(value.clone()),
            "filter[fulltext]" => query.fulltext = Some(value.clone()),
            "filter[tag]" | "filter[tag][]" => query.tags.push(value.clone()),
            "sort" => {
                query.sort = Some(Sort::parse(value).ok_or_else(|| {
                    (
                        key.clone(),
                        format!(
                            "expected first_name, last_name or last_first_name, with a leading - \
                             to sort descending, found {value:?}"
                        ),
                    )
                })?);
            }
            other if other.starts_with("filter[") => {
                return Err((
                    key.clone(),
                    "unknown filter; expected filter[id], filter[buyer_id], filter[fulltext] or filter[tag]".into(),
                ));
            }
            // Other parameters are ignored, as most servers do.
            _ => {}
        }
    }
    Ok(query)
}

/// A list document with the pagination `meta` and `links` of the API, quirks included:
/// `first`/`prev` only past page 1, `next`/`last` only before the last page, and
/// `links.records` naming a page whose number is the record count.
fn list_document(
    clients: &[Client],
    total: Option<u64>,
    current: u32,
    size: u32,
    paging: Paging,
    link: impl Fn(u64) -> String,
) -> Value {
    let records = total.unwrap_or(clients.len() as u64);
    let size = u64::from(size.max(1));
    let last = records.div_ceil(size).max(1);
    let current = u64::from(current);
    let mut pagination = Map::new();
    let mut links = Map::new();
    links.insert("self".into(), link(current).into());
    links.insert("current".into(), link(current).into());
    pagination.insert("current".into(), current.into());
    if current > 1 {
        pagination.insert("first".into(), 1.into());
        pagination.insert("prev".into(), (current - 1).into());
        links.insert("first".into(), link(1).into());
        links.insert("prev".into(), link(current - 1).into());
    }
    match paging {
        Paging::CountOnly => {}
        Paging::NextIsCurrent => {
            pagination.insert("next".into(), current.into());
            links.insert("next".into(), link(current).into());
        }
        Paging::RepeatFirst => {
            pagination.insert("next".into(), (current + 1).into());
            links.insert("next".into(), link(current + 1).into());
        }
        Paging::Faithful if current < last => {
            pagination.insert("next".into(), (current + 1).into());
            pagination.insert("last".into(), last.into());
            links.insert("next".into(), link(current + 1).into());
            links.insert("last".into(), link(last).into());
        }
        Paging::Faithful => {}
    }
    pagination.insert("records".into(), records.into());
    links.insert("records".into(), link(records).into());
    json!({
        "data": clients.iter().map(resource).collect::<Vec<_>>(),
        "meta": { "pagination": pagination },
        "links": links,
    })
}

/// The list URL with the same parameters and another page number.
fn link(base: &str, pairs: &[(String, String)], page: u64) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (key, value) in pairs {
        if key != "page[number]" {
            query.append_pair(key, value);
        }
    }
    query.append_pair("page[number]", &page.to_string());
    format!("{base}?{}", query.finish())
}

/// `http://<Host>` of the request, for links.
fn origin(headers: &HeaderMap) -> String {
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}

async fn show(State(sim): State<Arc<Sim>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let admitted = match admit(&sim, &headers, "GET /v2/contacts/{id}").await {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal,
    };
    let backend = admitted.backend.clone();
    let key = id.clone();
    let response = match blocking("get", move || backend.get(&key)).await {
        Ok(Some(client)) => {
            document_response(StatusCode::OK, &json!({ "data": resource(&client) }))
        }
        Ok(None) => not_found(&id),
        Err(error) => api_error(&error),
    };
    answer(admitted.late, response).await
}

async fn create(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Response {
    let admitted = match admit(&sim, &headers, "POST /v2/contacts").await {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal,
    };
    let (attributes, image) = match write_input(&headers, body).await {
        Ok(input) => input,
        Err(refusal) => return refusal,
    };
    let backend = admitted.backend.clone();
    let result = blocking("create", move || {
        let client = backend.create(&attributes)?;
        match image {
            Some(image) => backend.set_image(&client.id, &Map::new(), &image),
            None => Ok(client),
        }
    })
    .await;
    let response = match result {
        Ok(client) => document_response(StatusCode::CREATED, &json!({ "data": resource(&client) })),
        Err(error) => api_error(&error),
    };
    answer(admitted.late, response).await
}

async fn update(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let admitted = match admit(&sim, &headers, "PATCH /v2/contacts/{id}").await {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal,
    };
    let (attributes, image) = match write_input(&headers, body).await {
        Ok(input) => input,
        Err(refusal) => return refusal,
    };
    let backend = admitted.backend.clone();
    let key = id.clone();
    let result = blocking("update", move || match image {
        Some(image) => backend.set_image(&key, &attributes, &image),
        None => backend.update(&key, &attributes),
    })
    .await;
    let response = match result {
        Ok(client) => document_response(StatusCode::OK, &json!({ "data": resource(&client) })),
        Err(error) if error.status == Some(404) => not_found(&id),
        Err(error) => api_error(&error),
    };
    answer(admitted.late, response).await
}

/// The attributes of a write, and its image: a JSON document
/// `{"data": {"attributes": {...}}}`, or a multipart form with one part per attribute
/// (`data[attributes][<name>]`) and the image in `data[attributes][image]`.
async fn write_input(
    headers: &HeaderMap,
    body: Bytes,
) -> Result<(Map<String, Value>, Option<Image>), Response> {
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let essence = content_type
        .and_then(|ct| ct.split(';').next())
        .map(|s| s.trim().to_ascii_lowercase())
        .unwrap_or_default();
    match essence.as_str() {
        "application/json" | "application/vnd.api+json" | "" => {
            let document: Value = serde_json::from_slice(&body).map_err(|e| {
                errors(
                    StatusCode::BAD_REQUEST,
                    &format!("the body is not a JSON document: {e}"),
                    Some("/data"),
                )
            })?;
            match document.pointer("/data/attributes") {
                Some(Value::Object(attributes)) => Ok((attributes.clone(), None)),
                _ => Err(errors(
                    StatusCode::BAD_REQUEST,
                    "expected a document {\"data\": {\"type\": \"contact\", \"attributes\": {...}}}",
                    Some("/data/attributes"),
                )),
            }
        }
        "multipart/form-data" => {
            let decoded = decode::decode(content_type, body, &DecodeLimits::default())
                .await
                .map_err(|e| errors(StatusCode::BAD_REQUEST, &e.to_string(), Some("/data")))?;
            let mut attributes = match decoded.body.pointer("/data/attributes") {
                Some(Value::Object(attributes)) => attributes.clone(),
                _ => Map::new(),
            };
            // Form parts cannot say "empty list" but by one empty item.
            if let Some(Value::Array(tags)) = attributes.get_mut("tags") {
                tags.retain(|t| t.as_str().is_some_and(|t| !t.is_empty()));
            }
            let file = decoded.files.into_iter().find(|f| f.field == IMAGE_PART);
            let image = match file {
                None => None,
                Some(file) => {
                    let filename = file.filename.unwrap_or_default();
                    let image = Image::new(filename, file.bytes).map_err(|e| {
                        errors(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            &e.to_string(),
                            Some("/data/attributes/image"),
                        )
                    })?;
                    Some(image)
                }
            };
            Ok((attributes, image))
        }
        other => Err(errors(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!("expected application/json or multipart/form-data, found {other}"),
            None,
        )),
    }
}

async fn image(
    State(sim): State<Arc<Sim>>,
    Path((id, filename)): Path<(String, String)>,
) -> Response {
    let store = sim.store.clone();
    let stored = blocking("get", move || store.image(&id)).await;
    match stored {
        Ok(Some(image)) if image.filename == filename => {
            let media = HeaderValue::from_str(&image.media_type)
                .unwrap_or(HeaderValue::from_static("application/octet-stream"));
            ([(CONTENT_TYPE, media)], image.bytes).into_response()
        }
        Ok(_) => StatusCode::NOT_FOUND.into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// The requests answered so far: by route, and the refusals by status.
async fn stats(State(sim): State<Arc<Sim>>) -> Response {
    let (statuses, routes): (Map<String, Value>, Map<String, Value>) = sim
        .faults
        .counts()
        .into_iter()
        .map(|(name, n)| (name, Value::from(n)))
        .partition(|(name, _)| name.starts_with(|c: char| c.is_ascii_digit()));
    axum::Json(json!({ "requests": routes, "refusals": statuses })).into_response()
}

async fn unknown_route() -> Response {
    errors(StatusCode::NOT_FOUND, "no such route", None)
}

/// A client as a JSON:API resource; the buyer goes in `relationships`, as the API does.
fn resource(client: &Client) -> Value {
    let mut attributes = client.attributes.clone();
    let buyer = attributes.shift_remove("buyer_id").and_then(|b| match b {
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    let mut resource = json!({
        "id": client.id,
        "type": "contact",
        "attributes": attributes,
    });
    if let (Some(buyer), Some(map)) = (buyer, resource.as_object_mut()) {
        map.insert(
            "relationships".into(),
            json!({ "buyer": { "data": { "type": "buyer", "id": buyer } } }),
        );
    }
    resource
}

fn document_response(status: StatusCode, document: &Value) -> Response {
    (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static(JSON_API))],
        document.to_string(),
    )
        .into_response()
}

/// A JSON:API error document with one error.
fn errors(status: StatusCode, detail: &str, pointer: Option<&str>) -> Response {
    let mut error = json!({
        "status": status.as_u16().to_string(),
        "title": status.canonical_reason().unwrap_or("Error"),
        "detail": detail,
    });
    if let (Some(pointer), Some(map)) = (pointer, error.as_object_mut()) {
        map.insert("source".into(), json!({ "pointer": pointer }));
    }
    document_response(status, &json!({ "errors": [error] }))
}

fn bad_parameter(parameter: &str, detail: &str) -> Response {
    let error = json!({
        "status": "400",
        "title": "Bad Request",
        "detail": detail,
        "source": { "parameter": parameter },
    });
    document_response(StatusCode::BAD_REQUEST, &json!({ "errors": [error] }))
}

fn not_found(id: &str) -> Response {
    errors(
        StatusCode::NOT_FOUND,
        &format!("no contact with id {id:?}"),
        None,
    )
}

/// The gateway's own error shape, used before a request reaches the API.
fn gateway(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        json!({ "code": code, "message": message }).to_string(),
    )
        .into_response()
}

/// An error of the store as the API would answer it.
fn api_error(error: &ApiError) -> Response {
    let status = error
        .status
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    errors(status, &error.detail, error.pointer.as_deref())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pairs(query: &str) -> Vec<(String, String)> {
        form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect()
    }

    #[test]
    fn list_parameters_are_read_and_checked() {
        let q = list_query(&pairs(
            "filter%5Bfulltext%5D=O%27Brien%20%26%20Sons&filter[tag][]=a&filter[tag][]=b&sort=-last_name&page[number]=3&page[size]=500",
        ))
        .unwrap();
        assert_eq!(q.fulltext.as_deref(), Some("O'Brien & Sons"));
        assert_eq!(q.tags, vec!["a", "b"]);
        assert_eq!(q.sort.unwrap().as_param(), "-last_name");
        assert_eq!((q.page, q.page_size), (3, 200));
        for bad in [
            "page[number]=0",
            "page[size]=x",
            "sort=email",
            "filter[name]=x",
        ] {
            let (parameter, _) = list_query(&pairs(bad)).unwrap_err();
            assert_eq!(parameter, bad.split('=').next().unwrap(), "{bad}");
        }
    }

    #[test]
    fn pagination_has_the_documented_quirks() {
        let link = |n: u64| format!("p{n}");
        let middle = list_document(&[], Some(412), 2, 200, Paging::Faithful, link);
        assert_eq!(
            middle["meta"]["pagination"],
            json!({ "current": 2, "first": 1, "prev": 1, "next": 3, "last": 3, "records": 412 })
        );
        assert_eq!(middle["links"]["records"], "p412");
        let first = list_document(&[], Some(412), 1, 200, Paging::Faithful, link);
        assert!(first["meta"]["pagination"].get("prev").is_none());
        assert_eq!(first["meta"]["pagination"]["next"], 2);
        let last = list_document(&[], Some(412), 3, 200, Paging::Faithful, link);
        assert!(last["meta"]["pagination"].get("next").is_none());
        assert!(last["links"].get("last").is_none());
        let empty = list_document(&[], Some(0), 1, 200, Paging::Faithful, link);
        assert!(empty["meta"]["pagination"].get("next").is_none());
        let looping = list_document(&[], Some(412), 2, 200, Paging::NextIsCurrent, link);
        assert_eq!(looping["meta"]["pagination"]["next"], 2);
        let counted = list_document(&[], Some(412), 1, 200, Paging::CountOnly, link);
        assert!(counted["meta"]["pagination"].get("next").is_none());
        assert_eq!(counted["meta"]["pagination"]["records"], 412);
    }

    #[test]
    fn resources_carry_the_buyer_as_a_relationship() {
        let mut attributes = Map::new();
        attributes.insert("first_name".into(), json!("Jane"));
        attributes.insert("buyer_id".into(), json!("9"));
        let r = resource(&Client {
            id: "4".into(),
            attributes,
        });
        assert_eq!(r["id"], "4");
        assert_eq!(r["type"], "contact");
        assert_eq!(r["relationships"]["buyer"]["data"]["id"], "9");
        assert!(r["attributes"].get("buyer_id").is_none());
    }

    #[test]
    fn keys_are_read_from_the_bearer_header_only() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(AUTHORIZATION, HeaderValue::from_static("bearer  k1 "));
        assert_eq!(bearer(&headers), Some("k1"));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic k1"));
        assert_eq!(bearer(&headers), None);
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&headers), None);
    }
}
