//! The service end to end: the real binary on a loopback port, webhooks in over HTTP,
//! runs read back from the admin API, clients read back with the CLI.
//!
//! Each test starts its own `clientrules serve` on `127.0.0.1:0` with its own data folder;
//! the [`Service`] guard kills the process when the test ends.

mod common;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::Value;

use common::{
    Service, WAIT, accepted_event_id, client_with_email, data_dir, example, expect_error,
    list_clients, output_within, raw_http, raw_status, rules_dir, shipped_rules, tags_of, validate,
};

/// A rule that busy-waits about a second, then creates a client from `event.body.email`;
/// a cancelled run is retried after 100 ms.
const SLOW_RULE: &str = r#"name: slow
on:
  webhook: {}
script: |
  let started = timestamp();
  while started.elapsed < 1.0 { }
  clients::upsert(#{ email: event.body.email, first_name: "Slow" });
limits:
  timeout: 10s
  max_operations: 10000000000
retry:
  attempts: 3
  backoff: 100ms
"#;

/// A rule that creates a client from `event.body.email` at once.
const QUICK_RULE: &str = r#"name: quick
on:
  webhook: {}
script: |
  clients::upsert(#{ email: event.body.email, first_name: "Quick" });
"#;

/// A rule that accepts any body and writes nothing.
const SINK_RULE: &str = r#"name: sink
on:
  webhook: {}
script: |
  let size = event.raw.len();
"#;

fn form(pairs: &[(&str, &str)]) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        serializer.append_pair(k, v);
    }
    serializer.finish()
}

fn time_of(run: &Value, key: &str) -> DateTime<Utc> {
    let text = run[key]
        .as_str()
        .unwrap_or_else(|| panic!("run without {key}: {run}"));
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("run {key} {text:?} is not RFC 3339: {e}"))
        .with_timezone(&Utc)
}

fn ended_at(run: &Value) -> DateTime<Utc> {
    let millis = run["duration_ms"]
        .as_i64()
        .unwrap_or_else(|| panic!("run without duration_ms: {run}"));
    time_of(run, "started_at") + chrono::Duration::milliseconds(millis)
}

fn assert_client(client: &Value, first: &str, last: &str, phone: &str, tags: &[&str]) {
    assert_eq!(client["first_name"], first, "{client:#}");
    assert_eq!(client["last_name"], last, "{client:#}");
    assert_eq!(client["phone"], phone, "{client:#}");
    assert_eq!(tags_of(client), tags, "{client:#}");
}

async fn post_contact_form(service: &Service, body: String) {
    let response = service
        .post(
            "/hooks/contact-form",
            "application/x-www-form-urlencoded",
            body,
        )
        .await;
    let status = response.status();
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert_eq!(status, 303, "{}", response.text().await.unwrap_or_default());
    assert_eq!(location.as_deref(), Some("https://example.com/thanks"));
}

async fn post_jotform_example(service: &Service) -> String {
    let form = reqwest::multipart::Form::new()
        .text("formID", "243105982716058")
        .text("submissionID", "6012849375210468113")
        .text("webhookURL", service.url("/hooks/jotform"))
        .text("ip", "203.0.113.24")
        .text("formTitle", "Request an Inspection")
        .text(
            "pretty",
            "Name:Daniel Ortiz, Email:Dan.Ortiz@Example.org, Phone Number:(303) 555-0122, \
             Property Address:1450 Elm Street  Denver CO 80203, Inspection Type:Pre-listing \
             inspection, Message:We list the house in January. Any day the week of Dec 16 works.",
        )
        .text("username", "frontrangeinspect")
        .text("rawRequest", example("jotform-rawRequest.json"))
        .text("type", "WEB");
    let response = service
        .http
        .post(service.url("/hooks/jotform"))
        .multipart(form)
        .send()
        .await
        .expect("POST /hooks/jotform failed");
    accepted_event_id(response).await
}

// --- 1. the shipped examples --------------------------------------------------------

