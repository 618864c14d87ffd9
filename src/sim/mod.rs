//! `clientrules sim`: a local server of the Spectora Clients API over the embedded store,
//! for developing rules without a key and for testing the HTTP client over real sockets.
//!
//! Each API key is one company; buyers are shared between companies, contacts are not.
//! The documents, pagination, errors and rules are those of `SPECTORA_API.md`; the fault
//! switches of [`faults`] make it slow, failing or rate-limited on purpose.

pub mod faults;
mod routes;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tracing::info;

use crate::clients::Backend;
use crate::clients::embedded::EmbeddedStore;

pub use self::faults::{Fault, Faults, Paging};

/// How a simulator starts.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The API keys it accepts, one company each.
    pub keys: Vec<String>,
    /// Folder of its database; `None` keeps everything in memory.
    pub data: Option<PathBuf>,
    /// A JSON file of clients to load at start.
    pub seed: Option<PathBuf>,
    /// A wait before every answer.
    pub latency: Duration,
    /// The share of requests answered with `fail_status`, from 0 to 1.
    pub fail_rate: f64,
    pub fail_status: u16,
    /// Requests a minute for each key before answering 429; 0 for no limit.
    pub rate_limit: u32,
    /// Whether a 429 says when to come back.
    pub retry_after: bool,
}

impl SimConfig {
    /// A well-behaved simulator in memory with these keys.
    pub fn new(keys: impl IntoIterator<Item = impl Into<String>>) -> SimConfig {
        SimConfig {
            keys: keys.into_iter().map(Into::into).collect(),
            data: None,
            seed: None,
            latency: Duration::ZERO,
            fail_rate: 0.0,
            fail_status: 503,
            rate_limit: 0,
            retry_after: true,
        }
    }
}

/// What the handlers share.
#[derive(Debug)]
struct Sim {
    store: EmbeddedStore,
    /// Key to company name.
    companies: HashMap<String, String>,
    faults: Arc<Faults>,
}

/// The company name of a key: a digest, so the database never holds the key itself,
/// and the same key finds the same clients whatever the order of the keys.
pub fn company_of(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    format!("sim-{}", hex::encode(&digest[..8]))
}

