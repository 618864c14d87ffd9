//! Triggers: what turns outside input into events. Webhooks arrive over HTTP and are
//! verified, decoded and stored before they are answered.

pub mod cron;
pub mod decode;
pub mod verify;
pub mod webhook;
