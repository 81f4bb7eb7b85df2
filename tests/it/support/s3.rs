//! A real S3-compatible server: moto's server mode (`target/test-tools/moto/`, installed by
//! scripts/install-test-deps) on a free loopback port, stopped by PID on drop, with one bucket.
//! Read back through the `object_store` crate, as npg reads it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::TryStreamExt;
use object_store::ObjectStore;
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

pub const BUCKET: &str = "npg-tarballs";
pub const KEY_ID: &str = "testing";
pub const SECRET: &str = "testing-secret";

pub struct S3Server {
    child: Option<Child>,
    pub port: u16,
}

fn moto_server() -> PathBuf {
    let bin = super::clients::tools_dir().join("moto/bin/moto_server");
    if !bin.is_file() {
        panic!(
            "`{}` is not installed: run scripts/install-test-deps (it installs every tool the tests need)",
            bin.display()
        );
    }
    bin
}

impl S3Server {
    /// moto on a free port, with the bucket `BUCKET` created.
    pub async fn start() -> S3Server {
        let mut server = S3Server {
            child: None,
            port: super::free_port(),
        };
        server.restart().await;
        server
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment of an npg storing its tarballs in the bucket under `prefix`.
    pub fn npg_env(&self, prefix: &str) -> Vec<(String, String)> {
        [
            ("TARBALL_STORE", "s3"),
            ("S3_BUCKET", BUCKET),
            ("S3_PREFIX", prefix),
            ("S3_ENDPOINT", &self.endpoint()),
            ("S3_PATH_STYLE", "true"),
            ("S3_TIMEOUT", "2s"),
            ("AWS_ACCESS_KEY_ID", KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Sends the server a signal (`STOP`: it hangs with its connections open; `CONT`).
    pub fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(child.id().to_string())
                .status();
        }
    }

    /// Stops the server (SIGKILL): moto keeps its objects in memory, so they are gone too.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it (again) on its port, empty but for the bucket.
    pub async fn restart(&mut self) {
        self.spawn();
        let created = super::http::send(
            reqwest::Method::PUT,
            &format!("{}/{BUCKET}", self.endpoint()),
            &[],
            Vec::new(),
        )
        .await;
        assert!(created.status.is_success(), "create bucket: {}", created.status);
    }

    fn spawn(&mut self) {
        self.stop();
        let mut child = Command::new(moto_server())
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn moto_server");
        let up = super::wait_listening(super::loopback(self.port), &mut child, Duration::from_secs(30));
        self.child = Some(child);
        if let Err(why) = up {
            panic!("moto_server did not start on port {}: {why}", self.port);
        }
    }

    pub fn client(&self) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_access_key_id(KEY_ID)
            .with_secret_access_key(SECRET)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .build()
            .expect("S3 client")
    }

    /// Every key in the bucket, sorted.
    pub async fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .client()
            .list(None)
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .expect("list the bucket");
        keys.sort();
        keys
    }

    /// Writes an object as anyone with access to the bucket could.
    pub async fn put_object(&self, key: &str, bytes: Vec<u8>) {
        self.client()
            .put(&Path::from(key), PutPayload::from(bytes))
            .await
            .expect("put an object");
    }

    pub async fn object(&self, key: &str) -> Option<Vec<u8>> {
        let got = self.client().get(&Path::from(key)).await.ok()?;
        Some(got.bytes().await.expect("read an object").to_vec())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
