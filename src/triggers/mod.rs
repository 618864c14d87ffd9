//! Triggers: what turns outside input into events. Webhooks arrive over HTTP and are
//! verified, decoded and stored before they are answered; schedule ticks come from the
//! scheduler, once each in the whole store.

pub mod cron;
pub mod decode;
pub mod preview;
pub mod schedule;
pub mod verify;
pub mod webhook;
