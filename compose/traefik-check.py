#!/usr/bin/env python3
"""Load compose/traefik/{traefik,dynamic}.yml with the real Traefik binary, as compose/check does.

No Docker engine is needed: the npg services that Traefik's Docker provider would build from
the npg containers' labels are written as file-provider services (same names, same options,
three replicas at 127.0.0.2-4), the routers from dynamic.yml are loaded as they are (only
`@docker` becomes `@file`), and small fake replicas answer on :443 and :3000. Run it inside a
private network namespace (`unshare -n`), where :80/:443/:8080 are free.

traefik.yml is for Traefik >= 3.7 (the default image). A Traefik 3.6 (nixpkgs 25.11's, which
the NixOS VM cluster test runs with the same routers and health checks) gets it without the
3.7 keys (LEGACY_36) and may warn that encoded characters are allowed (we allow %2F).

usage: traefik-check.py TRAEFIK_BIN COMPOSE_CONFIG_JSON WORKDIR
Prints one `ok ...` or `FAIL ...` line per check; exit status 0 only when all passed.
"""
import base64, hashlib, json, os, re, socket, ssl, subprocess, sys, threading, time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

traefik, compose_json, work = sys.argv[1], sys.argv[2], sys.argv[3]
VERSION = re.search(r"^Version:\s*(\S+)", subprocess.run([traefik, "version"], capture_output=True, text=True).stdout, re.M).group(1)
IS_36 = VERSION.startswith("3.6.")
# static options Traefik 3.6 does not know (it refuses the file: "field not found")
LEGACY_36 = ["aliasHeadersStrategy"]
# Traefik 3.6's notice that some encoded characters are allowed (3.7 has none)
ENCODED_NOTICE = "Traefik can reject some encoded characters"
here = os.path.dirname(os.path.abspath(__file__))
REPLICAS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
failures = 0


def check(ok, what):
    global failures
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    failures += 0 if ok else 1


def nest(flat):
    """traefik.a.b.c=v labels -> {'a': {'b': {'c': v}}}"""
    out = {}
    for key, value in flat.items():
        parts = key.split(".")[1:]
        d = out
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = value
    return out


# --- the Docker provider's view of the npg containers, as a file-provider config ----------
labels = json.load(open(compose_json))["services"]["npg"]["labels"]
tr = nest({k.lower(): v for k, v in labels.items() if k.startswith("traefik.")})
check(tr.get("enable") == "true", "npg labels: traefik.enable=true")
services = {"tcp": {"services": {}}, "http": {"services": {}}}
for proto in ("tcp", "http"):
    for name, svc in tr.get(proto, {}).get("services", {}).items():
        lb = dict(svc["loadbalancer"])
        port = lb.pop("server")["port"]
        # labels are strings; the file provider wants the health check's port as a number
        if "port" in lb.get("healthcheck", {}):
            lb["healthcheck"] = dict(lb["healthcheck"], port=int(lb["healthcheck"]["port"]))
        if proto == "tcp":
            lb["servers"] = [{"address": f"{ip}:{port}"} for ip in REPLICAS]
        else:
            lb["servers"] = [{"url": f"http://{ip}:{port}"} for ip in REPLICAS]
        services[proto]["services"][name] = {"loadBalancer": lb}
check("npg-https" in services["tcp"]["services"], "npg labels define tcp service npg-https")
check("npg-http" in services["http"]["services"], "npg labels define http service npg-http")

# --- fake replicas -------------------------------------------------------------------------
tls_hits, http_hits = [], []
draining = set()  # replicas whose health answers 503, as npg's does during SHUTDOWN_DELAY


