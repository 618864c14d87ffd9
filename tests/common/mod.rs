//! What the integration tests share: the real `clientrules` binary started as a child
//! process on a free loopback port, HTTP calls to it, and the CLI run as a subprocess.
//!
//! Every child is owned by a [`Service`] guard that kills it when dropped, so no process
//! outlives the test that started it, whether the test passes or panics.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// The binary under test, built by cargo for the integration tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_clientrules");

/// How long a service may take to start listening.
pub const STARTUP: Duration = Duration::from_secs(10);

/// How long an asynchronous result (a run finishing, a process exiting) may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// The project root.
pub fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The rules folder that ships with the project.
pub fn shipped_rules() -> PathBuf {
    manifest_dir().join("rules")
}

/// The text of a file under `examples/`.
pub fn example(name: &str) -> String {
    let path = manifest_dir().join("examples").join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read the example {}: {e}", path.display()))
}

/// A command running the binary, with none of the caller's `CLIENTRULES_*` settings (or a
/// Spectora key that would switch the backend) leaking in, and without colours.
pub fn command() -> Command {
    let mut command = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if let Some(key) = key.to_str()
            && (key.starts_with("CLIENTRULES_") || key.starts_with("SPECTORA_"))
        {
            command.env_remove(key);
        }
    }
    command.env("NO_COLOR", "1");
    command.stdin(Stdio::null());
    command
}

/// A temporary folder holding the given rule files (`(file name, YAML)`).
pub fn rules_dir(files: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().expect("cannot create a temporary rules folder");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("cannot write a rule file");
    }
    dir
}

/// A fresh temporary data folder.
pub fn data_dir() -> TempDir {
    tempfile::tempdir().expect("cannot create a temporary data folder")
}

/// Removes ANSI escape sequences (`ESC [ ... letter`) from a log line.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The address in a `listening address=127.0.0.1:PORT` log line.
fn listening_address(line: &str) -> Option<SocketAddr> {
    if !line.contains("listening") {
        return None;
    }
    let start = line.find("address=")? + "address=".len();
    let token = line[start..].split_whitespace().next()?;
    token.trim_matches('"').parse().ok()
}

/// Runs a command to its end, for at most `timeout`: a command that hangs is killed and
/// fails the test instead of hanging the suite.
pub fn output_within(mut command: Command, timeout: Duration) -> Output {
    let stdout = tempfile::tempfile().expect("cannot create a file for stdout");
    let stderr = tempfile::tempfile().expect("cannot create a file for stderr");
    command
        .stdout(stdout.try_clone().expect("cannot share the stdout file"))
        .stderr(stderr.try_clone().expect("cannot share the stderr file"));
    let mut child = command.spawn().expect("cannot run clientrules");
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().expect("cannot wait for clientrules") {
            Some(status) => break status,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{command:?} did not finish within {timeout:?}");
            }
        }
    };
    let read = |mut file: std::fs::File| {
        let mut bytes = Vec::new();
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.read_to_end(&mut bytes))
            .expect("cannot read the output of clientrules");
        bytes
    };
    Output {
        status,
        stdout: read(stdout),
        stderr: read(stderr),
    }
}

/// Runs `clientrules clients list --json --data DIR` and returns the clients.
pub fn list_clients(data: &Path) -> Vec<Value> {
    let mut command = command();
    command
        .args(["clients", "list", "--json", "--data"])
        .arg(data);
    let output = output_within(command, WAIT);
    assert!(
        output.status.success(),
        "clients list failed with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    match serde_json::from_str(&stdout) {
        Ok(Value::Array(clients)) => clients,
        other => panic!("clients list --json printed no JSON array ({other:?}): {stdout}"),
    }
}

/// The one client with this email, failing the test when there is none or several.
pub fn client_with_email<'a>(clients: &'a [Value], email: &str) -> &'a Value {
    let found: Vec<&Value> = clients
        .iter()
        .filter(|c| c["email"].as_str() == Some(email))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one client with email {email}, found {}: {clients:#?}",
        found.len()
    );
    found[0]
}

/// Runs `clientrules validate DIR`.
pub fn validate(dir: &Path) -> Output {
    let mut command = command();
    command.arg("validate").arg(dir);
    output_within(command, WAIT)
}

