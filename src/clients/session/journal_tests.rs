//! The write journal through a session: writes are intended before they are sent, and a
//! retry settles a write that an earlier attempt was cut off in.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};

use super::{Mode, Recorded, Session, WriteJournal};
use crate::clients::embedded::EmbeddedStore;
use crate::clients::{ApiError, Backend, Client, ListQuery, Page};

/// A journal in memory, shared by the attempts of one job.
#[derive(Default)]
struct Journal {
    entries: Mutex<BTreeMap<u32, Recorded>>,
    /// Results are lost, as when the service stops between a write and its record.
    lose_results: AtomicBool,
    /// Intents cannot be recorded, as when the store is down.
    refuse: AtomicBool,
}

impl WriteJournal for Arc<Journal> {
    fn earlier(&self) -> Vec<(u32, Recorded)> {
        let entries = self.entries.lock().unwrap();
        entries.iter().map(|(s, r)| (*s, r.clone())).collect()
    }

    fn intend(&self, sequence: u32, fingerprint: &str) -> Result<(), String> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err("the store is down".into());
        }
        let fingerprint = fingerprint.to_owned();
        self.entries
            .lock()
            .unwrap()
            .insert(sequence, Recorded::Intended { fingerprint });
        Ok(())
    }

    fn record(&self, sequence: u32, fingerprint: &str, result: &Value) {
        if self.lose_results.load(Ordering::SeqCst) {
            return;
        }
        self.entries.lock().unwrap().insert(
            sequence,
            Recorded::Done {
                fingerprint: fingerprint.to_owned(),
                result: result.clone(),
            },
        );
    }

    fn forget(&self, sequence: u32) {
        self.entries.lock().unwrap().remove(&sequence);
    }
}

fn recorded(journal: &Arc<Journal>, sequence: u32) -> Option<Recorded> {
    journal.entries.lock().unwrap().get(&sequence).cloned()
}

/// The embedded backend, counting creates, that can refuse them.
struct Counting {
    inner: crate::clients::embedded::EmbeddedBackend,
    creates: AtomicU32,
    refuse_with: Mutex<Option<ApiError>>,
}

impl Backend for Counting {
    fn list(&self, query: &ListQuery) -> Result<Page, ApiError> {
        self.inner.list(query)
    }
    fn get(&self, id: &str) -> Result<Option<Client>, ApiError> {
        self.inner.get(id)
    }
    fn create(&self, attributes: &Map<String, Value>) -> Result<Client, ApiError> {
        if let Some(error) = self.refuse_with.lock().unwrap().take() {
            return Err(error);
        }
        self.creates.fetch_add(1, Ordering::SeqCst);
        self.inner.create(attributes)
    }
    fn update(&self, id: &str, attributes: &Map<String, Value>) -> Result<Client, ApiError> {
        self.inner.update(id, attributes)
    }
    fn name(&self) -> &'static str {
        "counting"
    }
}

fn backend() -> Arc<Counting> {
    Arc::new(Counting {
        inner: EmbeddedStore::in_memory().unwrap().company("default"),
        creates: AtomicU32::new(0),
        refuse_with: Mutex::new(None),
    })
}

/// One attempt of a job: a live session over the backend and the job's journal.
fn attempt(backend: &Arc<Counting>, journal: &Arc<Journal>) -> Session {
    Session::new(backend.clone(), Mode::Live, 100, None).with_journal(Box::new(journal.clone()))
}

fn fields(value: Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap()
}

fn clients(backend: &Arc<Counting>) -> usize {
    backend
        .inner
        .list(&ListQuery::first_page())
        .unwrap()
        .clients
        .len()
}

#[test]
fn a_create_cut_off_before_its_record_is_found_by_email_and_not_sent_again() {
    let backend = backend();
    let journal = Arc::new(Journal::default());
    let jane = json!({"email": "jane@example.com", "first_name": "Jane"});
    // The first attempt creates the client, and stops before recording the result.
    journal.lose_results.store(true, Ordering::SeqCst);
    let first = attempt(&backend, &journal)
        .create(fields(jane.clone()))
        .unwrap();
    journal.lose_results.store(false, Ordering::SeqCst);
    assert!(matches!(
        recorded(&journal, 1),
        Some(Recorded::Intended { .. })
    ));
    // The retry finds the client instead of creating a second one.
    let again = attempt(&backend, &journal).create(fields(jane)).unwrap();
    assert_eq!(again.id, first.id);
    assert_eq!(backend.creates.load(Ordering::SeqCst), 1);
    assert_eq!(clients(&backend), 1);
    assert!(matches!(recorded(&journal, 1), Some(Recorded::Done { .. })));
}

