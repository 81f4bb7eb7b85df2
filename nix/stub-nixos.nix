# Declarations of exactly the NixOS options that nixos-module/ and the VM test nodes set, with
# NixOS's types (simplified where NixOS itself is freeform). No freeform type here: an option
# missing from this file, e.g. a misspelt one, fails the evaluation as it would in NixOS.
# Used by nix/module-tests.nix and by the stub nixpkgs' runNixOSTest (nix/stub-nixpkgs).
{ lib, ... }:
let
  inherit (lib) mkOption types;
  opt = type: default: mkOption { inherit type default; };
  unitValue = types.oneOf [ types.bool types.int types.str types.path (types.listOf (types.oneOf [ types.bool types.int types.str types.path ])) ];
in
{
  options = {
    assertions = opt (types.listOf (types.submodule {
      options.assertion = mkOption { type = types.bool; };
      options.message = mkOption { type = types.str; };
    })) [ ];
    warnings = opt (types.listOf types.str) [ ];

    users.users = opt (types.attrsOf (types.submodule {
      options.isSystemUser = opt types.bool false;
      options.group = opt types.str "";
      options.home = opt types.str "/var/empty";
    })) { };
    users.groups = opt (types.attrsOf (types.submodule { })) { };

    networking.firewall.allowedTCPPorts = opt (types.listOf types.port) [ ];
    networking.hosts = opt (types.attrsOf (types.listOf types.str)) { };
    # set by the NixOS test framework for every node
    networking.primaryIPAddress = opt types.str "";

    # the test framework's qemu-vm module
    virtualisation.memorySize = opt types.ints.positive 1024;

    environment.systemPackages = opt (types.listOf types.package) [ ];
    environment.etc = opt (types.attrsOf (types.submodule {
      options.source = mkOption { type = types.path; };
    })) { };
    security.pki.certificateFiles = opt (types.listOf types.path) [ ];

    systemd.services = opt (types.attrsOf (types.submodule {
      options = {
        description = opt types.str "";
        wantedBy = opt (types.listOf types.str) [ ];
        wants = opt (types.listOf types.str) [ ];
        after = opt (types.listOf types.str) [ ];
        environment = opt (types.attrsOf (types.nullOr (types.oneOf [ types.str types.path types.package ]))) { };
        reloadTriggers = opt (types.listOf (types.oneOf [ types.str types.path types.package ])) [ ];
        serviceConfig = opt (types.attrsOf unitValue) { };
      };
    })) { };

    # NixOS 25.11's defaults: the unnamed server on 6379, a named one on its unix socket only
    services.redis.servers = opt (types.attrsOf (types.submodule ({ name, config, ... }: let redisName = "redis" + lib.optionalString (name != "") "-${name}"; in {
      options = {
        enable = opt types.bool false;
        user = opt types.str redisName;
        group = opt types.str config.user;
        port = opt types.port (if name == "" then 6379 else 0);
        unixSocket = opt (types.nullOr types.path) "/run/${redisName}/redis.sock";
        bind = opt (types.nullOr types.str) "127.0.0.1";
        openFirewall = opt types.bool false;
        settings = opt (types.attrsOf (types.oneOf [ types.bool types.int types.str (types.listOf types.str) ])) { };
      };
    }))) { };

    # NixOS 25.11's minio module (the VM cluster test's S3 server)
    services.minio = {
      enable = opt types.bool false;
      listenAddress = opt types.str ":9000";
      consoleAddress = opt types.str ":9001";
      dataDir = opt (types.listOf (types.either types.path types.str)) [ "/var/lib/minio/data" ];
      region = opt types.str "us-east-1";
      browser = opt types.bool true;
      rootCredentialsFile = opt (types.nullOr types.path) null;
    };

    services.traefik = {
      enable = opt types.bool false;
      staticConfigOptions = opt (types.attrsOf types.anything) { };
      dynamicConfigOptions = opt (types.attrsOf types.anything) { };
    };
  };
}
