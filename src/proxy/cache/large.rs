//! Large cached tarballs (over `disk::READ_WHOLE_MAX`) while responses send them. A file is
//! read once, whole, and every response sending it at the same time shares that copy: 64
//! clients of one 5 MB tarball hold 5 MB, not 64 read buffers, and a hit costs no read while
//! the copy lives. Copies and stream chunks draw on one byte budget; past it a file streams in
//! small chunks, so however many clients stop reading (until `SEND_TIMEOUT` closes them), each
//! holds one small chunk at most.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Condvar, Mutex, Weak};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::hot;
use crate::npm::name::PackageName;

/// Chunk of a stream while the budget has room: one blocking-pool trip each (64 KiB reads
/// served the 5 MB tarball at 0.72x nginx, 512 KiB at 0.98x).
const CHUNK: usize = 512 * 1024;
/// Chunk of a stream once the budget is spent: bounded memory per client, not throughput.
const SMALL_CHUNK: usize = 64 * 1024;

/// Which file a copy was read from: a file replaced by a rename is another inode.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
    len: u64,
}

impl FileId {
    pub(crate) fn of(meta: &std::fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
        }
    }
}

/// Bytes read under the budget, given back when the last `Bytes` sharing them goes.
struct Held {
    bytes: Vec<u8>,
    _permit: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// A copy shared by responses; the map of live copies keeps only a `Weak` to it.
struct Shared(Arc<Held>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.0.bytes
    }
}

/// A large file to send: the copy being sent already, or one to stream (`Chunks`).
pub(crate) enum Large {
    Copy(Bytes),
    Chunks(Chunks),
}

/// A file's place in `live`: the copy being sent and the file it was read from, or the read
/// of one under way.
enum Slot {
    Held(FileId, Weak<Held>),
    Reading(Arc<Reading>),
}

/// A read under way. Responses for the same file wait for it rather than read copies of their
/// own: 64 clients arriving at once read the budget's worth of copies (38 MiB more at the peak
/// of the bench's 5 MB case).
#[derive(Default)]
struct Reading {
    done: Mutex<bool>,
    ended: Condvar,
}

impl Reading {
    fn wait(&self) {
        let mut done = self.done.lock().expect("not poisoned");
        while !*done {
            done = self.ended.wait(done).expect("not poisoned");
        }
    }
}

/// Ends a read however it ends: its slot goes unless its copy took it, and waiters wake.
struct ReadEnd<'a> {
    live: &'a Mutex<Live>,
    key: &'a str,
    reading: Arc<Reading>,
}

impl Drop for ReadEnd<'_> {
    fn drop(&mut self) {
        let mut live = self.live.lock().expect("not poisoned");
        if matches!(live.get(self.key), Some(Slot::Reading(r)) if Arc::ptr_eq(r, &self.reading)) {
            live.remove(self.key);
        }
        drop(live);
        *self.reading.done.lock().expect("not poisoned") = true;
        self.reading.ended.notify_all();
    }
}

/// The files being sent or read, by `hot::key`.
type Live = HashMap<String, Slot>;

#[derive(Clone)]
pub(crate) struct LargeReads {
    /// The budget in KiB, one permit each.
    budget: Arc<Semaphore>,
    live: Arc<Mutex<Live>>,
}

impl LargeReads {
    pub(crate) fn new(max_bytes: u64) -> LargeReads {
        let kib = (max_bytes >> 10).min(Semaphore::MAX_PERMITS as u64) as usize;
        LargeReads {
            budget: Arc::new(Semaphore::new(kib)),
            live: Arc::default(),
        }
    }

    fn take(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        let kib = u32::try_from(bytes.div_ceil(1024)).ok()?;
        self.budget.clone().try_acquire_many_owned(kib).ok()
    }

