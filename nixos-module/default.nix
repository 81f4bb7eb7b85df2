# services.npg: npg as a hardened systemd service. Free of flake inputs: the flake (or any
# NixOS configuration) imports it as is; `pkgs` is only touched in config, so the option
# docs evaluate without packages.
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption mkEnableOption mkIf types literalExpression;
  cfg = config.services.npg;
  s = cfg.settings;

  tls = cfg.acme.enable || s.TLS_CERT_FILE != null;
  httpsPort = if s.HTTPS_PORT == null then 443 else s.HTTPS_PORT;
  ports = [ s.HTTP_PORT ] ++ lib.optional tls httpsPort;
  lowPort = lib.any (p: p < 1024) ports;
  redis = config.services.redis.servers.npg;
  store = cfg.tarballStore;
  sentinels = cfg.redis.sentinels != [ ];
  # systemd hands the bucket's credentials to npg (LoadCredential): the file may stay root's
  s3Credential = "s3-credentials";

  # the CA validates http-01 on port 80 and tls-alpn-01 on 443: npg must listen there, or
  # something must forward that port to it
  challengePort = if cfg.acme.challenge == "http-01" then 80 else 443;
  npgChallengePort = if cfg.acme.challenge == "http-01" then s.HTTP_PORT else httpsPort;

  # npg writes only under stateDir (ProtectSystem=strict)
  underStateDir = dir: dir == cfg.stateDir || lib.hasPrefix "${cfg.stateDir}/" dir;

  # environment values are strings; null means "not set, npg's default"
  render = v: if lib.isBool v then lib.boolToString v else toString v;
  environment = lib.mapAttrs (_: render) (lib.filterAttrs (_: v: v != null) s);

  # a path, a derivation (pkgs.writeText ...) or a string is a file; only the attribute set
  # is rendered
  blocklistFile =
    if lib.isStringLike cfg.blocklist then cfg.blocklist
    else (pkgs.formats.yaml { }).generate "npg-blacklist.yml" {
      packages = map (p: lib.filterAttrs (_: v: v != null && v != [ ]) p) cfg.blocklist.packages;
      patterns = map (p: lib.filterAttrs (_: v: v != null) p) cfg.blocklist.patterns;
    };
  # a file outside the store (a string) is the operator's: npg reads it where it is and
  # reloads it when it changes. One from Nix gets a stable name in /etc, so a new version is
  # a reload (SIGHUP through reloadTriggers), not a restart for a new BLACKLIST_PATH.
  blocklistExternal = lib.isString cfg.blocklist && !lib.hasPrefix "${builtins.storeDir}/" cfg.blocklist;
  blocklistEtc = "npg/blacklist.yml";
  blocklistManaged = cfg.blocklist != null && !blocklistExternal;

  blocklistType = types.submodule {
    options = {
      packages = mkOption {
        default = [ ];
        description = "Packages blocked whole (no `versions`) or by version (exact versions or node-semver ranges).";
        type = types.listOf (types.submodule {
          options = {
            name = mkOption { type = types.str; description = "Package name."; };
            versions = mkOption { type = types.listOf types.str; default = [ ]; description = "Blocked versions or ranges; empty blocks the whole package."; };
            reason = mkOption { type = types.nullOr types.str; default = null; description = "Shown to clients."; };
          };
        });
      };
      patterns = mkOption {
        default = [ ];
        description = "Regular expressions (Rust regex) on package names.";
        type = types.listOf (types.submodule {
          options = {
            pattern = mkOption { type = types.str; description = "Regex on the name."; };
            reason = mkOption { type = types.nullOr types.str; default = null; description = "Shown to clients."; };
          };
        });
      };
    };
  };
