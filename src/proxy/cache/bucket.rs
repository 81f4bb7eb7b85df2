//! The bucket of `TARBALL_STORE=s3`: tarballs as objects in the disk store's layout,
//! `<S3_PREFIX><2 chars>/<name>/<file>`, so a bucket can be seeded from a disk store with any
//! S3 sync tool. Only verified bytes are uploaded, and an object is complete once visible.
//! Every call has a deadline (`S3_TIMEOUT`); a failed call marks the bucket down, and while it
//! is down nothing waits on it: misses go to upstream, and a probe notices it back.

use std::fmt;
use std::path::Path as FsPath;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::client::{HttpClient, HttpConnector};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
    WriteMultipart,
};
use tokio::io::AsyncReadExt;

use super::disk::relative;
use crate::metrics::Metrics;
use crate::npm::name::PackageName;

/// Objects up to this size are read whole (and kept in memory like small files on disk).
pub(crate) const READ_WHOLE_MAX: u64 = 256 * 1024;
/// Files up to this size are uploaded in one request, put-if-absent; larger ones in parts.
const SINGLE_PUT_MAX: u64 = 16 << 20;
const PART_SIZE: usize = 8 << 20;
/// How often a bucket marked down is asked again.
const PROBE_EVERY: Duration = Duration::from_secs(2);
/// A whole streamed body: per-read deadlines bound each wait, this bounds a trickle.
const BODY_DEADLINE: Duration = Duration::from_secs(600);

/// Access keys, from the environment or `S3_CREDENTIALS_FILE`; never printed.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub(crate) key_id: String,
    pub(crate) secret: String,
    pub(crate) token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

impl Credentials {
    /// A credentials file: `KEY=VALUE` lines with `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`
    /// and optionally `AWS_SESSION_TOKEN`; blank lines and `#` comments allowed. Errors never
    /// quote a value.
    pub(crate) fn parse(text: &str) -> Result<Credentials, String> {
        let (mut key_id, mut secret, mut token) = (None, None, None);
        for (n, line) in text.lines().enumerate().map(|(n, l)| (n + 1, l.trim())) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(format!("line {n}: expected KEY=VALUE"));
            };
            let value = value.trim().trim_matches('"').to_string();
            let slot = match key.trim() {
                "AWS_ACCESS_KEY_ID" => &mut key_id,
                "AWS_SECRET_ACCESS_KEY" => &mut secret,
                "AWS_SESSION_TOKEN" => &mut token,
                other => return Err(format!("line {n}: unknown key `{other}`")),
            };
            *slot = Some(value).filter(|v| !v.is_empty());
        }
        match (key_id, secret) {
            (Some(key_id), Some(secret)) => Ok(Credentials { key_id, secret, token }),
            _ => Err("needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into()),
        }
    }
}

/// Where the bucket is and how to reach it (checked by `config` and `preflight`).
#[derive(Debug, Clone)]
pub(crate) struct BucketSettings {
    pub(crate) bucket: String,
    pub(crate) prefix: String,
    pub(crate) endpoint: Option<url::Url>,
    pub(crate) region: String,
    pub(crate) path_style: bool,
    pub(crate) credentials: Credentials,
    pub(crate) timeout: Duration,
}

