//! Settings of the service: flags first, then `CLIENTRULES_*` environment variables,
//! then defaults.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

/// Where the rules and the data are, and which API layer scripts reach: what every
/// command that runs rules needs.
#[derive(Debug, Clone, Args)]
pub struct Workspace {
    /// Folder of rule files.
    #[arg(long, env = "CLIENTRULES_RULES", default_value = "./rules")]
    pub rules: PathBuf,

    /// Folder of the service's data (the SQLite store).
    #[arg(long, env = "CLIENTRULES_DATA", default_value = "./data")]
    pub data: PathBuf,

    /// The region of phones written without a country code, for
    /// `text::normalize_phone` and for matching clients by phone: a two-letter code.
    #[arg(long, env = "CLIENTRULES_PHONE_REGION", default_value = "US", value_parser = parse_phone_region)]
    pub phone_region: String,

    #[command(flatten)]
    pub backend: BackendSettings,
}

/// The settings of `serve`: the workspace, and how the service listens, stores and runs.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    #[command(flatten)]
    pub workspace: Workspace,

    /// Address to listen on.
    #[arg(long, env = "CLIENTRULES_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Worker threads that run rules.
    #[arg(long, env = "CLIENTRULES_WORKERS", default_value_t = 4, value_parser = parse_workers)]
    pub workers: usize,

    /// Largest webhook body accepted, in bytes, or with a KiB or MiB suffix.
    #[arg(long, env = "CLIENTRULES_BODY_LIMIT", default_value = "1MiB", value_parser = parse_body_limit)]
    pub body_limit: usize,

    /// How long a connection has to send a request's headers, from when it opens or
    /// when it waits for its next request; slower connections are closed.
    #[arg(long, env = "CLIENTRULES_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_timeout)]
    pub header_timeout: std::time::Duration,

    /// How long a sender has to send a whole webhook body once its headers are in.
    #[arg(long, env = "CLIENTRULES_BODY_TIMEOUT", default_value = "30s", value_parser = parse_timeout)]
    pub body_timeout: std::time::Duration,

    /// Bearer token of the admin API; without one it answers only on loopback.
    #[arg(long, env = "CLIENTRULES_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Proxies (addresses or CIDR ranges) whose X-Forwarded-For names the sender.
    #[arg(long = "trusted-proxy", env = "CLIENTRULES_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_net)]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// How writes are committed: `group` shares one synced commit among the deliveries
    /// and job updates that wait at the same moment, `each` commits every one alone.
    #[arg(long, env = "CLIENTRULES_COMMIT", value_enum, default_value = "group")]
    pub commit: crate::store::ingest::CommitMode,

    /// How long a dedupe key is remembered.
    #[arg(long, env = "CLIENTRULES_DEDUPE_WINDOW", default_value = "7d", value_parser = humantime::parse_duration)]
    pub dedupe_window: std::time::Duration,

    /// How long finished events are kept, with their jobs, runs and files. Events with
    /// a job still to run, or with a dead letter not yet replayed, are kept until then.
    #[arg(long, env = "CLIENTRULES_RETENTION", default_value = "30d", value_parser = humantime::parse_duration)]
    pub retention: std::time::Duration,

    /// Seconds that running jobs get to finish on shutdown (at most a day).
    #[arg(long, env = "CLIENTRULES_SHUTDOWN_GRACE", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub shutdown_grace: u64,

    /// Reload rule files when they change; SIGHUP reloads them either way.
    #[arg(long, env = "CLIENTRULES_WATCH_RULES", default_value_t = true, action = clap::ArgAction::Set)]
    pub watch_rules: bool,
}

/// Which API layer scripts reach, and how the Spectora client behaves.
#[derive(Debug, Clone, Args)]
pub struct BackendSettings {
    /// `embedded` keeps clients in the data folder; `spectora` reaches the Spectora API
    /// with `SPECTORA_API_KEY`. Default: `spectora` when the key is set, else `embedded`.
    #[arg(long = "backend", env = "CLIENTRULES_BACKEND", value_enum)]
    pub kind: Option<BackendKind>,

    /// The Spectora API key (from the environment only, so it never shows in a process
    /// list).
    #[arg(skip = std::env::var("SPECTORA_API_KEY").ok())]
    pub api_key: Option<String>,

    /// Base URL of the Spectora API (or of a `clientrules sim`).
    #[arg(long = "spectora-url", env = "SPECTORA_BASE_URL", default_value = crate::clients::spectora::DEFAULT_BASE_URL)]
    pub base_url: String,

