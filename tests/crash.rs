//! Crash safety: the service under concurrent deliveries is killed with SIGKILL ten
//! times at random moments and restarted on the same data folder. Every delivery that
//! was answered 2xx must end up processed, and no client may exist twice.

// A failed unwrap is a failed test, with the value in its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Service, data_dir, list_clients, rules_dir};

const RULE: &str = r#"name: crash
on:
  webhook: {}
script: |
  clients::upsert(#{ email: event.body.email, first_name: "Crash", tags: ["crash-test"] });
"#;

/// Senders at once, and the most deliveries each sends in one round.
const SENDERS: usize = 8;
const PER_SENDER: usize = 40;
const ROUNDS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_delivery_answered_2xx_survives_ten_sigkills() {
    let rules = rules_dir(&[("crash.yaml", RULE)]);
    let data = data_dir();
    let accepted: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut refused = 0usize;

    for round in 0..ROUNDS {
        let mut service = Service::start_default(rules.path(), data.path());
        let stop = Arc::new(AtomicBool::new(false));
        let url = service.url("/hooks/crash");
        let mut senders = Vec::new();
        for sender in 0..SENDERS {
            let (stop, accepted, url) = (stop.clone(), accepted.clone(), url.clone());
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .no_proxy()
                .build()
                .unwrap();
            senders.push(tokio::spawn(async move {
                let mut failures = 0usize;
                for i in 0..PER_SENDER {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let email = format!("r{round}-s{sender}-{i}@example.com");
                    let sent = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(format!(r#"{{"email": "{email}"}}"#))
                        .send()
                        .await;
                    match sent {
                        Ok(response) if response.status().is_success() => {
                            accepted.lock().unwrap().insert(email);
                        }
                        _ => failures += 1,
                    }
                }
                failures
            }));
        }
        // A random moment: early in the first deliveries, or well into them.
        tokio::time::sleep(Duration::from_millis(fastrand::u64(30..400))).await;
        service.kill();
        stop.store(true, Ordering::Relaxed);
        for sender in senders {
            refused += sender.await.unwrap();
        }
    }

    let accepted = accepted.lock().unwrap().clone();
    assert!(
        accepted.len() >= ROUNDS,
        "too few deliveries were accepted to test anything: {}",
        accepted.len()
    );

    // The last start runs everything left over.
    let service = Service::start_default(rules.path(), data.path());
    let deadline = Instant::now() + Duration::from_secs(90);
    let clients = loop {
        let clients = list_clients(data.path());
        let emails: BTreeSet<String> = clients
            .iter()
            .filter_map(|c| c["email"].as_str().map(str::to_owned))
            .collect();
        let missing: Vec<&String> = accepted.difference(&emails).collect();
        if missing.is_empty() {
            break clients;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} accepted deliveries never became clients, e.g. {:?}\n{}",
            missing.len(),
            accepted.len(),
            &missing[..missing.len().min(5)],
            service.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // No client twice, whatever ran twice.
    let mut seen = BTreeSet::new();
    for client in &clients {
        let email = client["email"].as_str().unwrap().to_owned();
        assert!(seen.insert(email.clone()), "{email} exists twice");
    }
    eprintln!(
        "{} deliveries accepted and processed across {ROUNDS} kills ({refused} not answered 2xx)",
        accepted.len()
    );
}