/// A running simulator.
#[derive(Debug)]
pub struct SimHandle {
    pub addr: SocketAddr,
    pub faults: Arc<Faults>,
    store: EmbeddedStore,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SimHandle {
    /// The base URL to give the HTTP client.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The backend of the company of `key`, straight on the store: for tests to set up
    /// and check data without going through HTTP.
    pub fn backend(&self, key: &str) -> crate::clients::embedded::EmbeddedBackend {
        self.store.company(&company_of(key))
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Opens the store, loads the seed and binds the listener.
async fn prepare(
    config: &SimConfig,
    listen: SocketAddr,
) -> anyhow::Result<(Arc<Sim>, TcpListener)> {
    if config.keys.iter().all(|k| k.trim().is_empty()) {
        anyhow::bail!("the simulator needs at least one API key (--key KEY)");
    }
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let host = if addr.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    };
    let store = match &config.data {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the data folder {}", dir.display()))?;
            EmbeddedStore::open(&dir.join("sim.db"))?
        }
        None => EmbeddedStore::in_memory()?,
    }
    .with_image_base(&format!("http://{host}/images"));
    let companies: HashMap<String, String> = config
        .keys
        .iter()
        .map(|k| k.trim())
        .filter(|k| !k.is_empty())
        .map(|k| (k.to_owned(), company_of(k)))
        .collect();
    if let Some(seed) = &config.seed {
        let loaded = load_seed(&store, &config.keys, seed)?;
        info!(clients = loaded, file = %seed.display(), "seed clients loaded");
    }
    let faults = Arc::new(Faults::new(
        config.latency,
        config.fail_rate,
        config.fail_status,
        config.rate_limit,
        config.retry_after,
    ));
    let sim = Arc::new(Sim {
        store,
        companies,
        faults,
    });
    Ok((sim, listener))
}

/// Runs a simulator until SIGINT or SIGTERM: the `sim` command.
pub async fn run(config: SimConfig, listen: SocketAddr) -> anyhow::Result<()> {
    let (sim, listener) = prepare(&config, listen).await?;
    let addr = listener.local_addr()?;
    info!(
        address = %addr,
        keys = sim.companies.len(),
        base_url = %format!("http://{addr}"),
        "simulator listening"
    );
    axum::serve(listener, routes::router(sim))
        .with_graceful_shutdown(crate::server::shutdown_signal())
        .await
        .context("the simulator stopped")?;
    Ok(())
}

/// Starts a simulator on a thread of its own, with a runtime of its own, so that any
/// caller (a blocking test of the HTTP client, or an async one) can use it; it stops
/// when the handle is dropped.
pub fn spawn(config: SimConfig, listen: SocketAddr) -> anyhow::Result<SimHandle> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("clientrules-sim".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::Error::from(e)));
                    return;
                }
            };
            runtime.block_on(async move {
                let (sim, listener) = match prepare(&config, listen).await {
                    Ok(prepared) => prepared,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let ready = listener
                    .local_addr()
                    .map(|addr| (addr, sim.faults.clone(), sim.store.clone()))
                    .map_err(anyhow::Error::from);
                if ready_tx.send(ready).is_err() {
                    return;
                }
                let shutdown = async move {
                    let _ = stopped.await;
                };
                let _ = axum::serve(listener, routes::router(sim))
                    .with_graceful_shutdown(shutdown)
                    .await;
            });
            runtime.shutdown_timeout(Duration::from_secs(1));
        })
        .context("cannot start the simulator's thread")?;
    let (addr, faults, store) = ready_rx
        .recv()
        .context("the simulator's thread ended before it listened")??;
    Ok(SimHandle {
        addr,
        faults,
        store,
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// Loads a seed file: a JSON array of clients (attribute objects) for the first key's
/// company, or an object whose keys are API keys and whose values are such arrays.
fn load_seed(store: &EmbeddedStore, keys: &[String], path: &PathBuf) -> anyhow::Result<usize> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the seed file {}", path.display()))?;
    let document: Value = serde_json::from_str(&text)
        .with_context(|| format!("the seed file {} is not JSON", path.display()))?;
    let first = keys
        .iter()
        .map(|k| k.trim())
        .find(|k| !k.is_empty())
        .unwrap_or_default();
    let sets: Vec<(String, &Vec<Value>)> = match &document {
        Value::Array(items) => vec![(first.to_owned(), items)],
        Value::Object(map) => map
            .iter()
            .map(|(key, items)| match items {
                Value::Array(items) => Ok((key.clone(), items)),
                _ => anyhow::bail!(
                    "the seed file {}: expected an array of clients under {key:?}, found {}",
                    path.display(),
                    kind(items)
                ),
            })
            .collect::<anyhow::Result<_>>()?,
        other => anyhow::bail!(
            "the seed file {}: expected an array of clients or an object of arrays by API key, found {}",
            path.display(),
            kind(other)
        ),
    };
    let mut loaded = 0;
    for (key, items) in sets {
        if !keys.iter().any(|k| k.trim() == key) {
            anyhow::bail!(
                "the seed file {} has clients for a key that is not given with --key",
                path.display()
            );
        }
        let attributes = items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::Object(map) => Ok(map
                    .iter()
                    .filter(|(k, _)| k.as_str() != "id")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<Map<_, _>>()),
                other => anyhow::bail!(
                    "the seed file {}: item {i} should be an object of attributes, found {}",
                    path.display(),
                    kind(other)
                ),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let backend = store.company(&company_of(&key));
        // A kept database already holds the seed from an earlier start.
        let mut probe = crate::clients::ListQuery::first_page();
        probe.page_size = 1;
        let existing = backend
            .list(&probe)
            .map_err(|e| anyhow::anyhow!("cannot read the simulator's clients: {e}"))?;
        if !existing.clients.is_empty() {
            info!(
                file = %path.display(),
                "the company already has clients; the seed file is not loaded again"
            );
            continue;
        }
        let created = backend
            .create_many(&attributes)
            .map_err(|e| anyhow::anyhow!("the seed file {}: {e}", path.display()))?;
        loaded += created.len();
    }
    Ok(loaded)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