    /// Requests a minute to the Spectora API, shared by every rule; 0 for no limit.
    #[arg(
        long = "spectora-rate-limit",
        env = "CLIENTRULES_SPECTORA_RATE_LIMIT",
        default_value_t = 60
    )]
    pub rate_limit: u32,

    /// Tries of one request to the Spectora API (the first included) before the run
    /// gives up on it and the job is retried later.
    #[arg(long = "spectora-attempts", env = "CLIENTRULES_SPECTORA_ATTEMPTS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub attempts: u32,

    /// How long opening a connection to the Spectora API may take.
    #[arg(long = "spectora-connect-timeout", env = "CLIENTRULES_SPECTORA_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub connect_timeout: std::time::Duration,

    /// How long one request to the Spectora API may take, answer included.
    #[arg(long = "spectora-timeout", env = "CLIENTRULES_SPECTORA_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: std::time::Duration,
}

/// The two implementations of the API layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    Embedded,
    Spectora,
}

impl BackendSettings {
    /// The backend to use: the one asked for, else by whether a key is set.
    pub fn kind(&self) -> BackendKind {
        self.kind.unwrap_or(if self.key().is_some() {
            BackendKind::Spectora
        } else {
            BackendKind::Embedded
        })
    }

    /// The API key, when one is set and not blank.
    pub fn key(&self) -> Option<crate::clients::spectora::ApiKey> {
        self.api_key
            .as_deref()
            .and_then(crate::clients::spectora::ApiKey::new)
    }

    /// The HTTP client's configuration; an error when no key is set.
    pub fn spectora(&self) -> anyhow::Result<crate::clients::spectora::SpectoraConfig> {
        let Some(key) = self.key() else {
            anyhow::bail!(
                "the spectora backend needs an API key: set SPECTORA_API_KEY in the environment"
            );
        };
        let mut config = crate::clients::spectora::SpectoraConfig::new(&self.base_url, key);
        config.requests_per_minute = self.rate_limit;
        config.connect_timeout = self.connect_timeout;
        config.request_timeout = self.request_timeout;
        config.max_attempts = self.attempts;
        Ok(config)
    }
}

impl Workspace {
    /// The store file under the data folder.
    pub fn store_path(&self) -> PathBuf {
        self.data.join("clientrules.db")
    }
}

fn parse_net(text: &str) -> Result<ipnet::IpNet, String> {
    crate::rules::load::parse_net(text)
        .ok_or_else(|| format!("expected an IP address or a CIDR range, found {text:?}"))
}

/// A number of worker threads, from 1 to 256.
fn parse_workers(text: &str) -> Result<usize, String> {
    text.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=256).contains(n))
        .ok_or_else(|| format!("expected a whole number from 1 to 256, found {text:?}"))
}

/// A duration such as `10s` or `2m` that is more than nothing.
fn parse_timeout(text: &str) -> Result<std::time::Duration, String> {
    let span = humantime::parse_duration(text)
        .map_err(|e| format!("expected a duration such as 10s or 2m, found {text:?}: {e}"))?;
    if span.is_zero() {
        return Err(format!("expected a duration above zero, found {text:?}"));
    }
    Ok(span)
}

fn parse_phone_region(text: &str) -> Result<String, String> {
    crate::text::phone_region(text)
        .map(|id| id.as_ref().to_owned())
        .map_err(|e| e.to_string())
}

/// A body limit: a size such as `1048576`, `512KiB` or `1MiB`, above zero and at most
/// 1GiB (bodies are held in memory while they are stored).
pub fn parse_body_limit(text: &str) -> Result<usize, String> {
    let bytes = crate::size::parse(text)?;
    if bytes == 0 {
        return Err(format!("expected a size above zero, found {text:?}"));
    }
    if bytes > 1 << 30 {
        return Err(format!("expected a size of at most 1GiB, found {text:?}"));
    }
    usize::try_from(bytes).map_err(|_| format!("the size {text:?} is too large"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn phone_regions_are_checked() {
        assert_eq!(parse_phone_region("ca").unwrap(), "CA");
        let err = parse_phone_region("Canada").unwrap_err();
        assert!(err.contains("two-letter region"), "{err}");
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_body_limit("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_body_limit("512KiB").unwrap(), 512 * 1024);
        assert_eq!(parse_body_limit("100").unwrap(), 100);
        assert!(parse_body_limit("lots").is_err());
        assert!(parse_body_limit("0").is_err());
        assert!(parse_body_limit("5GB").is_err());
    }
}
