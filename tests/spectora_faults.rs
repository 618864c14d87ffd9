//! The Spectora HTTP client against a misbehaving simulator: 429s with and without
//! `Retry-After` (on a controlled clock: no real waiting), server errors, a server that
//! hangs, pagination that would loop, and a create whose answer is lost.

// A failed unwrap is a failed test, with the value in its message.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clientrules::clients::clock::ManualClock;
use clientrules::clients::paging::{Pager, PagingStop};
use clientrules::clients::spectora::{ApiKey, SpectoraClient, SpectoraConfig};
use clientrules::clients::{Backend, ListQuery};
use clientrules::sim::{self, Fault, Paging, SimConfig, SimHandle};
use serde_json::{Map, Value, json};

const KEY: &str = "fault-test-key";

fn start() -> SimHandle {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    sim::spawn(SimConfig::new([KEY]), addr).unwrap()
}

fn client_with(
    sim: &SimHandle,
    adjust: impl FnOnce(&mut SpectoraConfig),
) -> (SpectoraClient, Arc<ManualClock>) {
    let mut config = SpectoraConfig::new(sim.base_url(), ApiKey::new(KEY).unwrap());
    config.requests_per_minute = 0;
    adjust(&mut config);
    let clock = ManualClock::new();
    let client = SpectoraClient::with_clock(&config, clock.clone()).unwrap();
    (client, clock)
}

fn attrs(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("expected an object, found {other}"),
    }
}

fn count(sim: &SimHandle, name: &str) -> u64 {
    sim.faults.counts().get(name).copied().unwrap_or(0)
}

fn status(code: u16, retry_after: Option<&str>) -> Fault {
    Fault::Status {
        status: code,
        retry_after: retry_after.map(str::to_owned),
    }
}

#[test]
fn a_429_with_retry_after_in_seconds_waits_that_long_then_succeeds() {
    let sim = start();
    let (client, clock) = client_with(&sim, |_| {});
    let made = client
        .create(&attrs(json!({ "first_name": "Ada" })))
        .unwrap();
    sim.faults.reset_counts();
    sim.faults.push([status(429, Some("7"))]);
    let read = client.get(&made.id).unwrap().unwrap();
    assert_eq!(read.id, made.id);
    assert_eq!(clock.sleeps(), vec![Duration::from_secs(7)]);
    assert_eq!(count(&sim, "GET /v2/contacts/{id}"), 2);
}

#[test]
fn a_429_with_retry_after_as_an_http_date_waits_until_then() {
    let sim = start();
    let (client, clock) = client_with(&sim, |_| {});
    // The manual clock's wall time is the real one at its start, to the whole second.
    let now = SystemTime::now();
    let at = httpdate::fmt_http_date(now + Duration::from_secs(12));
    sim.faults.push([status(429, Some(&at))]);
    client.list(&ListQuery::first_page()).unwrap();
    let slept = clock.slept();
    assert!(
        slept >= Duration::from_secs(11) && slept <= Duration::from_secs(13),
        "{slept:?}"
    );
}

#[test]
fn a_429_without_retry_after_backs_off_and_writes_are_sent_again() {
    let sim = start();
    let (client, clock) = client_with(&sim, |c| c.backoff = Duration::from_secs(2));
    sim.faults.push([status(429, None), status(429, None)]);
    let made = client
        .create(&attrs(json!({ "email": "bo@example.com" })))
        .unwrap();
    assert_eq!(made.str_attr("email"), Some("bo@example.com"));
    let sleeps = clock.sleeps();
    assert_eq!(sleeps.len(), 2, "{sleeps:?}");
    // About 2 s, then about 4 s: each between half and all of its step.
    assert!(
        sleeps[0] >= Duration::from_secs(1) && sleeps[0] <= Duration::from_secs(2),
        "{sleeps:?}"
    );
    assert!(
        sleeps[1] >= Duration::from_secs(2) && sleeps[1] <= Duration::from_secs(4),
        "{sleeps:?}"
    );
    // A 429 says the server did not take the write: sent three times, created once.
    assert_eq!(count(&sim, "POST /v2/contacts"), 3);
    let page = sim.backend(KEY).list(&ListQuery::first_page()).unwrap();
    assert_eq!(page.clients.len(), 1);
}

#[test]
fn a_retry_after_longer_than_allowed_ends_the_request_as_transient() {
    let sim = start();
    let (client, clock) = client_with(&sim, |c| c.max_wait = Duration::from_secs(30));
    sim.faults.push([status(429, Some("3600"))]);
    let error = client.get("1").unwrap_err();
    assert_eq!(error.status, Some(429));
    assert!(error.transient, "{error}");
    assert_eq!(clock.slept(), Duration::ZERO);
}

#[test]
fn server_errors_then_success_reads_once_the_server_recovers() {
    let sim = start();
    let (client, clock) = client_with(&sim, |_| {});
    sim.faults
        .push([status(500, None), status(502, None), status(503, None)]);
    let page = client.list(&ListQuery::first_page()).unwrap();
    assert!(page.clients.is_empty());
    assert_eq!(count(&sim, "GET /v2/contacts"), 4);
    assert_eq!(clock.sleeps().len(), 3);
}

#[test]
fn server_errors_past_the_last_try_are_transient_errors_that_name_the_status() {
    let sim = start();
    let (client, _) = client_with(&sim, |c| c.max_attempts = 2);
    sim.faults.push([status(503, None), status(503, None)]);
    let error = client.get("5").unwrap_err();
    assert_eq!(error.status, Some(503));
    assert!(error.transient);
    assert_eq!(error.operation, "get");
    assert!(error.to_string().starts_with("get: 503"), "{error}");
}

