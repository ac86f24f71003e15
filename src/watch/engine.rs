//! The daemon's engine: all its state, and one `tick` that moves the KB towards what the folders
//! hold. Also the async loop ([`run`]) that wakes it.
//!
//! A tick: check that each root is online; scan the roots that need it; look at every hinted
//! path; ingest the files whose size and mtime have been stable for `stable_for`; apply the
//! deletions whose grace has passed; fix captions that no longer follow the rules; publish the
//! status. A tick runs on tokio's blocking pool and never holds a transaction across an
//! `.await` (it only calls the KB's blocking API, whose writer owns every transaction).
//!
//! In-memory mirrors of the KB's `paths` and `quarantine` tables are loaded at start and kept in
//! step with every write the engine makes (the engine is the only writer while it holds the KB).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use notify::RecommendedWatcher;
use rayon::prelude::*;

use super::events::{self, HintSink, Hints, WatchRefusal};
use super::scan::{self, Fingerprint};
use super::status::{DaemonState, QuarantinedFile, ScanReport, WatchStatus, unix_now};
use super::{Shared, WatchMode, WatchOptions};
use crate::error::{Error, IngestError, Result, WatchError};
use crate::ingest::caption::sidecar_path;
use crate::ingest::{CaptionRules, PairText, ReadFile, caption_for_file, is_image_path};
use crate::kb::{AddOutcome, ImageSource, KnowledgeBase, NewPair, PathOp, PathOpOutcome};
use crate::store::records::{ImageId, QuarantineRecord};

/// Runs the daemon until told to stop (or a signal, with `handle_signals`).
pub(crate) async fn run(
    kb: Arc<KnowledgeBase>,
    roots: Vec<PathBuf>,
    options: WatchOptions,
    shared: Arc<Shared>,
    ready: std::sync::mpsc::Sender<Result<()>>,
) -> Result<()> {
    let daemon_err = |reason: String| Error::from(WatchError::Daemon { reason });
    let sink = HintSink::new(options.queue_capacity);
    let tick_every = options.tick();
    let handle_signals = options.handle_signals;
    let mut signals = match Signals::new(handle_signals) {
        Ok(s) => s,
        Err(e) => {
            let e = daemon_err(format!("cannot listen for signals: {e}"));
            let _ = ready.send(Err(daemon_err(e.to_string())));
            return Err(e);
        }
    };
    let start = {
        let (kb, shared, sink) = (kb.clone(), shared.clone(), sink.clone());
        tokio::task::spawn_blocking(move || Engine::new(kb, roots, options, shared, sink)).await
    };
    let mut engine = match start {
        Ok(Ok(engine)) => engine,
        Ok(Err(e)) => {
            let _ = ready.send(Err(daemon_err(e.to_string())));
            return Err(e);
        }
        Err(e) => {
            let _ = ready.send(Err(daemon_err(e.to_string())));
            return Err(daemon_err(e.to_string()));
        }
    };
    let _ = ready.send(Ok(()));
    // Signals are awaited on their own task, so that they are seen while a tick runs and a long
    // ingest stops after its current batch.
    if handle_signals {
        let shared = shared.clone();
        tokio::spawn(async move {
            let name = signals.recv().await;
            tracing::info!("{name}: finishing the current batch, then stopping");
            shared.stop.store(true, Ordering::SeqCst);
            shared.wake.notify_one();
        });
    }
    let mut interval = tokio::time::interval(tick_every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut deadline: Option<Instant> = None;
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let due = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shared.wake.notified() => continue,
            _ = interval.tick() => {}
            // The moment the first waiting file has been stable long enough.
            _ = due => {}
            // A hint wakes the loop early only to keep latency low; the tick still runs at most
            // once per interval unless the engine asked for more.
            _ = sink.wake.notified() => {}
        }
        let hints = sink.take();
        let result = tokio::task::spawn_blocking(move || {
            engine.tick(hints);
            let next = engine.next_deadline();
            (engine, next)
        })
        .await;
        (engine, deadline) = result.map_err(|e| daemon_err(format!("a tick failed: {e}")))?;
    }
    tokio::task::spawn_blocking(move || engine.finish())
        .await
        .map_err(|e| daemon_err(format!("shutting down failed: {e}")))?;
    Ok(())
}

/// SIGINT and SIGTERM, when asked for.
struct Signals {
    #[cfg(unix)]
    inner: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn new(on: bool) -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let inner = if on {
                Some((
                    signal(SignalKind::interrupt())?,
                    signal(SignalKind::terminate())?,
                ))
            } else {
                None
            };
            Ok(Signals { inner })
        }
        #[cfg(not(unix))]
        {
            let _ = on;
            Ok(Signals {})
        }
    }

    async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        if let Some((int, term)) = &mut self.inner {
            return tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            };
        }
        std::future::pending().await
    }
}

/// What the KB holds for a path (mirror of the `paths` table).
#[derive(Clone, Copy, Debug)]
struct Known {
    id: ImageId,
    fp: Fingerprint,
}

