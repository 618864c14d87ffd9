//! Hostile input: values nested past what a stack or a parser can take, tag lists made to
//! be slow, forged forwarding headers, and rule files from odd editors. Each must end in
//! a clear refusal while the service keeps working.

// A failed unwrap is a failed test, with the value in its message.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Service, data_dir, output_within, rules_dir};

const DEEP: &str = r#"name: deep
on:
  webhook: {}
script: |
  let a = [];
  for i in 0..6000 { a = [a]; }
  let text = json::to_string(a);
  log::info(`built ${text.len()} characters`);
limits:
  timeout: 60s
  max_operations: 1000000000
"#;

#[test]
fn a_script_nesting_values_thousands_deep_does_not_bring_the_process_down() {
    let rules = rules_dir(&[("deep.yaml", DEEP)]);
    let data = data_dir();
    let event = data.path().join("event.yaml");
    std::fs::write(&event, "body: {}\n").unwrap();
    let mut command = common::command();
    command
        .args(["run", "deep", "--event"])
        .arg(&event)
        .arg("--rules")
        .arg(rules.path())
        .arg("--data")
        .arg(data.path());
    let output = output_within(command, std::time::Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&output.stdout);
    // An exit code, not a signal: the process ended on its own terms.
    assert!(
        output.status.code().is_some(),
        "{:?}: {stdout}",
        output.status
    );
    assert!(stdout.starts_with("rule deep: "), "{stdout}");
}

const DEEP_CLIENT: &str = r#"name: deep-client
on:
  webhook: {}
