//! The background uploads: one task hands the pending entries, oldest first, to at most
//! `concurrency` uploads (one at a time per key); each retries while the store's error is
//! transient, then deletes its entry, or moves it to `failed/` when the store refused it for good.

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use caldera_storage::frame::fsync_dir;
use caldera_storage::{StorageError, file_stream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::entry::{Entry, entry_name, open_entry};
use super::{MAX_OUTCOMES, Shared, UploadEvent};

/// The background task: starts uploads while slots are free.
pub(super) async fn dispatch(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut tasks = JoinSet::new();
    loop {
        while tasks.len() < shared.config.concurrency.max(1) {
            let next = {
                let mut state = shared.state();
                let seq = state
                    .queue
                    .values()
                    .find(|e| !state.busy.contains(&e.key))
                    .map(|e| e.seq);
                seq.and_then(|seq| state.queue.remove(&seq)).inspect(|e| {
                    state.busy.insert(e.key.clone());
                })
            };
            let Some(entry) = next else { break };
            tasks.spawn(upload(shared.clone(), entry));
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = shared.wake.notified() => {}
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    tasks.shutdown().await;
}

async fn upload_once(shared: &Shared, entry: &Entry) -> Result<(), StorageError> {
    let (header, file) = open_entry(shared, entry).await?;
    shared
        .store
        .put(&header.key, file_stream(file), header.options.clone())
        .await?;
    Ok(())
}

/// Uploads one entry until the store has it or refuses it for good, and records the outcome.
async fn upload(shared: Arc<Shared>, entry: Entry) {
    let outcome = match upload_with_retries(&shared, &entry).await {
        Ok(()) => {
            uploaded(&shared, &entry).await;
            Ok(())
        }
        Err(e) => Err(refused(&shared, &entry, e).await),
    };
    {
        let mut state = shared.state();
        state.busy.remove(&entry.key);
        if let Some(n) = state.pending.get_mut(&entry.key) {
            *n -= 1;
            if *n == 0 {
                state.pending.remove(&entry.key);
            }
        }
        if state.outcomes.len() >= MAX_OUTCOMES {
            state.outcomes.retain(|_, o| o.is_err());
        }
        state.outcomes.insert(entry.key.clone(), outcome);
    }
    shared.bump();
    shared.wake.notify_one();
}

/// Tries the upload with exponential backoff and jitter, for as long as the errors are transient;
/// every retry is logged and sent as an [`UploadEvent::Retrying`].
async fn upload_with_retries(shared: &Shared, entry: &Entry) -> Result<(), StorageError> {
    let backoff = ExponentialBuilder::default()
        .with_min_delay(shared.config.min_backoff)
        .with_max_delay(shared.config.max_backoff)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    let mut attempt = 0u32;
    (|| upload_once(shared, entry))
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|e: &StorageError| e.is_transient())
        .notify(|e: &StorageError, delay: Duration| {
            attempt += 1;
            tracing::warn!(
                spool = %shared.label,
                key = %entry.key,
                attempt,
                retry_in = ?delay,
                error = %e,
                "upload failed; will retry"
            );
            let _ = shared.events.send(UploadEvent::Retrying {
                key: entry.key.clone(),
                attempt,
                error: e.to_string(),
                delay,
            });
        })
        .await
}

/// The store has the object: its entry goes.
async fn uploaded(shared: &Shared, entry: &Entry) {
    let path = shared.entry_path(entry.seq);
    if let Err(e) = tokio::fs::remove_file(&path).await {
        // The object is in the store; at worst it is uploaded once more after a restart.
        tracing::error!(spool = %shared.label, key = %entry.key, error = %e, "could not remove an uploaded spool entry");
    } else if let Err(e) = fsync_dir(&shared.pending_dir).await {
        tracing::warn!(spool = %shared.label, error = %e, "could not fsync the spool directory");
    }
    let _ = shared.events.send(UploadEvent::Durable {
        key: entry.key.clone(),
    });
}

/// The store refused the object permanently: its entry moves to `failed/`, with why, for an
/// operator.
async fn refused(shared: &Shared, entry: &Entry, e: StorageError) -> Arc<StorageError> {
    tracing::error!(spool = %shared.label, key = %entry.key, error = %e, "upload failed permanently; moving the entry to failed/");
    let name = entry_name(entry.seq);
    let _ = tokio::fs::rename(shared.entry_path(entry.seq), shared.failed_dir.join(&name)).await;
    let _ = tokio::fs::write(
        shared.failed_dir.join(format!("{name}.error")),
        e.to_string(),
    )
    .await;
    let error = Arc::new(e);
    let _ = shared.events.send(UploadEvent::Failed {
        key: entry.key.clone(),
        error: error.clone(),
    });
    error
}