/// A file waiting to be stable.
#[derive(Clone, Copy, Debug)]
struct Pending {
    fp: Fingerprint,
    since: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum ScanKind {
    /// Compare sizes, mtimes and sidecars with what is known.
    Light,
    /// Also re-check every caption against the rules.
    Full,
}

struct Root {
    path: PathBuf,
    /// A mount point at start: it is offline when it no longer is one (the share unmounted).
    mount_point: bool,
    online: bool,
    mode: WatchMode,
    last_poll: Instant,
    needs_scan: Option<ScanKind>,
    /// Sidecars of this root have been recorded once (changes after that are edits).
    sidecars_seen: bool,
}

pub(crate) struct Engine {
    kb: Arc<KnowledgeBase>,
    opts: WatchOptions,
    shared: Arc<Shared>,
    sink: Arc<HintSink>,
    watcher: Option<RecommendedWatcher>,
    roots: Vec<Root>,
    known: BTreeMap<PathBuf, Known>,
    by_id: HashMap<ImageId, BTreeSet<PathBuf>>,
    /// Keyed by the lossy path, as the KB records it.
    quarantine: BTreeMap<PathBuf, QuarantineRecord>,
    pending: HashMap<PathBuf, Pending>,
    /// Files the KB refused as truncated, with the fingerprint they had and when that was first
    /// seen: a copy still under way, put back to settle until it stays truncated for
    /// `truncated_grace`, when it is quarantined.
    truncated: HashMap<PathBuf, (Fingerprint, Instant)>,
    deletes: BTreeMap<PathBuf, Instant>,
    sidecars: HashMap<PathBuf, Fingerprint>,
    caption_check: HashSet<ImageId>,
    /// Folders that appeared, to walk once more after `stable_for`: files written into a new
    /// folder before the OS watch on it exists send no event.
    rewalk: Vec<(PathBuf, Instant)>,
    to_quarantine: Vec<(PathBuf, String, Fingerprint)>,
    to_unquarantine: BTreeSet<PathBuf>,
    last_full_scan: Instant,
    last_status_write: Option<Instant>,
    first_scan_done: bool,
    progress_done: u64,
    progress_total: u64,
    counters: super::WatchCounters,
    warnings: Vec<String>,
    last_scan: Option<ScanReport>,
}

fn qkey(path: &Path) -> PathBuf {
    PathBuf::from(path.to_string_lossy().into_owned())
}

#[cfg(unix)]
fn device(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(path).ok().map(|m| m.dev())
}

#[cfg(not(unix))]
fn device(_path: &Path) -> Option<u64> {
    None
}

fn is_mount_point(path: &Path) -> bool {
    match (device(path), path.parent().and_then(device)) {
        (Some(a), Some(b)) => a != b,
        _ => false,
    }
}

/// The caption rules of `import`, normalised the way the KB stores text, so that what is stored
/// and what the rules give compare equal. A sidecar that is a link is refused (links are never
/// followed).
fn caption_of(image: &Path, rules: &CaptionRules) -> std::result::Result<PairText, String> {
    let sidecar = sidecar_path(image);
    if fs::symlink_metadata(&sidecar).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(format!(
            "{}: the caption sidecar is a symbolic link; links are not followed",
            sidecar.display()
        ));
    }
    caption_for_file(image, rules)
        .and_then(|text| text.normalised(rules, image))
        .map_err(|e| e.to_string())
}

/// A file after the parallel part of ingest (caption, read, hash).
enum Prepared {
    /// Read whole and unchanged meanwhile: its bytes go to the KB as they are, not read again.
    Hashed {
        path: PathBuf,
        fp: Fingerprint,
        text: PairText,
        id: ImageId,
        bytes: Vec<u8>,
    },
    /// Over the size limit: the KB refuses it with the proper error, without reading it.
    Oversized {
        path: PathBuf,
        text: PairText,
    },
    Failed {
        path: PathBuf,
        reason: String,
    },
    Vanished {
        path: PathBuf,
    },
    Unstable {
        path: PathBuf,
        fp: Fingerprint,
    },
}

fn prepare(path: &Path, fp: Fingerprint, rules: &CaptionRules, max_bytes: u64) -> Prepared {
    let path = path.to_path_buf();
    let text = match caption_of(&path, rules) {
        Ok(t) => t,
        Err(reason) => return Prepared::Failed { path, reason },
    };
    if fp.size > max_bytes {
        return Prepared::Oversized { path, text };
    }
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Prepared::Vanished { path },
        Err(e) => {
            let reason = IngestError::Read {
                path: path.clone(),
                source: e,
            }
            .to_string();
            return Prepared::Failed { path, reason };
        }
    };
    match Fingerprint::of_path(&path) {
        Ok((now, kind)) if kind.is_file() && now == fp => Prepared::Hashed {
            id: ImageId::of_bytes(&bytes),
            bytes,
            path,
            fp,
            text,
        },
        Ok((now, kind)) if kind.is_file() => Prepared::Unstable { path, fp: now },
        _ => Prepared::Vanished { path },
    }
}

/// Path ops with what each means to the mirrors.
#[derive(Default)]
struct OpBatch {
    ops: Vec<PathOp>,
    meta: Vec<OpMeta>,
}

enum OpMeta {
    Set {
        path: PathBuf,
        id: ImageId,
        fp: Fingerprint,
    },
    Remove {
        path: PathBuf,
    },
    Orphan,
    Update,
    Quarantine {
        path: PathBuf,
        reason: String,
        fp: Option<Fingerprint>,
    },
    Unquarantine {
        path: PathBuf,
    },
}

impl OpBatch {
    fn push(&mut self, op: PathOp, meta: OpMeta) {
        self.ops.push(op);
        self.meta.push(meta);
    }

    fn set(&mut self, path: &Path, id: ImageId, fp: Fingerprint) {
        self.push(
            PathOp::Set {
                path: path.to_path_buf(),
                id,
                seen: Some((fp.size, fp.mtime_ns)),
            },
            OpMeta::Set {
                path: path.to_path_buf(),
                id,
                fp,
            },
        );
    }

    fn remove(&mut self, path: &Path) {
        self.push(
            PathOp::Remove {
                path: path.to_path_buf(),
                remove_orphan: true,
            },
            OpMeta::Remove {
                path: path.to_path_buf(),
            },
        );
    }

