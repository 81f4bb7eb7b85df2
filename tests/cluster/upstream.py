#!/usr/bin/env python3
"""A static fake npm registry for the cluster test: serves <root>/packuments/<name>.json at
/<name>, <root>/tarballs/<file> at /<name>/-/<file>, and <root>/feed.json at /feed.json (the
malware feed, re-read at every request so the test can change it). Usage: upstream.py ROOT ADDR PORT
(ADDR `::` listens on IPv6 and IPv4, as the NixOS VM test needs)
`build(root, base_url)` writes the packages (real .tgz, sha512 integrity) and returns them."""
import base64, gzip, hashlib, io, json, os, socket, sys, tarfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

# name -> {version: dependencies}
PACKAGES = {
    "alpha": {"1.0.0": {"beta": "^1.0.0"}},
    "beta": {"1.0.0": {}, "1.1.0": {}},
    "gamma": {"2.0.0": {"delta": "~3.1.0"}},
    "delta": {"3.1.0": {}, "3.1.4": {}},
    "epsilon": {"0.5.0": {"beta": "1.0.0"}},
    "evilpkg": {"1.0.0": {}, "1.0.1": {}},
}


def tgz(name, version, deps):
    manifest = json.dumps({"name": name, "version": version, "main": "index.js", "dependencies": deps}, indent=2).encode()
    index = f"module.exports = {json.dumps(name + '@' + version)};\n".encode() + b"// pad\n" * 2000
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path, data in (("package/package.json", manifest), ("package/index.js", index)):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, 499162500
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def build(root, base_url):
    """Writes packuments and tarballs; returns {name: {version: {"integrity", "shasum", "file"}}}."""
    os.makedirs(f"{root}/packuments", exist_ok=True)
    os.makedirs(f"{root}/tarballs", exist_ok=True)
    out = {}
    for name, versions in PACKAGES.items():
        doc = {"_id": name, "name": name, "dist-tags": {"latest": list(versions)[-1]}, "versions": {},
               "time": {"created": "2020-01-01T00:00:00.000Z", "modified": "2020-06-01T00:00:00.000Z"}}
        out[name] = {}
        for i, (version, deps) in enumerate(versions.items()):
            data = tgz(name, version, deps)
            file = f"{name}-{version}.tgz"
            with open(f"{root}/tarballs/{file}", "wb") as f:
                f.write(data)
            integrity = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
            shasum = hashlib.sha1(data).hexdigest()
            doc["versions"][version] = {"name": name, "version": version, "dependencies": deps,
                                        "dist": {"tarball": f"{base_url}/{name}/-/{file}", "integrity": integrity, "shasum": shasum}}
            doc["time"][version] = f"2020-0{i + 2}-01T00:00:00.000Z"
            out[name][version] = {"integrity": integrity, "shasum": shasum, "file": file}
        with open(f"{root}/packuments/{name}.json", "w") as f:
            json.dump(doc, f)
    with open(f"{root}/feed.json", "w") as f:
        f.write("[]")
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root = "."

    def do_GET(self):
        path = unquote(self.path.split("?")[0]).lstrip("/")
        if path == "feed.json":
            file, ctype = f"{self.root}/feed.json", "application/json"
        elif "/-/" in path:
            file, ctype = f"{self.root}/tarballs/{os.path.basename(path)}", "application/octet-stream"
        else:
            file, ctype = f"{self.root}/packuments/{os.path.basename(path)}.json", "application/json"
        try:
            with open(file, "rb") as f:
                body = f.read()
            status = 200
        except OSError:
            body, status, ctype = b'{"error":"Not found"}', 404, "application/json"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        if "feed.json" in (fmt % args):
            return
        sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))


if __name__ == "__main__":
    Handler.root = sys.argv[1]
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.address_family = socket.AF_INET6 if ":" in sys.argv[2] else socket.AF_INET
    ThreadingHTTPServer((sys.argv[2], int(sys.argv[3])), Handler).serve_forever()
