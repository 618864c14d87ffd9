//! One behaviour suite for the API layer, run twice: on the embedded backend, and on the
//! Spectora HTTP client talking to a simulator on a free loopback port.

// A failed unwrap is a failed test, with the value in its message.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use clientrules::clients::clock::ManualClock;
use clientrules::clients::embedded::EmbeddedStore;
use clientrules::clients::image::Image;
use clientrules::clients::paging::{Pager, PagingStop};
use clientrules::clients::spectora::{ApiKey, SpectoraClient, SpectoraConfig};
use clientrules::clients::{Backend, Client, ListQuery, Sort};
use clientrules::sim::{self, SimConfig, SimHandle};
use serde_json::{Map, Value, json};

/// Two companies on one backend, and the simulator when there is one.
struct Fixture {
    backend: Box<dyn Backend>,
    other: Box<dyn Backend>,
    sim: Option<SimHandle>,
    embedded: Option<EmbeddedStore>,
}

fn embedded() -> Fixture {
    let store = EmbeddedStore::in_memory().unwrap();
    Fixture {
        backend: Box::new(store.company("a")),
        other: Box::new(store.company("b")),
        sim: None,
        embedded: Some(store),
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// The HTTP client's settings for a test: no rate limit, a clock that never really waits.
fn http_config(sim: &SimHandle, key: &str) -> SpectoraConfig {
    let mut config = SpectoraConfig::new(sim.base_url(), ApiKey::new(key).unwrap());
    config.requests_per_minute = 0;
    config
}

fn over_http() -> Fixture {
    let sim = sim::spawn(SimConfig::new(["key-a", "key-b"]), loopback()).unwrap();
    let clock = ManualClock::new();
    let backend = SpectoraClient::with_clock(&http_config(&sim, "key-a"), clock.clone()).unwrap();
    let other = SpectoraClient::with_clock(&http_config(&sim, "key-b"), clock).unwrap();
    Fixture {
        backend: Box::new(backend),
        other: Box::new(other),
        sim: Some(sim),
        embedded: None,
    }
}

fn attrs(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("expected an object, found {other}"),
    }
}

/// Every client of a query, walking the pages; with the number of pages requested and
/// why the walk stopped.
fn walk(backend: &dyn Backend, query: ListQuery) -> (Vec<Client>, u32, PagingStop) {
    let mut pager = Pager::new(query, 100);
    let mut all = Vec::new();
    while let Some(q) = pager.query() {
        let page = backend.list(q).unwrap();
        all.extend(pager.accept(page));
    }
    let stop = pager.stop().cloned().unwrap();
    (all, pager.pages(), stop)
}

fn tagged(tag: &str) -> ListQuery {
    let mut q = ListQuery::first_page();
    q.tags = vec![tag.to_owned()];
    q
}

fn a_png() -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend((0..=255u8).cycle().take(3000));
    bytes
}

// The behaviours, each run on both backends.

fn a_created_client_reads_back_with_every_attribute(f: &Fixture) {
    let created = f
        .backend
        .create(&attrs(json!({
            "email": " Jane@Example.com ", "first_name": "Jane", "last_name": "Baker",
            "phone": "+13035550111", "tags": ["lead"], "x_custom": { "source": "web", "n": [1, 2] }
        })))
        .unwrap();
    assert!(!created.id.is_empty());
    assert_eq!(created.str_attr("email"), Some("jane@example.com"));
    assert!(created.str_attr("buyer_id").is_some(), "{created:?}");
    assert!(created.str_attr("created_at").is_some());
    let read = f.backend.get(&created.id).unwrap().unwrap();
    assert_eq!(read, created);
    assert_eq!(
        read.attributes["x_custom"],
        json!({ "source": "web", "n": [1, 2] })
    );
    assert_eq!(read.tags(), vec!["lead"]);
}