/// Sends raw bytes as one HTTP/1.1 exchange and returns everything the server wrote
/// until it closed the connection (or went quiet for 5 s). For requests that reqwest
/// will not make: a lying `Content-Length`, a hand-made chunked body.
pub fn raw_http(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).expect("cannot connect to the service");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("cannot set a read timeout");
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .expect("cannot set a write timeout");
    // The server may answer and close before it has read all of a body it refuses.
    let _ = stream.write_all(request);
    let mut response = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&response).into_owned()
}

/// The status code of the first response in a raw HTTP exchange.
pub fn raw_status(response: &str) -> u16 {
    response
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status line in {response:?}"))
}

/// A running `clientrules serve`, killed when dropped.
#[derive(Debug)]
pub struct Service {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its data folder.
    pub data: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
    /// An HTTP client that never follows redirects nor uses a proxy.
    pub http: reqwest::Client,
    exited: Option<ExitStatus>,
    /// The thread that drains stderr into `logs`.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Service {
    /// Starts `serve` on `127.0.0.1:0` with the given rules and data folders and any extra
    /// flags and environment variables, and waits until it listens.
    pub fn start(rules: &Path, data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Service {
        let mut command = command();
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .arg("--rules")
            .arg(rules)
            .arg("--data")
            .arg(data)
            .args(extra)
            .env("CLIENTRULES_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut service = Service::spawn(command);
        service.data = data.to_path_buf();
        service
    }

    /// Starts any long-running command of the binary (its stderr piped), and waits until
    /// it logs the address it listens on.
    pub fn spawn(mut command: Command) -> Service {
        command.stdout(Stdio::null()).stderr(Stdio::piped());
        let data = PathBuf::new();
        let mut child = command.spawn().expect("cannot start clientrules");
        let stderr = child.stderr.take().expect("the child's stderr is piped");
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("cannot build the HTTP client");
        // The guard owns the child from here on: a failed start still kills it.
        let mut service = Service {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data,
            logs: Arc::new(Mutex::new(Vec::new())),
            http,
            exited: None,
            reader: None,
        };

        // Drain stderr for the whole life of the child, so that it never blocks on a
        // full pipe; keep the lines for failure messages.
        let (lines_tx, lines_rx) = mpsc::channel::<String>();
        let logs = service.logs.clone();
        service.reader = Some(std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = strip_ansi(String::from_utf8_lossy(&line).trim_end());
                        logs.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(text.clone());
                        let _ = lines_tx.send(text);
                    }
                }
            }
        }));

        let deadline = Instant::now() + STARTUP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines_rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = listening_address(&line) {
                        service.addr = addr;
                        return service;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!(
                        "clientrules serve did not log `listening` within {STARTUP:?}:\n{}",
                        service.logs()
                    )
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = service.wait_exit(Duration::from_secs(5));
                    panic!(
                        "clientrules serve exited with {status:?} before listening:\n{}",
                        service.logs()
                    )
                }
            }
        }
    }

    /// Starts `serve` with no extra flags.
    pub fn start_default(rules: &Path, data: &Path) -> Service {
        Service::start(rules, data, &[], &[])
    }

    /// Everything the service logged so far, one line each, without colours.
    pub fn logs(&self) -> String {
        self.logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }

    /// Waits (at most [`WAIT`]) for a line of the log that contains `text`: the log is
    /// read from the service's output as it comes, a little after the service wrote it.
    pub async fn wait_for_log(&self, text: &str) -> bool {
        let deadline = std::time::Instant::now() + WAIT;
        while std::time::Instant::now() < deadline {
            if self.logs().contains(text) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The URL of a path on the service.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Waits at most `timeout` for the child to exit.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exited.is_some() {
            return self.exited;
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.exited = Some(status);
                    self.finish_logs();
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => return None,
            }
        }
    }

    /// Once the child has exited, waits (briefly) for its last log lines to be read.
    fn finish_logs(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.reader.as_ref().is_some_and(|r| !r.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(reader) = self.reader.take_if(|r| r.is_finished()) {
            let _ = reader.join();
        }
    }

    /// Sends SIGTERM and waits (at most `timeout`) for the process to exit.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill -TERM failed: {status}");
        match self.wait_exit(timeout) {
            Some(status) => status,
            None => panic!(
                "clientrules serve did not exit within {timeout:?} of SIGTERM:\n{}",
                self.logs()
            ),
        }
    }

    /// Kills the process with SIGKILL, as a crash or an OOM kill would, and reaps it.
    pub fn kill(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
            self.finish_logs();
        }
    }

    /// POSTs a body with a content type.
    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path} failed: {e}\n{}", self.logs()))
    }

    /// POSTs a JSON text.
    pub async fn post_json(&self, path: &str, body: &str) -> reqwest::Response {
        self.post(path, "application/json", body.to_owned()).await
    }

    /// POSTs a JSON body and expects 202 with an event id; returns the id.
    pub async fn accept_json(&self, path: &str, body: &str) -> String {
        let response = self.post_json(path, body).await;
        accepted_event_id(response).await
    }

    /// GETs a path and returns its JSON, expecting 200.
    pub async fn get_json(&self, path: &str) -> Value {
        let response = self
            .http
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} failed: {e}\n{}", self.logs()));
        let status = response.status();
        let text = response.text().await.expect("cannot read the response");
        assert_eq!(status, 200, "GET {path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: {e}: {text}"))
    }

    /// The run records of `/api/runs?{query}`, newest first.
    pub async fn runs(&self, query: &str) -> Vec<Value> {
        let value = self.get_json(&format!("/api/runs?{query}")).await;
        value["runs"]
            .as_array()
            .unwrap_or_else(|| panic!("/api/runs without a runs list: {value}"))
            .clone()
    }

    /// The events of `/api/events`, newest first.
    pub async fn events(&self) -> Vec<Value> {
        let value = self.get_json("/api/events").await;
        value["events"]
            .as_array()
            .unwrap_or_else(|| panic!("/api/events without an events list: {value}"))
            .clone()
    }

    /// Waits until `/api/runs?{query}` lists at least `n` runs, and returns them.
    pub async fn wait_for_runs(&self, query: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let runs = self.runs(query).await;
            if runs.len() >= n {
                return runs;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {WAIT:?} waiting for {n} runs of /api/runs?{query}; have {}: {runs:#?}\n{}",
                runs.len(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the job of an event is in `state` (`pending`, `running`, `done`, `dead`).
    pub async fn wait_for_job_state(&self, event_id: &str, state: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let events = self.events().await;
            let current = events
                .iter()
                .find(|e| e["id"].as_str() == Some(event_id))
                .and_then(|e| e["jobs"][0]["state"].as_str().map(str::to_owned));
            if current.as_deref() == Some(state) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {WAIT:?} waiting for the job of {event_id} to be {state}; it is {current:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The clients of the service's data folder, through the CLI.
    pub fn clients(&self) -> Vec<Value> {
        list_clients(&self.data)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Expects a 202 answer with `{"event_id": "...", "duplicate": false}`; returns the id.
pub async fn accepted_event_id(response: reqwest::Response) -> String {
    let status = response.status();
    let text = response.text().await.expect("cannot read the response");
    assert_eq!(status, 202, "expected 202 Accepted, got {status}: {text}");
    let value: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("202 body is not JSON: {e}: {text}"));
    assert_eq!(value["duplicate"], Value::Bool(false), "{text}");
    value["event_id"]
        .as_str()
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| panic!("202 body without an event_id: {text}"))
        .to_owned()
}

/// Expects an error answer with this status and a JSON `{"error": "..."}` body; returns
/// the message.
pub async fn expect_error(response: reqwest::Response, status: u16) -> String {
    let got = response.status();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let text = response.text().await.expect("cannot read the response");
    assert_eq!(got, status, "expected {status}, got {got}: {text}");
    assert!(
        content_type.starts_with("application/json"),
        "an error answer is JSON, found content type {content_type:?}: {text}"
    );
    let value: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("error body is not JSON: {e}: {text}"));
    value["error"]
        .as_str()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| panic!("error body without an `error` message: {text}"))
        .to_owned()
}

/// The tags of a client as strings.
pub fn tags_of(client: &Value) -> Vec<String> {
    client["tags"]
        .as_array()
        .map(|tags| {
            tags.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
