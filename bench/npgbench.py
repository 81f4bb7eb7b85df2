"""Shared pieces of the benchmarks under bench/: processes started and stopped by PID, free
loopback ports, the fake registry and npg started on 127.0.0.1 (over HTTPS with a test CA for
`--tls`), wrk and `openssl s_time` runs, /proc figures, and the guard's inputs (a 10k-entry
blocklist, a 100k-entry malware feed). Stdlib only."""
import http.client, json, os, re, signal, socket, ssl, subprocess, sys, time
from urllib.parse import urlsplit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NPG = os.path.join(ROOT, "target", "release", "npg")
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Broken(Exception):
    """The harness itself failed (a server did not start, an install failed, bodies differ):
    the only reason to exit non-zero. Slow numbers never are."""


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2 if xs else None


def exit_on_signals():
    """SIGTERM/SIGHUP/SIGINT unwind the stack, so every `finally` stops what it started."""
    def handler(sig, _frame):
        raise SystemExit(128 + sig)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, handler)


class Procs:
    """Every process the benchmark starts, each in its own session (a terminal's Ctrl-C reaches
    only us), its output in <work>/<name>.log; stop_all() ends them by PID, newest first."""

    def __init__(self, work):
        self.work, self.running = work, []

    def start(self, name, argv, env=None, cwd=None):
        out = open(os.path.join(self.work, f"{name}.log"), "ab")
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        proc.name = name
        self.running.append(proc)
        return proc

    def run(self, name, argv, timeout, env=None, cwd=None):
        """Runs to completion (bounded); returns (exit code, seconds)."""
        t0 = time.monotonic()
        proc = self.start(name, argv, env, cwd)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            self.stop(proc)
        return code, time.monotonic() - t0

    def log_tail(self, name, lines=20):
        try:
            with open(os.path.join(self.work, f"{name}.log"), errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self, proc, timeout=10):
        if proc in self.running:
            self.running.remove(proc)
        if proc.poll() is None:
            # Its process group too: npm's children (node workers) share the session we made.
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(timeout)
                    break
                except subprocess.TimeoutExpired:
                    continue

    def stop_all(self):
        for proc in reversed(list(self.running)):
            self.stop(proc)


