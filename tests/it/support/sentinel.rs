//! A real Redis Sentinel setup on loopback: one master, one replica (`replicaof`), three
//! sentinels (`redis-server --sentinel`, quorum 2, down after 1 s), each on a free port with
//! its files in a temp dir, stopped by PID on drop. Helpers SIGKILL the master and wait for
//! the sentinels to name the new one.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis::resp_as;

/// The name the sentinels monitor the master under.
pub const MASTER_NAME: &str = "npgmaster";
const DOWN_AFTER_MS: u64 = 1000;
const FAILOVER_TIMEOUT_MS: u64 = 3000;

/// One redis-server process (a data node or a sentinel).
struct Process {
    child: Option<Child>,
    port: u16,
    password: Option<&'static str>,
}

impl Process {
    /// Starts `redis-server <args>` on `port` and waits until it answers `PING` as our child.
    fn start(port: u16, password: Option<&'static str>, args: &[String]) -> Result<Process, String> {
        let bin = super::require_binary("redis-server");
        let child = Command::new(bin)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn redis-server: {e}"))?;
        let pid = child.id();
        let mut p = Process {
            child: Some(child),
            port,
            password,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = p.child.as_mut().map(Child::try_wait) {
                return Err(format!("port {port}: it exited ({status})"));
            }
            // Ours, not another test's server that took the port first.
            let info = p.command(&["INFO", "server"]).unwrap_or_default();
            if info.contains(&format!("process_id:{pid}\r\n")) {
                return Ok(p);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("port {port}: no answer within 10 s"))
    }

    fn command(&self, args: &[&str]) -> Option<String> {
        resp_as(self.port, self.password, args)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([&format!("-{sig}"), &child.id().to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill -{sig} {}", child.id());
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Passwords: of the data nodes (`requirepass`, `masterauth`, the sentinels' `auth-pass`) and
/// of the sentinels themselves.
#[derive(Clone, Copy, Default)]
pub struct Auth {
    pub master: Option<&'static str>,
    pub sentinel: Option<&'static str>,
}

pub struct SentinelSet {
    /// The two data nodes; either may be the master.
    nodes: Vec<Process>,
    sentinels: Vec<Process>,
    dir: tempfile::TempDir,
    auth: Auth,
}

impl SentinelSet {
    /// Starts the master, its replica (synced) and three sentinels that all see both.
    pub fn start() -> SentinelSet {
        SentinelSet::start_with(Auth::default())
    }

    /// `start`, with passwords.
    pub fn start_with(auth: Auth) -> SentinelSet {
        let dir = tempfile::tempdir().expect("sentinel temp dir");
        let master = start_node(dir.path(), None, auth);
        let replica = start_node(dir.path(), Some(master.port), auth);
        let mut set = SentinelSet {
            nodes: vec![master, replica],
            sentinels: Vec::new(),
            dir,
            auth,
        };
        set.wait_synced(Duration::from_secs(10));
        for i in 0..3 {
            let sentinel = start_sentinel(set.dir.path(), i, set.nodes[0].port, auth);
            set.sentinels.push(sentinel);
        }
        set.wait_discovered(Duration::from_secs(15));
        set
    }

    /// `127.0.0.1:<port>,...` of the sentinels, as REDIS_SENTINELS takes them.
    pub fn sentinels_setting(&self) -> String {
        let addrs: Vec<String> = self.sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect();
        addrs.join(",")
    }

    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// The master's port as the first sentinel that answers names it.
    pub fn master_port(&self) -> u16 {
        for _ in 0..20 {
            for s in &self.sentinels {
                let reply = s
                    .command(&["SENTINEL", "get-master-addr-by-name", MASTER_NAME])
                    .unwrap_or_default();
                // `*2\r\n$9\r\n127.0.0.1\r\n$<n>\r\n<port>\r\n`
                if let Some(port) = reply.split("\r\n").nth(4).and_then(|p| p.parse().ok()) {
                    return port;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no sentinel names the master");
    }

    /// The port of the data node that is not the master now.
    pub fn replica_port(&self) -> u16 {
        let master = self.master_port();
        self.nodes
            .iter()
            .map(|n| n.port)
            .find(|p| *p != master)
            .expect("a replica")
    }

    /// Runs a command on the data node at `port`.
    pub fn command(&self, port: u16, args: &[&str]) -> String {
        resp_as(port, self.auth.master, args).unwrap_or_else(|| panic!("redis on port {port} does not answer"))
    }

    /// SIGKILLs the master (its data is gone, as with a crash); returns its port.
    pub fn kill_master(&mut self) -> u16 {
        let port = self.master_port();
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("the master is ours");
        node.kill();
        port
    }

    /// Starts the killed node again, empty, on its old port: the sentinels turn it into a
    /// replica of the new master.
    pub fn restart_node(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|n| n.port == port).expect("our node");
        assert!(node.child.is_none(), "node {port} still runs");
        let args = node_args(self.dir.path(), port, None, self.auth);
        *node = Process::start(port, self.auth.master, &args).unwrap_or_else(|e| panic!("restart redis {port}: {e}"));
    }

    /// SIGSTOP / SIGCONT the replica: it stays connected for the master but acknowledges
    /// nothing.
    pub fn pause_replica(&self, paused: bool) {
        let port = self.replica_port();
        let node = self.nodes.iter().find(|n| n.port == port).expect("our replica");
        node.signal(if paused { "STOP" } else { "CONT" });
    }

    /// Waits until the sentinels name a master other than `old`, and it answers as one;
    /// returns its port.
    pub fn wait_new_master(&self, old: u16, timeout: Duration) -> u16 {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let port = self.master_port();
            if port != old && self.command(port, &["ROLE"]).contains("master") {
                return port;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the sentinels named no new master within {timeout:?}");
    }

    /// Waits until the master reports a replica in sync.
    pub fn wait_synced(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let info = self.command(self.nodes_master_port(), &["INFO", "replication"]);
            if info.contains("connected_slaves:1") && info.contains("state=online") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the replica did not sync within {timeout:?}");
    }

    /// Before the sentinels run: the node started as master.
    fn nodes_master_port(&self) -> u16 {
        if self.sentinels.is_empty() {
            self.nodes[0].port
        } else {
            self.master_port()
        }
    }

    /// Waits until every sentinel knows the replica and the other sentinels (a failover needs
    /// both).
    fn wait_discovered(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let ready = self.sentinels.iter().all(|s| {
                let info = s.command(&["SENTINEL", "master", MASTER_NAME]).unwrap_or_default();
                field(&info, "num-slaves") == Some(1) && field(&info, "num-other-sentinels") == Some(2)
            });
            if ready {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the sentinels did not discover each other and the replica within {timeout:?}");
    }
}

/// A numeric field of a `SENTINEL master` reply (a flat list of names and values).
fn field(reply: &str, name: &str) -> Option<i64> {
    let lines: Vec<&str> = reply.split("\r\n").collect();
    let at = lines.iter().position(|l| *l == name)?;
    lines.get(at + 2)?.parse().ok()
}

fn node_args(dir: &std::path::Path, port: u16, replica_of: Option<u16>, auth: Auth) -> Vec<String> {
    let node_dir = dir.join(format!("node-{port}"));
    std::fs::create_dir_all(&node_dir).unwrap();
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--repl-diskless-sync",
        "yes",
        "--repl-diskless-sync-delay",
        "0",
        "--dir",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(node_dir.display().to_string());
    if let Some(pw) = auth.master {
        // Every node may become the master, or a replica of the other.
        args.extend(["--requirepass".into(), pw.into(), "--masterauth".into(), pw.into()]);
    }
    if let Some(master) = replica_of {
        args.extend(["--replicaof".into(), "127.0.0.1".into(), master.to_string()]);
    }
    args
}

fn start_node(dir: &std::path::Path, replica_of: Option<u16>, auth: Auth) -> Process {
    let mut last = String::new();
    for _ in 0..3 {
        let port = super::free_port();
        match Process::start(port, auth.master, &node_args(dir, port, replica_of, auth)) {
            Ok(p) => return p,
            Err(e) => last = e,
        }
    }
    panic!("redis-server did not start: {last}");
}

/// A sentinel: its config file must be writable (sentinels record what they learn in it).
fn start_sentinel(dir: &std::path::Path, i: usize, master: u16, auth: Auth) -> Process {
    let mut last = String::new();
    for _ in 0..3 {
        let port = super::free_port();
        let conf = dir.join(format!("sentinel-{i}.conf"));
        let mut text = format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\n\
             sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n\
             sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n\
             sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n",
            dir = dir.display()
        );
        if let Some(pw) = auth.master {
            text.push_str(&format!("sentinel auth-pass {MASTER_NAME} {pw}\n"));
        }
        if let Some(pw) = auth.sentinel {
            // The sentinels' own password, which they also use to talk to each other.
            text.push_str(&format!("requirepass {pw}\nsentinel sentinel-pass {pw}\n"));
        }
        std::fs::write(&conf, text).unwrap();
        match Process::start(port, auth.sentinel, &[conf.display().to_string(), "--sentinel".into()]) {
            Ok(p) => return p,
            Err(e) => last = e,
        }
    }
    panic!("redis-server --sentinel did not start: {last}");
}
