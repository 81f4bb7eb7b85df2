//! The OSV malware source (OpenSSF malicious-packages): kept current like the malware feed.
//!
//! - `OSV_FEED_URL` (a JSON list of records, or a zip of one record per file like OSV's
//!   per-ecosystem `all.zip`): the feed's own refresher (`feed::spawn_source`),
//!   with its own lock `osv-feed`, Redis copy `malware:osv` and kept copy under
//!   `<MALWARE_LIST_DIR>/osv/<host>/<file>`, so it is fetched once per interval for the cluster
//!   and a restart without network still guards.
//! - `OSV_FEED_DIR` (a tree of `*.json` records, e.g. a checkout of the malicious-packages
//!   repository's `osv/malicious/npm`): read before npg serves, then again every
//!   `UPDATE_INTERVAL` when a file changed. A bad file is logged and skipped; an unreadable
//!   directory keeps the list in use.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow};
use sha2::{Digest, Sha256};

use super::feed::{FeedFiles, FeedRefresher, MAX_FEED_BYTES, Source, purge_added};
use crate::clock::now_ms;
use crate::cluster::documents::DocKind;
use crate::config::{PolicySources, Settings};
use crate::guard::Guard;
use crate::guard::osv::OsvList;
use crate::guard::status::{FeedStatus, ListOrigin, State};
use crate::metrics::Feed;

/// Far above any real record (a few KB): a larger file is skipped, not held in memory.
const MAX_RECORD_BYTES: u64 = 1 << 20;
/// How a zip archive (OSV's per-ecosystem `all.zip`) starts; a JSON list cannot.
const ZIP_MAGIC: &[u8] = b"PK\x03\x04";
/// Never spin, whatever UPDATE_INTERVAL says.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// The OSV list read from a URL.
pub(crate) struct OsvFeed;

impl Source for OsvFeed {
    type List = OsvList;
    const WHAT: &'static str = "OSV feed";
    const FEED: Feed = Feed::Osv;
    const LOCK: &'static str = "osv-feed";
    const KEY: &'static str = "malware:osv";
    const DOC: DocKind = DocKind {
        stamp: "updated",
        what: "OSV feed",
    };

    fn parse(&self, body: &[u8]) -> anyhow::Result<OsvList> {
        if body.starts_with(ZIP_MAGIC) {
            return from_zip(body);
        }
        Ok(OsvList::parse_list(body, now_ms())?)
    }

    fn len(list: &OsvList) -> usize {
        list.len()
    }

    fn in_force(guard: &Guard) -> Arc<OsvList> {
        guard.policy().osv.clone()
    }

    fn install(guard: &Guard, list: Arc<OsvList>) {
        guard.set_osv(list);
    }

    fn update_status(guard: &Guard, update: impl FnOnce(&mut FeedStatus)) {
        guard.update_osv_status(update);
    }

    fn added_since(new: &OsvList, old: &OsvList) -> Vec<(String, Option<String>)> {
        new.added_since(old)
    }
}

/// Where the list from `url` is kept: beside the feed's copy, never in its place (both may come
/// from one host).
fn kept(policy: &PolicySources, url: &url::Url) -> FeedFiles {
    FeedFiles::new(&policy.malware_list_dir.join("osv"), url)
}

/// The advisories as `npg lockfile check` reads them offline: the directory, or the copy last
/// kept from the URL (none yet: no advisories).
pub(crate) fn load_offline(policy: &PolicySources) -> anyhow::Result<OsvList> {
    if let Some(dir) = &policy.osv_feed_dir {
        return read_all(&records(dir)?);
    }
    let Some(url) = &policy.osv_feed_url else {
        return Ok(OsvList::default());
    };
    let files = kept(policy, url);
    match files.load().context("MALWARE_LIST_DIR")? {
        Some(copy) => OsvFeed
            .parse(&copy.body)
            .with_context(|| files.body.display().to_string()),
        None => Ok(OsvList::default()),
    }
}