def wait_until(check, timeout, what, proc=None, procs=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = procs.log_tail(proc.name) if procs else ""
            raise Broken(f"{what}: the process exited ({proc.returncode})\n{tail}")
        try:
            value = check()
            if value:
                return value
        except (OSError, http.client.HTTPException, ValueError):
            pass
        time.sleep(0.05)
    raise Broken(f"{what}: not ready after {timeout} s")


# The CA `https://` URLs are checked against (`trust`); None until a bench makes one.
_TLS = {"context": None}


def trust(ca_file):
    """From now on http_get verifies https:// URLs against this CA (and the host name)."""
    _TLS["context"] = ssl.create_default_context(cafile=ca_file)


def http_get(url, headers=None, timeout=60):
    """GET without any decoding: (status, lower-case headers, raw body bytes)."""
    u = urlsplit(url)
    if u.scheme == "https":
        conn = http.client.HTTPSConnection(u.hostname, u.port, timeout=timeout, context=_TLS["context"])
    else:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request("GET", u.path + (f"?{u.query}" if u.query else ""), headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def build_npg():
    log("cargo build --release")
    if subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, timeout=1200).returncode:
        raise Broken("cargo build --release failed")


def require(*tools):
    missing = [t for t in tools if not any(os.access(os.path.join(d, t), os.X_OK)
                                            for d in os.environ.get("PATH", "").split(os.pathsep))]
    if missing:
        raise Broken(f"missing {', '.join(missing)}: run scripts/install-test-deps")


# --- the fake registry and npg ------------------------------------------------------------

def start_registry(procs, work, fixture, guard_feed=False, far=None):
    """Starts bench/registry.py (`far`: (latency ms, Mbit/s) of an upstream far away); returns
    (base URL, its index of packages)."""
    port, index = free_port(), os.path.join(work, "registry-index.json")
    argv = [sys.executable, os.path.join(ROOT, "bench", "registry.py"), "--port", str(port),
            "--index", index, "--fixture", str(fixture)] + (["--guard-feed"] if guard_feed else [])
    if far:
        argv += ["--latency-ms", str(far[0]), "--mbit", str(far[1])]
    proc = procs.start("registry", argv)
    proc.base = f"http://127.0.0.1:{port}"
    proc.wait_ready = lambda: wait_until(lambda: os.path.exists(index), 300, "fake registry", proc, procs) and \
        json.load(open(index))
    return proc


def registry_counts(base):
    return json.loads(http_get(base + "/__stats")[2])


def make_certificates(work):
    """A test CA (ECDSA P-256, as npg's ACME keys) and a server certificate it signs for
    127.0.0.1 and npg-bench.localhost, in <work>/tls; returns {"ca", "cert", "key"} paths."""
    d = os.path.join(work, "tls")
    os.makedirs(d)
    p = {k: os.path.join(d, f) for k, f in (("ca", "ca.pem"), ("ca_key", "ca.key"), ("cert", "server.pem"),
                                             ("key", "server.key"), ("csr", "server.csr"), ("ext", "server.ext"))}
    with open(p["ext"], "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:npg-bench.localhost\nbasicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for argv in (["openssl", "req", "-x509", *ec, "-keyout", p["ca_key"], "-out", p["ca"], "-days", "2",
                  "-subj", "/CN=npg bench test CA"],
                 ["openssl", "req", *ec, "-keyout", p["key"], "-out", p["csr"], "-subj", "/CN=npg-bench.localhost"],
                 ["openssl", "x509", "-req", "-in", p["csr"], "-CA", p["ca"], "-CAkey", p["ca_key"], "-CAcreateserial",
                  "-out", p["cert"], "-days", "2", "-extfile", p["ext"]]):
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if out.returncode:
            raise Broken(f"{' '.join(argv[:3])} failed: {out.stderr[-500:]}")
    return p


def tls_session(port):
    """(protocol, cipher) a default OpenSSL client negotiates with 127.0.0.1:port."""
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-brief"], input="",
                         capture_output=True, text=True, timeout=30)
    found = dict(re.findall(r"^(Protocol version|Ciphersuite): (.+)$", out.stdout + out.stderr, re.M))
    return found.get("Protocol version", "?"), found.get("Ciphersuite", "?")


class Npg:
    """One npg on a free loopback port with a fresh STORAGE_DIR; the guard is off unless
    `blacklist` and `feed` name the generated inputs. With `tls` (make_certificates' paths) it
    serves HTTPS on a second port (`url`, `npm` and PROXY_URL are https; plain HTTP answers
    /-/ping and redirects the rest). `binary`: another build of npg."""

    def __init__(self, procs, work, name, upstream, feed_url, blacklist=None, env=None, tls=None, binary=NPG):
        self.port, self.dir = free_port(), os.path.join(work, name)
        os.makedirs(self.dir)
        self.plain = self.url = f"http://127.0.0.1:{self.port}"
        settings = {"HTTP_PORT": str(self.port)}
        if tls:
            self.https_port = free_port()
            self.url = f"https://127.0.0.1:{self.https_port}"
            settings |= {"HTTPS_PORT": str(self.https_port), "TLS_CERT_FILE": tls["cert"], "TLS_KEY_FILE": tls["key"]}
        self.npm = self.url + "/npm"
        settings |= {
            "PATH": os.environ["PATH"], "HOME": self.dir, "REGISTRY_URL": upstream.rstrip("/") + "/",
            "HTTP_BIND": "127.0.0.1", "PROXY_URL": self.npm,
            "STORAGE_DIR": os.path.join(self.dir, "storage"), "MALWARE_LIST_DIR": os.path.join(self.dir, "feed"),
            "MALWARE_FEED_URL": feed_url, "BLACKLIST_PATH": blacklist or os.path.join(self.dir, "no-blacklist.yml"),
            "METADATA_TTL": "1h", "LOG_LEVEL": "warn", "INSTANCE_NAME": name, **(env or {})}
        self.procs, self.proc = procs, procs.start(name, [binary], env=settings)
        self.pid = self.proc.pid
        wait_until(lambda: http_get(self.plain + "/-/ping", timeout=2)[0] == 200, 30, f"npg {name}", self.proc, procs)
        if tls:
            wait_until(lambda: http_get(self.url + "/-/ping", timeout=2)[0] == 200, 30, f"npg {name} over TLS",
                       self.proc, procs)

    def health(self):
        return json.loads(http_get(self.url + "/api/health")[2])

    def stop(self):
        self.procs.stop(self.proc)


