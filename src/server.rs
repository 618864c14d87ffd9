//! `serve`: the store, the rules, the workers and the HTTP routes in one process.

use std::fs::File;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use tracing::info;

pub use crate::app::AppState;
use crate::clients::Backend;
use crate::clients::embedded::EmbeddedStore;
use crate::clients::spectora::SpectoraClient;
use crate::rules::load;
use crate::settings::{BackendKind, Settings, Workspace};
use crate::store::ingest::CommitMode;
use crate::store::{Grouping, SqliteStore, Store};
use crate::triggers::decode::DecodeLimits;
use crate::worker::{self, Pool, SharedRules, Wake};

/// The router of the service: admin routes, then every other path to the webhooks.
pub fn router(app: Arc<AppState>) -> Router {
    crate::admin::routes(app.clone())
        .fallback(crate::triggers::webhook::handle)
        .with_state(app)
}

/// The least time requests in flight get to finish at a stop, whatever the grace period:
/// an event stored and not yet answered would be sent again.
const MIN_DRAIN: Duration = Duration::from_secs(2);

/// Opens the data folder: the store, whose writes are grouped into commits as told,
/// and the embedded clients in the same file.
pub fn open_data(
    workspace: &Workspace,
    grouping: Grouping,
) -> anyhow::Result<(Arc<SqliteStore>, Arc<dyn Backend>)> {
    std::fs::create_dir_all(&workspace.data)
        .with_context(|| format!("cannot create the data folder {}", workspace.data.display()))?;
    let path = workspace.store_path();
    let store = SqliteStore::open_with(&path, grouping)?;
    let clients = EmbeddedStore::open(&path)
        .with_context(|| format!("cannot open the client store {}", path.display()))?;
    let backend: Arc<dyn Backend> = match workspace.backend.kind() {
        BackendKind::Embedded => Arc::new(clients.company("default")),
        BackendKind::Spectora => {
            let config = workspace.backend.spectora()?;
            let client = SpectoraClient::new(&config)
                .with_context(|| "cannot set up the Spectora API client".to_owned())?;
            info!(base_url = %client.base_url(), requests_per_minute = config.requests_per_minute, "clients are read and written through the Spectora API");
            Arc::new(client)
        }
    };
    Ok((Arc::new(store), backend))
}

/// Runs the service until SIGINT or SIGTERM.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let signal = shutdown_signal();
    // A token set to nothing is a mistake (an unset secret in a deployment), and taken
    // as given it would lock every caller out.
    if settings
        .admin_token
        .as_deref()
        .is_some_and(|t| t.trim().is_empty())
    {
        anyhow::bail!(
            "the admin token is set but empty: give CLIENTRULES_ADMIN_TOKEN a value, or unset \
             it to let only loopback callers use the admin API"
        );
    }
    std::fs::create_dir_all(&settings.workspace.data).with_context(|| {
        format!(
            "cannot create the data folder {}",
            settings.workspace.data.display()
        )
    })?;
    // One service a data folder: SQLite is a single-node store.
    let lock_path = settings.workspace.data.join("serve.lock");
    let lock = File::create(&lock_path)
        .with_context(|| format!("cannot create {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        anyhow::bail!(
            "another clientrules serve is using the data folder {}",
            settings.workspace.data.display()
        );
    }

    crate::text::set_default_region(&settings.workspace.phone_region)?;
    // Rules are loaded by the reloader, which keeps each file's last good version for
    // the reloads that follow.
    let reloader = Arc::new(crate::rules::reload::Reloader::new(
        &settings.workspace.rules,
        load::process_env,
    ));
    let rules = reloader.load().with_context(|| {
        format!(
            "cannot read the rules folder {}",
            settings.workspace.rules.display()
        )
    })?;
    info!(
        loaded = rules.rules().len(),
        errors = rules.errors().count(),
        "rules loaded"
    );
    let (store, backend) = open_data(
        &settings.workspace,
        match settings.commit {
            CommitMode::Group => Grouping::Shared,
            CommitMode::Each => Grouping::Alone,
        },
    )?;
    let requeued = store.requeue_running()?;
    if requeued > 0 {
        info!(
            jobs = requeued,
            "jobs left running by the last stop will run again"
        );
    }
    let sqlite = store.clone();
    let store: Arc<dyn Store> = store;

    let metrics = Arc::new(crate::admin::metrics::Metrics::default());
    let shared: SharedRules = Arc::new(RwLock::new(Arc::new(rules)));
    let wake = Arc::new(Wake::default());
    let context = worker::Context {
        store: store.clone(),
        rules: shared.clone(),
        backend,
        wake: wake.clone(),
        stopping: Arc::new(AtomicBool::new(false)),
        cancel: Arc::new(AtomicBool::new(false)),
        metrics: metrics.clone(),
    };
    let pool = Pool::start(context, settings.workers).context("cannot start the workers")?;
    let scheduler = crate::triggers::schedule::spawn(
        store.clone(),
        shared.clone(),
        wake.clone(),
        Arc::new(crate::triggers::schedule::SystemClock),
    );
    reloader
        .start(shared.clone(), settings.watch_rules)
        .context("cannot watch the rules folder")?;

    let pruner =
        crate::store::retention::spawn(store.clone(), settings.retention, settings.dedupe_window);
    let ingest = crate::store::ingest::Ingestor::start(store.clone(), settings.commit)
        .context("cannot start the ingest writer")?;
    let app = Arc::new(AppState {
        store,
        ingest,
        dedupe_window: settings.dedupe_window,
        rules: shared,
        wake,
        body_limit: settings.body_limit,
        body_timeout: settings.body_timeout,
        decode_limits: DecodeLimits::default(),
        admin_token: settings.admin_token.clone(),
        trusted_proxies: settings.trusted_proxies.clone(),
        metrics,
        readers: Arc::new(tokio::sync::Semaphore::new(
            crate::triggers::webhook::MAX_READERS,
        )),
    });
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let address = listener.local_addr()?;
    info!(address = %address, data = %settings.workspace.data.display(), "listening");

    // At the signal the listener stops taking connections and the workers stop taking
    // jobs, both at once: requests in flight and running jobs share the grace period.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        signal.await;
        let _ = stop.send(true);
    });
    let stopped = |mut stopping: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    let grace = Duration::from_secs(settings.shutdown_grace);
    let http = crate::listener::serve(
        listener,
        router(app),
        settings.header_timeout,
        grace.max(MIN_DRAIN),
        stopped(stopping.clone()),
    );
    let jobs = async {
        stopped(stopping).await;
        info!(
            "stopping: requests in flight and running jobs get {} s to finish",
            settings.shutdown_grace
        );
        scheduler.shutdown().await;
        pruner.abort();
        tokio::task::spawn_blocking(move || pool.shutdown(grace)).await
    };
    let ((), jobs) = tokio::join!(http, jobs);
    jobs?;
    drop(lock);
    let (writes, commits) = sqlite.writes_and_commits();
    info!(writes, commits, "stopped");
    Ok(())
}

/// Listens for SIGINT and SIGTERM from the moment it is called (so that a signal during
/// start-up is not lost); the future completes at the first of them.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt()).ok();
        let terminate = signal(SignalKind::terminate()).ok();
        async move {
            let received = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = received(interrupt) => {},
                () = received(terminate) => {},
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
