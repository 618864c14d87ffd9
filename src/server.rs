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

    crate::listener::serve(
        listener,
        router(app),
        settings.header_timeout,
        shutdown_signal(),
    )
    .await;

    info!(
        "stopping: running jobs get {} s to finish",
        settings.shutdown_grace
    );
    scheduler.shutdown().await;
    pruner.abort();
    let grace = Duration::from_secs(settings.shutdown_grace);
    tokio::task::spawn_blocking(move || pool.shutdown(grace)).await?;
    drop(lock);
    let (writes, commits) = sqlite.writes_and_commits();
    info!(writes, commits, "stopped");
    Ok(())
}

pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