fn a_create_needs_an_email_a_phone_or_a_first_name(f: &Fixture) {
    let refused = f
        .backend
        .create(&attrs(json!({ "last_name": "Only", "notes": "x" })))
        .unwrap_err();
    assert_eq!(refused.status, Some(422));
    assert!(!refused.transient);
    assert!(refused.pointer.is_some(), "{refused:?}");
    assert!(
        f.backend
            .create(&attrs(json!({ "phone": "+13035550100" })))
            .is_ok()
    );
    assert!(
        f.backend
            .create(&attrs(json!({ "first_name": "Ann" })))
            .is_ok()
    );
    let (all, _, _) = walk(f.backend.as_ref(), ListQuery::first_page());
    assert_eq!(all.len(), 2);
}

fn an_unknown_client_is_none(f: &Fixture) {
    assert_eq!(f.backend.get("987654").unwrap(), None);
    assert_eq!(f.backend.get("not-a-number").unwrap(), None);
}

fn an_email_links_to_its_buyer_across_companies_but_not_twice_in_one(f: &Fixture) {
    let a = f
        .backend
        .create(&attrs(
            json!({ "email": "sam@example.com", "first_name": "Sam" }),
        ))
        .unwrap();
    let b = f
        .other
        .create(&attrs(
            json!({ "email": " SAM@example.COM ", "first_name": "Samuel" }),
        ))
        .unwrap();
    assert_ne!(a.id, b.id);
    assert_eq!(a.str_attr("buyer_id"), b.str_attr("buyer_id"));
    // Each company sees its own contact only.
    assert_eq!(f.other.get(&a.id).unwrap(), None);
    let again = f
        .backend
        .create(&attrs(
            json!({ "email": "Sam@Example.com", "first_name": "Sammy" }),
        ))
        .unwrap_err();
    assert_eq!(again.status, Some(422));
    assert_eq!(again.pointer.as_deref(), Some("/data/attributes/email"));
}

fn an_update_changes_only_what_it_names_and_never_the_email(f: &Fixture) {
    let c = f
        .backend
        .create(&attrs(json!({
            "email": "kim@example.com", "first_name": "kim", "phone": "+13035550122",
            "x_custom": { "keep": true }, "x_list": ["a"]
        })))
        .unwrap();
    let updated = f
        .backend
        .update(
            &c.id,
            &attrs(json!({ "first_name": "Kim", "last_name": "Lee" })),
        )
        .unwrap();
    assert_eq!(updated.str_attr("first_name"), Some("Kim"));
    assert_eq!(updated.str_attr("last_name"), Some("Lee"));
    assert_eq!(updated.str_attr("phone"), Some("+13035550122"));
    assert_eq!(updated.attributes["x_custom"], json!({ "keep": true }));
    assert_eq!(updated.attributes["x_list"], json!(["a"]));
    assert_eq!(f.backend.get(&c.id).unwrap().unwrap(), updated);
    let refused = f
        .backend
        .update(&c.id, &attrs(json!({ "email": "other@example.com" })))
        .unwrap_err();
    assert_eq!(refused.status, Some(422));
    assert_eq!(refused.pointer.as_deref(), Some("/data/attributes/email"));
    let missing = f
        .backend
        .update("987654", &attrs(json!({ "first_name": "X" })))
        .unwrap_err();
    assert_eq!(missing.status, Some(404));
}

fn tags_replace_the_list_and_filter_clients(f: &Fixture) {
    let c = f
        .backend
        .create(&attrs(json!({ "first_name": "Tia", "tags": ["a", "b"] })))
        .unwrap();
    f.backend
        .create(&attrs(json!({ "first_name": "Ugo", "tags": ["b"] })))
        .unwrap();
    let updated = f
        .backend
        .update(&c.id, &attrs(json!({ "tags": ["b", "repeat-client"] })))
        .unwrap();
    assert_eq!(updated.tags(), vec!["b", "repeat-client"]);
    let (with_a, _, _) = walk(f.backend.as_ref(), tagged("a"));
    assert!(with_a.is_empty());
    let (repeat, _, _) = walk(f.backend.as_ref(), tagged("repeat-client"));
    assert_eq!(repeat.len(), 1);
    assert_eq!(repeat[0].id, c.id);
    let (with_b, _, _) = walk(f.backend.as_ref(), tagged("b"));
    assert_eq!(with_b.len(), 2);
    // Another company's tags are its own.
    let (other, _, _) = walk(f.other.as_ref(), tagged("b"));
    assert!(other.is_empty());
}

