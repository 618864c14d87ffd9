//! `clientrules serve` on the Spectora backend: the real binary, configured with a
//! simulator's URL and key, receives a shipped example webhook; the client is then read
//! from the simulator with a plain HTTP request, not through the client under test.

// A failed unwrap is a failed test, with the value in its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use clientrules::sim::{self, SimConfig, SimHandle};
use serde_json::Value;

use common::{Service, data_dir, example, shipped_rules};

const KEY: &str = "e2e-test-key-5b1f";

/// The contacts the simulator holds for `KEY`, read over plain HTTP.
async fn contacts(sim: &SimHandle) -> Vec<Value> {
    let response = reqwest::Client::new()
        .get(format!("{}/v2/contacts?page%5Bsize%5D=200", sim.base_url()))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("GET /v2/contacts failed");
    assert_eq!(response.status(), 200);
    let document: Value = response.json().await.expect("a JSON:API document");
    document["data"].as_array().cloned().unwrap_or_default()
}

fn requests(sim: &SimHandle) -> (u64, u64, u64) {
    let counts = sim.faults.counts();
    let get = |name: &str| counts.get(name).copied().unwrap_or(0);
    (
        get("GET /v2/contacts") + get("GET /v2/contacts/{id}"),
        get("POST /v2/contacts"),
        get("PATCH /v2/contacts/{id}"),
    )
}

#[tokio::test]
async fn a_shipped_webhook_creates_its_client_in_the_spectora_api() {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let sim = sim::spawn(SimConfig::new([KEY]), addr).unwrap();
    let data = data_dir();
    let base = sim.base_url();
    let service = Service::start(
        &shipped_rules(),
        data.path(),
        &[],
        &[("SPECTORA_API_KEY", KEY), ("SPECTORA_BASE_URL", &base)],
    );
    assert!(
        service.logs().contains("through the Spectora API"),
        "{}",
        service.logs()
    );
    assert!(!service.logs().contains(KEY), "the key is in the logs");

    // A new lead: one search for the email, one create, and its tag in the same write.
    service
        .accept_json("/hooks/typeform", &example("typeform.json"))
        .await;
    let runs = service.wait_for_runs("rule=typeform", 1).await;
    assert_eq!(runs[0]["status"], "succeeded", "{:#}", runs[0]);
    let found = contacts(&sim).await;
    assert_eq!(found.len(), 1, "{found:#?}");
    let attributes = &found[0]["attributes"];
    assert_eq!(attributes["email"], "jane.baker@example.com");
    assert_eq!(attributes["first_name"], "Jane");
    assert_eq!(attributes["last_name"], "Baker");
    assert_eq!(attributes["phone"], "+13035550111");
    assert_eq!(attributes["tags"], serde_json::json!(["typeform-lead"]));
    let after_create = requests(&sim);
    assert_eq!(after_create.1, 1, "one create: {:?}", sim.faults.counts());

    // Typeform's own redelivery (the same event_id) is answered as a duplicate.
    let again = service
        .post_json("/hooks/typeform", &example("typeform.json"))
        .await;
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["duplicate"], true);

    // The same answers in a new response change nothing, so the run only reads.
    sim.faults.reset_counts();
    let resent = example("typeform.json")
        .replace("01JEB7Q4XK9M2TNW5RZ8C3VHDA", "01JEB7Q4XK9M2TNW5RZ8C3VHDB");
    service.accept_json("/hooks/typeform", &resent).await;
    let runs = service.wait_for_runs("rule=typeform", 2).await;
    assert!(runs.iter().all(|r| r["status"] == "succeeded"), "{runs:#?}");
    let (reads, creates, updates) = requests(&sim);
    assert_eq!((creates, updates), (0, 0), "{:?}", sim.faults.counts());
    assert_eq!(reads, 1, "one search: {:?}", sim.faults.counts());

    // A new phone number: one search and one update, nothing else.
    sim.faults.reset_counts();
    let changed = example("typeform.json")
        .replace("+13035550111", "+13035550199")
        .replace("01JEB7Q4XK9M2TNW5RZ8C3VHDA", "01JEB7Q4XK9M2TNW5RZ8C3VHDC");
    assert_ne!(changed, example("typeform.json"));
    service.accept_json("/hooks/typeform", &changed).await;
    let runs = service.wait_for_runs("rule=typeform", 3).await;
    assert!(runs.iter().all(|r| r["status"] == "succeeded"), "{runs:#?}");
    let (reads, creates, updates) = requests(&sim);
    assert_eq!(
        (reads, creates, updates),
        (1, 0, 1),
        "{:?}",
        sim.faults.counts()
    );
    let found = contacts(&sim).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["attributes"]["phone"], "+13035550199");
}