    fn quarantine(&mut self, path: &Path, reason: String, fp: Option<Fingerprint>) {
        self.push(
            PathOp::Quarantine {
                path: path.to_path_buf(),
                reason: reason.clone(),
                seen: fp.map(|fp| (fp.size, fp.mtime_ns)),
            },
            OpMeta::Quarantine {
                path: path.to_path_buf(),
                reason,
                fp,
            },
        );
    }

    fn unquarantine(&mut self, path: &Path) {
        self.push(
            PathOp::Unquarantine {
                path: path.to_path_buf(),
            },
            OpMeta::Unquarantine {
                path: path.to_path_buf(),
            },
        );
    }
}

impl Engine {
    fn new(
        kb: Arc<KnowledgeBase>,
        roots: Vec<PathBuf>,
        opts: WatchOptions,
        shared: Arc<Shared>,
        sink: Arc<HintSink>,
    ) -> Result<Engine> {
        let now = Instant::now();
        let mode = if opts.poll.is_some() {
            WatchMode::Poll
        } else {
            WatchMode::Events
        };
        let mut engine = Engine {
            roots: roots
                .into_iter()
                .map(|path| Root {
                    mount_point: is_mount_point(&path),
                    path,
                    online: true,
                    mode,
                    last_poll: now,
                    needs_scan: Some(ScanKind::Full),
                    sidecars_seen: false,
                })
                .collect(),
            kb,
            opts,
            shared,
            sink,
            watcher: None,
            known: BTreeMap::new(),
            by_id: HashMap::new(),
            quarantine: BTreeMap::new(),
            pending: HashMap::new(),
            truncated: HashMap::new(),
            deletes: BTreeMap::new(),
            sidecars: HashMap::new(),
            caption_check: HashSet::new(),
            rewalk: Vec::new(),
            to_quarantine: Vec::new(),
            to_unquarantine: BTreeSet::new(),
            last_full_scan: now,
            last_status_write: None,
            first_scan_done: false,
            progress_done: 0,
            progress_total: 0,
            counters: Default::default(),
            warnings: Vec::new(),
            last_scan: None,
        };
        for record in engine.kb.paths()? {
            let path = PathBuf::from(&record.path);
            let fp = Fingerprint {
                size: record.size,
                mtime_ns: record.mtime_ns,
            };
            engine.known_insert(path, record.id, fp);
        }
        for record in engine.kb.quarantined()? {
            engine
                .quarantine
                .insert(PathBuf::from(&record.path), record);
        }
        if mode == WatchMode::Events {
            match events::os_watcher(engine.sink.clone()) {
                Ok(w) => engine.watcher = Some(w),
                Err(e) => {
                    let msg = format!(
                        "cannot start the OS file watcher ({e}); polling every {} instead",
                        humantime::format_duration(engine.opts.fallback_poll)
                    );
                    tracing::warn!("{msg}");
                    engine.warnings.push(msg);
                    for r in &mut engine.roots {
                        r.mode = WatchMode::PollFallback;
                    }
                }
            }
            for i in 0..engine.roots.len() {
                engine.watch_root(i);
            }
        }
        tracing::info!(
            roots = engine.roots.len(),
            known = engine.known.len(),
            "watching {}",
            engine
                .roots
                .iter()
                .map(|r| r.path.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        engine.publish(true);
        Ok(engine)
    }

    /// Records that `path` holds `id`. Whenever the set of files holding a pair changes, the
    /// pair's caption is checked (its first file may have changed).
    fn known_insert(&mut self, path: PathBuf, id: ImageId, fp: Fingerprint) {
        let old = self.known.insert(path.clone(), Known { id, fp });
        if let Some(old) = old
            && old.id != id
        {
            self.unlink(&old.id, &path);
        }
        if old.is_none_or(|o| o.id != id) {
            self.caption_check.insert(id);
        }
        self.by_id.entry(id).or_default().insert(path);
    }

    fn known_remove(&mut self, path: &Path) -> Option<Known> {
        let old = self.known.remove(path)?;
        self.unlink(&old.id, path);
        Some(old)
    }

    fn unlink(&mut self, id: &ImageId, path: &Path) {
        if let Some(set) = self.by_id.get_mut(id) {
            set.remove(path);
            if set.is_empty() {
                self.by_id.remove(id);
            } else {
                self.caption_check.insert(*id);
            }
        }
    }

    fn root_of(&self, path: &Path) -> Option<usize> {
        self.roots.iter().position(|r| path.starts_with(&r.path))
    }

    fn root_online(&self, path: &Path) -> bool {
        self.root_of(path).is_some_and(|i| self.roots[i].online)
    }

    fn watch_root(&mut self, i: usize) {
        let root = self.roots[i].path.clone();
        if let Some(max) = self.opts.max_watched_dirs {
            let dirs = scan::walk(&root).dirs;
            if dirs as usize > max {
                let msg = format!(
                    "{} has {dirs} folders, more than the {max} allowed to be watched with events; \
                     polling it every {} instead",
                    root.display(),
                    humantime::format_duration(self.opts.fallback_poll)
                );
                self.fall_back_to_polling(i, msg);
                return;
            }
        }
        let Some(watcher) = &mut self.watcher else {
            return;
        };
        match events::watch_root(watcher, &root) {
            Ok(()) => {}
            Err(WatchRefusal::Limit) => {
                let msg = events::limit_message(&root, self.opts.fallback_poll);
                self.fall_back_to_polling(i, msg);
            }
            Err(WatchRefusal::Other(e)) => {
                let msg = format!(
                    "cannot watch {} with events ({e}); polling it every {} instead",
                    root.display(),
                    humantime::format_duration(self.opts.fallback_poll)
                );
                self.fall_back_to_polling(i, msg);
            }
        }
    }

    fn fall_back_to_polling(&mut self, i: usize, msg: String) {
        let root = &mut self.roots[i];
        if root.mode == WatchMode::Events {
            root.mode = WatchMode::PollFallback;
            tracing::warn!("{msg}");
            self.warnings.push(msg);
        }
    }

    fn poll_interval(&self, mode: WatchMode) -> Option<Duration> {
        match mode {
            WatchMode::Events => None,
            WatchMode::Poll => self.opts.poll,
            WatchMode::PollFallback => Some(self.opts.fallback_poll),
        }
    }

    /// One step towards the folders' state.
    pub(crate) fn tick(&mut self, hints: Hints) {
        let now = Instant::now();
        self.check_roots();
        if hints.limit_hit {
            let mut roots: BTreeSet<usize> = hints
                .watch_limit
                .iter()
                .filter_map(|p| self.root_of(p))
                .collect();
            if roots.is_empty() {
                roots = (0..self.roots.len()).collect();
            }
            for i in roots {
                let msg = events::limit_message(&self.roots[i].path, self.opts.fallback_poll);
                self.fall_back_to_polling(i, msg);
            }
        }
        if hints.rescan {
            tracing::info!("the event queue overflowed or the watcher asked for a rescan");
            for r in &mut self.roots {
                r.needs_scan = r.needs_scan.max(Some(ScanKind::Light));
            }
        }
        for i in 0..self.roots.len() {
            if let Some(every) = self.poll_interval(self.roots[i].mode)
                && now.duration_since(self.roots[i].last_poll) >= every
            {
                let r = &mut self.roots[i];
                r.needs_scan = r.needs_scan.max(Some(ScanKind::Light));
            }
        }
        if now.duration_since(self.last_full_scan) >= self.opts.rescan_every {
            self.last_full_scan = now;
            for r in &mut self.roots {
                r.needs_scan = Some(ScanKind::Full);
            }
        }
        for i in 0..self.roots.len() {
            if self.roots[i].online
                && let Some(kind) = self.roots[i].needs_scan.take()
            {
                self.scan_root(i, kind);
            }
        }
        for path in hints.paths {
            self.touch(&path, true);
        }
        let stable_for = self.opts.stable_for;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.rewalk)
            .into_iter()
            .partition(|(_, t)| t.elapsed() >= stable_for);
        self.rewalk = later;
        for (dir, _) in due {
            if let Some(i) = self.root_of(&dir)
                && self.roots[i].online
                && dir.is_dir()
            {
                self.reconcile_dir(i, &dir, ScanKind::Light);
            }
        }
        let ready = self.settle(now);
        if !ready.is_empty() {
            self.ingest(ready);
        }
        self.apply_deletes();
        self.check_captions();
        self.flush_quarantine();
        self.first_scan_done = true;
        if self.pending.is_empty() {
            self.progress_done = 0;
            self.progress_total = 0;
        }
        self.publish(false);
    }

    /// When the next tick has something to do: the first waiting file becomes stable, a new
    /// folder is due for its second walk, or a deletion's grace ends.
    fn next_deadline(&self) -> Option<Instant> {
        let stable_for = self.opts.stable_for;
        let grace = self.opts.delete_grace.max(stable_for);
        let settle = self.pending.values().map(|p| p.since + stable_for).min();
        let rewalk = self.rewalk.iter().map(|(_, t)| *t + stable_for).min();
        let delete = self.deletes.values().min().map(|t| *t + grace);
        // A deletion held back while files settle is due in the past: do not spin on it.
        let soonest = Instant::now() + Duration::from_millis(10);
        [settle, rewalk, delete]
            .into_iter()
            .flatten()
            .min()
            .map(|d| d.max(soonest))
    }

    fn check_roots(&mut self) {
        for i in 0..self.roots.len() {
            let r = &self.roots[i];
            let online = fs::symlink_metadata(&r.path).is_ok_and(|m| m.is_dir())
                && (!r.mount_point || is_mount_point(&r.path));
            if r.online && !online {
                let items = self.items_under(&r.path);
                tracing::warn!(
                    "{} is gone or unmounted: its {items} items are kept (offline) until it returns",
                    r.path.display()
                );
                let path = r.path.clone();
                self.roots[i].online = false;
                self.pending.retain(|p, _| !p.starts_with(&path));
                self.deletes.retain(|p, _| !p.starts_with(&path));
            } else if !r.online && online {
                tracing::info!("{} is back: rescanning it", r.path.display());
                self.roots[i].online = true;
                self.roots[i].needs_scan = Some(ScanKind::Full);
                if self.roots[i].mode == WatchMode::Events {
                    self.watch_root(i);
                }
            }
        }
    }

    fn items_under(&self, dir: &Path) -> u64 {
        self.known
            .range(dir.to_path_buf()..)
            .take_while(|(p, _)| p.starts_with(dir))
            .count() as u64
    }

    fn scan_root(&mut self, i: usize, kind: ScanKind) {
        let started = Instant::now();
        let root = self.roots[i].path.clone();
        self.roots[i].last_poll = started;
        let (files, changed) = self.reconcile_dir(i, &root, kind);
        self.roots[i].sidecars_seen = true;
        let report = ScanReport {
            at: unix_now(),
            duration_ms: started.elapsed().as_millis() as u64,
            files,
            changed,
        };
        if kind == ScanKind::Full || changed > 0 {
            tracing::info!(
                root = %root.display(),
                files,
                changed,
                ms = report.duration_ms,
                "{} scan",
                if kind == ScanKind::Full { "reconcile" } else { "light" }
            );
        }
        self.last_scan = Some(report);
    }

    /// Compares what `dir` holds with what is known; returns (image files seen, differences).
    fn reconcile_dir(&mut self, i: usize, dir: &Path, kind: ScanKind) -> (u64, u64) {
        let root = self.roots[i].path.clone();
        let walk = scan::walk(dir);
        for (path, reason) in &walk.unreadable {
            tracing::warn!(
                "{}: cannot read this folder ({reason}); its files are kept as they are",
                path.display()
            );
        }
        let queued_before = self.pending.len() + self.deletes.len();
        let mut seen: HashSet<PathBuf> = HashSet::with_capacity(walk.images.len());
        for (path, fp) in &walk.images {
            seen.insert(path.clone());
            self.consider(path, *fp, false);
        }
        let sidecars_seen = self.roots[i].sidecars_seen;
        let mut seen_sidecars = HashSet::with_capacity(walk.sidecars.len());
        for (path, fp) in &walk.sidecars {
            seen_sidecars.insert(path.clone());
            let before = self.sidecars.insert(path.clone(), *fp);
            if sidecars_seen && before != Some(*fp) {
                self.sidecar_changed(path);
            }
        }
        let gone_sidecars: Vec<PathBuf> = self
            .sidecars
            .keys()
            .filter(|p| p.starts_with(dir) && !seen_sidecars.contains(*p))
            .cloned()
            .collect();
        for path in gone_sidecars {
            self.sidecars.remove(&path);
            self.sidecar_changed(&path);
        }
        for (path, fp) in &walk.links {
            seen.insert(path.clone());
            self.check_link(&root, path, *fp);
        }
        let unreadable: Vec<&PathBuf> = walk.unreadable.iter().map(|(p, _)| p).collect();
        let hidden = |p: &Path| unreadable.iter().any(|u| p.starts_with(u));
        let gone: Vec<PathBuf> = self
            .known
            .range(dir.to_path_buf()..)
            .take_while(|(p, _)| p.starts_with(dir))
            .filter(|(p, _)| !seen.contains(*p) && !hidden(p))
            .map(|(p, _)| p.clone())
            .collect();
        let now = Instant::now();
        for path in gone {
            self.deletes.entry(path).or_insert(now);
        }
        let seen_keys: HashSet<PathBuf> = seen.iter().map(|p| qkey(p)).collect();
        let dir_key = qkey(dir);
        let stale: Vec<PathBuf> = self
            .quarantine
            .range(dir_key.clone()..)
            .take_while(|(p, _)| p.starts_with(&dir_key))
            .filter(|(p, _)| !seen_keys.contains(*p) && !hidden(p))
            .map(|(p, _)| p.clone())
            .collect();
        self.to_unquarantine.extend(stale);
        self.pending
            .retain(|p, _| !p.starts_with(dir) || seen.contains(p));
        if kind == ScanKind::Full {
            let ids: Vec<ImageId> = self
                .known
                .range(dir.to_path_buf()..)
                .take_while(|(p, _)| p.starts_with(dir))
                .map(|(_, k)| k.id)
                .collect();
            self.caption_check.extend(ids);
        }
        let queued_after = self.pending.len() + self.deletes.len();
        (
            walk.images.len() as u64,
            queued_after.saturating_sub(queued_before) as u64,
        )
    }

    /// Looks at a path an event named.
    fn touch(&mut self, path: &Path, forced: bool) {
        let Some(i) = self.root_of(path) else {
            return;
        };
        if !self.roots[i].online || path == self.roots[i].path.as_path() {
            if path == self.roots[i].path.as_path() {
                self.check_roots();
            }
            return;
        }
        match fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.gone(path),
            Err(e) => tracing::debug!("{}: {e}", path.display()),
            Ok(meta) => {
                let kind = meta.file_type();
                let fp = Fingerprint::of(&meta);
                if kind.is_dir() {
                    self.reconcile_dir(i, path, ScanKind::Light);
                    if !self.rewalk.iter().any(|(p, _)| p == path) {
                        self.rewalk.push((path.to_path_buf(), Instant::now()));
                    }
                } else if kind.is_symlink() {
                    let root = self.roots[i].path.clone();
                    self.check_link(&root, path, fp);
                } else if kind.is_file() {
                    if is_image_path(path) {
                        self.consider(path, fp, forced);
                    } else if scan::is_sidecar(path) {
                        self.sidecars.insert(path.to_path_buf(), fp);
                        self.sidecar_changed(path);
                    }
                }
            }
        }
    }

