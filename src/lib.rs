//! `clientrules`: webhooks and schedules in, rule scripts run, Spectora clients out.
//!
//! The path of an event, and the module that owns each step:
//!
//! | module | owns |
//! | --- | --- |
//! | [`triggers`] | turning outside input into events: webhook routes, body decoding, signatures |
//! | [`rules`] | rule files: strict parsing, `${VAR}`, validation, compilation, the rule set |
//! | [`script`] | the Rhai sandbox, its limits, and the modules scripts call |
//! | [`clients`] | the API layer: the `Backend` trait, the embedded store, a run's session |
//! | [`store`] | events, jobs and runs, committed before a webhook is answered |
//! | [`worker`] | claiming jobs, running rules, recording runs, retrying |
//! | [`admin`] | the admin API, health and readiness |
//! | [`server`] | `serve`: assembling the above into one process |
//! | [`sim`] | `sim`: a local server of the Spectora Clients API, with fault switches |
//! | [`backtest`] | stored events run again through a rule as it is now, compared with their runs |
//! | [`cli`] | the command line |
//! | [`settings`] | flags, environment and defaults |
//! | [`text`] | normalization of emails, names, tags and phones |
//! | [`time`] | dates as forms send them: parsing, formatting, counting days |

/// jemalloc counts what each thread allocates and frees: what `limits.max_memory` of a
/// script run is measured with (`script::memory`).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

pub mod admin;
pub mod app;
pub mod backtest;
pub mod cli;
pub mod clients;
pub mod config;
pub mod event;
pub mod listener;
pub mod rules;
pub mod script;
pub mod server;
pub mod settings;
pub mod sim;
pub mod size;
pub mod store;
pub mod text;
pub mod time;
pub mod triggers;
pub mod worker;
pub mod write_turn;