fn fulltext_finds_names_emails_and_phones_with_awkward_characters(f: &Fixture) {
    for (first, last, email) in [
        ("Sean", "O'Brien & Sons", "sean@obrien.example"),
        ("José", "Núñez", "jose+inspections@example.com"),
        ("Plain", "Person", "plain@example.com"),
    ] {
        f.backend
            .create(&attrs(
                json!({ "first_name": first, "last_name": last, "email": email }),
            ))
            .unwrap();
    }
    let find = |text: &str| {
        let mut q = ListQuery::first_page();
        q.fulltext = Some(text.to_owned());
        let (found, _, _) = walk(f.backend.as_ref(), q);
        found
            .iter()
            .filter_map(|c| c.str_attr("first_name").map(str::to_owned))
            .collect::<Vec<_>>()
    };
    assert_eq!(find("O'Brien & Sons"), vec!["Sean"]);
    assert_eq!(find("jose+inspections@"), vec!["José"]);
    assert_eq!(find("Núñez"), vec!["José"]);
    assert!(find("nobody-at-all").is_empty());
}

fn filters_by_id_and_buyer_id_find_exactly_one(f: &Fixture) {
    let a = f
        .backend
        .create(&attrs(
            json!({ "email": "one@example.com", "first_name": "One" }),
        ))
        .unwrap();
    f.backend
        .create(&attrs(
            json!({ "email": "two@example.com", "first_name": "Two" }),
        ))
        .unwrap();
    let mut q = ListQuery::first_page();
    q.id = Some(a.id.clone());
    let (found, _, _) = walk(f.backend.as_ref(), q);
    assert_eq!(found, vec![a.clone()]);
    let mut q = ListQuery::first_page();
    q.buyer_id = a.str_attr("buyer_id").map(str::to_owned);
    let (found, _, _) = walk(f.backend.as_ref(), q);
    assert_eq!(found, vec![a.clone()]);
    for (id, buyer) in [
        (Some("999999"), None),
        (Some("x y"), None),
        (None, Some("999999")),
    ] {
        let mut q = ListQuery::first_page();
        q.id = id.map(str::to_owned);
        q.buyer_id = buyer.map(str::to_owned);
        let (found, _, _) = walk(f.backend.as_ref(), q);
        assert!(found.is_empty(), "{id:?} {buyer:?}: {found:?}");
    }
}

fn the_three_sorts_go_both_ways(f: &Fixture) {
    for (first, last) in [("Cal", "Adams"), ("Ann", "Baker"), ("Bea", "Adams")] {
        f.backend
            .create(&attrs(json!({ "first_name": first, "last_name": last })))
            .unwrap();
    }
    let order = |sort: &str| {
        let mut q = ListQuery::first_page();
        q.sort = Sort::parse(sort);
        let (found, _, _) = walk(f.backend.as_ref(), q);
        found
            .iter()
            .map(|c| c.str_attr("first_name").unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
            .join(",")
    };
    assert_eq!(order("first_name"), "Ann,Bea,Cal");
    assert_eq!(order("-first_name"), "Cal,Bea,Ann");
    assert_eq!(order("last_first_name"), "Bea,Cal,Ann");
    assert_eq!(order("-last_first_name"), "Ann,Cal,Bea");
    assert_eq!(order("last_name").split(',').next_back(), Some("Ann"));
    assert_eq!(order("-last_name").split(',').next(), Some("Ann"));
}

fn pages_cover_every_edge_once(f: &Fixture) {
    // 401 clients; tags pick subsets of 1, 200 and 201 of them.
    for i in 0..401 {
        let mut tags = vec!["all"];
        if i < 1 {
            tags.push("t1");
        }
        if i < 200 {
            tags.push("t200");
        }
        if i < 201 {
            tags.push("t201");
        }
        f.backend
            .create(&attrs(
                json!({ "first_name": format!("C{i:03}"), "tags": tags }),
            ))
            .unwrap();
    }
    for (tag, records, pages) in [
        ("t0", 0, 1),
        ("t1", 1, 1),
        ("t200", 200, 1),
        ("t201", 201, 2),
        ("all", 401, 3),
    ] {
        let (found, requested, stop) = walk(f.backend.as_ref(), tagged(tag));
        assert_eq!(found.len(), records, "{tag}");
        assert_eq!(requested, pages, "{tag}");
        let mut ids: Vec<&str> = found.iter().map(|c| c.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), records, "{tag}: a client came twice");
        assert!(
            matches!(stop, PagingStop::Done | PagingStop::Empty),
            "{tag}: {stop:?}"
        );
    }
    // Smaller pages walk further.
    let mut q = tagged("t201");
    q.page_size = 50;
    let (found, requested, _) = walk(f.backend.as_ref(), q);
    assert_eq!((found.len(), requested), (201, 5));
    // Never more than 200 a page, whatever is asked.
    let mut q = tagged("all");
    q.page_size = 1000;
    let page = f.backend.list(&q).unwrap();
    assert_eq!(page.clients.len(), 200);
    assert_eq!(page.total, Some(401));
}

