# Evaluation tests of nixos-module/ with nothing but nixpkgs' lib: lib.evalModules over the
# module and nix/stub-nixos.nix, lib.runTests on the result. `failed` lists the failing tests
# (empty: all pass); `negative` are configurations that must not evaluate (nix/check runs
# them and matches the error message); `count` is the number of tests.
{ lib }:
let
  fakeDrv = name: { type = "derivation"; inherit name; outPath = "/nix/store/00000000000000000000000000000000-${name}"; };
  fakePkgs = {
    npg = fakeDrv "npg-0.1.0";
    coreutils = fakeDrv "coreutils";
    # the rendered value rides along in the file name (YAML is a superset of JSON): no file
    # is written, which pure evaluation (flake checks) would not let the test read back
    formats.yaml = { }: { generate = name: value: "/nix/store/00000000000000000000000000000000-${name}#${builtins.toJSON value}"; };
  };

  eval = pkgs: npg: lib.evalModules {
    modules = [ ./stub-nixos.nix ../nixos-module { services.npg = npg; } ];
    specialArgs = { inherit pkgs; };
  };
  cfgOf = npg: (eval fakePkgs ({ enable = true; settings.REGISTRY_URL = "http://upstream.invalid/"; } // npg)).config;
  unit = npg: (cfgOf npg).systemd.services.npg;
  env = npg: (unit npg).environment;
  sc = npg: (unit npg).serviceConfig;
  failedAssertions = npg: map (a: a.message) (lib.filter (a: !a.assertion) (cfgOf npg).assertions);

  acme = { domain = "npg.example.com"; acme = { enable = true; email = "ops@example.com"; }; };
  blocklist = {
    packages = [
      { name = "event-stream"; versions = [ "3.3.6" ]; reason = "backdoor"; }
      { name = "left-pad"; }
    ];
    patterns = [{ pattern = "^evil-"; reason = "typosquatting"; }];
  };

  tests = {
    testExecStart = { expr = (sc { }).ExecStart; expected = "/nix/store/00000000000000000000000000000000-npg-0.1.0/bin/npg"; };
    testDefaultEnvironment = {
      expr = env { settings = { REGISTRY_URL = "http://upstream.invalid/"; HTTP_REDIRECT = false; MIN_RELEASE_AGE = "3d"; LOG_LEVEL = null; }; };
      expected = {
        REGISTRY_URL = "http://upstream.invalid/";
        HTTP_PORT = "3000";
        HTTP_REDIRECT = "false";
        MIN_RELEASE_AGE = "3d";
        STORAGE_DIR = "/var/lib/npg/storage";
        MALWARE_LIST_DIR = "/var/lib/npg/malware-list";
      };
    };
    testAcmeEnvironment = {
      expr = lib.filterAttrs (n: _: lib.hasPrefix "ACME_" n || n == "NPG_DOMAIN")
        (env (acme // { acme = acme.acme // { challenge = "tls-alpn-01"; directoryUrl = "https://ca.invalid/dir"; }; }));
      expected = { NPG_DOMAIN = "npg.example.com"; ACME_EMAIL = "ops@example.com"; ACME_DIRECTORY_URL = "https://ca.invalid/dir"; ACME_CHALLENGE = "tls-alpn-01"; };
    };
    testAcmeDefaultChallenge = { expr = (env acme).ACME_CHALLENGE; expected = "http-01"; };
    testNoAcmeWithoutEnable = { expr = (env { }) ? NPG_DOMAIN || (env { }) ? ACME_CHALLENGE; expected = false; };
    testUser = {
      expr = { inherit (sc { }) User Group; user = (cfgOf { }).users.users.npg; groups = lib.attrNames (cfgOf { }).users.groups; };
      expected = { User = "npg"; Group = "npg"; user = { isSystemUser = true; group = "npg"; home = "/var/lib/npg"; }; groups = [ "npg" ]; };
    };
    testStateDirectory = {
      expr = { inherit (sc { stateDir = "/var/lib/npg-eu"; }) StateDirectory WorkingDirectory; storage = (env { stateDir = "/var/lib/npg-eu"; }).STORAGE_DIR; };
      expected = { StateDirectory = "npg-eu"; WorkingDirectory = "/var/lib/npg-eu"; storage = "/var/lib/npg-eu/storage"; };
    };
    testNoCapabilityAbove1024 = { expr = (sc { }).AmbientCapabilities; expected = [ "" ]; };
    testCapabilityForPort80 = {
      expr = { inherit (sc { settings = { REGISTRY_URL = "x"; HTTP_PORT = 80; }; }) AmbientCapabilities CapabilityBoundingSet; };
      expected = { AmbientCapabilities = [ "CAP_NET_BIND_SERVICE" ]; CapabilityBoundingSet = [ "CAP_NET_BIND_SERVICE" ]; };
    };
    # TLS on: the HTTPS port (443 unless set) counts too
    testCapabilityForHttps = { expr = (sc acme).AmbientCapabilities; expected = [ "CAP_NET_BIND_SERVICE" ]; };
    testNoCapabilityHighHttps = {
      expr = (sc (acme // { settings = { REGISTRY_URL = "x"; HTTPS_PORT = 8443; }; })).AmbientCapabilities;
      expected = [ "" ];
    };
    testHardening = {
      expr = { inherit (sc { }) ProtectSystem NoNewPrivileges SystemCallFilter Restart ProtectHome PrivateTmp; };
      expected = { ProtectSystem = "strict"; NoNewPrivileges = true; SystemCallFilter = [ "@system-service" "~@privileged" ]; Restart = "on-failure"; ProtectHome = true; PrivateTmp = true; };
    };
    testFirewallClosedByDefault = { expr = (cfgOf acme).networking.firewall.allowedTCPPorts; expected = [ ]; };
    testFirewallHttpOnly = { expr = (cfgOf { openFirewall = true; }).networking.firewall.allowedTCPPorts; expected = [ 3000 ]; };
    testFirewallTls = {
      expr = (cfgOf (acme // { openFirewall = true; settings = { REGISTRY_URL = "x"; HTTP_PORT = 80; }; })).networking.firewall.allowedTCPPorts;
      expected = [ 80 443 ];
    };
    testFirewallStaticCert = {
      expr = (cfgOf { openFirewall = true; settings = { REGISTRY_URL = "x"; HTTPS_PORT = 8443; TLS_CERT_FILE = "/run/c.pem"; TLS_KEY_FILE = "/run/k.pem"; }; }).networking.firewall.allowedTCPPorts;
      expected = [ 3000 8443 ];
    };
    testLocalRedis = {
      expr = let c = cfgOf { redis.createLocally = true; }; in {
        server = c.services.redis.servers.npg;
        url = c.systemd.services.npg.environment.REDIS_URL;
        inherit (c.systemd.services.npg) wants after;
      };
      expected = {
        server = { enable = true; port = 6379; bind = "127.0.0.1"; openFirewall = false; settings = { }; };
        url = "redis://127.0.0.1:6379/0";
        wants = [ "network-online.target" "redis-npg.service" ];
        after = [ "network-online.target" "redis-npg.service" ];
      };
    };
    testSharedRedis = {
      expr = let c = cfgOf { redis.url = "redis://redis:6379/0"; }; in { url = c.systemd.services.npg.environment.REDIS_URL; local = c.services.redis.servers; inherit (c.systemd.services.npg) after; };
      expected = { url = "redis://redis:6379/0"; local = { }; after = [ "network-online.target" ]; };
    };
    testUnitOrdering = { expr = { inherit (unit { }) wantedBy wants after; }; expected = { wantedBy = [ "multi-user.target" ]; wants = [ "network-online.target" ]; after = [ "network-online.target" ]; }; };
    testBlocklistRendered = {
      expr = builtins.fromJSON (lib.head (builtins.match "[^#]*-npg-blacklist.yml#(.*)" (env { inherit blocklist; }).BLACKLIST_PATH));
      expected = {
        packages = [{ name = "event-stream"; versions = [ "3.3.6" ]; reason = "backdoor"; } { name = "left-pad"; }];
        patterns = [{ pattern = "^evil-"; reason = "typosquatting"; }];
      };
    };
    testBlocklistPath = { expr = (env { blocklist = "/etc/npg/blacklist.yml"; }).BLACKLIST_PATH; expected = "/etc/npg/blacklist.yml"; };
    testNoBlocklist = { expr = (env { }) ? BLACKLIST_PATH; expected = false; };
    testEnvironmentFile = { expr = (sc { environmentFile = "/run/secrets/npg.env"; }).EnvironmentFile; expected = [ "/run/secrets/npg.env" ]; };
    testNoEnvironmentFile = { expr = (sc { }).EnvironmentFile; expected = [ ]; };
    testDisabled = {
      expr = let c = (eval fakePkgs { settings.REGISTRY_URL = "x"; }).config; in [ c.systemd.services c.users.users c.assertions ];
      expected = [ { } { } [ ] ];
    };
    testNoAssertionFails = { expr = failedAssertions (acme // { redis.url = "redis://r/0"; }); expected = [ ]; };
    testAssertAcmeNeedsDomain = {
      expr = failedAssertions { acme.enable = true; };
      expected = [ "services.npg.acme.enable needs services.npg.domain (the names to certify)." ];
    };
    testAssertRedisContradiction = {
      expr = failedAssertions { redis = { createLocally = true; url = "redis://r/0"; }; };
      expected = [ "services.npg.redis.createLocally and services.npg.redis.url contradict each other: set one." ];
    };
    testAssertAcmeAndStaticCert = {
      expr = failedAssertions (acme // { settings = { REGISTRY_URL = "x"; TLS_CERT_FILE = "/c"; TLS_KEY_FILE = "/k"; }; });
      expected = [ "services.npg: acme.enable and settings.TLS_CERT_FILE contradict each other: ACME or a static certificate, not both." ];
    };
    testAssertCertWithoutKey = {
      expr = failedAssertions { settings = { REGISTRY_URL = "x"; TLS_CERT_FILE = "/c"; }; };
      expected = [ "services.npg: settings.TLS_CERT_FILE and settings.TLS_KEY_FILE go together." ];
    };
    testAssertStateDir = {
      expr = failedAssertions { stateDir = "/srv/npg"; };
      expected = [ "services.npg.stateDir must be under /var/lib/ (it is the unit's StateDirectory)." ];
    };
    testWarningDomainWithoutAcme = { expr = (cfgOf { domain = "npg.example.com"; }).warnings; expected = [ "services.npg.domain is set but acme.enable is not: npg ignores the domain." ]; };
    # the option docs need no package: every default that touches pkgs has a defaultText
    testDocsWithoutPkgs = {
      expr = let
        opts = (eval (throw "docs must not evaluate pkgs") { }).options.services.npg;
        docs = lib.optionAttrSetToDocList opts;
      in builtins.deepSeq docs (lib.length docs > 20);
      expected = true;
    };
  };

  # must fail to evaluate, with this text in the error
  negative = lib.mapAttrs (_: t: t // { force = builtins.deepSeq (removeAttrs (cfgOf t.npg) [ "_module" ]) "evaluated"; }) {
    wrongType = { npg.settings = { REGISTRY_URL = "x"; HTTP_PORT = "eighty"; }; message = "services.npg.settings.HTTP_PORT' is not of type"; };
    badEnum = { npg = acme // { acme = acme.acme // { challenge = "dns-01"; }; }; message = "services.npg.acme.challenge' is not of type"; };
    misspeltOption = { npg.acme.emial = "ops@example.com"; message = "services.npg.acme.emial' does not exist"; };
    conflictingSetting = { npg = { redis.url = "redis://a/0"; settings = { REGISTRY_URL = "x"; REDIS_URL = "redis://b/0"; }; }; message = "services.npg.settings.REDIS_URL' has conflicting definition values"; };
    missingRegistry = { npg.settings.REGISTRY_URL = lib.mkForce null; message = "services.npg.settings.REGISTRY_URL' is not of type"; };
  };
in
{
  failed = lib.runTests tests;
  count = lib.length (lib.attrNames tests);
  inherit negative;
}