/// An object found in the bucket.
pub(crate) enum Object {
    Whole(Bytes),
    /// Too large to hold: its bytes as they come, and its length.
    Stream(BoxStream<'static, Result<Bytes, String>>, u64),
}

pub(crate) struct Bucket {
    store: AmazonS3,
    prefix: String,
    timeout: Duration,
    up: AtomicBool,
    metrics: Arc<Metrics>,
}

/// The bucket's HTTP client from npg's one builder (its rustls provider, its User-Agent):
/// connections within the deadline; a request's own timeout covers a whole streamed body, so
/// it is the long one (`call` and the stream bound each wait).
#[derive(Debug)]
struct Connector {
    timeout: Duration,
}

impl HttpConnector for Connector {
    fn connect(&self, _: &ClientOptions) -> object_store::Result<HttpClient> {
        let client = crate::upstream::client::builder(Some("tarball store"))
            .connect_timeout(self.timeout)
            .timeout(BODY_DEADLINE)
            .build()
            .map_err(|e| object_store::Error::Generic {
                store: "S3",
                source: Box::new(e),
            })?;
        Ok(HttpClient::new(client))
    }
}

impl Bucket {
    pub(crate) fn new(settings: &BucketSettings, metrics: Arc<Metrics>) -> anyhow::Result<Bucket> {
        let c = &settings.credentials;
        // A short retry bound: a dead bucket must cost one deadline, not minutes of retries.
        let retry = RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 1,
            retry_timeout: settings.timeout,
        };
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&settings.bucket)
            .with_region(&settings.region)
            .with_access_key_id(&c.key_id)
            .with_secret_access_key(&c.secret)
            .with_virtual_hosted_style_request(!settings.path_style)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_client_options(ClientOptions::new().with_allow_http(true))
            .with_http_connector(Connector {
                timeout: settings.timeout,
            })
            .with_retry(retry);
        if let Some(token) = &c.token {
            builder = builder.with_token(token);
        }
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.with_endpoint(endpoint.as_str().trim_end_matches('/'));
        }
        Ok(Bucket {
            store: builder.build()?,
            prefix: settings.prefix.clone(),
            timeout: settings.timeout,
            up: AtomicBool::new(true),
            metrics,
        })
    }

    /// The object key of a tarball: the disk layout under the prefix; `None` where the name or
    /// file could leave it.
    pub(crate) fn key(&self, name: &PackageName, file: &str) -> Option<Path> {
        key(&self.prefix, name, file)
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Runs one call within the deadline: `None` when the object is absent or the call failed;
    /// a failure marks the bucket down and is counted.
    async fn call<T>(&self, op: &'static str, call: impl Future<Output = object_store::Result<T>>) -> Option<T> {
        let error = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => return Some(v),
            Ok(Err(object_store::Error::NotFound { .. })) => return None,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", self.timeout),
        };
        self.metrics.bucket_error(op);
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::error!(
                op,
                error,
                "the tarball bucket failed: marked down, misses go to upstream"
            );
        }
        self.metrics.set_bucket_up(false);
        None
    }

    /// A tarball from the bucket: small ones read whole, large ones streamed. `None` when it
    /// is not there, or the bucket is down.
    pub(crate) async fn get(&self, name: &PackageName, file: &str) -> Option<Object> {
        let key = self.key(name, file)?;
        if !self.is_up() {
            return None;
        }
        let got = self.call("get", self.store.get(&key)).await?;
        let size = got.meta.size;
        if size <= READ_WHOLE_MAX {
            return self.call("get", got.bytes()).await.map(Object::Whole);
        }
        let timeout = self.timeout;
        let chunks = got.into_stream();
        // Each read within the deadline: a bucket that stops mid-body ends the stream.
        let stream = futures_util::stream::unfold(Some(chunks), move |chunks| async move {
            let mut chunks = chunks?;
            match tokio::time::timeout(timeout, chunks.next()).await {
                Ok(Some(Ok(b))) => Some((Ok(b), Some(chunks))),
                Ok(Some(Err(e))) => Some((Err(e.to_string()), None)),
                Ok(None) => None,
                Err(_) => Some((Err("the bucket stopped sending".into()), None)),
            }
        });
        Some(Object::Stream(stream.boxed(), size))
    }

    /// Uploads a verified file as the tarball's object. Two replicas filling one file end in
    /// one object: files up to SINGLE_PUT_MAX are put-if-absent (`If-None-Match: *`: the
    /// second put is refused, which is success); larger ones go in parts, completed only
    /// after the whole file is sent, and there the last complete upload wins, with the same
    /// verified bytes. A server that ignores `If-None-Match` also ends with one object of the
    /// same bytes. Returns whether the object is there.
    pub(crate) async fn put(&self, name: &PackageName, file: &str, path: &FsPath) -> bool {
        let Some(key) = self.key(name, file) else { return false };
        if !self.is_up() {
            return false;
        }
        let Ok(mut f) = tokio::fs::File::open(path).await else {
            return false;
        };
        let Ok(size) = f.metadata().await.map(|m| m.len()) else {
            return false;
        };
        if size <= SINGLE_PUT_MAX {
            let mut bytes = Vec::with_capacity(size as usize);
            if f.read_to_end(&mut bytes).await.is_err() {
                return false;
            }
            let put = async {
                let opts = PutOptions::from(PutMode::Create);
                match self.store.put_opts(&key, PutPayload::from(bytes), opts).await {
                    // Another replica's upload of the same verified bytes.
                    Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
                    other => other.map(drop),
                }
            };
            return self.call("put", put).await.is_some();
        }
        self.put_parts(&key, f).await
    }

    async fn put_parts(&self, key: &Path, mut f: tokio::fs::File) -> bool {
        let Some(upload) = self.call("put", self.store.put_multipart(key)).await else {
            return false;
        };
        let mut parts = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let sent = match f.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    parts.write(&buf[..n]);
                    self.call("put", parts.wait_for_capacity(2)).await.is_some()
                }
                Err(_) => false,
            };
            if !sent {
                // Never completed, so never visible; the parts sent are dropped.
                let _ = tokio::time::timeout(self.timeout, parts.abort()).await;
                return false;
            }
        }
        self.call("put", parts.finish()).await.is_some()
    }

    /// Deletes tarballs newly found malicious: the given files, or every object of the
    /// package. Returns how many objects went.
    pub(crate) async fn purge(&self, name: &PackageName, files: Option<&[String]>) -> usize {
        let keys: Vec<Path> = match files {
            Some(files) => files.iter().filter_map(|f| self.key(name, f)).collect(),
            None => {
                let Some(any) = self.key(name, "x.tgz") else { return 0 };
                let depth = any.parts().count();
                let folder: Path = any.parts().take(depth - 1).collect();
                let listing = self.store.list(Some(&folder)).try_collect::<Vec<_>>();
                let Some(found) = self.call("list", listing).await else {
                    return 0;
                };
                // Only the package's own folder: `@s/p` must not take `@s/p/q`'s files.
                let own = found
                    .into_iter()
                    .map(|m| m.location)
                    .filter(|l| l.parts().count() == depth);
                own.collect()
            }
        };
        let mut removed = 0;
        for key in keys {
            if self.call("head", self.store.head(&key)).await.is_some()
                && self.call("delete", self.store.delete(&key)).await.is_some()
            {
                removed += 1;
            }
        }
        removed
    }

    /// While the bucket is down, asks it every PROBE_EVERY whether it answers again.
    pub(crate) async fn probe(self: Arc<Self>) {
        let probe_key = Path::from(format!("{}.npg-probe", self.prefix));
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            if self.is_up() {
                continue;
            }
            let answer = tokio::time::timeout(self.timeout, self.store.head(&probe_key)).await;
            if matches!(answer, Ok(Ok(_) | Err(object_store::Error::NotFound { .. }))) {
                tracing::info!("the tarball bucket answers again: fills go to it");
                self.up.store(true, Ordering::Relaxed);
                self.metrics.set_bucket_up(true);
            }
        }
    }
}