#[test]
fn a_create_cut_off_before_it_was_sent_is_sent_by_the_retry() {
    let backend = backend();
    let journal = Arc::new(Journal::default());
    let jane = json!({"email": "jane@example.com", "first_name": "Jane"});
    // Intended, then the service stopped before the request went out.
    // (The intent is taken from an attempt on a backend of its own.)
    journal.lose_results.store(true, Ordering::SeqCst);
    attempt(&self::backend(), &journal)
        .create(fields(jane.clone()))
        .unwrap();
    let Some(Recorded::Intended { fingerprint }) = recorded(&journal, 1) else {
        panic!("no intent recorded");
    };
    journal
        .entries
        .lock()
        .unwrap()
        .insert(1, Recorded::Intended { fingerprint });
    journal.lose_results.store(false, Ordering::SeqCst);
    attempt(&backend, &journal).create(fields(jane)).unwrap();
    assert_eq!(backend.creates.load(Ordering::SeqCst), 1);
    assert_eq!(clients(&backend), 1);
}

/// The first attempt of a create that stops before its result is recorded; returns
/// the journal, as the retry finds it.
fn cut_off_create(backend: &Arc<Counting>, client: &Value) -> Arc<Journal> {
    let journal = Arc::new(Journal::default());
    journal.lose_results.store(true, Ordering::SeqCst);
    attempt(backend, &journal)
        .create(fields(client.clone()))
        .unwrap();
    journal.lose_results.store(false, Ordering::SeqCst);
    journal
}

#[test]
fn a_create_without_email_cut_off_is_found_by_its_phone_and_details() {
    let backend = backend();
    let pat = json!({"first_name": "Pat", "phone": "+13035550111"});
    let journal = cut_off_create(&backend, &pat);
    attempt(&backend, &journal).create(fields(pat)).unwrap();
    assert_eq!(backend.creates.load(Ordering::SeqCst), 1);
    assert_eq!(clients(&backend), 1);
}

#[test]
fn a_create_that_cannot_be_looked_up_is_not_sent_again_and_says_why() {
    // No email and no phone.
    let backend = backend();
    let first_only = json!({"first_name": "Pat"});
    let journal = cut_off_create(&backend, &first_only);
    let error = attempt(&backend, &journal)
        .create(fields(first_only))
        .unwrap_err();
    assert!(!error.is_transient(), "{error}");
    assert!(error.to_string().contains("not sent again"), "{error}");
    assert_eq!(backend.creates.load(Ordering::SeqCst), 1);
}

#[test]
fn a_client_with_the_phone_but_other_details_is_not_taken_for_the_cut_off_one() {
    // The attempt stopped at the create: had it been made, a client would hold every
    // given field. This one holds another name, so the create is sent.
    let backend = self::backend();
    backend
        .inner
        .create(&fields(
            json!({"first_name": "Patricia", "phone": "+13035550111"}),
        ))
        .unwrap();
    let pat = json!({"first_name": "Pat", "phone": "+13035550111"});
    let journal = cut_off_create(&self::backend(), &pat);
    attempt(&backend, &journal).create(fields(pat)).unwrap();
    assert_eq!(backend.creates.load(Ordering::SeqCst), 1);
    assert_eq!(clients(&backend), 2);
}

#[test]
fn a_refused_write_leaves_nothing_to_settle_and_is_sent_again_by_the_retry() {
    let backend = backend();
    let journal = Arc::new(Journal::default());
    let phone_only = json!({"first_name": "Pat", "phone": "+13035550111"});
    *backend.refuse_with.lock().unwrap() = Some(ApiError {
        operation: "create",
        status: Some(503),
        detail: "unavailable".into(),
        pointer: None,
        transient: true,
    });
    let error = attempt(&backend, &journal)
        .create(fields(phone_only.clone()))
        .unwrap_err();
    assert!(error.is_transient());
    assert_eq!(recorded(&journal, 1), None, "a refused write is forgotten");
    attempt(&backend, &journal)
        .create(fields(phone_only))
        .unwrap();
    assert_eq!(backend.creates.load(Ordering::SeqCst), 1);
}

