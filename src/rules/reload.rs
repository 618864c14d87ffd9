//! Reloading the rules folder while the service runs: on a change of its files (seen
//! by a watcher, with debouncing) and on SIGHUP. Each file is loaded, validated and
//! compiled on its own; a file that fails keeps its last good version running, with
//! its errors logged once and shown in the rule's status; a deleted file removes its
//! rule. The new rule set replaces the old one in one swap, so a webhook or a worker
//! sees either set whole, and a run already going finishes on the version it started.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify_debouncer_mini::notify::RecursiveMode;
use tracing::{error, info, warn};

use super::load::{self, LoadReport, Loaded};
use super::{Diagnostic, RuleSet};
use crate::worker::SharedRules;

/// How long the folder must be quiet before a change is loaded: editors write a file
/// in several steps (a temporary file, a rename), and a reload in the middle of them
/// would see half a file.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// What one file last loaded to.
#[derive(Debug, Default)]
struct FileState {
    /// The last version that loaded, which runs while the file has errors.
    good: Option<Loaded>,
    /// The errors of the file's latest load; empty when it loaded.
    errors: Vec<Diagnostic>,
    /// The problems last logged for the file, so that each is logged once.
    logged: Vec<String>,
}

/// The rules folder and what each of its files last loaded to.
#[derive(Debug)]
pub struct Reloader {
    dir: PathBuf,
    env: fn(&str) -> Option<String>,
    files: Mutex<BTreeMap<PathBuf, FileState>>,
    /// What the folder held at the last load: a watcher also reports files being
    /// opened and read (by an editor, by `validate`, by the load itself), and those
    /// change nothing.
    last_seen: Mutex<Option<Vec<(PathBuf, u64)>>>,
}

/// The rule files of a folder with a digest of each one's bytes.
fn folder_digest(dir: &Path) -> std::io::Result<Vec<(PathBuf, u64)>> {
    use std::hash::{Hash, Hasher};
    let mut digest = Vec::new();
    for path in rule_files(dir)? {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        // An unreadable file is a change too: the load reports why.
        std::fs::read(&path).ok().hash(&mut hasher);
        digest.push((path, hasher.finish()));
    }
    Ok(digest)
}

/// A request to the reload thread.
#[derive(Debug)]
enum Request {
    /// Files changed under the folder.
    Changed,
    /// A SIGHUP, or a caller: reload whatever changed.
    Reload,
}

impl Reloader {
    /// A reloader of `dir`, resolving `${VAR}` with `env`.
    pub fn new(dir: &Path, env: fn(&str) -> Option<String>) -> Reloader {
        Reloader {
            dir: dir.to_owned(),
            env,
            files: Mutex::new(BTreeMap::new()),
            last_seen: Mutex::new(None),
        }
    }

    /// Whether the folder's rule files differ from what the last load read.
    fn changed(&self) -> bool {
        let now = folder_digest(&self.dir).ok();
        let last = self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
        now.is_none() || *last != now
    }

    /// Loads every rule file of the folder: the rule set to serve, built from each
    /// file's new version when it loads and its last good version when it does not.
    /// Problems not logged before are logged.
    pub fn load(&self) -> std::io::Result<RuleSet> {
        if let Ok(digest) = folder_digest(&self.dir) {
            *self.last_seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(digest);
        }
        let paths = rule_files(&self.dir)?;
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());

        // Files that are gone take their rules with them.
        let gone: Vec<PathBuf> = files
            .keys()
            .filter(|p| !paths.contains(p))
            .cloned()
            .collect();
        for path in gone {
            if let Some(state) = files.remove(&path) {
                let rule = state.good.map(|l| l.rule.name).unwrap_or_default();
                info!(file = %path.display(), rule = %rule, "rule file removed; its rule is unloaded");
            }
        }

        let mut report = LoadReport::default();
        let mut stale = BTreeMap::new();
        for path in paths {
            report.files += 1;
            let (loaded, diagnostics) = load::load_file(&path, &self.env);
            let state = files.entry(path.clone()).or_default();
            match loaded {
                Some(loaded) => {
                    if state.good.is_some() && !state.errors.is_empty() {
                        info!(file = %path.display(), rule = %loaded.rule.name, "rule file fixed; its new version is running");
                    }
                    state.good = Some(loaded);
                    state.errors.clear();
                }
                None => {
                    state.errors = diagnostics
                        .iter()
                        .filter(|d| d.is_error())
                        .cloned()
                        .collect();
                    if state.good.is_some() {
                        stale.insert(path.clone(), state.errors.clone());
                    } else {
                        report.failed_paths.extend(load::intended_path(&path));
                    }
                }
            }
            log_new_problems(state, &diagnostics);
            report.diagnostics.extend(diagnostics);
            if let Some(good) = &state.good {
                report.rules.push(good.clone());
            }
        }