fn an_image_is_kept_byte_for_byte(f: &Fixture) {
    let c = f
        .backend
        .create(&attrs(json!({ "first_name": "Pia" })))
        .unwrap();
    let bytes = a_png();
    let image = Image::new("house front.png", bytes.clone()).unwrap();
    let updated = f
        .backend
        .set_image(&c.id, &attrs(json!({ "notes": "photo sent" })), &image)
        .unwrap();
    assert_eq!(updated.str_attr("notes"), Some("photo sent"));
    let url = updated.str_attr("image_url").unwrap().to_owned();
    assert!(
        url.ends_with(&format!("/{}/house%20front.png", c.id)),
        "{url}"
    );
    let stored = match (&f.sim, &f.embedded) {
        (Some(_), _) => fetch(&url),
        (None, Some(store)) => store.image(&c.id).unwrap().unwrap().bytes,
        (None, None) => unreachable!(),
    };
    assert_eq!(stored, bytes);
    // The email still cannot change on the way.
    let refused = f
        .backend
        .set_image(&c.id, &attrs(json!({ "email": "x@example.com" })), &image)
        .unwrap_err();
    assert_eq!(refused.status, Some(422));
}

/// The bytes at a URL of the simulator, read with a plain HTTP client.
fn fetch(url: &str) -> Vec<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let response = reqwest::get(url).await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        response.bytes().await.unwrap().to_vec()
    })
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_embedded {
            $( #[test] fn $name() { super::$name(&super::embedded()); } )*
        }
        mod over_http_to_the_simulator {
            $( #[test] fn $name() { super::$name(&super::over_http()); } )*
        }
    };
}

on_both_backends!(
    a_created_client_reads_back_with_every_attribute,
    a_create_needs_an_email_a_phone_or_a_first_name,
    an_unknown_client_is_none,
    an_email_links_to_its_buyer_across_companies_but_not_twice_in_one,
    an_update_changes_only_what_it_names_and_never_the_email,
    tags_replace_the_list_and_filter_clients,
    fulltext_finds_names_emails_and_phones_with_awkward_characters,
    filters_by_id_and_buyer_id_find_exactly_one,
    the_three_sorts_go_both_ways,
    pages_cover_every_edge_once,
    an_image_is_kept_byte_for_byte,
);

#[test]
fn the_simulator_answers_a_wrong_key_with_the_gateway_shape() {
    let sim = sim::spawn(SimConfig::new(["good-key-1"]), loopback()).unwrap();
    let client =
        SpectoraClient::with_clock(&http_config(&sim, "wrong-key-xyz"), ManualClock::new())
            .unwrap();
    let error = client.get("1").unwrap_err();
    assert_eq!(error.status, Some(401));
    assert!(!error.transient);
    assert!(error.detail.contains("UNAUTHORIZED"), "{error}");
    assert!(!error.to_string().contains("wrong-key-xyz"));
    let _ = Arc::clone(&sim.faults);
}