class Health(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # as npg answers; the TCP check expects "HTTP/1.1 200"

    def do_GET(self):
        ip = self.server.server_address[0]
        http_hits.append((ip, self.path))
        body = json.dumps({"status": "draining" if ip in draining else "ok", "instance": ip}).encode()
        self.send_response(503 if ip in draining else 200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except ConnectionError:
            pass  # Traefik's TCP check reads the status line only, then closes

    def log_message(self, *a):
        pass


def tls_sink(s, ip):
    while True:
        try:
            c, _ = s.accept()
        except OSError:
            return  # closed: the replica is "down"
        c.settimeout(2)
        try:
            data = c.recv(4096)
        except OSError:
            data = b""
        if data:  # health checks connect and close; a client sends its ClientHello
            tls_hits.append((ip, data))
        c.close()


fakes = {}


class Quiet(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a health check hanging up
            super().handle_error(request, client_address)


def start_fake(ip):
    ThreadingHTTPServer.allow_reuse_address = True
    srv = Quiet((ip, 3000), Health)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    sink = socket.socket()
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sink.bind((ip, 443))
    sink.listen(16)
    threading.Thread(target=tls_sink, args=(sink, ip), daemon=True).start()
    fakes[ip] = (srv, sink)


for ip in REPLICAS:
    start_fake(ip)


# --- Traefik -------------------------------------------------------------------------------
def run_traefik(tag, env_extra):
    d = os.path.join(work, tag)
    dyn = os.path.join(d, "dynamic")
    os.makedirs(dyn, exist_ok=True)
    static = open(os.path.join(here, "traefik", "traefik.yml")).read()
    # the Docker provider needs an engine; its services are in services.yml instead
    static = re.sub(r"\n  docker:\n(    .*\n)+", "\n", static)
    static = static.replace("/etc/traefik/dynamic", dyn)
    static = static.replace("level: INFO", "level: INFO\n  format: json")
    if IS_36:
        for key in LEGACY_36:
            static = re.sub(rf"\n *{key}:[^\n]*", "", static)
        check(not any(f"{k}:" in static for k in LEGACY_36), f"[{tag}] Traefik {VERSION}: static config without the 3.7 keys {LEGACY_36}")
    # the fake replicas hold 127.0.0.2-4:443 and :3000, so Traefik listens on 127.0.0.1 only
    static = re.sub(r'address: ":(\d+)"', r'address: "127.0.0.1:\1"', static)
    check("docker:" not in static, f"[{tag}] static config: Docker provider swapped for files")
    open(os.path.join(d, "traefik.yml"), "w").write(static)
    dynamic = open(os.path.join(here, "traefik", "dynamic.yml")).read()
    open(os.path.join(dyn, "dynamic.yml"), "w").write(dynamic.replace("@docker", "@file"))
    open(os.path.join(dyn, "services.yml"), "w").write(json.dumps(services, indent=2))
    env = dict(os.environ, **env_extra)
    log = open(os.path.join(d, "traefik.log"), "w+")
    p = subprocess.Popen([traefik, f"--configFile={d}/traefik.yml"], stdout=log, stderr=log, env=env)
    return p, log, d


def api(path, user=None, pw=None):
    req = urllib.request.Request("http://127.0.0.1:8080" + path, headers={"Host": "localhost"})
    if user:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode())
    with urllib.request.urlopen(req, timeout=3) as r:
        return r.status, r.read()


def wait_up(timeout=15):
    end = time.time() + timeout
    while time.time() < end:
        try:
            if api("/ping")[0] == 200:
                return True
        except Exception:
            time.sleep(0.2)
    return False


def log_errors(log, expected=lambda rec: False):
    if IS_36:
        expected = (lambda e: lambda rec: e(rec) or rec.get("message", "").startswith(ENCODED_NOTICE))(expected)
    log.flush()
    log.seek(0)
    bad = []
    for line in log:
        try:
            rec = json.loads(line)
            level = rec.get("level", "")
        except ValueError:
            rec, level = {}, "error" if re.search(r"\b(ERR|error|fatal|panic)\b", line) else ""
        if level in ("error", "fatal", "panic", "warn") and not expected(rec):
            bad.append(line.strip())
    return bad


def tls_hellos(n):
    """Opens `n` TLS connections to :443; returns the (replica, ClientHello) pairs that reached
    the fake replicas."""
    tls_hits.clear()
    for _ in range(n):
        try:
            with socket.create_connection(("127.0.0.1", 443), timeout=3) as s:
                ssl.create_default_context().wrap_socket(s, server_hostname="npg.example.com")
        except (ssl.SSLError, OSError):
            pass  # the fake replica closes instead of answering the handshake
    time.sleep(0.5)
    return [(ip, data) for ip, data in tls_hits if data[:1] == b"\x16"]


def stop(p):
    p.terminate()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()


# run 1: dashboard on (users set) -- routers, services, health checks, traffic
pw = "npg-check"
sha = "{SHA}" + base64.b64encode(hashlib.sha1(pw.encode()).digest()).decode()
p, log, d = run_traefik("dashboard", {"TRAEFIK_DASHBOARD_USERS": f"admin:{sha}, ops:{sha}", "TRAEFIK_DOMAIN": "localhost"})
try:
    check(wait_up(), "[dashboard] traefik answers /ping on the traefik entrypoint")
    time.sleep(7)  # one health check round (interval 5s) for every server
    try:
        api("/api/rawdata")
        check(False, "[dashboard] API refuses requests without basic auth")
    except urllib.error.HTTPError as e:
        check(e.code == 401, f"[dashboard] API refuses requests without basic auth ({e.code})")
    raw = json.loads(api("/api/rawdata", "ops", pw)[1])
    for kind, name in (("tcpRouters", "npg-https@file"), ("routers", "npg-http@file"), ("routers", "dashboard@file")):
        r = raw.get(kind, {}).get(name, {})
        check(r.get("status") == "enabled", f"[dashboard] router {name} enabled ({r.get('status')} {r.get('error', '')})")
    for kind, name in (("tcpServices", "npg-https@file"), ("services", "npg-http@file")):
        s = raw.get(kind, {}).get(name, {})
        hc = s.get("loadBalancer", {}).get("healthCheck")
        check(bool(hc), f"[dashboard] service {name} has a health check {json.dumps(hc)}")
        st = s.get("serverStatus", {})
        check(len(st) == 3 and set(st.values()) == {"UP"}, f"[dashboard] service {name}: 3 servers UP {st}")
    for name, r in list(raw.get("routers", {}).items()) + list(raw.get("tcpRouters", {}).items()):
        check(r.get("status") == "enabled", f"[dashboard] router {name}: {r.get('status')}")
    check(any(path == "/api/health" for _, path in http_hits), "[dashboard] HTTP health checks reach /api/health of the replicas")
    # traffic: plain HTTP on :80 reaches a replica, TLS on :443 is passed through untouched
    body = urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:80/npm/-/ping"), timeout=3).read()
    check(json.loads(body)["instance"] in REPLICAS, "[dashboard] :80 request routed to an npg replica")
    http_hits.clear()
    urllib.request.urlopen("http://127.0.0.1:80/npm/@scope%2fname", timeout=3).read()
    got = [path for _, path in http_hits if path.startswith("/npm/")]
    # Traefik upper-cases percent-encodings (RFC 3986 6.2.2.1): npg gets @scope%2Fname
    check([p.lower() for p in got] == ["/npm/@scope%2fname"], f"[dashboard] :80 passes an npm scoped name's %2f through: {got}")
    hc = subprocess.run([traefik, "healthcheck", f"--configFile={d}/traefik.yml"], capture_output=True, text=True)
    check(hc.returncode == 0, f"[dashboard] `traefik healthcheck` (the container health check) exits 0: {hc.stdout.strip()}")
    hellos = tls_hellos(6)
    check(len(hellos) >= 6 and all(b"npg.example.com" in data for _, data in hellos),
          f"[dashboard] :443 TLS ClientHello passed through untouched ({len(hellos)} of 6)")
    check(len({ip for ip, _ in hellos}) >= 2, f"[dashboard] :443 connections spread over replicas {sorted({ip for ip, _ in hellos})}")
    # one replica goes away and one drains (health 503, :443 still open): both health checks
    # take both out, traffic goes on to the third
    down, drain = REPLICAS[0], REPLICAS[1]
    draining.add(drain)
    srv, sink = fakes[down]
    srv.shutdown()
    srv.server_close()
    sink.shutdown(socket.SHUT_RDWR)
    sink.close()
    time.sleep(8)
    raw = json.loads(api("/api/rawdata", "ops", pw)[1])
    for kind, name in (("tcpServices", "npg-https@file"), ("services", "npg-http@file")):
        st = raw[kind][name].get("serverStatus", {})
        downs = sorted(k for k, v in st.items() if v != "UP")
        check(len(downs) == 2 and down in downs[0] and drain in downs[1],
              f"[dashboard] {name}: the stopped and the draining replica are marked down {st}")
    ips = set()
    for _ in range(6):
        ips.add(json.loads(urllib.request.urlopen("http://127.0.0.1:80/-/ping", timeout=3).read())["instance"])
    check(ips == {REPLICAS[2]}, f"[dashboard] :80 requests go to the replica left {sorted(ips)}")
    hellos = {ip for ip, _ in tls_hellos(4)}
    check(hellos == {REPLICAS[2]}, f"[dashboard] :443 connections go to the replica left {sorted(hellos)}")
except Exception as e:  # a refused request or a missing key: report it, then read the log
    check(False, f"stopped by {type(e).__name__}: {e}")
finally:
    stop(p)
# the only complaints allowed: failed health checks of the replica stopped on purpose
errs = log_errors(log, lambda rec: rec.get("message") == "Health check failed."
                  and (REPLICAS[0] in json.dumps(rec) or REPLICAS[1] in json.dumps(rec)))
check(not errs, "[dashboard] no warning or error in Traefik's log" + "".join("\n       " + e for e in errs[:10]))

# run 2: dashboard off (no users) -- the template must still give a valid config
if fakes[REPLICAS[0]][1].fileno() == -1:  # stopped in run 1: bring it back, since a new
    start_fake(REPLICAS[0])               # Traefik takes every server as up at first
draining.clear()
p, log, d = run_traefik("no-dashboard", {"TRAEFIK_DASHBOARD_USERS": ""})
try:
    check(wait_up(), "[no-dashboard] traefik answers /ping")
    time.sleep(2)
    try:
        api("/api/rawdata")
        check(False, "[no-dashboard] API not reachable")
    except urllib.error.HTTPError as e:
        check(e.code == 404, f"[no-dashboard] API not reachable ({e.code})")
    body = urllib.request.urlopen("http://127.0.0.1:80/api/health", timeout=3).read()
    check(json.loads(body)["status"] == "ok", "[no-dashboard] :80 routed to npg")
except Exception as e:  # a refused request or a missing key: report it, then read the log
    check(False, f"stopped by {type(e).__name__}: {e}")
finally:
    stop(p)
errs = log_errors(log)
check(not errs, "[no-dashboard] no warning or error in Traefik's log" + "".join("\n       " + e for e in errs[:10]))

print(f"traefik: {failures} failed")
sys.exit(1 if failures else 0)