#[test]
fn an_unanswered_create_with_email_is_settled_by_the_next_attempt() {
    let backend = backend();
    let journal = Arc::new(Journal::default());
    *backend.refuse_with.lock().unwrap() = Some(ApiError {
        operation: "create",
        status: None,
        detail: "the answer was lost".into(),
        pointer: None,
        transient: true,
    });
    let jane = json!({"email": "jane@example.com", "first_name": "Jane"});
    attempt(&backend, &journal)
        .create(fields(jane.clone()))
        .unwrap_err();
    assert!(matches!(
        recorded(&journal, 1),
        Some(Recorded::Intended { .. })
    ));
    attempt(&backend, &journal).create(fields(jane)).unwrap();
    assert_eq!(clients(&backend), 1);
}

#[test]
fn a_write_the_journal_cannot_hold_is_not_sent() {
    let backend = backend();
    let journal = Arc::new(Journal::default());
    journal.refuse.store(true, Ordering::SeqCst);
    let error = attempt(&backend, &journal)
        .create(fields(json!({"email": "jane@example.com"})))
        .unwrap_err();
    assert!(error.is_transient(), "{error}");
    assert!(error.to_string().contains("cannot be journaled"), "{error}");
    assert_eq!(backend.creates.load(Ordering::SeqCst), 0);
}

#[test]
fn a_retry_that_skips_a_write_still_settles_the_ones_after_it() {
    let backend = backend();
    let journal = Arc::new(Journal::default());
    let lead = json!({"email": "mix@example.com", "first_name": "Mix"});
    let referral = json!({"first_name": "Ref", "last_name": "Mix", "phone": "+15055000008"});
    // The first attempt creates the lead, then the referral, and stops before the
    // referral's result is recorded.
    let first = attempt(&backend, &journal);
    first.upsert(fields(lead.clone())).unwrap();
    journal.lose_results.store(true, Ordering::SeqCst);
    first.create(fields(referral.clone())).unwrap();
    journal.lose_results.store(false, Ordering::SeqCst);
    // The retry's upsert finds the lead and sends nothing; the referral's create is
    // still matched with its record, and settled.
    let retry = attempt(&backend, &journal);
    retry.upsert(fields(lead)).unwrap();
    retry.create(fields(referral)).unwrap();
    assert_eq!(backend.creates.load(Ordering::SeqCst), 2);
    assert_eq!(clients(&backend), 2);
    // New writes of the retry are numbered after the earlier ones: nothing recorded
    // is overwritten.
    retry
        .create(fields(json!({"email": "new@example.com"})))
        .unwrap();
    assert_eq!(journal.entries.lock().unwrap().len(), 3);
}

#[test]
fn a_cut_off_write_whose_settling_fails_stays_to_be_settled() {
    let backend = backend();
    let jane = json!({"email": "jane@example.com", "first_name": "Jane"});
    let journal = cut_off_create(&backend, &jane);
    // The retry cannot even look the client up: the API is down.
    let down = Arc::new(Counting {
        inner: backend.inner.clone(),
        creates: AtomicU32::new(0),
        refuse_with: Mutex::new(None),
    });
    let failing = Session::new(Arc::new(Unreachable), Mode::Live, 100, None)
        .with_journal(Box::new(journal.clone()));
    assert!(failing.create(fields(jane.clone())).is_err());
    assert!(matches!(
        recorded(&journal, 1),
        Some(Recorded::Intended { .. })
    ));
    // The next retry settles it: found, not created again.
    attempt(&down, &journal).create(fields(jane)).unwrap();
    assert_eq!(down.creates.load(Ordering::SeqCst), 0);
    assert_eq!(clients(&backend), 1);
}

/// An API that answers nothing.
struct Unreachable;

impl Backend for Unreachable {
    fn list(&self, _: &ListQuery) -> Result<Page, ApiError> {
        Err(unreachable_error())
    }
    fn get(&self, _: &str) -> Result<Option<Client>, ApiError> {
        Err(unreachable_error())
    }
    fn create(&self, _: &Map<String, Value>) -> Result<Client, ApiError> {
        Err(unreachable_error())
    }
    fn update(&self, _: &str, _: &Map<String, Value>) -> Result<Client, ApiError> {
        Err(unreachable_error())
    }
    fn name(&self) -> &'static str {
        "unreachable"
    }
}

fn unreachable_error() -> ApiError {
    ApiError {
        operation: "list",
        status: Some(503),
        detail: "unavailable".into(),
        pointer: None,
        transient: true,
    }
}
