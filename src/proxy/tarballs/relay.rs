//! What one client of a download receives: the chunks handed to it directly (the client that
//! started it), then, or only, the temp file as the download says it may be read. Nothing past
//! what the download has released (everything but the unverified last chunk) is ever sent.

use std::io;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{mpsc, watch};

use super::flight::{Failure, State};

const READ_CHUNK: usize = 64 * 1024;

pub(crate) type Chunks = mpsc::Receiver<io::Result<Bytes>>;

/// Waits until upstream answered: the announced length, or why the download failed. A
/// client reading the temp file (`direct` false) cannot use a download that lost its file,
/// so it waits until the file has taken bytes (a full disk fails at the first write).
pub(crate) async fn started(state: &mut watch::Receiver<State>, direct: bool) -> Result<Option<u64>, Failure> {
    let ready = |s: &State| match s {
        State::Asking => false,
        State::Streaming { relayable, .. } => direct || *relayable > 0,
        _ => true,
    };
    let seen = state.wait_for(ready).await.map(|s| s.clone());
    match seen {
        Ok(State::Streaming { length, .. }) => Ok(length),
        Ok(State::Unshared { length }) if direct => Ok(length),
        Ok(State::Unshared { .. }) => Err(Failure::Disk),
        Ok(State::Verified { length }) => Ok(Some(length)),
        Ok(State::Failed(f)) => Err(f),
        Ok(State::Asking) | Err(_) => Err(ended_early()),
    }
}

fn ended_early() -> Failure {
    Failure::Upstream(crate::upstream::UpstreamError::Network(
        "the download ended early".into(),
    ))
}

/// Feeds `out` from `direct`, then from `file` (opened before the download could be renamed).
pub(crate) async fn relay(
    direct: Option<Chunks>,
    file: Option<tokio::fs::File>,
    mut state: watch::Receiver<State>,
    out: mpsc::Sender<io::Result<Bytes>>,
) {
    let mut offset = 0u64;
    if let Some(mut direct) = direct {
        while let Some(item) = direct.recv().await {
            let failed = item.is_err();
            offset += item.as_ref().map_or(0, |b| b.len() as u64);
            if out.send(item).await.is_err() || failed {
                return;
            }
        }
        if matches!(*state.borrow(), State::Verified { length } if length == offset) {
            return;
        }
    }
    let result = match file {
        Some(file) => from_file(file, offset, &mut state, &out).await,
        None => Err(ended_early()),
    };
    if let Err(failure) = result {
        let _ = out.send(Err(io::Error::other(failure.to_string()))).await;
    }
}

/// Sends the file from `offset` as far as the download releases it, until it is verified.
async fn from_file(
    mut file: tokio::fs::File,
    mut offset: u64,
    state: &mut watch::Receiver<State>,
    out: &mpsc::Sender<io::Result<Bytes>>,
) -> Result<(), Failure> {
    let read_error = |_| Failure::Disk;
    file.seek(io::SeekFrom::Start(offset)).await.map_err(read_error)?;
    loop {
        let (limit, done) = match state.borrow_and_update().clone() {
            State::Asking => (0, false),
            State::Streaming { relayable, .. } => (relayable, false),
            State::Verified { length } => (length, true),
            State::Unshared { .. } => return Err(Failure::Disk),
            State::Failed(f) => return Err(f),
        };
        while offset < limit {
            let want = (limit - offset).min(READ_CHUNK as u64) as usize;
            let mut buf = BytesMut::zeroed(want);
            file.read_exact(&mut buf).await.map_err(read_error)?;
            offset += want as u64;
            if out.send(Ok(buf.freeze())).await.is_err() {
                return Ok(()); // the client left
            }
        }
        if done {
            return Ok(());
        }
        let unfinished = |s: &State| matches!(s, State::Asking | State::Streaming { .. });
        if state.changed().await.is_err() && unfinished(&state.borrow()) {
            return Err(ended_early());
        }
    }
}