#[test]
fn a_refused_write_is_permanent_and_carries_the_apis_words() {
    let sim = start();
    let (client, _) = client_with(&sim, |_| {});
    let error = client
        .create(&attrs(json!({ "notes": "no name, no email" })))
        .unwrap_err();
    assert_eq!(error.status, Some(422));
    assert!(!error.transient);
    assert!(
        error.detail.contains("email, phone or first_name"),
        "{error}"
    );
}

#[test]
fn a_server_that_hangs_is_cut_off_by_the_request_timeout() {
    let sim = start();
    let (client, _) = client_with(&sim, |c| {
        c.request_timeout = Duration::from_millis(300);
        c.max_attempts = 2;
    });
    sim.faults.push([
        Fault::Hang(Duration::from_secs(5)),
        Fault::Hang(Duration::from_secs(5)),
    ]);
    let started = std::time::Instant::now();
    let error = client.get("1").unwrap_err();
    assert!(error.transient, "{error}");
    assert!(
        error.detail.contains("timed out") || error.detail.contains("timeout"),
        "{error}"
    );
    // Two tries of 300 ms, not two hangs of 5 s.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_create_whose_answer_is_lost_is_found_not_sent_again() {
    let sim = start();
    let (client, _) = client_with(&sim, |c| c.request_timeout = Duration::from_millis(300));
    sim.faults.push([Fault::AnswerLate(Duration::from_secs(3))]);
    let made = client
        .create(&attrs(
            json!({ "email": "late@example.com", "first_name": "Lee" }),
        ))
        .unwrap();
    assert_eq!(made.str_attr("first_name"), Some("Lee"));
    assert_eq!(
        count(&sim, "POST /v2/contacts"),
        1,
        "{:?}",
        sim.faults.counts()
    );
    let all = sim.backend(KEY).list(&ListQuery::first_page()).unwrap();
    assert_eq!(all.clients.len(), 1);
    assert_eq!(all.clients[0].id, made.id);
}

#[test]
fn a_create_without_an_email_whose_answer_is_lost_is_not_sent_again() {
    let sim = start();
    let (client, _) = client_with(&sim, |c| c.request_timeout = Duration::from_millis(300));
    sim.faults.push([Fault::AnswerLate(Duration::from_secs(3))]);
    let error = client
        .create(&attrs(json!({ "first_name": "Nomail" })))
        .unwrap_err();
    assert!(
        !error.transient,
        "a retry could create the client twice: {error}"
    );
    assert!(error.detail.contains("unknown"), "{error}");
    assert_eq!(count(&sim, "POST /v2/contacts"), 1);
}

fn seed(sim: &SimHandle, n: usize) {
    let items: Vec<Map<String, Value>> = (0..n)
        .map(|i| attrs(json!({ "first_name": format!("P{i:03}") })))
        .collect();
    sim.backend(KEY).create_many(&items).unwrap();
}

fn walk(client: &SpectoraClient) -> (usize, u32, PagingStop) {
    let mut pager = Pager::new(ListQuery::first_page(), 20);
    let mut seen = 0;
    while let Some(q) = pager.query() {
        seen += pager.accept(client.list(q).unwrap()).len();
    }
    (seen, pager.pages(), pager.stop().cloned().unwrap())
}

#[test]
fn pagination_that_would_loop_stops() {
    let sim = start();
    seed(&sim, 401);
    let (client, _) = client_with(&sim, |_| {});

    sim.faults.set_paging(Paging::NextIsCurrent);
    let (seen, pages, stop) = walk(&client);
    assert_eq!((seen, pages), (200, 1));
    assert_eq!(stop, PagingStop::NotAdvancing { page: 1, next: 1 });

    sim.faults.set_paging(Paging::RepeatFirst);
    let (seen, pages, stop) = walk(&client);
    assert_eq!((seen, pages), (200, 2));
    assert_eq!(stop, PagingStop::Repeated { page: 2 });

    // Without `next`, the record count leads, and every client comes once.
    sim.faults.set_paging(Paging::CountOnly);
    let (seen, pages, stop) = walk(&client);
    assert_eq!((seen, pages), (401, 3));
    assert_eq!(stop, PagingStop::Done);
}

#[test]
fn the_rate_limit_of_the_simulator_answers_429_past_its_budget() {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut config = SimConfig::new([KEY]);
    config.rate_limit = 3;
    let sim = sim::spawn(config, addr).unwrap();
    let (client, clock) = client_with(&sim, |c| c.max_attempts = 1);
    for _ in 0..3 {
        client.get("1").unwrap();
    }
    let error = client.get("1").unwrap_err();
    assert_eq!(error.status, Some(429));
    assert!(error.transient);
    assert_eq!(count(&sim, "429"), 1);
    assert_eq!(clock.slept(), Duration::ZERO);
}

#[test]
fn the_clients_own_rate_limit_spaces_requests_on_its_clock() {
    let sim = start();
    let (client, clock) = client_with(&sim, |c| c.requests_per_minute = 6);
    for _ in 0..4 {
        client.get("1").unwrap();
    }
    // A burst of one (ten seconds' worth), then one every ten seconds.
    let slept = clock.slept();
    assert!(
        slept >= Duration::from_secs(29) && slept <= Duration::from_secs(31),
        "{slept:?}"
    );
    assert_eq!(count(&sim, "GET /v2/contacts/{id}"), 4);
}
