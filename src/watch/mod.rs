//! The folder-watching ingestion daemon (`reimagen watch`): keeps the KB equal to what a set of
//! folders hold.
//!
//! - [`Watcher::start`] checks the folders, then runs the daemon on its own thread (a tokio
//!   runtime): OS events (notify) are *hints* that name paths to look at; a reconcile scan (at
//!   start, on overflow, on a rescan flag, every [`WatchOptions::rescan_every`]) is the truth.
//! - The engine (`engine.rs`) owns all state and runs on tokio's blocking pool, one tick at a
//!   time: a file is ingested once its size and mtime are stable; content identical to a pair in
//!   the KB only records the path (renames and moves never re-embed); deletes wait for the grace
//!   period; bad files are quarantined with their reason.
//! - Every KB write goes through [`KnowledgeBase::add_many`] and
//!   [`KnowledgeBase::apply_path_ops`], so one writer commits whole batches.
//!
//! Nothing here writes into a watched folder, and links are never followed (invariant 15 of
//! ARCHITECTURE.md). The KB directory may not lie inside a watched folder.

mod engine;
mod events;
mod scan;
mod status;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub use status::{
    DaemonState, QuarantinedFile, RootStatus, STATUS_FILE, ScanReport, WatchCounters, WatchMode,
    WatchStatus, daemon_status,
};

use crate::error::{Result, WatchError};
use crate::kb::KnowledgeBase;

/// Options of the daemon. Get one from [`WatchOptions::default`].
///
/// By default: OS events (no forced polling); polling every 10 s for what the OS refuses to
/// watch; a full reconcile scan every hour; deletions take effect 10 minutes after a file
/// disappears; a file is ingested once its size and mtime have not changed for 1 s; 1,024 files
/// per ingest batch; a file refused as truncated is retried until it has stayed so for 60 s;
/// the status file is rewritten every 2 s; no signal handling (the CLI turns it
/// on); every directory watched with events (no cap).
#[derive(Clone, Debug)]
#[must_use]
pub struct WatchOptions {
    poll: Option<Duration>,
    fallback_poll: Duration,
    rescan_every: Duration,
    delete_grace: Duration,
    stable_for: Duration,
    truncated_grace: Duration,
    batch_size: usize,
    status_every: Duration,
    handle_signals: bool,
    max_watched_dirs: Option<usize>,
    queue_capacity: usize,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            poll: None,
            fallback_poll: Duration::from_secs(10),
            rescan_every: Duration::from_secs(3600),
            delete_grace: Duration::from_secs(600),
            stable_for: Duration::from_secs(1),
            truncated_grace: Duration::from_secs(60),
            batch_size: 1024,
            status_every: Duration::from_secs(2),
            handle_signals: false,
            max_watched_dirs: None,
            queue_capacity: 65_536,
        }
    }
}

impl WatchOptions {
    /// Polls every `interval` instead of using OS events (network file systems send none).
    pub fn poll(mut self, interval: Duration) -> Self {
        self.poll = Some(interval);
        self
    }

    /// How often to poll what the OS refused to watch.
    pub fn fallback_poll(mut self, interval: Duration) -> Self {
        self.fallback_poll = interval;
        self
    }

    /// How often to run a full reconcile scan.
    pub fn rescan_every(mut self, interval: Duration) -> Self {
        self.rescan_every = interval;
        self
    }

    /// How long a file must stay gone before its path is forgotten. Zero means as soon as the
    /// daemon is sure the file was not moved: after [`WatchOptions::stable_for`], and once the
    /// files that appeared meanwhile have been ingested.
    pub fn delete_grace(mut self, grace: Duration) -> Self {
        self.delete_grace = grace;
        self
    }

    /// How long a file's size and mtime must stay unchanged before it is ingested.
    pub fn stable_for(mut self, interval: Duration) -> Self {
        self.stable_for = interval;
        self
    }

    /// How long a file the KB refuses as truncated may stay so, unchanged, before it is
    /// quarantined; until then it is taken for a copy still under way and looked at again each
    /// time it has been stable for [`WatchOptions::stable_for`].
    pub fn truncated_grace(mut self, grace: Duration) -> Self {
        self.truncated_grace = grace;
        self
    }

    /// Most files decoded and written per batch (the unit a shutdown waits for).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// How often the status file is rewritten.
    pub fn status_every(mut self, interval: Duration) -> Self {
        self.status_every = interval;
        self
    }

    /// Stops the daemon on SIGINT and SIGTERM (after the current batch).
    pub fn handle_signals(mut self, on: bool) -> Self {
        self.handle_signals = on;
        self
    }

    /// Watches at most `n` directories per folder with OS events; a folder with more is polled
    /// (as when the OS refuses more watches).
    pub fn max_watched_dirs(mut self, n: usize) -> Self {
        self.max_watched_dirs = Some(n);
        self
    }

    /// Events buffered between ticks; when full, the next tick runs a full rescan instead.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n.max(16);
        self
    }

    fn tick(&self) -> Duration {
        (self.stable_for / 2).clamp(Duration::from_millis(10), Duration::from_millis(500))
    }
}

/// State shared by the daemon thread and its handle.
pub(crate) struct Shared {
    pub stop: AtomicBool,
    pub wake: tokio::sync::Notify,
    pub status: Mutex<WatchStatus>,
}

/// A running daemon. Dropping it stops the daemon (after the current batch) and waits for it.
#[must_use = "dropping the watcher stops it"]
pub struct Watcher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl KnowledgeBase {
    /// Starts the folder-watching daemon on this KB: the same as [`Watcher::start`]. The
    /// returned handle stops the daemon, after its current batch, when dropped or told to.
    pub fn watch<P: AsRef<Path>>(
        self: Arc<Self>,
        roots: impl IntoIterator<Item = P>,
        options: WatchOptions,
    ) -> Result<Watcher> {
        Watcher::start(self, roots, options)
    }
}