/// Starts the OSV source the settings name, if any.
pub(crate) fn spawn(jobs: &super::Jobs, refresher: FeedRefresher, settings: &Settings) {
    let policy = &settings.policy;
    if let Some(url) = &policy.osv_feed_url {
        let files = kept(policy, url);
        super::feed::spawn_source(jobs, refresher, OsvFeed, url.clone(), files, settings);
    } else if let Some(dir) = &policy.osv_feed_dir {
        let mut reader = DirReader {
            dir: dir.clone(),
            guard: refresher.guard,
            fingerprint: None,
        };
        // Before serving, so the first request is already guarded.
        reader.guard.update_osv_status(|s| s.state = State::Loading);
        let first = reader.reload();
        let interval = settings.update_interval.max(MIN_INTERVAL);
        refresher.metrics.feed_interval(Feed::Osv, interval);
        let tarballs = refresher.tarballs;
        jobs.spawn("OSV directory", async move {
            if let Some(list) = first {
                let (_, files) = purge_added::<OsvFeed>(&tarballs, &list, &OsvList::default()).await;
                if files > 0 {
                    tracing::info!(files, "purged cached tarballs listed by the OSV advisories");
                }
            }
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let old = reader.guard.policy().osv.clone();
                // Off the async threads: the real tree holds hundreds of thousands of files.
                let reread = tokio::task::spawn_blocking(move || {
                    let list = reader.reload();
                    (reader, list)
                })
                .await;
                let Ok((back, list)) = reread else {
                    tracing::error!("the OSV directory reader failed; the list in use stays");
                    return;
                };
                reader = back;
                if let Some(list) = list {
                    let (added, files) = purge_added::<OsvFeed>(&tarballs, &list, &old).await;
                    tracing::info!(added, purged_files = files, "OSV advisories re-read");
                }
            }
        });
    }
}

/// `OSV_FEED_DIR` and what was last read from it.
struct DirReader {
    dir: PathBuf,
    guard: Arc<Guard>,
    /// The files (paths, sizes, times) of the list in use: unchanged files are not re-read.
    fingerprint: Option<Vec<u8>>,
}

impl DirReader {
    /// Reads the directory again if a file changed; returns the new list once in force.
    fn reload(&mut self) -> Option<Arc<OsvList>> {
        let result = records(&self.dir).and_then(|files| {
            let fingerprint = fingerprint(&files);
            if self.fingerprint.as_ref() == Some(&fingerprint) {
                return Ok(None);
            }
            let list = read_all(&files)?;
            Ok(Some((list, fingerprint)))
        });
        let at = now_ms();
        match result {
            Ok(None) => {
                self.guard.update_osv_status(|s| {
                    s.state = State::Ok;
                    s.updated_at_ms = Some(at);
                    s.last_error = None;
                });
                None
            }
            Ok(Some((list, fingerprint))) => {
                let list = Arc::new(list);
                let entries = list.len();
                self.guard.set_osv(list.clone());
                self.fingerprint = Some(fingerprint);
                self.guard.update_osv_status(|s| {
                    *s = FeedStatus {
                        state: State::Ok,
                        entries,
                        etag: None,
                        source: Some(ListOrigin::Directory),
                        updated_at_ms: Some(at),
                        last_error: None,
                    }
                });
                tracing::info!(entries, dir = %self.dir.display(), "OSV advisories read");
                Some(list)
            }
            Err(e) => {
                let error = format!("{e:#}");
                tracing::warn!(%error, "OSV advisories not read; keeping the list in use");
                self.guard.update_osv_status(|s| {
                    s.state = State::Error;
                    s.last_error = Some(error);
                });
                None
            }
        }
    }
}

/// One record file: its path, size and modification time.
type RecordFile = (PathBuf, u64, SystemTime);

