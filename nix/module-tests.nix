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

  evalWith = module: extra: pkgs: npg: lib.evalModules {
    modules = [ ./stub-nixos.nix module extra { services.npg = npg; } ];
    specialArgs = { inherit pkgs; };
  };
  eval = evalWith ../nixos-module { };
  enabled = npg: { enable = true; settings.REGISTRY_URL = "http://upstream.invalid/"; } // npg;
  cfgOf = npg: (eval fakePkgs (enabled npg)).config;
  # the rendered blocklist: its JSON rides in the file name (fakePkgs.formats.yaml)
  rendered = file: builtins.fromJSON (lib.head (builtins.match "[^#]*-npg-blacklist.yml#(.*)" file));

  # flake.nix's outputs over nix/fake-nixpkgs.nix
  flake = let f = (import ../flake.nix).outputs { self = f; nixpkgs = { inherit lib; outPath = ./fake-nixpkgs.nix; }; }; in f;
  # a host whose nixpkgs has no pkgs.npg (no overlay)
  hostPkgs = fakePkgs // { npg = throw "pkgs.npg: no overlay"; stdenv.hostPlatform.system = "aarch64-linux"; };
  flakeUnit = npg: (evalWith flake.nixosModules.default { } hostPkgs (enabled npg)).config.systemd.services.npg;
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
    # the local server on its unix socket, reached through its group
    testLocalRedis = {
      expr = let c = cfgOf { redis.createLocally = true; }; in {
        server = c.services.redis.servers.npg;
        url = c.systemd.services.npg.environment.REDIS_URL;
        inherit (c.systemd.services.npg.serviceConfig) SupplementaryGroups;
        inherit (c.systemd.services.npg) wants after;
      };
      expected = {
        server = { enable = true; user = "redis-npg"; group = "redis-npg"; port = 0; unixSocket = "/run/redis-npg/redis.sock"; bind = "127.0.0.1"; openFirewall = false; settings = { }; };
        url = "redis+unix:///run/redis-npg/redis.sock";
        SupplementaryGroups = [ "redis-npg" ];
        wants = [ "network-online.target" "redis-npg.service" ];
        after = [ "network-online.target" "redis-npg.service" ];
      };
    };
    # beside the host's default Redis (6379): no two servers on one TCP port
    testLocalRedisBesideDefault = {
      expr = let c = (evalWith ../nixos-module { services.redis.servers."".enable = true; } fakePkgs (enabled { redis.createLocally = true; })).config; in
        lib.filter (p: p != 0) (lib.mapAttrsToList (_: r: if r.enable then r.port else 0) c.services.redis.servers);
      expected = [ 6379 ];
    };
    testSharedRedis = {
      expr = let c = cfgOf { redis.url = "redis://redis:6379/0"; }; in { url = c.systemd.services.npg.environment.REDIS_URL; local = c.services.redis.servers; inherit (c.systemd.services.npg) after; };
      expected = { url = "redis://redis:6379/0"; local = { }; after = [ "network-online.target" ]; };
    };
    # several hosts: the bucket's settings, its credentials as a systemd credential
    testTarballStoreS3 = {
      expr = let c = cfgOf { tarballStore = { type = "s3"; bucket = "npg-tarballs"; endpoint = "http://minio:9000"; pathStyle = true; credentialsFile = "/run/secrets/s3"; localCacheMB = 512; }; }; in {
        env = lib.filterAttrs (n: _: lib.hasPrefix "S3_" n || lib.hasPrefix "TARBALL_" n) c.systemd.services.npg.environment;
        inherit (c.systemd.services.npg.serviceConfig) LoadCredential;
      };
      expected = {
        env = { TARBALL_STORE = "s3"; S3_BUCKET = "npg-tarballs"; S3_ENDPOINT = "http://minio:9000"; S3_PATH_STYLE = "true"; S3_CREDENTIALS_FILE = "%d/s3-credentials"; TARBALL_LOCAL_CACHE_MB = "512"; };
        LoadCredential = [ "s3-credentials:/run/secrets/s3" ];
      };
    };
    testTarballStoreDiskByDefault = {
      expr = { env = lib.filterAttrs (n: _: lib.hasPrefix "S3_" n || lib.hasPrefix "TARBALL_" n) (env { }); inherit (sc { }) LoadCredential; };
      expected = { env = { }; LoadCredential = [ ]; };
    };
    testSentinels = {
      expr = lib.filterAttrs (n: _: lib.hasPrefix "REDIS_" n) (env { redis = { sentinels = [ "10.0.1.1:26379" "10.0.2.1:26379" ]; sentinelMaster = "npg"; }; });
      expected = { REDIS_SENTINELS = "10.0.1.1:26379,10.0.2.1:26379"; REDIS_SENTINEL_MASTER = "npg"; };
    };
    testAssertSeveralHosts = {
      expr = map failedAssertions [
        { redis = { sentinels = [ "s:26379" ]; sentinelMaster = "npg"; url = "redis://r/0"; }; }
        { redis.sentinels = [ "s:26379" ]; }
        { tarballStore.type = "s3"; }
        { tarballStore.bucket = "b"; }
      ];
      expected = [
        [ "services.npg.redis.sentinels contradicts redis.url and redis.createLocally: the master comes from the sentinels." ]
        [ "services.npg.redis.sentinels and redis.sentinelMaster go together." ]
        [ "services.npg.tarballStore: type = \"s3\" needs a bucket, and a bucket needs type = \"s3\"." ]
        [ "services.npg.tarballStore: type = \"s3\" needs a bucket, and a bucket needs type = \"s3\"." ]
      ];
    };
    testUnitOrdering = { expr = { inherit (unit { }) wantedBy wants after; }; expected = { wantedBy = [ "multi-user.target" ]; wants = [ "network-online.target" ]; after = [ "network-online.target" ]; }; };
    testBlocklistRendered = {
      expr = rendered (cfgOf { inherit blocklist; }).environment.etc."npg/blacklist.yml".source;
      expected = {
        packages = [{ name = "event-stream"; versions = [ "3.3.6" ]; reason = "backdoor"; } { name = "left-pad"; }];
        patterns = [{ pattern = "^evil-"; reason = "typosquatting"; }];
      };
    };
    # a file from Nix at a stable path, a change reloads (SIGHUP) instead of restarting npg
    testBlocklistStablePath = {
      expr = let c = cfgOf { inherit blocklist; }; source = c.environment.etc."npg/blacklist.yml".source; in {
        path = c.systemd.services.npg.environment.BLACKLIST_PATH;
        reload = c.systemd.services.npg.reloadTriggers == [ source ];
        inherit (c.systemd.services.npg.serviceConfig) ExecReload;
      };
      expected = { path = "/etc/npg/blacklist.yml"; reload = true; ExecReload = "/nix/store/00000000000000000000000000000000-coreutils/bin/kill -HUP $MAINPID"; };
    };
    # the NixOS idiom: a derivation (pkgs.writeText) is a file, not an attribute set to render
    testBlocklistDerivation = {
      expr = let c = cfgOf { blocklist = fakeDrv "blacklist.yml"; }; in {
        path = c.systemd.services.npg.environment.BLACKLIST_PATH;
        source = "${c.environment.etc."npg/blacklist.yml".source}";
        reload = map toString c.systemd.services.npg.reloadTriggers;
      };
      expected = {
        path = "/etc/npg/blacklist.yml";
        source = "/nix/store/00000000000000000000000000000000-blacklist.yml";
        reload = [ "/nix/store/00000000000000000000000000000000-blacklist.yml" ];
      };
    };
    # a file outside the store is the operator's: read where it is, no /etc entry
    testBlocklistPath = {
      expr = let c = cfgOf { blocklist = "/var/lib/npg-config/blacklist.yml"; }; in {
        path = c.systemd.services.npg.environment.BLACKLIST_PATH;
        inherit (c.environment) etc;
        inherit (c.systemd.services.npg) reloadTriggers;
      };
      expected = { path = "/var/lib/npg-config/blacklist.yml"; etc = { }; reloadTriggers = [ ]; };
    };    testNoBlocklist = { expr = (env { }) ? BLACKLIST_PATH; expected = false; };
    testEnvironmentFile = { expr = (sc { environmentFile = "/run/secrets/npg.env"; }).EnvironmentFile; expected = [ "/run/secrets/npg.env" ]; };
    testNoEnvironmentFile = { expr = (sc { }).EnvironmentFile; expected = [ ]; };
    testDisabled = {
      expr = let c = (eval fakePkgs { settings.REGISTRY_URL = "x"; }).config; in [ c.systemd.services c.users.users c.assertions ];
      expected = [ { } { } [ ] ];
    };
    testNoAssertionFails = { expr = failedAssertions (acme // { redis.url = "redis://r/0"; settings = { REGISTRY_URL = "x"; HTTP_PORT = 80; }; }); expected = [ ]; };
    testAssertAcmeNeedsDomain = {
      expr = failedAssertions { acme.enable = true; settings = { REGISTRY_URL = "x"; HTTP_PORT = 80; }; };
      expected = [ "services.npg.acme.enable needs services.npg.domain (the names to certify)." ];
    };
    testAssertRedisContradiction = {
      expr = failedAssertions { redis = { createLocally = true; url = "redis://r/0"; }; };
      expected = [ "services.npg.redis.createLocally and services.npg.redis.url contradict each other: set one." ];
    };
    testAssertAcmeAndStaticCert = {
      expr = failedAssertions (acme // { settings = { REGISTRY_URL = "x"; HTTP_PORT = 80; TLS_CERT_FILE = "/c"; TLS_KEY_FILE = "/k"; }; });
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
    # ProtectSystem=strict: npg writes under stateDir only
    testAssertDirsUnderStateDir = {
      expr = map failedAssertions [
        { settings = { REGISTRY_URL = "x"; STORAGE_DIR = "/srv/npg"; }; }
        { settings = { REGISTRY_URL = "x"; MALWARE_LIST_DIR = "/var/lib/npg-feed"; }; }
        { stateDir = "/var/lib/npg-eu"; settings = { REGISTRY_URL = "x"; STORAGE_DIR = "/var/lib/npg-eu/tarballs"; }; }
      ];
      expected = [
        [ "services.npg: settings.STORAGE_DIR and settings.MALWARE_LIST_DIR must be under stateDir (/var/lib/npg): the rest of the file system is read-only for npg." ]
        [ "services.npg: settings.STORAGE_DIR and settings.MALWARE_LIST_DIR must be under stateDir (/var/lib/npg): the rest of the file system is read-only for npg." ]
        [ ]
      ];
    };
    # the CA validates on 80 (http-01) or 443 (tls-alpn-01): npg there, or a declared forward
    testAssertAcmeChallengePort = {
      expr = map failedAssertions [
        acme
        (acme // { settings = { REGISTRY_URL = "x"; HTTP_PORT = 80; }; })
        (lib.recursiveUpdate acme { acme.challengePortForwarded = true; })
        (lib.recursiveUpdate acme { acme.challenge = "tls-alpn-01"; settings = { REGISTRY_URL = "x"; HTTPS_PORT = 8443; }; })
        (lib.recursiveUpdate acme { acme.challenge = "tls-alpn-01"; })
      ];
      expected = [
        [ "services.npg: ACME http-01 is validated on port 80, but npg listens on 3000: set the port to 80, or acme.challengePortForwarded = true when something forwards 80 to it." ]
        [ ]
        [ ]
        [ "services.npg: ACME tls-alpn-01 is validated on port 443, but npg listens on 8443: set the port to 443, or acme.challengePortForwarded = true when something forwards 443 to it." ]
        [ ]
      ];
    };
    # the flake's module runs the flake's own build on a host without the overlay
    testFlakeModulePinnedPackage = {
      expr = builtins.tryEval (flakeUnit { }).serviceConfig.ExecStart;
      expected = { success = true; value = "/nix/store/11111111111111111111111111111111-npg-pinned-aarch64-linux/bin/npg"; };
    };
    testFlakeModuleOwnPackage = {
      expr = (flakeUnit { package = fakeDrv "npg-own"; }).serviceConfig.ExecStart;
      expected = "/nix/store/00000000000000000000000000000000-npg-own/bin/npg";
    };
    # one import of nixpkgs per system: the image and the dev shell come from the same one
    testNixpkgsImportedOnce = {
      expr = lib.all (sys: flake.packages.${sys}.image == flake.devShells.${sys}.default) [ "x86_64-linux" "aarch64-linux" ];
      expected = true;
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
  inherit tests;
  count = lib.length (lib.attrNames tests);
  inherit negative;
}