fn key(prefix: &str, name: &PackageName, file: &str) -> Option<Path> {
    let rel = relative(name, file)?;
    let rel = rel.to_str()?;
    Path::parse(format!("{prefix}{rel}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_disk_layout_under_the_prefix() {
        let scoped = PackageName::parse("@Babel/core").unwrap();
        let k = key("npg/", &scoped, "core-7.23.0.tgz").unwrap();
        assert_eq!(k.as_ref(), "npg/@b/@Babel/core/core-7.23.0.tgz");
        let plain = PackageName::parse("left-pad").unwrap();
        assert_eq!(
            key("", &plain, "left-pad-1.0.0.tgz").unwrap().as_ref(),
            "le/left-pad/left-pad-1.0.0.tgz"
        );
        for escape in ["../../x.tgz", "/etc/passwd", ".tmp", "a/../../b"] {
            assert!(key("p/", &plain, escape).is_none(), "{escape}");
        }
    }

    #[test]
    fn credentials_file() {
        let c = Credentials::parse("# secret\nAWS_ACCESS_KEY_ID=AK\n\nAWS_SECRET_ACCESS_KEY = \"s=1\"\n").unwrap();
        assert_eq!(
            (c.key_id.as_str(), c.secret.as_str(), c.token.as_deref()),
            ("AK", "s=1", None)
        );
        let t = Credentials::parse("AWS_ACCESS_KEY_ID=a\nAWS_SECRET_ACCESS_KEY=b\nAWS_SESSION_TOKEN=t").unwrap();
        assert_eq!(t.token.as_deref(), Some("t"));
        assert!(
            Credentials::parse("AWS_ACCESS_KEY_ID=a")
                .unwrap_err()
                .contains("AWS_SECRET_ACCESS_KEY")
        );
        let bad = Credentials::parse("AWS_ACCESS_KEY_ID=a\nPASSWORD=hunter2").unwrap_err();
        assert!(bad.contains("PASSWORD") && !bad.contains("hunter2"), "{bad}");
        assert!(
            Credentials::parse("just-a-secret-value")
                .unwrap_err()
                .contains("line 1")
        );
        assert_eq!(format!("{c:?}"), "Credentials(<redacted>)");
    }
}
