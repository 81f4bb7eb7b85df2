# One npg node: local Redis on its unix socket (redis.createLocally), a static certificate, ports 80/443 (so
# CAP_NET_BIND_SERVICE), a blocklist; npm installs through it. Run: nix build .#checks.<system>.vm-single
{ pkgs, lib, npgModule }:
let
  certs = import ./certs.nix { inherit pkgs; };
in
{
  name = "npg-single";

  nodes.upstream = ./upstream.nix;

  nodes.machine = { config, pkgs, ... }: {
    imports = [ npgModule ];
    services.npg = {
      enable = true;
      openFirewall = true;
      redis.createLocally = true;
      settings = {
        REGISTRY_URL = "http://upstream/";
        HTTP_PORT = 80;
        HTTPS_PORT = 443;
        HTTP_REDIRECT = false;
        PROXY_URL = "https://npg.test/npm";
        TLS_CERT_FILE = "${certs}/npg.pem";
        TLS_KEY_FILE = "${certs}/npg.key";
        MALWARE_FEED_URL = "http://upstream/feed.json";
      };
      blocklist.packages = [{ name = "evilpkg"; versions = [ "1.0.0" ]; reason = "vm test"; }];
    };
    networking.hosts."127.0.0.1" = [ "npg.test" ];
    security.pki.certificateFiles = [ "${certs}/ca.pem" ];
    environment.systemPackages = [ config.services.npg.package pkgs.nodejs pkgs.curl pkgs.redis ];
  };

  testScript = builtins.readFile ./single.py;
}