/// The `*.json` files under `dir`, sorted (symlinked directories are not followed: no loops).
fn records(dir: &Path) -> anyhow::Result<Vec<RecordFile>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        let entries = std::fs::read_dir(&at).with_context(|| format!("OSV_FEED_DIR: cannot read {}", at.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("OSV_FEED_DIR: cannot read {}", at.display()))?;
            let path = entry.path();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            // A symlinked record is read (metadata follows it); a dangling one is skipped.
            if let Ok(meta) = std::fs::metadata(&path)
                && meta.is_file()
            {
                found.push((path, meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
            }
        }
    }
    found.sort();
    Ok(found)
}

fn fingerprint(files: &[RecordFile]) -> Vec<u8> {
    let mut hash = Sha256::new();
    for (path, len, modified) in files {
        hash.update(path.as_os_str().as_encoded_bytes());
        hash.update([0]);
        hash.update(len.to_le_bytes());
        hash.update(crate::clock::unix_ms(*modified).to_le_bytes());
    }
    hash.finalize().to_vec()
}

/// Every record; a bad or oversized file is logged and skipped.
fn read_all(files: &[RecordFile]) -> anyhow::Result<OsvList> {
    let total: u64 = files.iter().map(|(_, len, _)| len).sum();
    if total > MAX_FEED_BYTES as u64 {
        return Err(anyhow!(
            "OSV_FEED_DIR: {total} bytes of records, more than the {MAX_FEED_BYTES} a feed may have"
        ));
    }
    let now = now_ms();
    let mut list = OsvList::default();
    for (path, len, _) in files {
        if *len > MAX_RECORD_BYTES {
            tracing::warn!(path = %path.display(), len, "OSV record skipped: larger than {MAX_RECORD_BYTES} bytes");
            continue;
        }
        let added = std::fs::read(path)
            .map_err(|e| anyhow!(e))
            .and_then(|body| Ok(list.add(&body, now)?));
        if let Err(error) = added {
            tracing::warn!(path = %path.display(), error = format!("{error:#}"), "OSV record skipped");
        }
    }
    Ok(list)
}