# --- measurements ---------------------------------------------------------------------------

def cpu_seconds(pids):
    """utime + stime of these processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError):
            pass
    return total / CLK_TCK


def children(pid):
    """PIDs whose parent is `pid` (nginx's workers)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return out


def memory_kib(pid, field):
    """VmRSS (now) or VmHWM (peak) from /proc/<pid>/status, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


WRK_LUA = """
done = function(s, latency, requests)
  io.write(string.format('WRKJSON {"requests":%d,"bytes":%d,"duration_us":%d,"socket_errors":%d,"timeouts":%d,"non2xx":%d,"p50_us":%d,"p99_us":%d}\\n',
    s.requests, s.bytes, s.duration, s.errors.connect + s.errors.read + s.errors.write, s.errors.timeout,
    s.errors.status, latency:percentile(50), latency:percentile(99)))
end
"""


def wrk(url, seconds, headers=(), connections=64, threads=2, work="/tmp"):
    """One wrk run; returns req/s, MB/s, p50/p99 in ms and the error counts."""
    script = os.path.join(work, "wrk-summary.lua")
    if not os.path.exists(script):
        with open(script, "w") as f:
            f.write(WRK_LUA)
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", script]
    for h in headers:
        argv += ["-H", h]
    out = subprocess.run(argv + [url], capture_output=True, text=True, timeout=seconds + 60)
    m = re.search(r"WRKJSON (\{.*\})", out.stdout)
    if not m:
        raise Broken(f"wrk failed on {url}: {out.stdout[-500:]} {out.stderr[-500:]}")
    r = json.loads(m.group(1))
    secs = r["duration_us"] / 1e6
    return {"rps": r["requests"] / secs, "mbps": r["bytes"] / secs / 1e6, "requests": r["requests"],
            "p50_ms": r["p50_us"] / 1000, "p99_ms": r["p99_us"] / 1000,
            "errors": r["socket_errors"] + r["timeouts"] + r["non2xx"], "non2xx": r["non2xx"]}


def s_time(port, seconds, reuse, path, clients=4):
    """Handshakes: `clients` concurrent `openssl s_time` loops against 127.0.0.1:port for
    `seconds`, each connection new and asking `path` once (HTTP/1.0, so the server closes;
    reading the answer also takes TLS 1.3 session tickets in). Full handshakes, or with `reuse`
    every connection offers the session (ticket) of the previous one. Returns connections/s
    over the wall time, and how many connections resumed."""
    argv = ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-reuse" if reuse else "-new",
            "-time", str(seconds), "-www", path]
    t0 = time.monotonic()
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(clients)]
    outs = [p.communicate(timeout=seconds + 60) for p in procs]
    wall = time.monotonic() - t0
    marks = "".join("".join(line for line in out.splitlines() if re.fullmatch(r"[*rt3]+", line)) for out, _ in outs)
    if any(p.returncode for p in procs) or not marks:
        raise Broken(f"openssl s_time against port {port} failed: {outs[0][0][-300:]} {outs[0][1][-300:]}")
    return {"cps": len(marks) / wall, "connections": len(marks), "resumed": marks.count("r"), "seconds": wall,
            "clients": clients}


# --- the guard's inputs ---------------------------------------------------------------------

def guard_blacklist():
    """10k blocklist entries: whole packages, version ranges, and 100 name patterns."""
    lines = ["packages:"]
    for i in range(9900):
        lines.append(f"  - name: blocked-{i}")
        if i % 2:
            lines.append(f"    versions: ['>=1.0.0 <1.{i % 50}.0']")
        lines.append("    reason: r")
    lines.append("patterns:")
    for i in range(100):
        lines += [f"  - pattern: '^typo-{i}-[a-z]+$'", "    reason: p"]
    return "\n".join(lines) + "\n"


def guard_feed():
    """100k malware feed entries, a third of them whole packages (`*`)."""
    return json.dumps([{"package_name": f"mal-{i}", "version": "*" if i % 3 == 0 else f"1.0.{i % 7}",
                        "reason": "MALWARE"} for i in range(100000)]).encode()


# Every other rule on, at its strictest (the bench registry publishes no signing keys, so
# signatures are checked against none: the cost of looking is still paid).
GUARD_RULES = {"INSTALL_SCRIPT_POLICY": "quarantine", "INSTALL_SCRIPT_QUARANTINE": "14d",
               "TYPOSQUAT_POLICY": "block", "SIGNATURE_POLICY": "hide-invalid"}


def guard_osv(path, count=10000):
    """`count` OSV MAL- advisories as a directory of records: ranges, exact versions, and a
    third whole packages."""
    os.makedirs(path, exist_ok=True)
    for i in range(count):
        affected = {"package": {"ecosystem": "npm", "name": f"osv-listed-{i}"}}
        if i % 3 == 0:
            affected["ranges"] = [{"type": "SEMVER", "events": [{"introduced": "0"}]}]
        elif i % 3 == 1:
            affected["versions"] = [f"1.0.{i % 10}"]
        else:
            affected["ranges"] = [{"type": "SEMVER", "events": [{"introduced": "1.0.0"}, {"fixed": "1.2.0"}]}]
        record = {"id": f"MAL-2025-{i}", "summary": "Malicious code", "affected": [affected]}
        with open(os.path.join(path, f"MAL-2025-{i}.json"), "w") as f:
            json.dump(record, f)


def start_guarded_npg(procs, work, name, registry_base):
    """npg with the 10k-entry blocklist, the 100k-entry feed, 10k OSV advisories and
    GUARD_RULES, once the lists are loaded."""
    path = os.path.join(work, "blacklist.yml")
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(guard_blacklist())
    osv = os.path.join(work, "osv")
    if not os.path.exists(osv):
        guard_osv(osv)
    env = {**GUARD_RULES, "OSV_FEED_DIR": osv}
    npg = Npg(procs, work, name, registry_base, registry_base + "/feed-guard.json", blacklist=path, env=env)
    wait_until(lambda: npg.health()["guard"]["malware_entries"] >= 100000 // 3, 60, "guard-on npg feed", npg.proc, procs)
    wait_until(lambda: npg.health()["guard"]["osv_entries"] >= 10000, 60, "guard-on npg OSV", npg.proc, procs)
    return npg


def guard_rounds(off, on, seconds, rounds, work):
    """req/s of the hot large packument (gzip) on npg with the guard off and on, rounds
    interleaved (the order alternating); returns {"off": [...], "on": [...]}."""
    runs = {"off": [], "on": []}
    for npg in (off, on):
        http_get(npg.npm + "/bench-large", {"Accept-Encoding": "gzip"}, timeout=120)
    for r in range(rounds):
        for key in (("off", "on") if r % 2 == 0 else ("on", "off")):
            npg = off if key == "off" else on
            runs[key].append(wrk(npg.npm + "/bench-large", seconds, ["Accept-Encoding: gzip"], work=work)["rps"])
        log(f"guard round {r + 1}: off {runs['off'][-1]:.0f} req/s, on {runs['on'][-1]:.0f} req/s")
    return runs