in
{
  options.services.npg = {
    enable = mkEnableOption "npg, the security gateway and caching proxy for the npm registry";

    package = mkOption {
      type = types.package;
      default = pkgs.npg;
      defaultText = lib.literalMD "`pkgs.npg`; with the flake's `nixosModules.default`, the flake's own `packages.<system>.npg`";
      description = ''
        The npg package. The flake's `nixosModules.default` defaults it to the flake's own
        build (its pinned nixpkgs and rustc); this file alone takes `pkgs.npg`, which the
        flake's `overlays.default` provides, built with the host's nixpkgs (README, "Nix and NixOS").
      '';
    };

    settings = mkOption {
      description = ''
        npg's environment (README, "Configuration"): any setting by its env name. Booleans
        render as `true`/`false`, null leaves npg's default. Secrets belong in `environmentFile`.
      '';
      default = { };
      example = literalExpression ''{ REGISTRY_URL = "https://registry.example.com/"; MIN_RELEASE_AGE = "3d"; }'';
      type = types.submodule {
        freeformType = types.attrsOf (types.nullOr (types.oneOf [ types.bool types.int types.str ]));
        options = {
          REGISTRY_URL = mkOption { type = types.str; description = "Upstream registry (required: npg has no built-in upstream)."; };
          HTTP_PORT = mkOption { type = types.port; default = 3000; description = "HTTP listener port."; };
          HTTPS_PORT = mkOption { type = types.nullOr types.port; default = null; description = "HTTPS listener port when TLS is on (npg's default: 443)."; };
          HTTP_BIND = mkOption { type = types.nullOr types.str; default = null; description = "Listen address (npg's default: 0.0.0.0)."; };
          PROXY_URL = mkOption { type = types.nullOr types.str; default = null; description = "Public base URL of the npm API, path included."; };
          STORAGE_DIR = mkOption {
            type = types.str;
            default = "${cfg.stateDir}/storage";
            defaultText = literalExpression ''"''${config.services.npg.stateDir}/storage"'';
            description = "Tarball cache. Must be under `stateDir` (the rest of the file system is read-only for npg; asserted).";
          };
          MALWARE_LIST_DIR = mkOption {
            type = types.str;
            default = "${cfg.stateDir}/malware-list";
            defaultText = literalExpression ''"''${config.services.npg.stateDir}/malware-list"'';
            description = "Last good malware feed. Must be under `stateDir` (asserted).";
          };
          TLS_CERT_FILE = mkOption { type = types.nullOr types.str; default = null; description = "Static certificate (PEM chain) instead of ACME; readable by the npg user."; };
          TLS_KEY_FILE = mkOption { type = types.nullOr types.str; default = null; description = "Key of `TLS_CERT_FILE`; readable by the npg user (group npg)."; };
        };
      };
    };

    domain = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "npg.example.com";
      description = "Public name(s), comma-separated; with `acme.enable` they become NPG_DOMAIN.";
    };

    acme = {
      enable = mkEnableOption "certificates from an ACME CA for `domain` (npg's own ACME client)";
      email = mkOption { type = types.nullOr types.str; default = null; description = "ACME account contact (ACME_EMAIL)."; };
      directoryUrl = mkOption { type = types.nullOr types.str; default = null; description = "ACME directory (ACME_DIRECTORY_URL); null: Let's Encrypt production."; };
      challenge = mkOption { type = types.enum [ "http-01" "tls-alpn-01" ]; default = "http-01"; description = "ACME_CHALLENGE: http-01 on HTTP_PORT (the CA reaches port 80), tls-alpn-01 on the HTTPS port (the CA reaches port 443)."; };
      challengePortForwarded = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Something in front of npg (a balancer, a DNAT rule) forwards the port the CA validates
          on (80 for http-01, 443 for tls-alpn-01) to npg's HTTP_PORT or HTTPS port. Without it,
          ACME needs npg itself on that port (asserted).
        '';
      };
    };

    redis = {
      createLocally = mkOption { type = types.bool; default = false; description = "Run `services.redis.servers.npg` on this host, on its unix socket only (no TCP port: it cannot collide with another Redis), and point REDIS_URL at it."; };
      url = mkOption { type = types.nullOr types.str; default = null; example = "redis://redis.internal:6379/0"; description = "A shared Redis (all replicas the same). A password belongs in `environmentFile` as REDIS_URL instead."; };
      sentinels = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "10.0.1.1:26379" "10.0.2.1:26379" "10.0.3.1:26379" ];
        description = ''
          Redis Sentinel (REDIS_SENTINELS), instead of `url`: npg finds the master through them and
          follows a failover (README, "Several hosts"). The master's password and database come
          from REDIS_PASSWORD(_FILE) and REDIS_DB (`environmentFile`, `settings`).
        '';
      };
      sentinelMaster = mkOption { type = types.nullOr types.str; default = null; example = "npg"; description = "The name the sentinels monitor the master by (REDIS_SENTINEL_MASTER); required with `sentinels`."; };
    };

    tarballStore = {
      type = mkOption {
        type = types.enum [ "disk" "s3" ];
        default = "disk";
        description = ''
          TARBALL_STORE: `disk` keeps tarballs under STORAGE_DIR; `s3` in a bucket every replica
          on every host shares, with STORAGE_DIR as the local cache in front of it (README,
          "Several hosts").
        '';
      };
      bucket = mkOption { type = types.nullOr types.str; default = null; description = "S3_BUCKET (required with `s3`)."; };
      prefix = mkOption { type = types.nullOr types.str; default = null; example = "npg/"; description = "S3_PREFIX: keys are `<prefix><the disk layout>`."; };
      endpoint = mkOption { type = types.nullOr types.str; default = null; example = "http://minio.internal:9000"; description = "S3_ENDPOINT, for MinIO and other S3-compatible servers; null: AWS."; };
      region = mkOption { type = types.nullOr types.str; default = null; description = "S3_REGION (npg's default: us-east-1)."; };
      pathStyle = mkOption { type = types.bool; default = false; description = "S3_PATH_STYLE: `<endpoint>/<bucket>/<key>` URLs (MinIO and most S3-compatible servers)."; };
      credentialsFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/run/secrets/npg-s3";
        description = ''
          A file with `AWS_ACCESS_KEY_ID=...` and `AWS_SECRET_ACCESS_KEY=...` lines (and
          `AWS_SESSION_TOKEN=...`), outside the Nix store; systemd passes it to npg as a
          credential (S3_CREDENTIALS_FILE), so it may stay readable by root only.
        '';
      };
      localCacheMB = mkOption { type = types.nullOr types.ints.unsigned; default = null; description = "TARBALL_LOCAL_CACHE_MB: the local cache's size in front of the bucket (0: none)."; };
    };

    blocklist = mkOption {
      type = types.nullOr (types.either types.path blocklistType);
      default = null;
      example = literalExpression ''{ packages = [ { name = "event-stream"; versions = [ "3.3.6" ]; reason = "backdoor"; } ]; patterns = [ { pattern = "^evil-"; reason = "typosquatting"; } ]; }'';
      description = ''
        The blocklist (README, "The guard"): an attribute set rendered to YAML, or a
        blacklist.yml as a path or derivation (`pkgs.writeText ...`), both installed as
        /etc/npg/blacklist.yml, where a change is reloaded (SIGHUP) instead of restarting npg;
        or a string naming a file outside the store, which npg reads there (BLACKLIST_PATH).
      '';
    };

    environmentFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/run/secrets/npg.env";
      description = "systemd EnvironmentFile with secrets (REDIS_URL with its password, NPG_SECRET_KEY_FILE ...). Give it as a string so it stays out of the Nix store.";
    };

    openFirewall = mkOption { type = types.bool; default = false; description = "Open HTTP_PORT (and the HTTPS port with TLS) in the firewall."; };

    stateDir = mkOption { type = types.str; default = "/var/lib/npg"; description = "State directory (a systemd StateDirectory: must be under /var/lib)."; };
  };

  config = mkIf cfg.enable {
    assertions = [
      { assertion = cfg.acme.enable -> cfg.domain != null; message = "services.npg.acme.enable needs services.npg.domain (the names to certify)."; }
      { assertion = !(cfg.redis.createLocally && cfg.redis.url != null); message = "services.npg.redis.createLocally and services.npg.redis.url contradict each other: set one."; }
      { assertion = !(cfg.acme.enable && s.TLS_CERT_FILE != null); message = "services.npg: acme.enable and settings.TLS_CERT_FILE contradict each other: ACME or a static certificate, not both."; }
      { assertion = (s.TLS_CERT_FILE == null) == (s.TLS_KEY_FILE == null); message = "services.npg: settings.TLS_CERT_FILE and settings.TLS_KEY_FILE go together."; }
      { assertion = lib.hasPrefix "/var/lib/" cfg.stateDir; message = "services.npg.stateDir must be under /var/lib/ (it is the unit's StateDirectory)."; }
      { assertion = underStateDir s.STORAGE_DIR && underStateDir s.MALWARE_LIST_DIR; message = "services.npg: settings.STORAGE_DIR and settings.MALWARE_LIST_DIR must be under stateDir (${cfg.stateDir}): the rest of the file system is read-only for npg."; }
      {
        assertion = cfg.acme.enable -> (npgChallengePort == challengePort || cfg.acme.challengePortForwarded);
        message = "services.npg: ACME ${cfg.acme.challenge} is validated on port ${toString challengePort}, but npg listens on ${toString npgChallengePort}: set the port to ${toString challengePort}, or acme.challengePortForwarded = true when something forwards ${toString challengePort} to it.";
      }
      { assertion = cfg.redis.createLocally -> redis.unixSocket != null; message = "services.npg.redis.createLocally needs services.redis.servers.npg.unixSocket (npg connects through it)."; }
      { assertion = sentinels -> (cfg.redis.url == null && !cfg.redis.createLocally); message = "services.npg.redis.sentinels contradicts redis.url and redis.createLocally: the master comes from the sentinels."; }
      { assertion = sentinels == (cfg.redis.sentinelMaster != null); message = "services.npg.redis.sentinels and redis.sentinelMaster go together."; }
      { assertion = (store.type == "s3") == (store.bucket != null); message = "services.npg.tarballStore: type = \"s3\" needs a bucket, and a bucket needs type = \"s3\"."; }
    ];
    warnings = lib.optional (cfg.domain != null && !cfg.acme.enable)
      "services.npg.domain is set but acme.enable is not: npg ignores the domain.";

    # the typed options become environment entries; a conflicting explicit setting is an error
    services.npg.settings = {
      NPG_DOMAIN = mkIf cfg.acme.enable cfg.domain;
      ACME_EMAIL = mkIf cfg.acme.enable cfg.acme.email;
      ACME_DIRECTORY_URL = mkIf cfg.acme.enable cfg.acme.directoryUrl;
      ACME_CHALLENGE = mkIf cfg.acme.enable cfg.acme.challenge;
      REDIS_URL = mkIf (cfg.redis.createLocally || cfg.redis.url != null)
        (if cfg.redis.createLocally then "redis+unix://${redis.unixSocket}" else cfg.redis.url);
      BLACKLIST_PATH = mkIf (cfg.blocklist != null)
        (if blocklistManaged then "/etc/${blocklistEtc}" else cfg.blocklist);
      REDIS_SENTINELS = mkIf sentinels (lib.concatStringsSep "," cfg.redis.sentinels);
      REDIS_SENTINEL_MASTER = mkIf sentinels cfg.redis.sentinelMaster;
      TARBALL_STORE = mkIf (store.type != "disk") store.type;
      S3_BUCKET = mkIf (store.type == "s3") store.bucket;
      S3_PREFIX = mkIf (store.type == "s3") store.prefix;
      S3_ENDPOINT = mkIf (store.type == "s3") store.endpoint;
      S3_REGION = mkIf (store.type == "s3") store.region;
      S3_PATH_STYLE = mkIf (store.type == "s3" && store.pathStyle) true;
      # %d: the unit's credentials directory
      S3_CREDENTIALS_FILE = mkIf (store.type == "s3" && store.credentialsFile != null) "%d/${s3Credential}";
      TARBALL_LOCAL_CACHE_MB = mkIf (store.type == "s3") store.localCacheMB;
    };

    # a named server listens on its unix socket only (port 0): no clash with the default
    # server's 6379. npg reaches the socket through the server's group.
    services.redis.servers.npg = mkIf cfg.redis.createLocally { enable = true; };

    environment.etc.${blocklistEtc} = mkIf blocklistManaged { source = blocklistFile; };

    users.users.npg = { isSystemUser = true; group = "npg"; home = cfg.stateDir; };
    users.groups.npg = { };

    networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall ports;

    systemd.services.npg = {
      description = "npg npm registry gateway";
      wantedBy = [ "multi-user.target" ];
      # wants, not requires: npg serves without Redis (degraded), and a Redis restart must
      # not restart npg
      wants = [ "network-online.target" ] ++ lib.optional cfg.redis.createLocally "redis-npg.service";
      after = [ "network-online.target" ] ++ lib.optional cfg.redis.createLocally "redis-npg.service";
      inherit environment;
      reloadTriggers = lib.optional blocklistManaged blocklistFile;
      serviceConfig = {
        ExecStart = lib.getExe' cfg.package "npg";
        # reloads the blocklist
        ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
        User = "npg";
        Group = "npg";
        StateDirectory = lib.removePrefix "/var/lib/" cfg.stateDir;
        StateDirectoryMode = "0750";
        WorkingDirectory = cfg.stateDir;
        EnvironmentFile = lib.optional (cfg.environmentFile != null) cfg.environmentFile;
        SupplementaryGroups = lib.optional cfg.redis.createLocally redis.group;
        LoadCredential = lib.optional (store.type == "s3" && store.credentialsFile != null) "${s3Credential}:${store.credentialsFile}";
        Restart = "on-failure";
        RestartSec = "2s";
        LimitNOFILE = 65536;

        AmbientCapabilities = if lowPort then [ "CAP_NET_BIND_SERVICE" ] else [ "" ];
        CapabilityBoundingSet = if lowPort then [ "CAP_NET_BIND_SERVICE" ] else [ "" ];
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        ProtectProc = "invisible";
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
        SystemCallArchitectures = "native";
        SystemCallFilter = [ "@system-service" "~@privileged" ];
        UMask = "0027";
      };
    };
  };
}
