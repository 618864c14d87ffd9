//! The ingest writer: one thread that commits the events of concurrent deliveries
//! together (group commit), so that durable ingest costs one sync for many requests.

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::error;

use super::{Inserted, NewEvent, Store, StoreError};

/// How deliveries are committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CommitMode {
    /// Deliveries waiting at the same moment share one commit.
    Group,
    /// One commit per delivery.
    Each,
}

/// The most events one commit holds.
const MAX_BATCH: usize = 512;

/// Deliveries waiting for the writer; past this, callers wait to enqueue.
const QUEUE: usize = 4096;

type Reply = oneshot::Sender<Result<Inserted, String>>;

/// A handle to the writer thread.
#[derive(Debug, Clone)]
pub struct Ingestor {
    queue: SyncSender<(NewEvent, Reply)>,
}

impl Ingestor {
    /// Starts the writer thread over a store.
    pub fn start(store: Arc<dyn Store>, mode: CommitMode) -> std::io::Result<Ingestor> {
        let (queue, inbox) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("ingest".into())
            .spawn(move || writer(store.as_ref(), &inbox, mode))?;
        Ok(Ingestor { queue })
    }

    /// Stores one event and answers once it is committed.
    pub async fn submit(&self, event: NewEvent) -> Result<Inserted, String> {
        let (reply, answer) = oneshot::channel();
        let queue = self.queue.clone();
        // The queue is bounded: a full queue waits on a blocking thread, not the runtime.
        let sent = match queue.try_send((event, reply)) {
            Ok(()) => Ok(()),
            Err(mpsc::TrySendError::Full(item)) => {
                tokio::task::spawn_blocking(move || queue.send(item).map_err(|_| ()))
                    .await
                    .unwrap_or(Err(()))
            }
            Err(mpsc::TrySendError::Disconnected(_)) => Err(()),
        };
        if sent.is_err() {
            return Err("the ingest writer has stopped".into());
        }
        answer
            .await
            .unwrap_or_else(|_| Err("the ingest writer has stopped".into()))
    }
}

fn writer(store: &dyn Store, inbox: &Receiver<(NewEvent, Reply)>, mode: CommitMode) {
    let limit = match mode {
        CommitMode::Group => MAX_BATCH,
        CommitMode::Each => 1,
    };
    loop {
        // Wait for the first delivery, then take every other one already waiting.
        let first = match inbox.recv_timeout(Duration::from_secs(1)) {
            Ok(item) => item,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = vec![first];
        while batch.len() < limit {
            match inbox.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let (events, replies): (Vec<NewEvent>, Vec<Reply>) = batch.into_iter().unzip();
        let count = events.len();
        match store.insert_batch(events) {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                error!(error = %e, events = count, "cannot commit deliveries");
                let message = describe(&e);
                for reply in replies {
                    let _ = reply.send(Err(message.clone()));
                }
            }
        }
    }
}

fn describe(e: &StoreError) -> String {
    e.to_string()
}
