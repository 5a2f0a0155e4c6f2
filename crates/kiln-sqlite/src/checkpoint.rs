//! WAL checkpoints on their own thread, off the writer's commit path.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses the threshold, so one
//! unlucky group commit would also copy the whole WAL into the database file and fsync it. Here
//! the writer's WAL hook only rings a doorbell once the log holds [`CHECKPOINT_PAGES`] frames;
//! a checkpointer thread with its own connection then runs a `PASSIVE` checkpoint, which never
//! blocks the writer or readers. Durability is unchanged: a commit is durable once its WAL
//! frames are synced, before any checkpoint.

use rusqlite::Connection;
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::Duration;

/// WAL frames (pages) after which a checkpoint is requested: SQLite's own default threshold.
const CHECKPOINT_PAGES: i32 = 1000;
/// WAL frames past which checkpoints run at once, so that the log is soon fully copied and
/// restarts from its beginning even under continuous writes.
const URGENT_PAGES: i32 = 10_000;
/// How long a checkpoint waits for more commits to copy under the same sync, below
/// [`URGENT_PAGES`].
const COALESCE: Duration = Duration::from_millis(5);

/// Installs the WAL hook on the writer connection; it rings `doorbell` (saying whether the
/// checkpoint is urgent) when the log is long.
pub fn watch_wal(writer: &mut Connection, doorbell: SyncSender<bool>) -> rusqlite::Result<()> {
    writer.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages: i32| {
        if pages >= CHECKPOINT_PAGES {
            // A full doorbell means a checkpoint is already due; a closed one means shutdown.
            let _ = doorbell.try_send(pages >= URGENT_PAGES);
        }
        Ok(())
    }))
}

/// Runs checkpoints until the writer (the doorbell's only sender) is gone. Each checkpoint
/// syncs the database file, so unless the log is long, it first lets a few milliseconds of
/// commits gather: one sync for many commits instead of one each.
pub fn run(conn: Connection, doorbell: Receiver<bool>) {
    while let Ok(urgent) = doorbell.recv() {
        if !urgent {
            std::thread::sleep(COALESCE);
            while doorbell.try_recv().is_ok() {}
        }
        if let Err(err) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %err, "WAL checkpoint failed; it will be retried after the next commits");
        }
    }
}
