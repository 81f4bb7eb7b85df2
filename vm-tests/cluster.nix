# The multi-node scenario of tests/cluster/run: redis, pebble (acme), the fake registry
# (upstream), three npg replicas ordering one certificate for npg.test through Traefik (lb,
# TCP passthrough, the routers of compose/traefik/dynamic.yml), and an npm client.
# Run: nix build .#checks.<system>.vm-cluster
{ pkgs, lib, npgModule }:
let
  certs = import ./certs.nix { inherit pkgs; };
  domain = "npg.test";
  replicas = [ "npg1" "npg2" "npg3" ];

  pebbleConfig = pkgs.writeText "pebble.json" (builtins.toJSON {
    pebble = {
      listenAddress = "0.0.0.0:14000";
      managementListenAddress = "0.0.0.0:15000";
      certificate = "${certs}/acme.pem";
      privateKey = "${certs}/acme.key";
      httpPort = 80;
      tlsPort = 443;
      ocspResponderURL = "";
      externalAccountBindingRequired = false;
    };
  });

  # the public name resolves to the balancer, for the client and for pebble's validation
  lbName = { nodes, ... }: {
    networking.hosts.${nodes.lb.networking.primaryIPAddress} = [ domain ];
  };

  replica = name: { config, pkgs, ... }: {
    imports = [ npgModule ];
    services.npg = {
      enable = true;
      openFirewall = true;
      inherit domain;
      acme = {
        enable = true;
        email = "ops@${domain}";
        directoryUrl = "https://acme:14000/dir";
      };
      redis.url = "redis://redis:6379/0";
      settings = {
        REGISTRY_URL = "http://upstream/";
        HTTP_PORT = 80;
        HTTPS_PORT = 443;
        PROXY_URL = "https://${domain}/npm";
        INSTANCE_NAME = name;
        ACME_CA_FILE = "${certs}/ca.pem";
        ACME_CHECK_INTERVAL = "5s";
        MALWARE_FEED_URL = "http://upstream/feed.json";
        SHUTDOWN_DELAY = "2500ms";
      };
    };
    environment.systemPackages = [ config.services.npg.package pkgs.curl pkgs.openssl ];
  };
in
{
  name = "npg-cluster";

  nodes = {
    redis = {
      services.redis.servers.npg = {
        enable = true;
        port = 6379;
        bind = null;
        openFirewall = true;
        settings.protected-mode = "no";
      };
    };

    acme = { pkgs, ... }: {
      imports = [ lbName ];
      networking.firewall.allowedTCPPorts = [ 14000 15000 ];
      systemd.services.pebble = {
        description = "Pebble ACME test server";
        wantedBy = [ "multi-user.target" ];
        after = [ "network.target" ];
        # no random validation delays
        environment.PEBBLE_VA_NOSLEEP = "1";
        serviceConfig = {
          RuntimeDirectory = "pebble";
          WorkingDirectory = "/run/pebble";
          ExecStart = "${pkgs.pebble}/bin/pebble -config ${pebbleConfig}";
        };
      };
    };

    upstream = ./upstream.nix;

    npg1 = replica "npg1";
    npg2 = replica "npg2";
    npg3 = replica "npg3";

    lb = {
      networking.firewall.allowedTCPPorts = [ 80 443 8080 ];
      services.traefik = {
        enable = true;
        staticConfigOptions = {
          global = { checkNewVersion = false; sendAnonymousUsage = false; };
          log.level = "INFO";
          entryPoints = {
            web.address = ":80";
            websecure.address = ":443";
            traefik.address = ":8080";
          };
          api.insecure = true;
          ping.entryPoint = "traefik";
        };
        # the routers of compose/traefik/dynamic.yml; the services list the replicas (as the
        # cluster test does) instead of coming from Docker labels. The TCP check asks npg's
        # HTTP health, so a draining replica (503) leaves first (TCP checks: Traefik >= 3.6)
        dynamicConfigOptions = {
          tcp.routers.npg-https = {
            entryPoints = [ "websecure" ];
            rule = "HostSNI(`*`)";
            service = "npg-https";
            tls.passthrough = true;
          };
          tcp.services.npg-https.loadBalancer = {
            healthCheck = {
              interval = "1s";
              timeout = "1s";
              port = 80;
              send = "GET /api/health HTTP/1.1\r\nHost: npg\r\nConnection: close\r\n\r\n";
              expect = "HTTP/1.1 200";
            };
            servers = map (n: { address = "${n}:443"; }) replicas;
          };
          http.routers.npg-http = {
            entryPoints = [ "web" ];
            rule = "PathPrefix(`/`)";
            priority = 1;
            service = "npg-http";
          };
          http.services.npg-http.loadBalancer = {
            healthCheck = { path = "/api/health"; interval = "1s"; timeout = "1s"; };
            servers = map (n: { url = "http://${n}:80"; }) replicas;
          };
        };
      };
    };

    client = { pkgs, ... }: {
      imports = [ lbName ];
      # trusts pebble's listener; the issuing root is fetched from pebble in the test
      security.pki.certificateFiles = [ "${certs}/ca.pem" ];
      environment.systemPackages = [ pkgs.nodejs pkgs.curl pkgs.openssl ];
    };
  };

  testScript = builtins.readFile ./cluster.py;
}
