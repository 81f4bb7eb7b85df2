# testScript of vm-tests/single.nix (NixOS test driver: `machine`, `upstream`, start_all, subtest).
import json

PACKAGE_JSON = json.dumps({"name": "fixture", "version": "1.0.0", "private": True,
                           "dependencies": {"alpha": "^1.0.0", "gamma": "^2.0.0", "epsilon": "0.5.0"}})
NPMRC = "registry=https://npg.test/npm/\\ncafile=/etc/ssl/certs/ca-certificates.crt\\naudit=false\\nfund=false\\nupdate-notifier=false\\n"

start_all()
upstream.wait_for_unit("upstream.service")
upstream.wait_for_open_port(80)
machine.wait_for_unit("redis-npg.service")
machine.wait_for_unit("npg.service")
machine.wait_for_open_port(80)
machine.wait_for_open_port(443)

with subtest("hardened unit: own user, only CAP_NET_BIND_SERVICE, read-only system"):
    props = machine.succeed("systemctl show npg.service -p User -p AmbientCapabilities -p ProtectSystem -p NoNewPrivileges")
    assert "User=npg" in props, props
    assert "AmbientCapabilities=cap_net_bind_service" in props, props
    assert "ProtectSystem=strict" in props and "NoNewPrivileges=yes" in props, props
    assert machine.succeed("ps -o user= -C npg").split() == ["npg"]

with subtest("health: serving with Redis, static certificate on 443"):
    machine.wait_until_succeeds("npg health --strict --url http://127.0.0.1:80/api/health", timeout=60)
    health = json.loads(machine.succeed("curl -sf https://npg.test/api/health"))
    assert health["status"] == "ok", health

with subtest("npm installs through HTTPS; tarballs cached on disk and metadata in Redis"):
    machine.succeed(
        "mkdir -p /tmp/p",
        f"echo '{PACKAGE_JSON}' > /tmp/p/package.json",
        f"printf '{NPMRC}' > /tmp/p/.npmrc",
        "cd /tmp/p && HOME=/tmp/p npm install --cache /tmp/p/.npm-cache",
    )
    for path, version in (("alpha", "1.0.0"), ("beta", "1.1.0"), ("gamma", "2.0.0"),
                          ("delta", "3.1.4"), ("epsilon/node_modules/beta", "1.0.0")):
        got = json.loads(machine.succeed(f"cat /tmp/p/node_modules/{path}/package.json"))["version"]
        assert got == version, f"{path}: {got} != {version}"
    machine.succeed("test -f /var/lib/npg/storage/al/alpha/alpha-1.0.0.tgz")
    assert machine.succeed("redis-cli -s /run/redis-npg/redis.sock --scan --pattern 'npg:*'").strip(), "nothing cached in Redis"

with subtest("blocklist from the module: the blocked version is refused, the other served"):
    base = "https://npg.test/npm/evilpkg/-/evilpkg"
    assert machine.succeed(f"curl -s -o /dev/null -w '%{{http_code}}' {base}-1.0.0.tgz") == "403"
    assert machine.succeed(f"curl -s -o /dev/null -w '%{{http_code}}' {base}-1.0.1.tgz") == "200"

with subtest("restarted after a crash (Restart=on-failure)"):
    machine.succeed("systemctl kill -s KILL npg.service")
    machine.wait_until_succeeds("npg health --url http://127.0.0.1:80/api/health", timeout=60)