/// The records of a zip archive of `*.json` files, one record each (OSV's `all.zip`). An entry
/// that is not a record, or larger than a record can be, is logged and skipped; what the
/// entries unpack to is bounded like a download (no zip bomb is held in memory).
fn from_zip(body: &[u8]) -> anyhow::Result<OsvList> {
    use std::io::Read;
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(body)).context("not a zip archive of OSV records")?;
    let now = now_ms();
    let mut list = OsvList::default();
    let mut total = 0u64;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).context("not a zip archive of OSV records")?;
        let Some(name) = entry.name().ok().map(|n| n.into_owned()) else {
            continue;
        };
        if !entry.is_file() || !name.ends_with(".json") {
            continue;
        }
        // The declared size may lie: the read is bounded too.
        let mut record = Vec::new();
        let read = (&mut entry).take(MAX_RECORD_BYTES + 1).read_to_end(&mut record);
        total += record.len() as u64;
        if total > MAX_FEED_BYTES as u64 {
            return Err(anyhow!("the zip archive unpacks to more than {MAX_FEED_BYTES} bytes"));
        }
        let added = match read {
            Err(e) => Err(anyhow!(e)),
            Ok(_) if record.len() as u64 > MAX_RECORD_BYTES => Err(anyhow!("larger than {MAX_RECORD_BYTES} bytes")),
            Ok(_) => list.add(&record, now).map_err(anyhow::Error::from),
        };
        if let Err(error) = added {
            tracing::warn!(entry = name, error = format!("{error:#}"), "OSV record skipped");
        }
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    const RECORD: &str = r#"{"id":"MAL-2025-1","summary":"Malicious code in evil (npm)",
        "affected":[{"package":{"ecosystem":"npm","name":"evil"},"versions":["1.0.1"]}]}"#;

    fn reader(dir: &Path) -> DirReader {
        let guard = Guard::new(Default::default(), None, None, None, Arc::new(Metrics::default()));
        DirReader {
            dir: dir.to_path_buf(),
            guard: Arc::new(guard),
            fingerprint: None,
        }
    }

    /// A zip of these (name, body) entries, deflated.
    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        use std::io::Write;
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        for (name, body) in entries {
            zip.start_file(*name, options).unwrap();
            zip.write_all(body).unwrap();
        }
        zip.finish().unwrap().into_inner()
    }

    #[test]
    fn a_zip_of_records_is_read_like_a_list() {
        let other = RECORD.replace("MAL-2025-1", "MAL-2025-2").replace("1.0.1", "2.0.0");
        let archive = zip_of(&[
            ("MAL-2025-1.json", RECORD.as_bytes()),
            ("GHSA-x.json", br#"{"id":"GHSA-x","affected":[]}"#),
            ("broken.json", b"{"),
            ("README", b"not a record"),
            ("MAL-2025-2.json", other.as_bytes()),
        ]);
        let list = OsvFeed.parse(&archive).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list.version("evil", "1.0.1").unwrap().id, "MAL-2025-1");
        assert_eq!(list.version("evil", "2.0.0").unwrap().id, "MAL-2025-2");
        let err = OsvFeed.parse(b"PK\x03\x04 cut short").unwrap_err();
        assert!(format!("{err:#}").contains("zip"), "{err:#}");
        // A list still parses as one.
        assert_eq!(OsvFeed.parse(format!("[{RECORD}]").as_bytes()).unwrap().len(), 1);
    }

    #[test]
    fn a_zip_bomb_entry_is_skipped() {
        // A valid record, only too large: without the bound it would be kept.
        let padding = "x".repeat(MAX_RECORD_BYTES as usize);
        let huge = RECORD
            .replace("MAL-2025-1", "MAL-2025-9")
            .replace("\"evil\"", "\"bomb\"")
            .replace("Malicious", &padding);
        let huge = huge.as_bytes();
        let archive = zip_of(&[("huge.json", huge), ("MAL-2025-1.json", RECORD.as_bytes())]);
        assert!(archive.len() < 100_000, "deflated: {}", archive.len());
        let list = OsvFeed.parse(&archive).unwrap();
        assert_eq!(list.len(), 1);
        assert!(list.whole_package("bomb").is_none() && list.version("bomb", "1.0.1").is_none());
    }

    #[test]
    fn a_tree_is_read_bad_files_skipped_and_changes_seen() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("osv/malicious/npm/evil");
        std::fs::create_dir_all(&nested).unwrap();
        std::fs::write(nested.join("MAL-2025-1.json"), RECORD).unwrap();
        std::fs::write(nested.join("broken.json"), "{").unwrap();
        std::fs::write(nested.join("README.md"), "not a record").unwrap();
        let mut r = reader(dir.path());
        assert!(r.reload().is_some());
        let status = r.guard.osv_status();
        assert_eq!((status.state, status.entries), (State::Ok, 1));
        assert_eq!(status.source, Some(ListOrigin::Directory));
        assert_eq!(
            r.guard.policy().version("evil", "1.0.1").unwrap().advisory.as_deref(),
            Some("MAL-2025-1")
        );
        let version = r.guard.version();
        assert!(r.reload().is_none(), "nothing changed, nothing re-read");
        assert_eq!(r.guard.version(), version);

        std::fs::remove_file(nested.join("MAL-2025-1.json")).unwrap();
        assert!(r.reload().is_some());
        assert!(r.guard.policy().version("evil", "1.0.1").is_none());

        // A directory that is gone keeps the list in use and says so.
        std::fs::write(nested.join("MAL-2025-1.json"), RECORD).unwrap();
        r.reload();
        drop(dir);
        assert!(r.reload().is_none());
        let status = r.guard.osv_status();
        assert_eq!(status.state, State::Error);
        assert!(status.last_error.unwrap().contains("OSV_FEED_DIR"));
        assert!(r.guard.policy().version("evil", "1.0.1").is_some());
    }
}
