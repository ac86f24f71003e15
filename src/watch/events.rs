//! OS file events (notify), turned into hints for the engine: "look at this path", "rescan",
//! "the OS refused more watches here".
//!
//! Events are never trusted as facts (a folder moved in sends no per-file events, files written
//! right after a folder is created can send none, the queue can overflow): the engine looks at
//! the file system itself for every hint, and scans to be sure. Links are not followed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use notify::event::{AccessKind, AccessMode};
use notify::{Config, Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};

/// Hints gathered between two ticks. Paths are de-duplicated; past `capacity` paths the batch
/// asks for a rescan instead of growing.
#[derive(Debug, Default)]
pub(crate) struct Hints {
    pub paths: HashSet<PathBuf>,
    pub rescan: bool,
    pub watch_limit: Vec<PathBuf>,
    pub limit_hit: bool,
}

/// Where the notify thread leaves hints for the daemon.
pub(crate) struct HintSink {
    pub hints: Mutex<Hints>,
    pub capacity: usize,
    pub wake: tokio::sync::Notify,
    pub any: AtomicBool,
}

impl HintSink {
    pub fn new(capacity: usize) -> Arc<HintSink> {
        Arc::new(HintSink {
            hints: Mutex::new(Hints::default()),
            capacity,
            wake: tokio::sync::Notify::new(),
            any: AtomicBool::new(false),
        })
    }

    pub fn take(&self) -> Hints {
        self.any.store(false, Ordering::SeqCst);
        std::mem::take(&mut *self.hints.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn with(&self, f: impl FnOnce(&mut Hints)) {
        {
            let mut hints = self.hints.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut hints);
            if hints.paths.len() > self.capacity {
                // The queue overflowed: forget the paths, scan instead.
                hints.paths.clear();
                hints.rescan = true;
            }
        }
        if !self.any.swap(true, Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }

    fn handle(&self, event: notify::Result<Event>) {
        match event {
            Ok(event) => {
                if event.need_rescan() {
                    self.with(|h| h.rescan = true);
                }
                // Opening and reading (our own hashing included) change nothing.
                if let EventKind::Access(kind) = event.kind
                    && kind != AccessKind::Close(AccessMode::Write)
                {
                    return;
                }
                if event.paths.is_empty() {
                    return;
                }
                self.with(|h| h.paths.extend(event.paths));
            }
            Err(e) => match e.kind {
                notify::ErrorKind::MaxFilesWatch => self.with(|h| {
                    h.limit_hit = true;
                    h.watch_limit.extend(e.paths);
                }),
                _ => {
                    tracing::warn!("file watcher: {e}; rescanning to be sure");
                    self.with(|h| h.rescan = true);
                }
            },
        }
    }
}

/// Starts an OS watcher that feeds `sink`. Links are not followed.
pub(crate) fn os_watcher(sink: Arc<HintSink>) -> notify::Result<RecommendedWatcher> {
    RecommendedWatcher::new(
        move |event| sink.handle(event),
        Config::default().with_follow_symlinks(false),
    )
}

/// Why a root could not be watched with events.
pub(crate) enum WatchRefusal {
    /// The OS limit on watches (inotify `max_user_watches`).
    Limit,
    /// Anything else.
    Other(String),
}

/// Watches `root` recursively.
pub(crate) fn watch_root(
    watcher: &mut RecommendedWatcher,
    root: &Path,
) -> Result<(), WatchRefusal> {
    let _ = watcher.unwatch(root);
    watcher
        .watch(root, RecursiveMode::Recursive)
        .map_err(|e| match e.kind {
            notify::ErrorKind::MaxFilesWatch => WatchRefusal::Limit,
            _ => WatchRefusal::Other(e.to_string()),
        })
}

/// The message shown once when the OS refuses more watches, with the fix.
pub(crate) fn limit_message(root: &Path, poll: std::time::Duration) -> String {
    let current = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
        .map(|s| format!(" (now {})", s.trim()))
        .unwrap_or_default();
    format!(
        "the OS refused more file watches for {} (inotify limit fs.inotify.max_user_watches \
         reached{current}); polling it every {} instead. To watch it with events, raise the \
         limit: `sudo sysctl fs.inotify.max_user_watches=524288`, and keep it across reboots \
         with a line `fs.inotify.max_user_watches=524288` in /etc/sysctl.d/90-inotify.conf; then \
         restart the daemon",
        root.display(),
        humantime::format_duration(poll)
    )
}
