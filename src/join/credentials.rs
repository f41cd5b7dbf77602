//! The credentials file of join lines (`credentials.json`, 0600) and the in-memory copy
//! the join service answers from.
//!
//! Any TCP peer can name a credential id before it is authenticated, so a lookup must not
//! cost a read and a parse of the whole file: the parsed entries are kept keyed by the
//! file's identity (device, inode, size, mtime, ctime) and the file is parsed again only
//! when that changes. Every write replaces the file by rename (a new inode), whether it
//! comes from this process (`consume`) or another one (`token create`, `token revoke`), so
//! one `stat` per lookup sees it. Writes read the file afresh, never the cached copy.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::keys::credential_key;
use crate::distro::JoinRole;
use crate::secret::Secret;

/// Where a controller keeps the credentials it handed out (0600).
pub const CREDENTIALS_FILE: &str = "/var/lib/bootstrap/join/credentials.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    secret: String,
    role: JoinRole,
    /// Seconds since the Unix epoch.
    expires: u64,
    /// Join material went out for it: a line brings in one node.
    #[serde(default)]
    used: bool,
    /// The node it went out to: only that node may ask again (its answer may have been
    /// lost on the way). Files from before this was kept have none: no one may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    used_by: Option<String>,
}

/// A join line as `token list` shows it: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineInfo {
    pub id: String,
    pub role: JoinRole,
    /// Seconds since the Unix epoch.
    pub expires: u64,
    pub used: bool,
}