        let mut set = RuleSet::from_report(report);
        set.stale = stale;
        Ok(set)
    }

    /// Loads the folder and swaps the new set in; an unreadable folder keeps the
    /// running set.
    pub fn reload(&self, shared: &SharedRules) {
        match self.load() {
            Ok(set) => {
                let loaded = set.rules().len();
                let stale = set.stale.len();
                *shared.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
                info!(loaded, stale, "rules reloaded");
            }
            Err(e) => {
                error!(folder = %self.dir.display(), error = %e, "cannot read the rules folder; the running rules stay");
            }
        }
    }

    /// Starts reloading on SIGHUP and, with `watch`, on changes of the folder's files.
    /// Runs until the process ends.
    pub fn start(self: Arc<Self>, shared: SharedRules, watch: bool) -> anyhow::Result<()> {
        let (tx, rx) = mpsc::channel::<Request>();

        // The watcher lives as long as the reload thread that owns it.
        let debouncer = if watch {
            let events = tx.clone();
            let mut debouncer = notify_debouncer_mini::new_debouncer(
                DEBOUNCE,
                move |result: notify_debouncer_mini::DebounceEventResult| match result {
                    Ok(_) => {
                        let _ = events.send(Request::Changed);
                    }
                    Err(e) => warn!(error = %e, "the rules folder watcher reported an error"),
                },
            )?;
            debouncer
                .watcher()
                .watch(&self.dir, RecursiveMode::Recursive)?;
            info!(folder = %self.dir.display(), "watching the rules folder for changes");
            Some(debouncer)
        } else {
            None
        };

        let reloader = self.clone();
        std::thread::Builder::new()
            .name("rules-reload".into())
            .spawn(move || {
                let _debouncer = debouncer;
                reload_loop(&reloader, &shared, &rx);
            })?;
        spawn_hangup_listener(tx);
        Ok(())
    }
}

fn reload_loop(reloader: &Reloader, shared: &SharedRules, rx: &Receiver<Request>) {
    while let Ok(request) = rx.recv() {
        // Requests that piled up while loading are served by one more load.
        while rx.try_recv().is_ok() {}
        match request {
            Request::Changed if !reloader.changed() => continue,
            Request::Changed => info!("rule files changed; reloading"),
            Request::Reload => info!("reload requested; reloading the rules"),
        }
        reloader.reload(shared);
    }
}

#[cfg(unix)]
fn spawn_hangup_listener(tx: Sender<Request>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        warn!("no async runtime: SIGHUP will not reload the rules");
        return;
    };
    handle.spawn(async move {
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGHUP; rules reload on file changes only");
                return;
            }
        };
        while hangups.recv().await.is_some() {
            if tx.send(Request::Reload).is_err() {
                return;
            }
        }
    });
}

#[cfg(not(unix))]
fn spawn_hangup_listener(_tx: Sender<Request>) {}

/// The rule files of a folder, in name order.
fn rule_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|p| load::is_rule_file(p))
        .collect();
    paths.sort();
    Ok(paths)
}

/// Logs the problems of a file that were not logged at its last load: an error is
/// logged once, however often the file is saved with it.
fn log_new_problems(state: &mut FileState, diagnostics: &[Diagnostic]) {
    let texts: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
    let running_old = state.good.is_some() && !state.errors.is_empty();
    for (d, text) in diagnostics.iter().zip(&texts) {
        if state.logged.contains(text) {
            continue;
        }
        let rule = d.rule.as_deref().unwrap_or("");
        if d.is_error() && running_old {
            error!(file = %d.file.display(), line = d.line, column = d.column, rule, "{}; the last good version of the rule keeps running", d.message);
        } else if d.is_error() {
            error!(file = %d.file.display(), line = d.line, column = d.column, rule, "{}", d.message);
        } else {
            warn!(file = %d.file.display(), line = d.line, column = d.column, rule, "{}", d.message);
        }
    }
    state.logged = texts;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::RwLock;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn rule(tag: &str) -> String {
        format!(
            "name: lead\ndescription: {tag}\non:\n  webhook: {{}}\nscript: |\n  log::info(\"{tag}\");\n"
        )
    }

    #[test]
    fn a_broken_file_keeps_its_last_good_version_and_a_fixed_one_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lead.yaml");
        std::fs::write(&file, rule("v1")).unwrap();
        let reloader = Reloader::new(dir.path(), no_env);
        let shared: SharedRules = Arc::new(RwLock::new(Arc::new(reloader.load().unwrap())));
        let description = |shared: &SharedRules| {
            let set = crate::worker::current_rules(shared);
            set.get("lead").and_then(|r| r.description.clone())
        };
        assert_eq!(description(&shared).as_deref(), Some("v1"));

        std::fs::write(
            &file,
            "name: lead\non:\n  webhook: {}\nscript: |\n  let x = ;\n",
        )
        .unwrap();
        reloader.reload(&shared);
        assert_eq!(
            description(&shared).as_deref(),
            Some("v1"),
            "the old version stays"
        );
        let set = crate::worker::current_rules(&shared);
        let errors = set.stale.get(&file).unwrap();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 5);
        assert!(set.has_errors(), "the error is in the set's diagnostics");

        std::fs::write(&file, rule("v2")).unwrap();
        reloader.reload(&shared);
        assert_eq!(description(&shared).as_deref(), Some("v2"));
        assert!(crate::worker::current_rules(&shared).stale.is_empty());

        std::fs::remove_file(&file).unwrap();
        reloader.reload(&shared);
        assert!(crate::worker::current_rules(&shared).get("lead").is_none());
    }

    #[test]
    fn a_file_that_never_loaded_has_no_rule() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.yaml"), "name: [\n").unwrap();
        let reloader = Reloader::new(dir.path(), no_env);
        let set = reloader.load().unwrap();
        assert!(set.rules().is_empty());
        assert!(set.has_errors());
        assert!(set.stale.is_empty(), "nothing runs in its place");
    }

    #[test]
    fn an_error_is_logged_once_however_often_it_is_saved() {
        let mut state = FileState::default();
        let d = Diagnostic::error("a.yaml", 1, 1, "bad".into());
        log_new_problems(&mut state, std::slice::from_ref(&d));
        assert_eq!(state.logged, vec![d.to_string()]);
        let before = state.logged.clone();
        log_new_problems(&mut state, std::slice::from_ref(&d));
        assert_eq!(state.logged, before);
        log_new_problems(&mut state, &[]);
        assert!(state.logged.is_empty(), "a fixed error is forgotten");
    }
}