script: |
  let a = [];
  for i in 0..40 { a = [a]; }
  clients::create(#{ email: event.body.email, first_name: "Deep", junk: a });
"#;

const MANY_TAGS: &str = r#"name: many-tags
on:
  webhook: {}
script: |
  let c = clients::upsert(#{ email: event.body.email, first_name: "Tag" });
  clients::tag(c, event.body.tags);
"#;

#[tokio::test]
async fn values_too_deep_or_too_many_are_refused_and_the_store_stays_readable() {
    let rules = rules_dir(&[
        ("deep-client.yaml", DEEP_CLIENT),
        ("many-tags.yaml", MANY_TAGS),
    ]);
    let data = data_dir();
    let service = Service::start_default(rules.path(), data.path());

    // A body nested past 64 levels is refused at the door, JSON or form.
    let deep_json = format!("{}1{}", "[".repeat(100), "]".repeat(100));
    let response = service.post_json("/hooks/deep-client", &deep_json).await;
    assert_eq!(response.status(), 400);
    let text = response.text().await.unwrap();
    assert!(text.contains("at most 64 levels"), "{text}");
    // Form keys nest only so deep; the rest of the key is kept as it was sent, so the
    // delivery is stored whole.
    let deep_form = format!("email=form%40example.com&a{}=1", "[b]".repeat(100));
    let response = service
        .post(
            "/hooks/deep-client",
            "application/x-www-form-urlencoded",
            deep_form,
        )
        .await;
    assert_eq!(response.status(), 202);

    // An attribute nested 40 deep is refused; the client store stays readable.
    service
        .accept_json("/hooks/deep-client", r#"{"email": "deep@example.com"}"#)
        .await;
    let runs = service.wait_for_runs("rule=deep-client", 1).await;
    assert_eq!(runs[0]["status"], "failed", "{:#}", runs[0]);
    assert!(
        runs[0]["error"].to_string().contains("levels deep"),
        "{:#}",
        runs[0]
    );

    // Tags: a thousand are fine and quick; one more is refused.
    let tags: Vec<String> = (0..1000).map(|i| format!("t{i}")).collect();
    let body = serde_json::json!({ "email": "tags@example.com", "tags": tags }).to_string();
    service.accept_json("/hooks/many-tags", &body).await;
    let runs = service.wait_for_runs("rule=many-tags", 1).await;
    assert_eq!(runs[0]["status"], "succeeded", "{:#}", runs[0]);
    let tags: Vec<String> = (0..1001).map(|i| format!("u{i}")).collect();
    let body = serde_json::json!({ "email": "tags2@example.com", "tags": tags }).to_string();
    service.accept_json("/hooks/many-tags", &body).await;
    let runs = service.wait_for_runs("rule=many-tags", 2).await;
    let failed = runs.iter().find(|r| r["status"] == "failed").unwrap();
    assert!(
        failed["error"].to_string().contains("at most 1000"),
        "{failed:#}"
    );

    let clients = service.clients();
    assert_eq!(clients.len(), 2, "{clients:#?}");
    let tagged = common::client_with_email(&clients, "tags@example.com");
    assert_eq!(tagged["tags"].as_array().unwrap().len(), 1000);
}

const GUARDED: &str = r#"name: guarded
on:
  webhook:
    verify:
      allow_ips: [10.9.9.9]
script: |
  log::info("in");
"#;

async fn post_from(service: &Service, forwarded: &str) -> u16 {
    service
        .http
        .post(service.url("/hooks/guarded"))
        .header("content-type", "application/json")
        .header("x-forwarded-for", forwarded)
        .body("{}")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn forwarded_addresses_are_believed_only_as_far_as_trusted_proxies_vouch() {
    let rules = rules_dir(&[("guarded.yaml", GUARDED)]);
    let data = data_dir();
    let service = Service::start(
        rules.path(),
        data.path(),
        &["--trusted-proxy", "127.0.0.1"],
        &[],
    );
    assert_eq!(post_from(&service, "10.9.9.9").await, 202);
    assert_eq!(post_from(&service, "203.0.113.5, 10.9.9.9").await, 202);
    // The sender the proxy saw is the last entry: what stands before it is the sender's
    // own claim, and an entry that is no address ends the trust.
    for forged in [
        "10.9.9.9, 203.0.113.5",
        "10.9.9.9, 203.0.113.5:4711",
        "10.9.9.9, [2001:db8::1]:443",
        "10.9.9.9, unknown",
        "10.9.9.9,",
    ] {
        assert_eq!(post_from(&service, forged).await, 401, "{forged}");
    }

    // The admin API answers loopback senders only, behind the proxy too.
    let status = |forwarded: &'static str| {
        let request = service
            .http
            .get(service.url("/api/rules"))
            .header("x-forwarded-for", forwarded);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("203.0.113.66").await, 403);
    assert_eq!(status("127.0.0.1").await, 200);
}

#[tokio::test]
async fn an_event_is_replayed_only_for_a_rule_that_took_it() {
    let rules = rules_dir(&[
        ("guarded.yaml", GUARDED),
        (
            "open.yaml",
            "name: open\non:\n  webhook: {}\nscript: |\n  log::info(\"open\");\n",
        ),
    ]);
    let data = data_dir();
    let service = Service::start_default(rules.path(), data.path());
    let event = service.accept_json("/hooks/open", "{}").await;
    let replay = |rule: &'static str| {
        let url = service.url(&format!("/api/events/{event}/replay?rule={rule}"));
        let http = service.http.clone();
        async move { http.post(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(replay("guarded").await, 404);
    assert_eq!(replay("open").await, 202);
}

#[test]
fn a_rule_file_with_a_byte_order_mark_loads() {
    let text = format!(
        "\u{feff}{}",
        "name: bom\non:\n  webhook: {}\nscript: |\n  log::info(\"x\");\n"
    );
    let rules = rules_dir(&[("bom.yaml", &text)]);
    let output = common::validate(rules.path());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn an_empty_admin_token_stops_the_service_with_the_reason() {
    let rules = rules_dir(&[("guarded.yaml", GUARDED)]);
    let data = data_dir();
    let mut command = common::command();
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--rules"])
        .arg(rules.path())
        .arg("--data")
        .arg(data.path())
        .env("CLIENTRULES_ADMIN_TOKEN", "");
    let output = output_within(command, common::WAIT);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("admin token is set but empty"), "{stderr}");
}

#[tokio::test]
async fn a_body_that_trickles_in_is_cut_off_with_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rules = rules_dir(&[("guarded.yaml", GUARDED)]);
    let data = data_dir();
    let service = Service::start(rules.path(), data.path(), &["--body-timeout", "1s"], &[]);
    let mut stream = tokio::net::TcpStream::connect(service.addr).await.unwrap();
    stream
        .write_all(
            b"POST /hooks/guarded HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"a\":",
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await;
    assert!(read.is_ok(), "no answer within 10 s");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

/// Reads what the server sends until it closes the connection, within `limit`.
async fn read_until_closed(
    stream: &mut tokio::net::TcpStream,
    limit: std::time::Duration,
) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    match tokio::time::timeout(limit, stream.read_to_end(&mut answer)).await {
        Ok(_) => Some(String::from_utf8_lossy(&answer).into_owned()),
        Err(_) => None,
    }
}

#[tokio::test]
async fn headers_that_trickle_in_or_never_come_are_cut_off() {
    use tokio::io::AsyncWriteExt;
    let rules = rules_dir(&[("guarded.yaml", GUARDED)]);
    let data = data_dir();
    let service = Service::start(rules.path(), data.path(), &["--header-timeout", "1s"], &[]);
    let limit = std::time::Duration::from_secs(8);
    // A connection that sends nothing at all...
    let mut silent = tokio::net::TcpStream::connect(service.addr).await.unwrap();
    // ...and one that starts a request and never finishes its headers.
    let mut slow = tokio::net::TcpStream::connect(service.addr).await.unwrap();
    slow.write_all(b"POST /hooks/guarded HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    assert!(
        read_until_closed(&mut silent, limit).await.is_some(),
        "a silent connection was kept open"
    );
    assert!(
        read_until_closed(&mut slow, limit).await.is_some(),
        "a connection that never finished its headers was kept open"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(6));
    // Senders that do send their request are served as before.
    let response = service
        .post_json("/hooks/guarded", r#"{"email":"a@example.com"}"#)
        .await;
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn a_delivery_for_a_rule_that_failed_to_load_is_refused_so_that_it_is_sent_again() {
    let broken = "name: broken\non:\n  webhook:\n    verify:\n      token:\n        header: X-Token\n        value: ${HOSTILE_TEST_UNSET_SECRET}\nscript: |\n  log::info(\"x\");\n";
    let rules = rules_dir(&[("broken.yaml", broken), ("guarded.yaml", GUARDED)]);
    let data = data_dir();
    let service = Service::start_default(rules.path(), data.path());
    let response = service.post_json("/hooks/broken", "{}").await;
    assert_eq!(response.status(), 503, "{}", service.logs());
    assert!(response.headers().contains_key("retry-after"));
    // A path no rule ever meant is still unknown.
    let response = service.post_json("/hooks/nothing-here", "{}").await;
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn reading_a_rule_file_does_not_reload_the_rules() {
    let rules = rules_dir(&[("guarded.yaml", GUARDED)]);
    let data = data_dir();
    let service = Service::start_default(rules.path(), data.path());
    for _ in 0..3 {
        let _ = std::fs::read_to_string(rules.path().join("guarded.yaml")).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let reloads = service.logs().matches("reloading").count();
    assert_eq!(reloads, 0, "{}", service.logs());

    // A real edit still reloads.
    let edited = GUARDED.replace("log::info(\"in\");", "log::info(\"edited\");");
    std::fs::write(rules.path().join("guarded.yaml"), edited).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !service.logs().contains("rule files changed; reloading") {
        assert!(std::time::Instant::now() < deadline, "{}", service.logs());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let reloads = service
        .logs()
        .matches("rule files changed; reloading")
        .count();
    assert_eq!(reloads, 1, "{}", service.logs());
}

/// A rule whose script keeps 300 strings of about 3.9 MB alive at once: about 1.2 GB
/// when nothing stops it, past the address space the test gives the service.
fn hoarding_rule() -> String {
    let mut script = String::from(
        "  let base = \"x\";\n  for i in 0..21 { base += base; }\n  base += base.sub_string(0, 1800000);\n",
    );
    for i in 1..=300 {
        script.push_str(&format!("  let v{i} = base + \"{i}\";\n"));
    }
    format!(
        "name: hoard\non:\n  webhook: {{}}\nscript: |\n{script}limits:\n  max_memory: 64MiB\n  timeout: 60s\n"
    )
}

const LIGHT: &str = r#"name: light
on:
  webhook: {}
script: |
  log::info("still here");
"#;

/// `serve` with one worker under `ulimit -v`: a run that allocated without bound would
/// end the service, never the machine, and the test would see it gone.
fn serve_in_bounded_address_space(rules: &std::path::Path, data: &std::path::Path) -> Service {
    // The script threads' stacks are reserved address space (512 MiB each, see
    // `script::run`); about 2.4 GiB leaves room for them and for a few hundred MiB of
    // data, not for the hoard.
    const ADDRESS_SPACE_KIB: u32 = 2_500_000;
    let binary = common::command();
    let mut command = std::process::Command::new("sh");
    command
        .arg("-c")
        .arg(format!(
            "ulimit -v {ADDRESS_SPACE_KIB} && exec \"$0\" \"$@\""
        ))
        .arg(binary.get_program())
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", "1"])
        .arg("--rules")
        .arg(rules)
        .arg("--data")
        .arg(data)
        .env("CLIENTRULES_LOG", "info")
        .stdin(std::process::Stdio::null());
    for (key, value) in binary.get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    let mut service = Service::spawn(command);
    service.data = data.to_path_buf();
    service
}

#[tokio::test]
async fn a_script_holding_too_much_memory_fails_on_max_memory_while_the_service_keeps_answering() {
    let hoard = hoarding_rule();
    let rules = rules_dir(&[("hoard.yaml", &hoard), ("light.yaml", LIGHT)]);
    let data = data_dir();
    let service = serve_in_bounded_address_space(rules.path(), data.path());

    service.accept_json("/hooks/hoard", "{}").await;
    let runs = service.wait_for_runs("rule=hoard", 1).await;
    let run = &runs[0];
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(run["error"]["limit"], "max_memory", "{run:#}");
    let message = run["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.starts_with("limit max_memory reached: the script held more than 64MiB"),
        "{run:#}"
    );
    // A limit is no transient failure: the job is not tried again.
    assert_eq!(run["next"]["state"], "dead", "{run:#}");

    // The service is still up, answers, and runs the next rule.
    let health = service
        .http
        .get(service.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    service.accept_json("/hooks/light", "{}").await;
    let runs = service.wait_for_runs("rule=light", 1).await;
    assert_eq!(runs[0]["status"], "succeeded", "{:#}", runs[0]);
    assert_eq!(service.runs("rule=hoard").await.len(), 1, "not retried");
}