#[tokio::test]
async fn each_shipped_example_becomes_its_documented_client() {
    let data = data_dir();
    let service = Service::start_default(&shipped_rules(), data.path());

    let typeform = service
        .accept_json("/hooks/typeform", &example("typeform.json"))
        .await;
    let jotform = post_jotform_example(&service).await;
    post_contact_form(&service, example("contact-form.txt")).await;

    for (rule, event) in [("typeform", Some(&typeform)), ("jotform", Some(&jotform))] {
        let runs = service.wait_for_runs(&format!("rule={rule}"), 1).await;
        assert_eq!(runs.len(), 1, "{runs:#?}");
        assert_eq!(runs[0]["status"], "succeeded", "{:#}", runs[0]);
        assert_eq!(runs[0]["event_id"].as_str(), event.map(String::as_str));
    }
    let runs = service.wait_for_runs("rule=contact-form", 1).await;
    assert_eq!(runs[0]["status"], "succeeded", "{:#}", runs[0]);
    // The run log records what was asked for and how to get back to the visitor.
    let logs = runs[0]["logs"].to_string();
    assert!(logs.contains("prefers to be contacted by phone"), "{logs}");

    let clients = service.clients();
    assert_eq!(clients.len(), 3, "{clients:#?}");
    assert_client(
        client_with_email(&clients, "jane.baker@example.com"),
        "Jane",
        "Baker",
        "+13035550111",
        &["typeform-lead"],
    );
    assert_client(
        client_with_email(&clients, "dan.ortiz@example.org"),
        "Daniel",
        "Ortiz",
        "(303) 555-0122",
        &["jotform-lead"],
    );
    assert_client(
        client_with_email(&clients, "maria.lopez@example.com"),
        "Maria",
        "Lopez",
        "(720) 555-0133",
        &["website-lead"],
    );
}

// --- 2. the same person again --------------------------------------------------------

#[tokio::test]
async fn a_second_submission_with_the_same_email_updates_the_client() {
    let data = data_dir();
    let service = Service::start_default(&shipped_rules(), data.path());

    post_contact_form(&service, example("contact-form.txt")).await;
    service.wait_for_runs("rule=contact-form", 1).await;

    // The same address in other case and with spaces around it, a new last name, and
    // no phone: the phone the client has must stay.
    let second = form(&[
        ("first_name", "Maria"),
        ("last_name", "Lopez-Garcia"),
        ("email", "  MARIA.lopez@EXAMPLE.com "),
        ("phone", ""),
        ("message", "Following up on my message."),
    ]);
    post_contact_form(&service, second).await;
    let runs = service.wait_for_runs("rule=contact-form", 2).await;
    assert!(runs.iter().all(|r| r["status"] == "succeeded"), "{runs:#?}");
    // Newest first: the second run changed the client and created none.
    let kinds: Vec<&str> = runs[0]["changes"]
        .as_array()
        .map(|c| c.iter().filter_map(|c| c["kind"].as_str()).collect())
        .unwrap_or_default();
    assert!(kinds.contains(&"updated"), "{:#}", runs[0]);
    assert!(!kinds.contains(&"created"), "{:#}", runs[0]);

    let clients = service.clients();
    assert_eq!(clients.len(), 1, "{clients:#?}");
    assert_client(
        client_with_email(&clients, "maria.lopez@example.com"),
        "Maria",
        "Lopez-Garcia",
        "(720) 555-0133",
        &["website-lead"],
    );
}

#[tokio::test]
async fn the_same_person_through_two_forms_is_one_client_with_both_tags() {
    let data = data_dir();
    let service = Service::start_default(&shipped_rules(), data.path());

    service
        .accept_json("/hooks/typeform", &example("typeform.json"))
        .await;
    service.wait_for_runs("rule=typeform", 1).await;
    post_contact_form(
        &service,
        form(&[
            ("first_name", "Jane"),
            ("last_name", "Baker"),
            ("email", "JANE.BAKER@example.com"),
        ]),
    )
    .await;
    let runs = service.wait_for_runs("rule=contact-form", 1).await;
    assert_eq!(runs[0]["status"], "succeeded", "{:#}", runs[0]);

    let clients = service.clients();
    assert_eq!(clients.len(), 1, "{clients:#?}");
    let jane = client_with_email(&clients, "jane.baker@example.com");
    let mut tags = tags_of(jane);
    tags.sort();
    assert_eq!(tags, ["typeform-lead", "website-lead"], "{jane:#}");
    assert_eq!(jane["phone"], "+13035550111", "{jane:#}");
}

