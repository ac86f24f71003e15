//! What the daemon reports about itself: [`WatchStatus`], published in memory for the handle and
//! atomically rewritten to `watch-status.json` in the KB directory, so that `reimagen status`
//! can answer while the daemon holds the KB's lock.
//!
//! The status file is a report, never an input: nothing the daemon does depends on reading it.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::WatchError;
use crate::error::{Error, Result, StoreError};
use crate::kb::KnowledgeBase;

/// Name of the status file in the KB directory.
pub const STATUS_FILE: &str = "watch-status.json";

/// How a watched folder is followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum WatchMode {
    /// OS file events (inotify, FSEvents, …), plus periodic reconcile scans.
    Events,
    /// Polling, because it was asked for (`--poll`).
    Poll,
    /// Polling, because the OS refused to watch (part of) the folder.
    PollFallback,
}

/// What the daemon is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum DaemonState {
    /// Opening watches and running the first scan.
    Starting,
    /// Files are waiting to settle, be ingested or be deleted.
    Busy,
    /// Nothing queued.
    Idle,
    /// The daemon has stopped (or, in `reimagen status`, is not running).
    Stopped,
}

/// One watched folder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootStatus {
    /// The folder (canonical path).
    pub path: PathBuf,
    /// False while the folder is missing or its share is unmounted: its items are kept.
    pub online: bool,
    /// Events or polling.
    pub mode: WatchMode,
    /// Files under the folder that the KB holds.
    pub items: u64,
}

/// The last reconcile scan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanReport {
    /// Seconds since the epoch when it finished (`at_unix_s` in JSON).
    #[serde(rename = "at_unix_s", alias = "at")]
    pub at: u64,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// Image files seen.
    pub files: u64,
    /// Files that differed from the KB (new, changed or gone).
    pub changed: u64,
}

/// A file the daemon refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantinedFile {
    /// The file.
    pub path: String,
    /// Why it was refused.
    pub reason: String,
    /// Seconds since the epoch when it was refused (`at_unix_s` in JSON).
    #[serde(rename = "at_unix_s", alias = "at")]
    pub at: u64,
}

/// Counts since the daemon started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchCounters {
    /// New pairs added.
    pub added: u64,
    /// Files recorded for a pair already in the KB (renames, moves, copies): no re-embedding.
    pub linked: u64,
    /// Captions updated (sidecar edits, renames, moves to another entity folder).
    pub updated: u64,
    /// Files forgotten (deleted, after the grace period).
    pub removed: u64,
    /// Files quarantined.
    pub quarantined: u64,
}

/// The daemon's state, as the handle and `reimagen status` see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchStatus {
    /// Whether a daemon is running on this KB now.
    pub running: bool,
    /// The daemon's process id.
    pub pid: u32,
    /// The KB directory.
    pub kb: PathBuf,
    /// Seconds since the epoch when the daemon started (`started_at_unix_s` in JSON).
    #[serde(rename = "started_at_unix_s", alias = "started_at")]
    pub started_at: u64,
    /// Seconds since the epoch of this report (`updated_at_unix_s` in JSON).
    #[serde(rename = "updated_at_unix_s", alias = "updated_at")]
    pub updated_at: u64,
    /// What the daemon is doing.
    pub state: DaemonState,
    /// The watched folders.
    pub roots: Vec<RootStatus>,
    /// Files under the watched folders that the KB holds.
    pub items: u64,
    /// Files waiting: to settle and be ingested, or to be deleted after the grace period.
    pub queue: u64,
    /// Of `queue`, the deletions waiting for the grace period.
    pub pending_deletes: u64,
    /// Files ingested of those queued since the queue was last empty (the progress of a large
    /// first ingest).
    pub progress_done: u64,
    /// Files queued since the queue was last empty.
    pub progress_total: u64,
    /// The last reconcile scan.
    pub last_scan: Option<ScanReport>,
    /// Quarantined files under the watched folders, with the reasons.
    pub quarantined: Vec<QuarantinedFile>,
    /// Counts since start.
    pub counters: WatchCounters,
    /// Warnings worth showing once (for example, the OS refused more watches).
    pub warnings: Vec<String>,
}