    /// A path (file or folder) no longer exists.
    fn gone(&mut self, path: &Path) {
        tracing::debug!("gone: {}", path.display());
        let now = Instant::now();
        if scan::is_sidecar(path) {
            self.sidecars.remove(path);
            self.sidecar_changed(path);
        }
        if self.pending.remove(path).is_none() && !is_image_path(path) {
            self.pending.retain(|p, _| !p.starts_with(path));
        }
        let known: Vec<PathBuf> = self
            .known
            .range(path.to_path_buf()..)
            .take_while(|(p, _)| p.starts_with(path))
            .map(|(p, _)| p.clone())
            .collect();
        for p in known {
            self.deletes.entry(p).or_insert(now);
        }
        let key = qkey(path);
        let quarantined: Vec<PathBuf> = self
            .quarantine
            .range(key.clone()..)
            .take_while(|(p, _)| p.starts_with(&key))
            .map(|(p, _)| p.clone())
            .collect();
        self.to_unquarantine.extend(quarantined);
        if !is_image_path(path) && !scan::is_sidecar(path) {
            self.sidecars.retain(|p, _| !p.starts_with(path));
        }
    }

    /// An image file is there with this fingerprint: queue it unless it is known as is.
    fn consider(&mut self, path: &Path, fp: Fingerprint, forced: bool) {
        self.deletes.remove(path);
        if !forced {
            if self.known.get(path).is_some_and(|k| k.fp == fp) {
                return;
            }
            if self
                .quarantine
                .get(&qkey(path))
                .is_some_and(|q| q.size == fp.size && q.mtime_ns == fp.mtime_ns)
            {
                return;
            }
        }
        let now = Instant::now();
        match self.pending.get_mut(path) {
            Some(p) => {
                if p.fp != fp {
                    p.fp = fp;
                    p.since = now;
                }
            }
            None => {
                tracing::debug!(forced, "pending: {}", path.display());
                self.pending
                    .insert(path.to_path_buf(), Pending { fp, since: now });
                self.progress_total += 1;
            }
        }
    }