// --- 3. restarts ----------------------------------------------------------------------

#[tokio::test]
async fn clients_and_runs_survive_a_sigterm_and_a_sigkill() {
    let data = data_dir();
    let rules = shipped_rules();

    let mut service = Service::start(&rules, data.path(), &["--shutdown-grace", "5"], &[]);
    let typeform = service
        .accept_json("/hooks/typeform", &example("typeform.json"))
        .await;
    service.wait_for_runs("rule=typeform", 1).await;
    let started = Instant::now();
    let status = service.terminate(WAIT);
    assert!(
        status.success(),
        "SIGTERM should stop the service cleanly, got {status}:\n{}",
        service.logs()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "an idle service should stop at once"
    );
    assert!(service.logs().contains("stopped"), "{}", service.logs());
    drop(service);

    // Stopped: the CLI reads the data folder alone.
    let clients = list_clients(data.path());
    assert_eq!(clients.len(), 1, "{clients:#?}");
    client_with_email(&clients, "jane.baker@example.com");

    let mut service = Service::start_default(&rules, data.path());
    let runs = service.runs("rule=typeform").await;
    assert_eq!(runs.len(), 1, "the run record is kept: {runs:#?}");
    assert_eq!(runs[0]["event_id"].as_str(), Some(typeform.as_str()));
    post_contact_form(&service, example("contact-form.txt")).await;
    service.wait_for_runs("rule=contact-form", 1).await;
    service.kill();
    drop(service);

    // After a SIGKILL the data folder is still whole and the lock is free.
    let service = Service::start_default(&rules, data.path());
    let clients = service.clients();
    assert_eq!(clients.len(), 2, "{clients:#?}");
    client_with_email(&clients, "jane.baker@example.com");
    client_with_email(&clients, "maria.lopez@example.com");
    post_jotform_example(&service).await;
    service.wait_for_runs("rule=jotform", 1).await;
    assert_eq!(service.clients().len(), 3);
}

#[tokio::test]
async fn a_second_service_on_the_same_data_folder_refuses_to_start() {
    let data = data_dir();
    let rules = shipped_rules();
    let first = Service::start_default(&rules, data.path());

    let mut second = common::command();
    second
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--rules"])
        .arg(&rules)
        .arg("--data")
        .arg(data.path());
    let output = output_within(second, WAIT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("another clientrules serve"), "{stderr}");

    // The first one is unharmed.
    service_answers(&first).await;
}

