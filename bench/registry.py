#!/usr/bin/env python3
"""The benchmark's fake npm registry: packuments of realistic shapes and sizes, real .tgz
tarballs with sha512 integrity, a generated ~N-package dependency tree for `npm ci`, and
malware feeds, all built once into memory (deterministic: a fixed seed) and served by a
ThreadingHTTPServer. Counts requests per path (GET /__stats).

  registry.py --port P --index FILE [--fixture N] [--guard-feed] [--latency-ms MS] [--mbit MBIT]

--latency-ms and --mbit make it an upstream far away: each answer waits MS before its first
byte, and each body is sent no faster than MBIT megabits per second (per connection), so cold
paths behave as behind a real registry tens of milliseconds away.

Writes FILE (JSON: the URL base, the benchmark packages and the fixture's packages with their
versions, integrities and dependencies) once it serves, so the harness knows what to ask for.

Paths: /<name> and /@scope%2f<name> (packument; gzip when asked; ETag / If-None-Match),
/<name>/-/<file>.tgz, /feed-empty.json, /feed-guard.json, /__stats.
Names starting with "bench-slow-" answer after SLOW_SECONDS, so concurrent misses overlap."""
import argparse, base64, gzip, hashlib, io, json, random, sys, tarfile, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

sys.path.insert(0, __import__("os").path.dirname(__file__))
import npgbench  # noqa: E402

SLOW_SECONDS = 0.3
SIGNING_KEY = "SHA256:bench/fake/signing/key"


def tgz(name, version, deps, payload):
    """A real npm tarball: package/package.json plus package/index.js, then `payload` bytes."""
    manifest = json.dumps({"name": name, "version": version, "main": "index.js", "license": "MIT",
                           "dependencies": deps}, indent=2).encode()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path, data in (("package/package.json", manifest),
                           ("package/index.js", f"module.exports = {json.dumps(name + '@' + version)};\n".encode()),
                           ("package/lib/data.bin", payload)):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, 499162500
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), compresslevel=6, mtime=0), len(manifest) + len(payload) + 40