/// Whether `id` has the shape `token create` gives ids (8 hex digits): anything else is
/// refused before the file is even looked at.
fn plausible_id(id: &str) -> bool {
    id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What tells one version of the file from another without reading it. A rename brings a
/// new inode; size and both times catch an in-place edit by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

type Entries = BTreeMap<String, Stored>;

/// The parsed file as of `stamp`, expired entries already left out.
struct Cached {
    stamp: Stamp,
    entries: Arc<Entries>,
}

/// The credentials a controller handed out, in a 0600 file (a real path).
pub struct CredentialStore {
    file: PathBuf,
    cache: Mutex<Option<Cached>>,
    /// How many times the file was parsed (tests hold the cache to its promise).
    parses: AtomicUsize,
}

impl CredentialStore {
    /// The store kept in `file` (which need not exist yet).
    pub fn new(file: impl Into<PathBuf>) -> CredentialStore {
        CredentialStore {
            file: file.into(),
            cache: Mutex::new(None),
            parses: AtomicUsize::new(0),
        }
    }

    /// The file this store reads and writes.
    pub fn file(&self) -> &std::path::Path {
        &self.file
    }

    /// Times the file has been parsed by this store.
    pub fn parses(&self) -> usize {
        self.parses.load(Ordering::Relaxed)
    }

    /// Reads and parses the file, whatever the cache holds (before a change to it). A
    /// missing or unreadable file holds nothing.
    fn read_fresh(&self) -> Entries {
        self.parses.fetch_add(1, Ordering::Relaxed);
        std::fs::read(&self.file)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// The live entries: from the cache while the file's stamp is unchanged, else parsed
    /// again (expired entries pruned as they are read).
    fn read_cached(&self) -> Arc<Entries> {
        let Ok(meta) = std::fs::metadata(&self.file) else {
            // No file: nothing was handed out (or all was revoked by removing it).
            return Arc::default();
        };
        let stamp = Stamp::of(&meta);
        // A poisoned lock only means another lookup panicked; the cache is still sound.
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cached) = cache.as_ref().filter(|c| c.stamp == stamp) {
            return Arc::clone(&cached.entries);
        }
        let now = super::unix_now();
        let mut entries = self.read_fresh();
        entries.retain(|_, c| c.expires > now);
        let entries = Arc::new(entries);
        *cache = Some(Cached {
            stamp,
            entries: Arc::clone(&entries),
        });
        entries
    }

    /// Replaces the file; the cache is dropped so the next lookup parses what was written.
    fn write(&self, all: &Entries) -> std::io::Result<()> {
        let result = crate::host::temp::replace(&self.file, &serde_json::to_vec(all)?, 0o600);
        *self.cache.lock().unwrap_or_else(|e| e.into_inner()) = None;
        result
    }

    /// A new credential for `role` living `ttl`; expired ones are dropped on the way.
    pub fn add(&self, role: JoinRole, ttl: Duration) -> std::io::Result<(String, Secret)> {
        let mut all = self.read_fresh();
        let now = super::unix_now();
        all.retain(|_, c| c.expires > now);
        let id = crate::random::hex(4)?;
        let secret = crate::random::hex(24)?;
        all.insert(
            id.clone(),
            Stored {
                secret: secret.clone(),
                role,
                expires: now + ttl.as_secs(),
                used: false,
                used_by: None,
            },
        );
        if let Some(dir) = self.file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        self.write(&all)?;
        Ok((id, Secret::new(secret)))
    }

    /// The live join lines (expired ones are left out).
    pub fn list(&self) -> Vec<LineInfo> {
        let now = super::unix_now();
        self.read_cached()
            .iter()
            .filter(|(_, c)| c.expires > now)
            .map(|(id, c)| LineInfo {
                id: id.clone(),
                role: c.role,
                expires: c.expires,
                used: c.used,
            })
            .collect()
    }

    /// Removes join line `id`; `Ok(false)` when there is none by that id.
    pub fn revoke(&self, id: &str) -> std::io::Result<bool> {
        let mut all = self.read_fresh();
        let now = super::unix_now();
        all.retain(|_, c| c.expires > now);
        let found = all.remove(id).is_some();
        self.write(&all)?;
        Ok(found)
    }
}

impl super::server::Credentials for CredentialStore {
    fn lookup(&self, id: &str) -> Option<(ring::hmac::Key, JoinRole)> {
        if !plausible_id(id) {
            return None;
        }
        let entries = self.read_cached();
        let stored = entries.get(id)?;
        // The cache may have been filled before this entry expired.
        (stored.expires > super::unix_now())
            .then(|| (credential_key(&Secret::new(&stored.secret)), stored.role))
    }

    fn used(&self, id: &str, node: &str) -> bool {
        plausible_id(id)
            && self
                .read_cached()
                .get(id)
                .is_some_and(|c| c.used && c.used_by.as_deref() != Some(node))
    }

    fn consume(&self, id: &str, node: &str) {
        let mut all = self.read_fresh();
        if let Some(stored) = all.get_mut(id) {
            if stored.used && stored.used_by.as_deref() == Some(node) {
                return;
            }
            stored.used = true;
            stored.used_by = Some(node.to_owned());
            if let Err(e) = self.write(&all) {
                log::warn!(
                    "cannot mark join line {id} used in {}: {e}",
                    self.file.display()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::join::server::Credentials;

    fn store(dir: &tempfile::TempDir) -> CredentialStore {
        CredentialStore::new(dir.path().join("credentials.json"))
    }

    #[test]
    fn stored_credentials_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let (id, _) = store
            .add(JoinRole::Worker, Duration::from_secs(600))
            .unwrap();
        assert_eq!(store.lookup(&id).map(|(_, r)| r), Some(JoinRole::Worker));
        let (old, _) = store.add(JoinRole::Worker, Duration::from_secs(0)).unwrap();
        assert!(store.lookup(&old).is_none());
        assert!(store.lookup("nope").is_none());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(store.file())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_symlink_planted_at_the_old_temp_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"untouched").unwrap();
        let store = store(&dir);
        std::os::unix::fs::symlink(&victim, dir.path().join("credentials.tmp")).unwrap();
        let (id, _) = store
            .add(JoinRole::Worker, Duration::from_secs(600))
            .unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
        assert!(!std::fs::symlink_metadata(store.file())
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(store.lookup(&id).is_some());
    }

    #[test]
    fn lookups_of_an_unchanged_file_parse_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let (id, _) = store
            .add(JoinRole::Worker, Duration::from_secs(600))
            .unwrap();
        let before = store.parses();
        for _ in 0..100 {
            assert!(store.lookup(&id).is_some());
            assert!(store.lookup("0badc0de").is_none());
            assert!(!store.used(&id, "node-1"));
        }
        assert_eq!(store.parses(), before + 1, "one parse for 300 lookups");
    }

    #[test]
    fn ids_of_the_wrong_shape_never_touch_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        store
            .add(JoinRole::Worker, Duration::from_secs(600))
            .unwrap();
        let before = store.parses();
        for id in ["", "nope", "0123456789", "ABCDEFGZ", "../../x", "node:abc"] {
            assert!(store.lookup(id).is_none(), "{id}");
            assert!(!store.used(id, "node-1"), "{id}");
        }
        assert_eq!(store.parses(), before);
    }

    #[test]
    fn another_process_replacing_the_file_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let server = store(&dir);
        // `token create` and `token revoke` run as other processes: another store on the
        // same file stands in for them.
        let cli = store(&dir);
        let (first, _) = cli.add(JoinRole::Worker, Duration::from_secs(600)).unwrap();
        assert!(server.lookup(&first).is_some());
        let (second, _) = cli
            .add(JoinRole::Controller, Duration::from_secs(600))
            .unwrap();
        assert_eq!(
            server.lookup(&second).map(|(_, r)| r),
            Some(JoinRole::Controller),
            "a line made after the cache was filled"
        );
        assert!(cli.revoke(&first).unwrap());
        assert!(server.lookup(&first).is_none(), "a revoked line");
        assert!(server.lookup(&second).is_some());
        cli.consume(&second, "node-1");
        assert!(
            server.used(&second, "node-2"),
            "a line used through another process"
        );
        std::fs::remove_file(cli.file()).unwrap();
        assert!(server.lookup(&second).is_none(), "the file removed");
    }

    #[test]
    fn a_line_consumed_here_is_used_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let (id, _) = store
            .add(JoinRole::Worker, Duration::from_secs(600))
            .unwrap();
        assert!(!store.used(&id, "node-1"));
        store.consume(&id, "node-1");
        assert!(store.used(&id, "node-2"));
        assert!(store.list().iter().all(|l| l.used));
    }

    #[test]
    fn the_node_a_line_brought_in_may_ask_again_and_no_other() {
        // Its answer may have been lost: the line was marked used as it went out.
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let (id, _) = store
            .add(JoinRole::Worker, Duration::from_secs(600))
            .unwrap();
        store.consume(&id, "node-1");
        assert!(!store.used(&id, "node-1"), "the same node, asking again");
        assert!(store.used(&id, "node-2"), "another node");
        store.consume(&id, "node-1");
        assert!(
            store.used(&id, "node-2"),
            "asking again keeps it that node's"
        );
    }

    #[test]
    fn expired_entries_are_pruned_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let now = crate::join::unix_now();
        let entry = |expires| Stored {
            secret: "f".repeat(48),
            role: JoinRole::Worker,
            expires,
            used: false,
            used_by: None,
        };
        let all: Entries = [
            ("aaaaaaaa".to_owned(), entry(now - 10)),
            ("bbbbbbbb".to_owned(), entry(now + 600)),
        ]
        .into();
        std::fs::write(store.file(), serde_json::to_vec(&all).unwrap()).unwrap();
        assert!(store.lookup("aaaaaaaa").is_none());
        let cached = store.read_cached();
        assert_eq!(cached.keys().collect::<Vec<_>>(), ["bbbbbbbb"]);
        assert_eq!(store.list().len(), 1);
    }
}