async fn service_answers(service: &Service) {
    let response = service
        .http
        .get(service.url("/healthz"))
        .send()
        .await
        .expect("GET /healthz failed");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn jobs_pending_at_a_sigkill_run_after_the_restart() {
    let data = data_dir();
    let rules = rules_dir(&[("slow.yaml", SLOW_RULE)]);

    let mut service = Service::start(rules.path(), data.path(), &["--workers", "1"], &[]);
    let mut events = Vec::new();
    for n in 1..=3 {
        let body = format!(r#"{{"email": "pending{n}@example.com"}}"#);
        events.push(service.accept_json("/hooks/slow", &body).await);
    }
    // One worker, a second a run: the first job is running, the others wait.
    service.wait_for_job_state(&events[0], "running").await;
    let done = service.runs("rule=slow").await;
    assert!(done.len() < 3, "too late to kill: {done:#?}");
    service.kill();
    drop(service);

    let service = Service::start_default(rules.path(), data.path());
    let deadline = Instant::now() + WAIT;
    let runs = loop {
        let runs = service.runs("rule=slow&status=succeeded").await;
        let mut covered: Vec<&str> = runs.iter().filter_map(|r| r["event_id"].as_str()).collect();
        covered.sort();
        covered.dedup();
        if covered.len() == events.len() {
            break runs;
        }
        assert!(
            Instant::now() < deadline,
            "not every event got a succeeded run after the restart: {runs:#?}\n{}",
            service.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for event in &events {
        let of_event: Vec<&Value> = runs
            .iter()
            .filter(|r| r["event_id"].as_str() == Some(event))
            .collect();
        assert_eq!(of_event.len(), 1, "one succeeded run an event: {runs:#?}");
    }
    let failed = service.runs("rule=slow&status=failed").await;
    assert!(failed.is_empty(), "{failed:#?}");

    let clients = service.clients();
    assert_eq!(clients.len(), 3, "{clients:#?}");
    for n in 1..=3 {
        client_with_email(&clients, &format!("pending{n}@example.com"));
    }
}

#[tokio::test]
async fn sigterm_lets_the_running_job_finish_and_leaves_the_rest_for_the_next_start() {
    let data = data_dir();
    let rules = rules_dir(&[("slow.yaml", SLOW_RULE)]);

    let mut service = Service::start(
        rules.path(),
        data.path(),
        &["--workers", "1", "--shutdown-grace", "8"],
        &[],
    );
    let first = service
        .accept_json("/hooks/slow", r#"{"email": "first@example.com"}"#)
        .await;
    let second = service
        .accept_json("/hooks/slow", r#"{"email": "second@example.com"}"#)
        .await;
    service.wait_for_job_state(&first, "running").await;
    let status = service.terminate(WAIT + Duration::from_secs(5));
    assert!(status.success(), "{status}:\n{}", service.logs());
    drop(service);
    let stopped_at = Utc::now();

    // The running job finished within the grace period; the waiting one was not taken.
    let clients = list_clients(data.path());
    assert_eq!(clients.len(), 1, "{clients:#?}");
    client_with_email(&clients, "first@example.com");

    let service = Service::start_default(rules.path(), data.path());
    let runs = service.wait_for_runs(&format!("event={second}"), 1).await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0]["status"], "succeeded", "{:#}", runs[0]);
    assert!(
        time_of(&runs[0], "started_at") >= stopped_at,
        "the second job ran after the restart: {:#}",
        runs[0]
    );
    let runs = service.runs(&format!("event={first}")).await;
    assert_eq!(runs.len(), 1, "the first job ran once: {runs:#?}");
    assert_eq!(runs[0]["status"], "succeeded", "{:#}", runs[0]);
    assert_eq!(runs[0]["attempt"], 1, "{:#}", runs[0]);
    assert_eq!(service.clients().len(), 2);
}

#[tokio::test]
async fn a_run_cut_off_by_shutdown_runs_again_after_the_restart_without_using_an_attempt() {
    let data = data_dir();
    // One attempt only: a cut-off run must not make the job a dead letter.
    let one_attempt = SLOW_RULE.replace("attempts: 3", "attempts: 1");
    let rules = rules_dir(&[("slow.yaml", one_attempt.as_str())]);

    let mut service = Service::start(
        rules.path(),
        data.path(),
        &["--workers", "1", "--shutdown-grace", "0"],
        &[],
    );
    let event = service
        .accept_json("/hooks/slow", r#"{"email": "cut@example.com"}"#)
        .await;
    service.wait_for_job_state(&event, "running").await;
    let status = service.terminate(WAIT);
    assert!(status.success(), "{status}:\n{}", service.logs());
    drop(service);
    assert!(list_clients(data.path()).is_empty());

    let service = Service::start_default(rules.path(), data.path());
    let deadline = Instant::now() + WAIT;
    let runs = loop {
        let runs = service.runs(&format!("event={event}")).await;
        if runs.iter().any(|r| r["status"] == "succeeded") {
            break runs;
        }
        assert!(
            Instant::now() < deadline,
            "the cancelled job never succeeded: {runs:#?}\n{}",
            service.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(runs.len(), 2, "{runs:#?}");
    // Newest first.
    let (retried, cancelled) = (&runs[0], &runs[1]);
    assert_eq!(cancelled["status"], "failed", "{cancelled:#}");
    assert_eq!(cancelled["retryable"], true, "{cancelled:#}");
    assert_eq!(cancelled["next"]["state"], "requeued", "{cancelled:#}");
    let message = cancelled["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("shutting down"), "{cancelled:#}");
    assert_eq!(retried["attempt"], 1, "{retried:#}");
    client_with_email(&service.clients(), "cut@example.com");
}

// --- 4. to 6. and 9. what is refused ----------------------------------------------------

#[tokio::test]
async fn malformed_bodies_get_400_and_nothing_is_stored() {
    let data = data_dir();
    let service = Service::start_default(&shipped_rules(), data.path());

    let message = expect_error(
        service.post_json("/hooks/typeform", r#"{"email":"#).await,
        400,
    )
    .await;
    assert!(message.contains("application/json"), "{message}");
    expect_error(
        service
            .post(
                "/hooks/jotform",
                "multipart/form-data; boundary=xyz",
                "not multipart at all",
            )
            .await,
        400,
    )
    .await;
    expect_error(
        service
            .post("/hooks/jotform", "multipart/form-data", "no boundary")
            .await,
        400,
    )
    .await;

    // One good event as a marker: once its run is recorded, the workers have had every
    // chance to run anything else that was stored.
    let good = service
        .accept_json("/hooks/typeform", &example("typeform.json"))
        .await;
    service.wait_for_runs("", 1).await;
    let events = service.events().await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["id"].as_str(), Some(good.as_str()));
    let runs = service.runs("").await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert!(service.runs("rule=jotform").await.is_empty());
}

#[tokio::test]
async fn unknown_paths_get_404_and_other_methods_405() {
    let data = data_dir();
    let service = Service::start_default(&shipped_rules(), data.path());

    let response = service
        .http
        .get(service.url("/no/such/path"))
        .send()
        .await
        .expect("GET failed");
    expect_error(response, 404).await;
    expect_error(service.post_json("/hooks/nope", "{}").await, 404).await;
    // Paths match exactly.
    expect_error(service.post_json("/hooks/typeform/", "{}").await, 404).await;

    for method in [reqwest::Method::GET, reqwest::Method::PUT] {
        let response = service
            .http
            .request(method.clone(), service.url("/hooks/typeform"))
            .send()
            .await
            .expect("request failed");
        let allow = response
            .headers()
            .get(reqwest::header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        expect_error(response, 405).await;
        assert_eq!(allow.as_deref(), Some("POST"), "{method}");
    }
    assert!(service.events().await.is_empty());
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let data = data_dir();
    let rules = rules_dir(&[("sink.yaml", SINK_RULE)]);
    let service = Service::start(rules.path(), data.path(), &["--body-limit", "1KiB"], &[]);

    let message = expect_error(
        service
            .post("/hooks/sink", "text/plain", "a".repeat(2048))
            .await,
        413,
    )
    .await;
    assert!(message.contains("1024"), "{message}");
    // Exactly at the limit is accepted.
    let at_limit = accepted_event_id(
        service
            .post("/hooks/sink", "text/plain", "b".repeat(1024))
            .await,
    )
    .await;

    // No Content-Length at all: a chunked body over the limit.
    let mut chunked =
        b"POST /hooks/sink HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n\
        Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec();
    for _ in 0..4 {
        chunked.extend_from_slice(b"200\r\n");
        chunked.extend_from_slice(&[b'c'; 0x200]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let response = raw_http(service.addr, &chunked);
    assert_eq!(raw_status(&response), 413, "{response}");

    // A Content-Length over the limit is refused before the body is read.
    let mut declared =
        b"POST /hooks/sink HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n\
        Content-Length: 1000000\r\nConnection: close\r\n\r\n"
            .to_vec();
    declared.extend_from_slice(&[b'd'; 100]);
    let response = raw_http(service.addr, &declared);
    assert_eq!(raw_status(&response), 413, "{response}");

    // A Content-Length that claims 16 bytes in front of 2 KiB: the body is the 16 bytes,
    // the rest is never taken as part of it.
    let mut lying = b"POST /hooks/sink HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n\
        Content-Length: 16\r\nConnection: close\r\n\r\n"
        .to_vec();
    lying.extend_from_slice(&[b'e'; 2048]);
    let response = raw_http(service.addr, &lying);
    assert_eq!(raw_status(&response), 202, "{response}");
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
    let lying_id = serde_json::from_str::<Value>(body.lines().next().unwrap_or(""))
        .ok()
        .and_then(|v| v["event_id"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no event id in {response}"));
    let event = service.get_json(&format!("/api/events/{lying_id}")).await;
    assert_eq!(event["raw"], "e".repeat(16), "{event:#}");

    let mut stored: Vec<String> = service
        .events()
        .await
        .iter()
        .filter_map(|e| e["id"].as_str().map(str::to_owned))
        .collect();
    stored.sort();
    let mut expected = vec![at_limit, lying_id];
    expected.sort();
    assert_eq!(stored, expected, "only the accepted bodies are stored");
    service_answers(&service).await;
}

#[tokio::test]
async fn content_types_it_cannot_decode_get_415() {
    let data = data_dir();
    let service = Service::start_default(&shipped_rules(), data.path());

    let message = expect_error(
        service
            .post("/hooks/typeform", "image/png", vec![0x89, b'P', b'N', b'G'])
            .await,
        415,
    )
    .await;
    assert!(message.contains("image/png"), "{message}");
    assert!(service.events().await.is_empty());
}

#[tokio::test]
async fn a_signed_webhook_takes_only_deliveries_with_the_right_signature() {
    const SECRET: &str = "it-s3cret-Zq8";
    let rule = r#"name: signed
on:
  webhook:
    path: /hooks/signed
    verify:
      hmac:
        secret: ${CLIENTRULES_IT_WEBHOOK_SECRET}
        header: X-Signature
        algorithm: sha256
        encoding: hex
        prefix: "sha256="
script: |
  clients::upsert(#{ email: event.body.email, first_name: "Signed" });
"#;
    let data = data_dir();
    let rules = rules_dir(&[("signed.yaml", rule)]);
    let service = Service::start(
        rules.path(),
        data.path(),
        &[],
        &[("CLIENTRULES_IT_WEBHOOK_SECRET", SECRET)],
    );

    let body = r#"{"email": "signed@example.com"}"#;
    let sign = |secret: &str, body: &str| {
        let mut mac =
            <Hmac<sha2::Sha256> as hmac::digest::KeyInit>::new_from_slice(secret.as_bytes())
                .expect("HMAC takes any key");
        mac.update(body.as_bytes());
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    };
    let send = async |signature: Option<String>, body: &str| {
        let mut request = service
            .http
            .post(service.url("/hooks/signed"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_owned());
        if let Some(signature) = signature {
            request = request.header("X-Signature", signature);
        }
        request.send().await.expect("POST /hooks/signed failed")
    };

    let wrong = [
        None,
        Some(sign("not-the-secret", body)),
        Some("sha256=zz-not-hex".to_owned()),
        Some(sign(SECRET, body).replace("sha256=", "sha1=")),
        // Signed over other bytes than the ones sent.
        Some(sign(SECRET, r#"{"email":"signed@example.com"}"#)),
    ];
    for signature in wrong {
        let message = expect_error(send(signature.clone(), body).await, 401).await;
        assert_eq!(
            message, "unauthorized",
            "no detail is given ({signature:?})"
        );
    }
    assert!(
        service.events().await.is_empty(),
        "refused deliveries are not stored"
    );

    let id = accepted_event_id(send(Some(sign(SECRET, body)), body).await).await;
    let runs = service.wait_for_runs("rule=signed", 1).await;
    assert_eq!(runs[0]["event_id"].as_str(), Some(id.as_str()));
    assert_eq!(runs[0]["status"], "succeeded", "{:#}", runs[0]);
    assert_eq!(service.events().await.len(), 1);
    client_with_email(&service.clients(), "signed@example.com");
}

// --- 7. limits ------------------------------------------------------------------------

#[tokio::test]
async fn a_script_that_never_ends_fails_on_its_limit_while_the_service_keeps_answering() {
    let spin = r#"name: spin
on:
  webhook: {}
script: |
  loop { }
limits:
  timeout: 1s
  max_operations: 10000000000
"#;
    let spin_ops = r#"name: spin-ops
on:
  webhook: {}
script: |
  let n = 0;
  loop { n += 1; }
limits:
  timeout: 30s
  max_operations: 100000
"#;
    let data = data_dir();
    let rules = rules_dir(&[
        ("spin.yaml", spin),
        ("spin-ops.yaml", spin_ops),
        ("quick.yaml", QUICK_RULE),
    ]);
    let service = Service::start_default(rules.path(), data.path());

    let spinning = service.accept_json("/hooks/spin", "{}").await;
    service.wait_for_job_state(&spinning, "running").await;

    // While the script spins, webhooks are answered at once and other rules run.
    let asked = Instant::now();
    service
        .accept_json("/hooks/quick", r#"{"email": "quick@example.com"}"#)
        .await;
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "the webhook took {:?} to answer",
        asked.elapsed()
    );
    service_answers(&service).await;
    let quick = service.wait_for_runs("rule=quick", 1).await;
    assert_eq!(quick[0]["status"], "succeeded", "{:#}", quick[0]);

    let runs = service.wait_for_runs("rule=spin", 1).await;
    let run = &runs[0];
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(run["error"]["limit"], "timeout", "{run:#}");
    let message = run["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("timeout"), "{run:#}");
    // Where it happened, in the rule file: the `loop` line.
    assert_eq!(run["error"]["line"], 5, "{run:#}");
    let duration = run["duration_ms"].as_u64().unwrap_or(0);
    assert!((1000..5000).contains(&duration), "{run:#}");
    // A limit is no transient failure: no retry.
    assert_eq!(run["next"]["state"], "dead", "{run:#}");
    assert!(
        time_of(&quick[0], "started_at") < ended_at(run),
        "the quick rule ran while the loop was running: {:#} {run:#}",
        quick[0]
    );

    service.accept_json("/hooks/spin-ops", "{}").await;
    let runs = service.wait_for_runs("rule=spin-ops", 1).await;
    let run = &runs[0];
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(run["error"]["limit"], "max_operations", "{run:#}");
    let message = run["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("max_operations"), "{run:#}");
    assert_eq!(service.runs("rule=spin").await.len(), 1, "not retried");
}

// --- 8. validate ----------------------------------------------------------------------

#[test]
fn validate_reports_a_script_error_at_its_line_and_column_in_the_rule_file() {
    // Line 7, column 14 of the file is the `;` after `+`; inside the script it is
    // line 2, column 12.
    let broken = "name: broken
description: a rule whose script does not parse
on:
  webhook: {}
script: |
  let a = 1;
  let b = a +;
  a
";
    // A script indented by four, after a comment and a blank line: line 13, column 27
    // is the `*`.
    let deep = "name: deep
on:
  webhook: {}
vars:
  tag: x
script: |
    // a comment line first
    let fields = #{ email: \"a@b.c\" };

    if fields.email == \"\" {
        skip(\"none\");
    }
    let y = fields.email +* 2;
";
    let rules = rules_dir(&[("broken.yaml", broken), ("deep.yaml", deep)]);
    let output = validate(rules.path());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("broken.yaml:7:14"), "{stderr}");
    assert!(!stderr.contains("broken.yaml:2:"), "{stderr}");
    assert!(
        stderr.contains("let b = a +;"),
        "the source line is shown: {stderr}"
    );
    assert!(stderr.contains("deep.yaml:13:27"), "{stderr}");
    assert!(stderr.contains("2 errors"), "{stderr}");
}

#[test]
fn validate_accepts_the_shipped_rules_with_a_one_line_summary() {
    let output = validate(&shipped_rules());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let files = std::fs::read_dir(shipped_rules())
        .expect("the rules folder")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "yaml"))
        .count();
    assert!(files >= 3, "{stdout}");
    assert!(
        lines[0].starts_with(&format!("{files} rules in {files} files of ")),
        "{stdout}"
    );
    assert!(lines[0].contains(": ok"), "{stdout}");
    assert!(!stderr.contains("error"), "{stderr}");
}

#[tokio::test]
async fn a_stalled_upload_does_not_hold_up_the_stop_past_the_grace_period() {
    use tokio::io::AsyncWriteExt;
    let data = data_dir();
    let rules = rules_dir(&[("quick.yaml", QUICK_RULE)]);
    let mut service = Service::start(
        rules.path(),
        data.path(),
        &["--shutdown-grace", "2", "--body-timeout", "60s"],
        &[],
    );
    // A sender that starts a body and goes quiet.
    let mut stalled = tokio::net::TcpStream::connect(service.addr)
        .await
        .expect("cannot connect");
    stalled
        .write_all(
            b"POST /hooks/quick HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"email\":",
        )
        .await
        .expect("cannot send");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let status = service.terminate(WAIT);
    assert!(status.success(), "{status}:\n{}", service.logs());
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "the stop took {:?}:\n{}",
        started.elapsed(),
        service.logs()
    );
}