    /// `file` (`id`, opened for `name`/`file_name`) to send: the shared copy (waiting for its
    /// read if one is under way), else a new one read whole when the budget has room for it,
    /// else chunks. Blocking: call it off the async workers.
    pub(crate) fn open(
        &self,
        name: &PackageName,
        file_name: &str,
        file: std::fs::File,
        id: FileId,
    ) -> io::Result<Large> {
        let key = hot::key(name, file_name);
        let (permit, reading) = loop {
            let mut live = self.live.lock().expect("not poisoned");
            match live.get(&key) {
                Some(Slot::Held(held_id, held)) if *held_id == id => {
                    if let Some(held) = held.upgrade() {
                        return Ok(Large::Copy(Bytes::from_owner(Shared(held))));
                    }
                }
                Some(Slot::Reading(reading)) => {
                    let reading = reading.clone();
                    drop(live);
                    reading.wait();
                    continue;
                }
                _ => {}
            }
            let Some(permit) = self.take(id.len) else {
                return Ok(Large::Chunks(Chunks {
                    file,
                    left: id.len,
                    reads: self.clone(),
                }));
            };
            live.retain(|_, slot| !matches!(slot, Slot::Held(_, w) if w.strong_count() == 0));
            let reading = Arc::new(Reading::default());
            live.insert(key.clone(), Slot::Reading(reading.clone()));
            break (permit, reading);
        };
        let end = ReadEnd {
            live: &self.live,
            key: &key,
            reading,
        };
        let bytes = read_up_to(&file, id.len)?;
        if bytes.len() as u64 != id.len {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let held = Arc::new(Held { bytes, _permit: permit });
        let mut live = self.live.lock().expect("not poisoned");
        // Unless a purge took the slot meanwhile.
        if matches!(live.get(&key), Some(Slot::Reading(r)) if Arc::ptr_eq(r, &end.reading)) {
            live.insert(key.clone(), Slot::Held(id, Arc::downgrade(&held)));
        }
        drop(live);
        drop(end);
        Ok(Large::Copy(Bytes::from_owner(Shared(held))))
    }

    /// Forgets the copies of one file, or of every file of the package (`file` = `None`):
    /// responses sending them finish, new ones read the disk again.
    pub(crate) fn purge(&self, name: &PackageName, file: Option<&str>) {
        self.live
            .lock()
            .expect("not poisoned")
            .retain(|key, _| !hot::purged(key, name, file));
    }
}

/// Up to `n` bytes of `file` from where it stands, into a buffer of that size: fewer only at
/// its end.
fn read_up_to(file: &std::fs::File, n: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(n as usize);
    file.take(n).read_to_end(&mut buf)?;
    Ok(buf)
}

/// A file streamed in chunks, each read straight into the buffer it is sent in (one
/// blocking-pool trip each; through tokio's file and a reader stream each chunk was copied
/// once more: an eighth of npg's CPU serving a 5 MB tarball). Chunks are large while the
/// budget has room, small once it is spent.
pub(crate) struct Chunks {
    file: std::fs::File,
    left: u64,
    reads: LargeReads,
}

impl Chunks {
    pub(crate) fn len(&self) -> u64 {
        self.left
    }

    /// The chunks; a file shorter than its length ends them with an error.
    pub(crate) fn stream(self) -> impl Stream<Item = io::Result<Bytes>> + Send {
        futures_util::stream::unfold(Some(self), |state| async move {
            let Chunks { file, left, reads } = state?;
            if left == 0 {
                return None;
            }
            let (want, permit) = match reads.take(CHUNK as u64) {
                Some(permit) => (CHUNK, Some(permit)),
                None => (SMALL_CHUNK, None),
            };
            let want = left.min(want as u64);
            let read = tokio::task::spawn_blocking(move || {
                let read = read_up_to(&file, want);
                (file, read)
            })
            .await;
            match read {
                Ok((file, Ok(buf))) if !buf.is_empty() => {
                    let rest = left - buf.len() as u64;
                    let chunk = match permit {
                        Some(permit) => Bytes::from_owner(Held {
                            bytes: buf,
                            _permit: permit,
                        }),
                        None => Bytes::from(buf),
                    };
                    Some((
                        Ok(chunk),
                        Some(Chunks {
                            file,
                            left: rest,
                            reads,
                        }),
                    ))
                }
                Ok((_, Ok(_))) => Some((Err(io::ErrorKind::UnexpectedEof.into()), None)),
                Ok((_, Err(e))) => Some((Err(e), None)),
                Err(e) => Some((Err(io::Error::other(e)), None)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use futures_util::StreamExt;

    use super::*;

    const MIB: usize = 1 << 20;

    fn put(dir: &Path, file: &str, bytes: &[u8]) {
        // A rename, as the store writes: a new inode each time.
        let tmp = dir.join(".new");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, dir.join(file)).unwrap();
    }

    fn open(reads: &LargeReads, dir: &Path, file: &str) -> io::Result<Large> {
        let f = std::fs::File::open(dir.join(file)).unwrap();
        let id = FileId::of(&f.metadata().unwrap());
        reads.open(&PackageName::parse("p").unwrap(), file, f, id)
    }

    fn copy(large: io::Result<Large>) -> Bytes {
        match large.unwrap() {
            Large::Copy(bytes) => bytes,
            Large::Chunks(_) => panic!("expected a copy"),
        }
    }

    async fn chunk_sizes(large: io::Result<Large>) -> (Vec<usize>, Vec<Bytes>) {
        let Large::Chunks(chunks) = large.unwrap() else {
            panic!("expected chunks")
        };
        let chunks: Vec<Bytes> = chunks.stream().map(Result::unwrap).collect().await;
        (chunks.iter().map(Bytes::len).collect(), chunks)
    }

    #[tokio::test]
    async fn responses_share_one_copy_and_the_budget_bounds_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let reads = LargeReads::new(3 * MIB as u64);
        let one = vec![1u8; 2 * MIB];
        put(dir.path(), "p-1.tgz", &one);
        let a = copy(open(&reads, dir.path(), "p-1.tgz"));
        let b = copy(open(&reads, dir.path(), "p-1.tgz"));
        assert_eq!(a, one);
        assert_eq!(a.as_ptr(), b.as_ptr(), "one copy for both");
        assert_eq!(reads.budget.available_permits(), 1024, "counted once");

        // No room for another copy: chunks, large while the budget lasts (each is held
        // until sent: here all are), then small.
        let two = vec![2u8; 2 * MIB];
        put(dir.path(), "p-2.tgz", &two);
        let (sizes, chunks) = chunk_sizes(open(&reads, dir.path(), "p-2.tgz")).await;
        assert_eq!(sizes[..3], [CHUNK, CHUNK, SMALL_CHUNK]);
        assert_eq!(sizes.len(), 2 + MIB / SMALL_CHUNK);
        assert_eq!(chunks.concat(), two);
        assert_eq!(reads.budget.available_permits(), 0);
        drop(chunks);
        assert_eq!(reads.budget.available_permits(), 1024, "chunks give their part back");

        // Once sent, the copy is gone and its part of the budget with it.
        drop((a, b));
        assert_eq!(reads.budget.available_permits(), 3072);
        assert_eq!(copy(open(&reads, dir.path(), "p-2.tgz")), two);
    }

    #[test]
    fn clients_arriving_at_once_wait_for_one_read() {
        let dir = tempfile::tempdir().unwrap();
        let reads = LargeReads::new(64 * MIB as u64);
        put(dir.path(), "p-1.tgz", &vec![5u8; 8 * MIB]);
        let start = std::sync::Barrier::new(16);
        let copies: Vec<Bytes> = std::thread::scope(|s| {
            let clients: Vec<_> = (0..16)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        copy(open(&reads, dir.path(), "p-1.tgz"))
                    })
                })
                .collect();
            clients.into_iter().map(|c| c.join().unwrap()).collect()
        });
        assert!(
            copies
                .iter()
                .all(|c| c.as_ptr() == copies[0].as_ptr() && c.len() == 8 * MIB)
        );
        assert_eq!(reads.budget.available_permits(), 56 * 1024, "one copy read");
    }