impl Watcher {
    /// Starts watching `roots` into `kb`.
    ///
    /// Each root must be an existing folder; roots may not nest, and the KB directory may not
    /// lie inside one (the daemon never writes into watched folders). Returns once the watches
    /// are set up; the first reconcile scan runs in the background.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use reimagen::KnowledgeBase;
    /// use reimagen::{WatchOptions, Watcher};
    ///
    /// # fn main() -> reimagen::Result<()> {
    /// let tmp = tempfile::tempdir().unwrap();
    /// let photos = tmp.path().join("photos");
    /// std::fs::create_dir(&photos).unwrap();
    /// let kb = Arc::new(KnowledgeBase::create(tmp.path().join("kb"))?);
    /// let watcher = Watcher::start(
    ///     kb.clone(),
    ///     [&photos],
    ///     WatchOptions::default().stable_for(Duration::from_millis(100)),
    /// )?;
    /// // ... drop images into `photos`; they appear in `kb` ...
    /// watcher.stop()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn start<P: AsRef<Path>>(
        kb: Arc<KnowledgeBase>,
        roots: impl IntoIterator<Item = P>,
        options: WatchOptions,
    ) -> Result<Watcher> {
        let roots = check_roots(kb.path(), roots)?;
        let status = WatchStatus::new(
            kb.path(),
            roots
                .iter()
                .map(|r| RootStatus {
                    path: r.clone(),
                    online: true,
                    mode: if options.poll.is_some() {
                        WatchMode::Poll
                    } else {
                        WatchMode::Events
                    },
                    items: 0,
                })
                .collect(),
        );
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            status: Mutex::new(status),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("reimagen-watch-io")
            .build()
            .map_err(|e| WatchError::Daemon {
                reason: format!("cannot start the async runtime: {e}"),
            })?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("reimagen-watch".into())
            .spawn(move || {
                runtime.block_on(engine::run(kb, roots, options, thread_shared, ready_tx))
            })
            .map_err(|e| WatchError::Daemon {
                reason: format!("cannot start the daemon thread: {e}"),
            })?;
        let mut watcher = Watcher {
            shared,
            thread: Some(thread),
        };
        // Wait until the watches are set up (or setting them up failed).
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(watcher),
            Ok(Err(e)) => {
                let _ = watcher.join();
                Err(e)
            }
            Err(_) => Err(watcher.join().err().unwrap_or_else(|| {
                WatchError::Daemon {
                    reason: "the daemon stopped during start-up".into(),
                }
                .into()
            })),
        }
    }

    /// A snapshot of the daemon's status.
    pub fn status(&self) -> WatchStatus {
        self.shared
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// True once the daemon has stopped (it was told to, a signal came, or it failed).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Asks the daemon to stop after the current batch, without waiting.
    pub fn request_stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
    }

    /// Stops the daemon after the current batch and waits for it.
    pub fn stop(mut self) -> Result<()> {
        self.request_stop();
        self.join()
    }

    /// Waits until the daemon stops by itself (a signal, with
    /// [`WatchOptions::handle_signals`], or a failure).
    pub fn wait(mut self) -> Result<()> {
        self.join()
    }

    fn join(&mut self) -> Result<()> {
        match self.thread.take() {
            None => Ok(()),
            Some(t) => t.join().unwrap_or_else(|_| {
                Err(WatchError::Daemon {
                    reason: "the daemon thread panicked".into(),
                }
                .into())
            }),
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.request_stop();
        if let Err(e) = self.join() {
            tracing::error!("watch daemon: {e}");
        }
    }
}

/// Opens the KB in `dir`, waiting up to `wait` while another process holds it (a `reimagen
/// status` that opened it for an instant, for example).
pub fn open_when_free(dir: &Path, wait: Duration) -> Result<KnowledgeBase> {
    let start = std::time::Instant::now();
    loop {
        match KnowledgeBase::open(dir) {
            Err(crate::Error::Store(crate::StoreError::Locked { .. }))
                if start.elapsed() < wait =>
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// Canonical, non-nesting roots that do not hold the KB.
fn check_roots<P: AsRef<Path>>(
    kb_dir: &Path,
    roots: impl IntoIterator<Item = P>,
) -> Result<Vec<PathBuf>> {
    let kb_dir = std::fs::canonicalize(kb_dir).map_err(crate::error::io_err(kb_dir))?;
    let mut out: Vec<PathBuf> = Vec::new();
    for root in roots {
        let root = root.as_ref();
        let bad = |reason: String| WatchError::BadRoot {
            path: root.to_path_buf(),
            reason,
        };
        let canonical = std::fs::canonicalize(root).map_err(|e| bad(e.to_string()))?;
        if !canonical.is_dir() {
            return Err(bad("not a folder".into()).into());
        }
        if kb_dir.starts_with(&canonical) {
            return Err(bad(format!(
                "it holds the knowledge base {} (the daemon never writes into watched folders)",
                kb_dir.display()
            ))
            .into());
        }
        if canonical.starts_with(&kb_dir) {
            return Err(bad(format!(
                "it lies inside the knowledge base {}",
                kb_dir.display()
            ))
            .into());
        }
        if let Some(other) = out
            .iter()
            .find(|o| o.starts_with(&canonical) || canonical.starts_with(o))
        {
            return Err(bad(format!(
                "it overlaps another watched folder, {}",
                other.display()
            ))
            .into());
        }
        out.push(canonical);
    }
    if out.is_empty() {
        return Err(WatchError::BadRoot {
            path: PathBuf::new(),
            reason: "no folder given".into(),
        }
        .into());
    }
    Ok(out)
}