#[tokio::test]
async fn a_wrong_key_fails_the_run_without_a_retry_and_without_the_key_in_the_record() {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let sim = sim::spawn(SimConfig::new([KEY]), addr).unwrap();
    let data = data_dir();
    let base = sim.base_url();
    let wrong = "wrong-key-abcdef-123456";
    let service = Service::start(
        &shipped_rules(),
        data.path(),
        &[],
        &[("SPECTORA_API_KEY", wrong), ("SPECTORA_BASE_URL", &base)],
    );
    service
        .accept_json("/hooks/typeform", &example("typeform.json"))
        .await;
    let runs = service.wait_for_runs("rule=typeform", 1).await;
    assert_eq!(runs[0]["status"], "failed", "{:#}", runs[0]);
    let record = runs[0].to_string();
    assert!(record.contains("401"), "{record}");
    assert!(
        !record.contains(wrong),
        "the key is in the run record: {record}"
    );
    assert!(!service.logs().contains(wrong), "the key is in the logs");
    assert!(contacts(&sim).await.is_empty());
}

const PHOTO_RULE: &str = r#"name: photo
on:
  webhook: {}
script: |
  let client = clients::upsert(#{ email: event.body.email, first_name: "Pat" });
  for file in event.files {
      if file.field == "photo" { clients::set_image(client, file); }
  }
"#;

/// Posts a multipart form with an email and a file in the `photo` part.
async fn post_photo(service: &Service, email: &str, filename: &str, bytes: Vec<u8>) -> String {
    let part = reqwest::multipart::Part::bytes(bytes)
        .file_name(filename.to_owned())
        .mime_str("application/octet-stream")
        .unwrap();
    let form = reqwest::multipart::Form::new()
        .text("email", email.to_owned())
        .part("photo", part);
    let response = service
        .http
        .post(service.url("/hooks/photo"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    common::accepted_event_id(response).await
}

#[tokio::test]
async fn an_uploaded_photo_becomes_the_clients_image_byte_for_byte() {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let sim = sim::spawn(SimConfig::new([KEY]), addr).unwrap();
    let rules = common::rules_dir(&[("photo.yaml", PHOTO_RULE)]);
    let data = data_dir();
    let base = sim.base_url();
    let service = Service::start(
        rules.path(),
        data.path(),
        &[],
        &[("SPECTORA_API_KEY", KEY), ("SPECTORA_BASE_URL", &base)],
    );
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend((0..=255u8).rev().cycle().take(5000));
    post_photo(&service, "pat@example.com", "front door.png", png.clone()).await;
    let runs = service.wait_for_runs("rule=photo", 1).await;
    assert_eq!(runs[0]["status"], "succeeded", "{:#}", runs[0]);
    let found = contacts(&sim).await;
    assert_eq!(found.len(), 1);
    let url = found[0]["attributes"]["image_url"]
        .as_str()
        .unwrap()
        .to_owned();
    let served = reqwest::get(&url).await.unwrap();
    assert_eq!(served.status(), 200, "{url}");
    assert_eq!(
        served.headers()["content-type"].to_str().unwrap(),
        "image/png"
    );
    assert_eq!(served.bytes().await.unwrap().to_vec(), png);

    // A text file named like an image never leaves the service.
    sim.faults.reset_counts();
    post_photo(
        &service,
        "pat@example.com",
        "sneaky.png",
        b"not an image".to_vec(),
    )
    .await;
    let runs = service.wait_for_runs("rule=photo", 2).await;
    let failed = runs.iter().find(|r| r["status"] == "failed").unwrap();
    let record = failed.to_string();
    assert!(record.contains("not a JPEG, PNG or GIF"), "{record}");
    assert_eq!(sim.faults.counts().get("PATCH /v2/contacts/{id}"), None);
}

#[test]
fn the_sim_command_serves_seeded_clients_to_the_clients_command() {
    let dir = data_dir();
    let seed = dir.path().join("seed.json");
    std::fs::write(
        &seed,
        r#"[
            { "email": "ann@example.com", "first_name": "Ann", "last_name": "Lee", "tags": ["vip"] },
            { "first_name": "Bo", "phone": "+13035550100", "x_crm_id": 42 }
        ]"#,
    )
    .unwrap();
    let mut command = common::command();
    command
        .args(["sim", "--listen", "127.0.0.1:0", "--key", KEY, "--seed"])
        .arg(&seed)
        .env("CLIENTRULES_LOG", "info");
    let sim = Service::spawn(command);
    assert!(sim.logs().contains("seed clients loaded"), "{}", sim.logs());

    let mut list = common::command();
    list.args(["clients", "list", "--json", "--data"])
        .arg(dir.path().join("service"))
        .env("SPECTORA_API_KEY", KEY)
        .env("SPECTORA_BASE_URL", format!("http://{}", sim.addr));
    let output = common::output_within(list, common::WAIT);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let clients: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(clients.len(), 2, "{clients:#?}");
    let ann = common::client_with_email(&clients, "ann@example.com");
    assert_eq!(ann["tags"], serde_json::json!(["vip"]));
    assert!(ann["buyer_id"].as_str().is_some(), "{ann:#}");
    let bo = clients.iter().find(|c| c["first_name"] == "Bo").unwrap();
    assert_eq!(bo["x_crm_id"], 42);

    // A seed file that is not what it should be stops the simulator with the reason.
    std::fs::write(&seed, r#"{ "unknown-key": [] }"#).unwrap();
    let mut bad = common::command();
    bad.args(["sim", "--listen", "127.0.0.1:0", "--key", KEY, "--seed"])
        .arg(&seed);
    let output = common::output_within(bad, common::WAIT);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("a key that is not given with --key"),
        "{stderr}"
    );
}