def payload(rng, size, random_part=0.5):
    """Partly incompressible, partly text: gzip shrinks it about as much as real package files."""
    half = int(size * random_part)
    return rng.randbytes(half) + (b"function f(a, b) { return a + b; }\n" * (half // 36 + 1))[:size - half]


class Builder:
    def __init__(self, base, seed=42):
        self.base, self.rng = base, random.Random(seed)
        self.docs, self.tarballs = {}, {}  # name -> packument dict; path -> bytes

    def words(self, n):
        vocab = ["fast", "tiny", "stream", "parse", "json", "async", "util", "color", "path", "lint",
                 "build", "test", "http", "cache", "config", "plugin", "schema", "types", "loader"]
        return " ".join(self.rng.choice(vocab) for _ in range(n))

    def person(self, i):
        return {"name": f"dev{i}", "email": f"dev{i}@example.com"}

    def tarball_url(self, name, version):
        return f"{self.base}/{name}/-/{name.split('/')[-1]}-{version}.tgz"

    def add_tarball(self, name, version, data):
        path = "/" + self.tarball_url(name, version).split("/", 3)[3]
        self.tarballs[path] = data
        return {"integrity": "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode(),
                "shasum": hashlib.sha1(data).hexdigest()}

    def version_doc(self, name, version, deps, dev_deps, desc_words, dist=None, unpacked=0):
        """One version as the public registry shows it: manifest fields, dist with signatures."""
        seed = hashlib.sha512(f"{name}@{version}".encode()).digest()
        dist = dist or {"integrity": "sha512-" + base64.b64encode(seed).decode(),
                        "shasum": seed[:20].hex()}
        return {
            "name": name, "version": version, "description": self.words(desc_words),
            "main": "index.js", "types": "index.d.ts", "keywords": self.words(6).split(),
            "author": self.person(0), "license": "MIT",
            "repository": {"type": "git", "url": f"git+https://example.com/bench/{name}.git"},
            "bugs": {"url": f"https://example.com/bench/{name}/issues"},
            "homepage": f"https://example.com/bench/{name}#readme",
            "scripts": {"test": "node --test", "build": "tsc -p .", "lint": "eslint .", "prepublishOnly": "npm run build"},
            "dependencies": deps, "devDependencies": dev_deps, "engines": {"node": ">=14"},
            "files": ["index.js", "index.d.ts", "lib/"],
            "gitHead": seed[20:40].hex(), "_id": f"{name}@{version}",
            "_nodeVersion": "20.11.0", "_npmVersion": "10.2.4",
            "dist": {**dist, "tarball": self.tarball_url(name, version),
                     "fileCount": 3 + seed[0] % 40, "unpackedSize": unpacked or 10000 + seed[1] * 400,
                     "signatures": [{"keyid": SIGNING_KEY, "sig": base64.b64encode(seed[:70]).decode()}]},
            "_npmUser": self.person(1), "directories": {}, "maintainers": [self.person(1), self.person(2)],
            "contributors": [self.person(j) for j in range(3, 6)],
            "_npmOperationalInternal": {"host": "s3://bench-packages", "tmp": f"tmp/{name.split('/')[-1]}_{version}_{seed[0]}"},
            "_hasShrinkwrap": False,
        }

    def packument(self, name, versions, readme_kb, dev_deps=10, desc_words=12, served=None):
        """versions: list of (version, deps); served: {version: (tarball bytes, unpacked)}."""
        served = served or {}
        dev = {f"@types/dev-{j}": f"^{j}.0.0" for j in range(dev_deps)}
        doc = {"_id": name, "_rev": "12-" + hashlib.md5(name.encode()).hexdigest(), "name": name,
               "description": self.words(10), "dist-tags": {"latest": versions[-1][0]}, "versions": {},
               "time": {"created": "2015-01-01T00:00:00.000Z", "modified": "2024-06-01T00:00:00.000Z"},
               "maintainers": [self.person(1), self.person(2)], "author": self.person(0),
               "repository": {"type": "git", "url": f"git+https://example.com/bench/{name}.git"},
               "homepage": f"https://example.com/bench/{name}#readme", "keywords": self.words(6).split(),
               "bugs": {"url": f"https://example.com/bench/{name}/issues"}, "license": "MIT",
               "readme": ("# " + name + "\n\n" + (self.words(12) + ".\n") * (readme_kb * 12))[:readme_kb * 1024],
               "readmeFilename": "README.md", "users": {f"user{j}": True for j in range(20)}}
        t0 = time.mktime((2015, 1, 1, 0, 0, 0, 0, 0, 0))
        for i, (version, deps) in enumerate(versions):
            dist, unpacked = None, 0
            if version in served:
                data, unpacked = served[version]
                dist = self.add_tarball(name, version, data)
            doc["versions"][version] = self.version_doc(name, version, deps, dev, desc_words, dist, unpacked)
            doc["time"][version] = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t0 + i * 86400 * 3 // 2))
        self.docs[name] = doc
        return doc


def many_versions(n, deps):
    return [(f"{i // 400}.{i // 20 % 20}.{i % 20}", deps) for i in range(n)]


def build(base, fixture_size):
    """Returns (Builder, index): the benchmark packages, then the fixture's dependency tree."""
    b = Builder(base)
    rng = random.Random(7)
    deps = {"dep-a": "^1.2.0", "dep-b": "~2.0.1", "dep-c": "^3.0.0"}
    small_tgz, small_unpacked = tgz("bench-small", "1.2.0", {}, payload(rng, 20 * 1024))
    big_tgz, big_unpacked = tgz("bench-large", "4.19.19", {}, payload(rng, 5 * 1024 * 1024, 1.0))
    # ~5 KB full: three versions, a short readme.
    b.packument("bench-small", [("1.0.0", {}), ("1.1.0", {}), ("1.2.0", {})], readme_kb=1, dev_deps=2, desc_words=4,
                served={"1.2.0": (small_tgz, small_unpacked)})
    # ~5 MB full: 2,500 versions; its latest tarball is the 5 MB one.
    b.packument("bench-large", many_versions(2500, deps)[:-1] + [("4.19.19", deps)], readme_kb=40, dev_deps=6,
                served={"4.19.19": (big_tgz, big_unpacked)})
    # ~40 MB full: 18,000 versions with long descriptions (like the biggest real packuments).
    b.packument("bench-huge", many_versions(18000, deps), readme_kb=60, dev_deps=10, desc_words=40)
    b.packument("@bench/scoped", many_versions(150, deps), readme_kb=20)
    b.packument("bench-slow-coalesce", many_versions(300, deps), readme_kb=20)
    b.packument("bench-cold-big", [("1.0.0", {})], readme_kb=2, served={"1.0.0": (big_tgz, big_unpacked)})
    index = {"base": base, "small_tarball": b.tarball_url("bench-small", "1.2.0"), "small_tarball_size": len(small_tgz),
             "big_tarball": b.tarball_url("bench-large", "4.19.19"), "big_tarball_size": len(big_tgz),
             "cold_tarball": b.tarball_url("bench-cold-big", "1.0.0"),
             "fixture": {}}

    # The fixture: a dependency tree, a fifth of it scoped, every package at one version.
    names = [f"@fx/pkg-{i}" if i % 5 == 0 else f"fx-{b.words(1)}-{i}" for i in range(fixture_size)]
    for i, name in enumerate(names):
        kids = sorted({rng.randrange(i + 1, fixture_size) for _ in range(rng.randrange(0, 4))} if i + 1 < fixture_size else set())
        version = f"{1 + i % 3}.{i % 7}.{i % 4}"
        deps = {names[k]: f"^{1 + k % 3}.{k % 7}.0" for k in kids}
        size = int(2 ** rng.uniform(11, 17))  # 2 KB .. 128 KB, most packages are small
        data, unpacked = tgz(name, version, deps, payload(rng, size))
        older = [(f"{1 + i % 3}.{v}.0", deps) for v in range(i % 7)] if i % 7 else []
        b.packument(name, older + [(version, deps)], readme_kb=3, dev_deps=6, served={version: (data, unpacked)})
        dist = b.docs[name]["versions"][version]["dist"]
        index["fixture"][name] = {"version": version, "integrity": dist["integrity"], "dependencies": deps,
                                  "file": dist["tarball"].rsplit("/", 1)[1]}
    index["sizes"] = {n: len(json.dumps(d)) for n, d in b.docs.items()}
    return b, index


class Registry(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default 5 drops SYNs under npm's parallel fetches


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # a header write then a body write must not wait for a delayed ACK
    files = {}  # path -> (body, gzip body or None, etag, content type)
    counts, lock = {}, threading.Lock()
    latency, bytes_per_second = 0.0, 0.0  # --latency-ms, --mbit

    def do_GET(self):
        path = unquote(self.path.split("?")[0])
        if path == "/__stats":
            with self.lock:
                return self.reply(200, json.dumps(self.counts).encode(), "application/json")
        with self.lock:
            self.counts[path] = self.counts.get(path, 0) + 1
        if self.latency:
            time.sleep(self.latency)
        entry = self.files.get(path)
        if entry is None:
            return self.reply(404, b'{"error":"Not found"}', "application/json")
        body, gz, etag, ctype = entry
        if path.startswith("/bench-slow-"):
            time.sleep(SLOW_SECONDS)
        if etag and self.headers.get("If-None-Match") == etag:
            return self.reply(304, b"", ctype, etag)
        if gz is not None and "gzip" in (self.headers.get("Accept-Encoding") or ""):
            return self.reply(200, gz, ctype, etag, "gzip")
        self.reply(200, body, ctype, etag)

    def reply(self, status, body, ctype, etag=None, encoding=None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if etag:
            self.send_header("ETag", etag)
        if encoding:
            self.send_header("Content-Encoding", encoding)
        self.end_headers()
        if not self.bytes_per_second:
            self.wfile.write(body)
            return
        t0, chunk = time.monotonic(), 64 * 1024
        for at in range(0, len(body), chunk):
            self.wfile.write(body[at:at + chunk])
            ahead = (at + chunk) / self.bytes_per_second - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)

    def log_message(self, fmt, *args):
        pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--index", required=True)
    ap.add_argument("--fixture", type=int, default=300)
    ap.add_argument("--guard-feed", action="store_true", help="also serve the 100k-entry feed")
    ap.add_argument("--latency-ms", type=float, default=0.0, help="wait before every answer")
    ap.add_argument("--mbit", type=float, default=0.0, help="bandwidth per connection (0: unlimited)")
    args = ap.parse_args()
    Handler.latency, Handler.bytes_per_second = args.latency_ms / 1000, args.mbit * 1e6 / 8
    base = f"http://127.0.0.1:{args.port}"
    b, index = build(base, args.fixture)
    files = {}
    for name, doc in b.docs.items():
        body = json.dumps(doc, separators=(",", ":")).encode()
        files["/" + name] = (body, gzip.compress(body, 6, mtime=0), '"%s"' % hashlib.sha1(body).hexdigest(), "application/json")
    for path, data in b.tarballs.items():
        files[path] = (data, None, '"%s"' % hashlib.sha1(data).hexdigest(), "application/octet-stream")
    files["/feed-empty.json"] = (b"[]", None, None, "application/json")
    if args.guard_feed:
        files["/feed-guard.json"] = (npgbench.guard_feed(), None, None, "application/json")
    Handler.files = files
    server = Registry(("127.0.0.1", args.port), Handler)
    with open(args.index + ".tmp", "w") as f:
        json.dump(index, f)
    __import__("os").rename(args.index + ".tmp", args.index)
    server.serve_forever()


if __name__ == "__main__":
    main()