    /// A sidecar was created, edited or deleted: the images it captions need a look.
    fn sidecar_changed(&mut self, sidecar: &Path) {
        let (Some(dir), Some(stem)) = (sidecar.parent(), sidecar.file_stem()) else {
            return;
        };
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        let images: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.file_stem() == Some(stem) && is_image_path(p))
            .collect();
        for image in images {
            let Ok((fp, kind)) = Fingerprint::of_path(&image) else {
                continue;
            };
            if !kind.is_file() {
                continue;
            }
            match self.known.get(&image) {
                Some(k) if k.fp == fp => {
                    self.caption_check.insert(k.id);
                }
                _ => self.consider(&image, fp, true),
            }
        }
    }

    fn check_link(&mut self, root: &Path, link: &Path, fp: Fingerprint) {
        if self.known.contains_key(link) {
            self.deletes
                .entry(link.to_path_buf())
                .or_insert_with(Instant::now);
        }
        self.pending.remove(link);
        let key = qkey(link);
        match scan::link_problem(link, root) {
            None => {
                if self.quarantine.contains_key(&key) {
                    self.to_unquarantine.insert(key);
                }
            }
            Some(reason) => {
                let same = self
                    .quarantine
                    .get(&key)
                    .is_some_and(|q| q.size == fp.size && q.mtime_ns == fp.mtime_ns);
                if !same && !self.to_quarantine.iter().any(|(p, _, _)| p == link) {
                    self.to_quarantine.push((link.to_path_buf(), reason, fp));
                }
            }
        }
    }

    /// Whether a file the KB found truncated may still be growing: its fingerprint (to settle
    /// again) unless it has stayed the same, truncated, for `truncated_grace`.
    fn still_being_written(&mut self, path: &Path, now: Instant) -> Option<Fingerprint> {
        let fp = match Fingerprint::of_path(path) {
            Ok((fp, kind)) if kind.is_file() => fp,
            _ => return None,
        };
        let grace = self.opts.truncated_grace;
        let first = match self.truncated.get(path) {
            Some(&(seen, since)) if seen == fp => since,
            _ => now,
        };
        self.truncated.insert(path.to_path_buf(), (fp, first));
        (now.duration_since(first) < grace).then_some(fp)
    }

    /// Files whose size and mtime have not changed for `stable_for`.
    fn settle(&mut self, now: Instant) -> Vec<(PathBuf, Fingerprint)> {
        let stable_for = self.opts.stable_for;
        let mut ready = Vec::new();
        let mut moved = Vec::new();
        for (path, p) in &mut self.pending {
            match Fingerprint::of_path(path) {
                Ok((fp, kind)) if kind.is_file() => {
                    if fp != p.fp {
                        p.fp = fp;
                        p.since = now;
                    } else if now.duration_since(p.since) >= stable_for {
                        ready.push((path.clone(), fp));
                    }
                }
                _ => moved.push(path.clone()),
            }
        }
        for (path, _) in &ready {
            self.pending.remove(path);
        }
        for path in moved {
            self.pending.remove(&path);
            self.touch(&path, true);
        }
        ready.sort_by(|a, b| a.0.cmp(&b.0));
        ready
    }

    fn ingest(&mut self, ready: Vec<(PathBuf, Fingerprint)>) {
        let batch_size = self.opts.batch_size;
        let mut rest = ready.as_slice();
        while !rest.is_empty() {
            if self.shared.stop.load(Ordering::SeqCst) {
                tracing::info!(
                    left = rest.len(),
                    "stopping: files not yet ingested are picked up by the next start's scan"
                );
                break;
            }
            let (chunk, tail) = rest.split_at(batch_size.min(rest.len()));
            rest = tail;
            self.ingest_chunk(chunk);
            self.progress_done += chunk.len() as u64;
            self.publish(false);
        }
    }

    fn ingest_chunk(&mut self, chunk: &[(PathBuf, Fingerprint)]) {
        let rules = *self.kb.caption_rules();
        let max_bytes = self.kb.decode_limits().max_file_bytes;
        let prepared: Vec<Prepared> = chunk
            .par_iter()
            .map(|(path, fp)| prepare(path, *fp, &rules, max_bytes))
            .collect();
        let mut new_pairs = Vec::new();
        let mut new_meta: Vec<(PathBuf, Option<Fingerprint>, Option<ImageId>)> = Vec::new();
        let mut sets = OpBatch::default();
        let mut failures: Vec<(PathBuf, String)> = Vec::new();
        let mut orphans: BTreeSet<ImageId> = BTreeSet::new();
        let now = Instant::now();
        for p in prepared {
            match p {
                Prepared::Hashed {
                    path,
                    fp,
                    text,
                    id,
                    bytes,
                } => {
                    let old = self.known.get(&path).copied();
                    if old.is_some_and(|k| k.id == id) {
                        if old.is_some_and(|k| k.fp != fp) {
                            sets.set(&path, id, fp);
                        }
                        self.caption_check.insert(id);
                    } else if matches!(self.kb.get(&id), Ok(Some(_))) {
                        sets.set(&path, id, fp);
                        self.caption_check.insert(id);
                        orphans.extend(old.map(|k| k.id));
                    } else {
                        orphans.extend(old.map(|k| k.id));
                        new_meta.push((path.clone(), Some(fp), old.map(|k| k.id)));
                        new_pairs.push(NewPair {
                            image: ImageSource::Read(ReadFile::new(
                                path,
                                bytes,
                                id,
                                fp.size,
                                fp.mtime_ns,
                            )),
                            text,
                        });
                    }
                }
                Prepared::Oversized { path, text } => {
                    let old = self.known.get(&path).map(|k| k.id);
                    new_meta.push((path.clone(), None, old));
                    new_pairs.push(NewPair {
                        image: ImageSource::File(path),
                        text,
                    });
                }
                Prepared::Failed { path, reason } => failures.push((path, reason)),
                Prepared::Vanished { path } => {
                    if self.known.contains_key(&path) {
                        self.deletes.entry(path).or_insert(now);
                    }
                }
                Prepared::Unstable { path, fp } => {
                    self.pending.insert(path, Pending { fp, since: now });
                }
            }
        }
        let results = if new_pairs.is_empty() {
            Vec::new()
        } else {
            self.kb.add_many(new_pairs)
        };
        for ((path, fp, _old), result) in new_meta.into_iter().zip(results) {
            match result {
                Ok(outcome) => {
                    let id = outcome.id();
                    let fp = match fp {
                        Some(fp) => fp,
                        None => match Fingerprint::of_path(&path) {
                            Ok((fp, _)) => fp,
                            Err(_) => continue,
                        },
                    };
                    match outcome {
                        AddOutcome::Added(_) => {
                            self.counters.added += 1;
                            tracing::debug!(id = %id.short(), "added {}", path.display());
                        }
                        AddOutcome::Duplicate(_) => {
                            self.counters.linked += 1;
                            self.caption_check.insert(id);
                        }
                    }
                    self.truncated.remove(&path);
                    self.known_insert(path.clone(), id, fp);
                    if self.quarantine.contains_key(&qkey(&path)) {
                        self.to_unquarantine.insert(qkey(&path));
                    }
                }
                Err(Error::Ingest(IngestError::Read { source, .. }))
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    if self.known.contains_key(&path) {
                        self.deletes.entry(path).or_insert(now);
                    }
                }
                Err(e @ Error::Ingest(IngestError::Truncated { .. })) => {
                    match self.still_being_written(&path, now) {
                        Some(fp) => {
                            tracing::debug!("{e}; waiting for the rest of it");
                            self.pending.insert(path, Pending { fp, since: now });
                        }
                        None => {
                            self.truncated.remove(&path);
                            failures.push((path, e.to_string()));
                        }
                    }
                }
                Err(e) => failures.push((path, e.to_string())),
            }
        }
        let mut batch = sets;
        let seen: HashMap<&Path, Fingerprint> =
            chunk.iter().map(|(p, fp)| (p.as_path(), *fp)).collect();
        for (path, reason) in failures {
            tracing::warn!("quarantined: {reason}");
            if self.known.contains_key(&path) {
                batch.remove(&path);
            }
            let fp = seen.get(path.as_path()).copied();
            batch.quarantine(&path, reason, fp);
        }
        for id in orphans {
            batch.push(PathOp::RemoveOrphan { id }, OpMeta::Orphan);
        }
        self.apply(batch);
        let (added, linked) = (self.counters.added, self.counters.linked);
        tracing::info!(files = chunk.len(), added, linked, "ingested a batch");
    }

    /// Sends a batch of path ops and updates the mirrors with what took effect.
    fn apply(&mut self, batch: OpBatch) {
        if batch.ops.is_empty() {
            return;
        }
        let results = self.kb.apply_path_ops(batch.ops);
        for (meta, result) in batch.meta.into_iter().zip(results) {
            let outcome = match result {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!("{e}");
                    continue;
                }
            };
            if let PathOpOutcome::PairRemoved(id) = outcome {
                tracing::info!(id = %id.short(), "removed a pair no file holds any more");
            }
            match meta {
                OpMeta::Set { path, id, fp } => {
                    if outcome == PathOpOutcome::Applied {
                        self.counters.linked += 1;
                        let old = self.known.get(&path).map(|k| k.id);
                        if old != Some(id) {
                            tracing::info!(id = %id.short(), "{} holds a known image: path recorded, nothing re-embedded", path.display());
                        }
                        self.known_insert(path.clone(), id, fp);
                        if self.quarantine.contains_key(&qkey(&path)) {
                            self.to_unquarantine.insert(qkey(&path));
                        }
                    }
                }
                OpMeta::Remove { path } => {
                    if self.known_remove(&path).is_some() {
                        self.counters.removed += 1;
                        tracing::info!("forgot {}", path.display());
                    }
                }
                OpMeta::Orphan | OpMeta::Update => {}
                OpMeta::Quarantine { path, reason, fp } => {
                    self.counters.quarantined += 1;
                    let key = qkey(&path);
                    let fp = fp.or_else(|| Fingerprint::of_path(&path).map(|(fp, _)| fp).ok());
                    self.to_unquarantine.remove(&key);
                    let record = QuarantineRecord {
                        path: key.to_string_lossy().into_owned(),
                        reason,
                        size: fp.map_or(0, |f| f.size),
                        mtime_ns: fp.map_or(0, |f| f.mtime_ns),
                        at: unix_now(),
                    };
                    self.quarantine.insert(key, record);
                }
                OpMeta::Unquarantine { path } => {
                    self.quarantine.remove(&qkey(&path));
                }
            }
        }
    }

    fn flush_quarantine(&mut self) {
        if self.to_quarantine.is_empty() && self.to_unquarantine.is_empty() {
            return;
        }
        let mut batch = OpBatch::default();
        for (path, reason, fp) in std::mem::take(&mut self.to_quarantine) {
            tracing::warn!("quarantined: {reason}");
            self.to_unquarantine.remove(&qkey(&path));
            batch.quarantine(&path, reason, Some(fp));
        }
        for path in std::mem::take(&mut self.to_unquarantine) {
            if self.quarantine.contains_key(&path) {
                batch.unquarantine(&path);
            }
        }
        self.apply(batch);
    }

    fn apply_deletes(&mut self) {
        let Some(oldest) = self.deletes.values().min().copied() else {
            return;
        };
        // A file moved away reappears under its new name an instant later (the two events can
        // land in different ticks), and then it settles: wait at least `stable_for`, and while
        // files are settling, so that a move keeps its pair instead of removing and re-adding it.
        let grace = self.opts.delete_grace.max(self.opts.stable_for);
        let patience = grace + (self.opts.stable_for * 10).max(Duration::from_secs(5));
        if !self.pending.is_empty() && oldest.elapsed() < patience {
            return;
        }
        let due: Vec<PathBuf> = self
            .deletes
            .iter()
            .filter(|(p, t)| t.elapsed() >= grace && self.root_online(p))
            .map(|(p, _)| p.clone())
            .collect();
        if due.is_empty() {
            return;
        }
        let mut batch = OpBatch::default();
        tracing::debug!(due = due.len(), pending = self.pending.len(), "deleting");
        for path in due {
            self.deletes.remove(&path);
            match Fingerprint::of_path(&path) {
                Ok((fp, kind)) if kind.is_file() => self.consider(&path, fp, true),
                _ => batch.remove(&path),
            }
        }
        self.apply(batch);
    }

    /// Makes each checked pair's text follow the caption rules of its first present file. A file
    /// whose caption no longer follows the rules (a bad sidecar) is refused like a new one.
    fn check_captions(&mut self) {
        if self.caption_check.is_empty() {
            return;
        }
        let rules = *self.kb.caption_rules();
        let ids: Vec<ImageId> = self.caption_check.drain().collect();
        let mut batch = OpBatch::default();
        let mut refused = Vec::new();
        for id in ids {
            let Some(paths) = self.by_id.get(&id) else {
                continue;
            };
            let mut primary_text = None;
            for path in paths {
                if self.deletes.contains_key(path)
                    || self.pending.contains_key(path)
                    || !self.root_online(path)
                {
                    continue;
                }
                match caption_of(path, &rules) {
                    Ok(text) => {
                        if primary_text.is_none() {
                            primary_text = Some((path.clone(), text));
                        }
                    }
                    // Let ingest refuse it with the reason, as it would a new file.
                    Err(_) => refused.push(path.clone()),
                }
            }
            let Some((primary, text)) = primary_text else {
                continue;
            };
            let Ok(Some(pair)) = self.kb.get(&id) else {
                continue;
            };
            if pair.caption != text.caption || pair.entity != text.entity || pair.tags != text.tags
            {
                tracing::info!(id = %id.short(), caption = %text.caption, "caption updated from {}", primary.display());
                self.counters.updated += 1;
                batch.push(PathOp::Update { id, text }, OpMeta::Update);
            }
        }
        for path in refused {
            if let Ok((fp, kind)) = Fingerprint::of_path(&path)
                && kind.is_file()
            {
                self.consider(&path, fp, true);
            }
        }
        self.apply(batch);
    }

    fn publish(&mut self, force_write: bool) {
        let state = if !self.first_scan_done {
            DaemonState::Starting
        } else if self.pending.is_empty() && self.deletes.is_empty() {
            DaemonState::Idle
        } else {
            DaemonState::Busy
        };
        let roots: Vec<super::RootStatus> = self
            .roots
            .iter()
            .map(|r| super::RootStatus {
                path: r.path.clone(),
                online: r.online,
                mode: r.mode,
                items: self.items_under(&r.path),
            })
            .collect();
        let quarantined: Vec<QuarantinedFile> = self
            .quarantine
            .values()
            .filter(|q| {
                self.roots
                    .iter()
                    .any(|r| Path::new(&q.path).starts_with(&r.path))
            })
            .map(|q| QuarantinedFile {
                path: q.path.clone(),
                reason: q.reason.clone(),
                at: q.at,
            })
            .collect();
        let snapshot = {
            let mut status = self.shared.status.lock().unwrap_or_else(|e| e.into_inner());
            status.updated_at = unix_now();
            status.state = state;
            status.items = roots.iter().map(|r| r.items).sum();
            status.roots = roots;
            status.queue = (self.pending.len() + self.deletes.len()) as u64;
            status.pending_deletes = self.deletes.len() as u64;
            status.progress_done = self.progress_done;
            status.progress_total = self.progress_total;
            status.last_scan = self.last_scan.clone();
            status.quarantined = quarantined;
            status.counters = self.counters.clone();
            status.warnings = self.warnings.clone();
            let due = self
                .last_status_write
                .is_none_or(|t| t.elapsed() >= self.opts.status_every);
            (force_write || due).then(|| status.clone())
        };
        if let Some(status) = snapshot {
            self.write_status(&status);
        }
    }

    fn write_status(&mut self, status: &WatchStatus) {
        self.last_status_write = Some(Instant::now());
        if let Err(e) = status.write(self.kb.path()) {
            tracing::warn!(
                "cannot write {}: {e}",
                self.kb.path().join(super::STATUS_FILE).display()
            );
        }
    }

    /// Last words: the final status, marked stopped.
    fn finish(mut self) {
        self.publish(false);
        let status = {
            let mut status = self.shared.status.lock().unwrap_or_else(|e| e.into_inner());
            status.running = false;
            status.state = DaemonState::Stopped;
            status.updated_at = unix_now();
            status.clone()
        };
        self.write_status(&status);
        drop(self.watcher.take());
        tracing::info!("watch daemon stopped");
    }
}
