//! A background feed to a peer: request handlers queue items; one task sends them in batches,
//! with a few jittered retries, never on the caller's path. Used for confirmed demand and for cells
//! that need an alert evaluation, both idempotent on the receiving side. It stops on shutdown.
use std::{future::Future, time::Duration};

use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Attempts per batch before it is dropped with a warning.
const ATTEMPTS: u32 = 3;

/// The queue side of a feed.
#[derive(Clone)]
pub struct BatchFeed<T> {
    name: &'static str,
    queue: mpsc::Sender<T>,
}

impl<T: Clone + Send + 'static> BatchFeed<T> {
    /// Starts the sending task on `tracker`. `send` delivers one batch (at most `max_batch` items).
    pub fn start<F, Fut>(
        name: &'static str,
        max_batch: usize,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
        mut send: F,
    ) -> Self
    where
        F: FnMut(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), tonic::Status>> + Send,
    {
        let (queue, mut receiver) = mpsc::channel::<T>(10_000);
        tracker.spawn(async move {
            loop {
                let first = tokio::select! {
                    item = receiver.recv() => item,
                    () = shutdown.cancelled() => None,
                };
                let Some(first) = first else { break };
                let mut batch = vec![first];
                while batch.len() < max_batch {
                    match receiver.try_recv() {
                        Ok(item) => batch.push(item),
                        Err(_) => break,
                    }
                }
                for attempt in 1..=ATTEMPTS {
                    match send(batch.clone()).await {
                        Ok(()) => break,
                        Err(status) if status.code() == tonic::Code::InvalidArgument => {
                            tracing::error!(feed = name, message = status.message(), count = batch.len(), "batch refused by the peer");
                            break;
                        }
                        Err(status) => {
                            tracing::warn!(feed = name, code = ?status.code(), attempt, count = batch.len(), "batch not delivered");
                            if attempt < ATTEMPTS {
                                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                            }
                        }
                    }
                }
            }
        });
        Self { name, queue }
    }

    /// Queues an item, waiting while the queue is full.
    pub async fn send(&self, item: T) {
        if self.queue.send(item).await.is_err() {
            tracing::warn!(feed = self.name, "feed stopped; item not forwarded");
        }
    }

    /// Queues an item without waiting; drops it with a warning when the queue is full.
    pub fn try_send(&self, item: T) {
        if self.queue.try_send(item).is_err() {
            tracing::warn!(feed = self.name, "feed full or stopped; item not forwarded");
        }
    }
}
