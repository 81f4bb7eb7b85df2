//! A real `redis-server` on a free loopback port, without persistence, stopped by PID on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts it on a free port, another one when that port was taken before redis bound it.
    pub fn start() -> RedisServer {
        let mut last = String::new();
        for _ in 0..3 {
            let mut server = RedisServer {
                child: None,
                port: super::free_port(),
                dir: tempfile::tempdir().expect("redis temp dir"),
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(why) => last = format!("port {}: {why}", server.port),
            }
        }
        panic!("redis-server did not start: {last}");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Stops the server (SIGKILL): its data is gone, as with a Redis without persistence.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        if let Err(why) = self.spawn() {
            panic!("redis-server did not start again on port {}: {why}", self.port);
        }
    }

    /// Spawns redis-server on `self.port` and waits until it answers. The server answering must
    /// report our child's pid: `free_port` releases the port before redis binds it, so another
    /// test's server may hold it (ours then exits, and a ping alone would reach theirs).
    fn spawn(&mut self) -> Result<(), String> {
        self.stop();
        let bin = super::require_binary("redis-server");
        let child = Command::new(bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!("it exited ({status})"));
            }
            if self.server_pid() == Some(pid) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("it did not answer within 10 s".into())
    }

    /// The pid of the redis-server answering on the port (`INFO server`), if one answers.
    fn server_pid(&self) -> Option<u32> {
        let info = self.try_command(&["INFO", "server"])?;
        let line = info.lines().find_map(|l| l.strip_prefix("process_id:"))?;
        line.trim().parse().ok()
    }

    /// Runs a command with redis-cli-free RESP over a socket, returning the raw reply.
    pub fn command(&self, args: &[&str]) -> String {
        self.try_command(args).expect("connect redis")
    }

    /// `command`, None when nothing accepts connections on the port.
    fn try_command(&self, args: &[&str]) -> Option<String> {
        resp(self.port, args)
    }
}

/// Runs a command on the Redis (or sentinel) at `127.0.0.1:<port>` with redis-cli-free RESP
/// over a socket, returning the raw reply; None when nothing accepts connections there.
pub fn resp(port: u16, args: &[&str]) -> Option<String> {
    resp_as(port, None, args)
}

/// `resp`, after `AUTH <password>` when there is one.
pub fn resp_as(port: u16, password: Option<&str>, args: &[&str]) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(300))).ok()?;
    if let Some(password) = password {
        exchange(&mut s, &["AUTH", password])?;
    }
    exchange(&mut s, args)
}

fn exchange(s: &mut std::net::TcpStream, args: &[&str]) -> Option<String> {
    use std::io::{Read, Write};
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{}\r\n", a.len(), a));
    }
    s.write_all(req.as_bytes()).ok()?;
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.ends_with(b"\r\n") {
            break;
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The harness itself: a port another test's server holds is not taken for ours.
#[test]
fn a_port_held_by_another_server_is_refused() {
    let theirs = RedisServer::start();
    let mut ours = RedisServer {
        child: None,
        port: theirs.port,
        dir: tempfile::tempdir().expect("redis temp dir"),
    };
    assert!(ours.spawn().is_err(), "another server's port taken for ours");
    assert!(theirs.try_command(&["PING"]).is_some_and(|r| r.contains("PONG")));
}
