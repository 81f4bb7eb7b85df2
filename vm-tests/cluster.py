# testScript of vm-tests/cluster.nix: the scenarios of tests/cluster/run acme-one-order,
# npm install through the balancer, one-bucket, node-killed (stopped) and redis-stopped
# (restarted).
import json

DOMAIN = "npg.test"
REPLICAS = [npg1, npg2, npg3]
ROOT = "/tmp/pebble-root.pem"
PACKAGE_JSON = json.dumps({"name": "fixture", "version": "1.0.0", "private": True,
                           "dependencies": {"alpha": "^1.0.0", "gamma": "^2.0.0", "epsilon": "0.5.0"}})
TARBALLS = ["alpha/-/alpha-1.0.0.tgz", "beta/-/beta-1.1.0.tgz", "beta/-/beta-1.0.0.tgz",
            "gamma/-/gamma-2.0.0.tgz", "delta/-/delta-3.1.4.tgz", "epsilon/-/epsilon-0.5.0.tgz"]
runs = 0


def serial(node) -> str:
    """The serial of the certificate `node` serves for DOMAIN."""
    return node.succeed(
        f"echo | openssl s_client -connect 127.0.0.1:443 -servername {DOMAIN} 2>/dev/null"
        " | openssl x509 -noout -serial"
    ).strip()


def issued() -> int:
    return int(acme.succeed("journalctl -u pebble.service | grep -c 'Issued certificate serial' || true").strip())


def lb_status() -> dict:
    """{address: UP|DOWN} of the balancer's TCP (HTTPS) service."""
    out = client.succeed("curl -sf http://lb:8080/api/tcp/services/npg-https@file")
    return json.loads(out).get("serverStatus", {})


def npm_install() -> None:
    """npm install without a lockfile (packuments and tarballs) in a fresh project and cache."""
    global runs
    runs += 1
    d = f"/tmp/run{runs}"
    client.succeed(
        f"mkdir -p {d}",
        f"echo '{PACKAGE_JSON}' > {d}/package.json",
        f"printf 'registry=https://{DOMAIN}/npm/\\ncafile={ROOT}\\naudit=false\\nfund=false\\n' > {d}/.npmrc",
        f"cd {d} && HOME={d} npm install --cache {d}/.npm-cache",
    )
    for path, version in (("alpha", "1.0.0"), ("beta", "1.1.0"), ("delta", "3.1.4"),
                          ("epsilon/node_modules/beta", "1.0.0")):
        got = json.loads(client.succeed(f"cat {d}/node_modules/{path}/package.json"))["version"]
        assert got == version, f"{path}: {got} != {version}"


def health(node) -> str:
    out = node.succeed("curl -s http://127.0.0.1/api/health")
    return json.loads(out)["status"]


def upstream_tarball_fetches() -> int:
    return int(upstream.succeed("journalctl -u upstream.service | grep -c '[.]tgz ' || true").strip())


start_all()
redis.wait_for_unit("redis-npg.service")
redis.wait_for_unit("minio.service")
redis.wait_for_open_port(9000)
redis.succeed(
    "mc alias set local http://127.0.0.1:9000 npg-test npg-test-secret",
    "mc mb --ignore-existing local/npg",
)
acme.wait_for_unit("pebble.service")
acme.wait_for_open_port(14000)
upstream.wait_for_unit("upstream.service")
lb.wait_for_unit("traefik.service")

with subtest("acme-one-order: three replicas, one order, one certificate"):
    for node in REPLICAS:
        node.wait_for_unit("npg.service")
        node.wait_until_succeeds(
            f"echo | openssl s_client -connect 127.0.0.1:443 -servername {DOMAIN} 2>/dev/null | grep -q 'BEGIN CERTIFICATE'",
            timeout=180,
        )
    serials = {serial(node) for node in REPLICAS}
    assert len(serials) == 1, serials
    assert issued() == 1, f"pebble issued {issued()} certificates"
    assert redis.succeed("redis-cli GET npg:acme:orders").strip() == "1"
    client.succeed(f"curl -sf https://acme:15000/roots/0 -o {ROOT}")
    client.wait_until_succeeds(f"curl -sf --cacert {ROOT} https://{DOMAIN}/api/health", timeout=60)
    client.wait_until_succeeds("curl -sf http://lb:8080/api/tcp/services/npg-https@file | grep -o UP | wc -l | grep -qx 3", timeout=30)
    assert client.succeed(f"curl -s -o /dev/null -w '%{{http_code}}' http://{DOMAIN}/api/health") == "200"

with subtest("npm install through the balancer, cold and warm"):
    npm_install()
    npm_install()

with subtest("one-bucket: every replica serves every tarball, each fetched from upstream once"):
    for name in ("npg1", "npg2", "npg3"):
        for path in TARBALLS:
            client.succeed(f"curl -sf -o /dev/null --cacert {ROOT} --connect-to {DOMAIN}:443:{name}:443 https://{DOMAIN}/npm/{path}")
    objects = redis.succeed("mc ls --recursive local/npg | grep -c '[.]tgz$'").strip()
    assert objects == str(len(TARBALLS)), f"{objects} tarballs in the bucket"
    assert upstream_tarball_fetches() == len(TARBALLS), f"{upstream_tarball_fetches()} upstream tarball fetches"

with subtest("node-stopped: the balancer takes npg2 out, installs go on"):
    npg2.succeed("systemctl stop npg.service")
    client.wait_until_succeeds(
        "curl -sf http://lb:8080/api/tcp/services/npg-https@file | grep -q '\"npg2:443\":\"DOWN\"'", timeout=30
    )
    assert lb_status().get("npg2:443") == "DOWN"
    npm_install()
    npm_install()
    npg2.succeed("systemctl start npg.service")
    client.wait_until_succeeds(
        "curl -sf http://lb:8080/api/tcp/services/npg-https@file | grep -q '\"npg2:443\":\"UP\"'", timeout=60
    )
    assert serial(npg2) in serials

with subtest("redis-restarted: degraded while down, back to ok, no second order"):
    redis.succeed("systemctl stop redis-npg.service")
    for node in REPLICAS:
        node.wait_until_succeeds("curl -s http://127.0.0.1/api/health | grep -q degraded", timeout=60)
    npm_install()
    redis.succeed("systemctl start redis-npg.service")
    redis.wait_for_open_port(6379)
    for node in REPLICAS:
        node.wait_until_succeeds("npg health --strict --url http://127.0.0.1:80/api/health", timeout=60)
        assert health(node) == "ok"
    redis.wait_until_succeeds("redis-cli --scan --pattern 'npg:acme:*' | grep -q .", timeout=30)
    npm_install()
    assert issued() == 1, f"pebble issued {issued()} certificates"
    assert {serial(node) for node in REPLICAS} == serials