    #[tokio::test]
    async fn a_replaced_or_purged_file_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let reads = LargeReads::new(8 * MIB as u64);
        put(dir.path(), "p-1.tgz", &[1; 300_000]);
        let old = copy(open(&reads, dir.path(), "p-1.tgz"));
        put(dir.path(), "p-1.tgz", &[2; 300_000]);
        let new = copy(open(&reads, dir.path(), "p-1.tgz"));
        assert_eq!(new[..], [2; 300_000], "another inode: not the copy being sent");
        assert_eq!(old[..], [1; 300_000], "which its responses finish");

        reads.purge(&PackageName::parse("p-1").unwrap(), None);
        assert_eq!(
            copy(open(&reads, dir.path(), "p-1.tgz")).as_ptr(),
            new.as_ptr(),
            "another package"
        );
        reads.purge(&PackageName::parse("p").unwrap(), Some("p-1.tgz"));
        assert_ne!(copy(open(&reads, dir.path(), "p-1.tgz")).as_ptr(), new.as_ptr());
    }

    #[tokio::test]
    async fn a_file_shorter_than_its_length_fails() {
        let dir = tempfile::tempdir().unwrap();
        put(dir.path(), "p-1.tgz", &[1; 100_000]);
        let short = |reads: &LargeReads| {
            let f = std::fs::File::open(dir.path().join("p-1.tgz")).unwrap();
            let mut id = FileId::of(&f.metadata().unwrap());
            id.len += 10;
            reads.open(&PackageName::parse("p").unwrap(), "p-1.tgz", f, id)
        };
        assert!(matches!(short(&LargeReads::new(MIB as u64)), Err(e) if e.kind() == io::ErrorKind::UnexpectedEof));
        let Ok(Large::Chunks(chunks)) = short(&LargeReads::new(0)) else {
            panic!("no budget: chunks")
        };
        let read: Vec<io::Result<Bytes>> = chunks.stream().collect().await;
        assert_eq!(
            read.iter()
                .map(|r| r.as_ref().map_or(0, Bytes::len))
                .collect::<Vec<_>>(),
            [SMALL_CHUNK, 100_000 - SMALL_CHUNK, 0]
        );
        assert!(matches!(&read[2], Err(e) if e.kind() == io::ErrorKind::UnexpectedEof));
    }
}