impl WatchStatus {
    pub(crate) fn new(kb: &Path, roots: Vec<RootStatus>) -> WatchStatus {
        let now = unix_now();
        WatchStatus {
            running: true,
            pid: std::process::id(),
            kb: kb.to_path_buf(),
            started_at: now,
            updated_at: now,
            state: DaemonState::Starting,
            roots,
            items: 0,
            queue: 0,
            pending_deletes: 0,
            progress_done: 0,
            progress_total: 0,
            last_scan: None,
            quarantined: Vec::new(),
            counters: WatchCounters::default(),
            warnings: Vec::new(),
        }
    }

    /// Writes the status file atomically (a temporary file renamed over it).
    pub(crate) fn write(&self, kb_dir: &Path) -> std::io::Result<()> {
        let path = kb_dir.join(STATUS_FILE);
        let tmp = kb_dir.join(format!("{STATUS_FILE}.tmp"));
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        fs::write(&tmp, json)?;
        fs::rename(&tmp, &path)
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The status of the daemon for the KB in `kb_dir`, whether or not one is running.
///
/// While a daemon runs it holds the KB's lock, so its last status file is returned (with
/// `running` true). Otherwise the KB is opened read-only (nothing is written) and the
/// items and quarantine come from it; the folders are those of the last daemon, if any ran.
pub fn daemon_status(kb_dir: &Path) -> Result<WatchStatus> {
    let path = kb_dir.join(STATUS_FILE);
    let last: Option<WatchStatus> = match fs::read(&path) {
        Ok(bytes) => Some(
            serde_json::from_slice(&bytes).map_err(|e| WatchError::StatusFile {
                path: path.clone(),
                reason: e.to_string(),
            })?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(Error::Io { path, source });
        }
    };
    // A daemon holds the lock; anything else holding it is a writer beside which the KB opens
    // read-only, so `status` never keeps a daemon from starting.
    if KnowledgeBase::is_locked(kb_dir)?
        && let Some(status) = last.as_ref().filter(|s| pid_alive(s.pid))
    {
        return Ok(WatchStatus {
            running: true,
            ..status.clone()
        });
    }
    stopped_status(kb_dir, last)
}

/// What `status` says of a KB no daemon holds: the last report, with counts read from the KB.
fn stopped_status(kb_dir: &Path, last: Option<WatchStatus>) -> Result<WatchStatus> {
    let opened = match KnowledgeBase::open_read_only(kb_dir) {
        // Nothing to read yet (a store to migrate, an index to rebuild): open it as a writer.
        Err(Error::Store(StoreError::ReadOnly { .. })) => KnowledgeBase::open(kb_dir),
        other => other,
    };
    match opened {
        Ok(kb) => {
            let paths = kb.paths()?;
            let mut status = last.unwrap_or_else(|| WatchStatus {
                pid: 0,
                ..WatchStatus::new(kb.path(), Vec::new())
            });
            status.running = false;
            status.state = DaemonState::Stopped;
            status.queue = 0;
            status.pending_deletes = 0;
            status.progress_done = 0;
            status.progress_total = 0;
            for root in &mut status.roots {
                root.items = paths
                    .iter()
                    .filter(|p| Path::new(&p.path).starts_with(&root.path))
                    .count() as u64;
                root.online = root.path.is_dir();
            }
            status.items = if status.roots.is_empty() {
                paths.len() as u64
            } else {
                status.roots.iter().map(|r| r.items).sum()
            };
            status.quarantined = kb
                .quarantined()?
                .into_iter()
                .map(|q| QuarantinedFile {
                    path: q.path,
                    reason: q.reason,
                    at: q.at,
                })
                .collect();
            Ok(status)
        }
        Err(Error::Store(StoreError::Locked { .. })) => match last {
            Some(mut status) if pid_alive(status.pid) => {
                status.running = true;
                Ok(status)
            }
            _ => Err(WatchError::LockedByOther {
                path: kb_dir.to_path_buf(),
            }
            .into()),
        },
        Err(e) => Err(e),
    }
}

fn pid_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}
