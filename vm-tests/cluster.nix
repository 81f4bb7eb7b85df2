# The multi-node scenario of tests/cluster/run: redis (with MinIO, the S3 server of the shared
# tarball bucket), pebble (acme), the fake registry (upstream), three npg replicas ordering one
# certificate for npg.test through Traefik (lb, TCP passthrough, the routers of
# compose/traefik/dynamic.yml) and keeping tarballs in one bucket, and an npm client.
# As in tests/cluster/run, pebble resolves names with its DNS mock (pebble-challtestsrv, A
# records only: the balancer's IPv4). The test network gives every name an IPv4 and an IPv6
# address in /etc/hosts, so every listener a name is dialled on binds both (`::`, `:port`).
# Run: nix build .#checks.<system>.vm-cluster
{ pkgs, lib, npgModule }:
let
  certs = import ./certs.nix { inherit pkgs; };
  domain = "npg.test";
  replicas = [ "npg1" "npg2" "npg3" ];

  pebbleConfig = pkgs.writeText "pebble.json" (builtins.toJSON {
    pebble = {
      listenAddress = ":14000";
      managementListenAddress = ":15000";
      certificate = "${certs}/acme.pem";
      privateKey = "${certs}/acme.key";
      httpPort = 80;
      tlsPort = 443;
      ocspResponderURL = "";
      externalAccountBindingRequired = false;
    };
  });

  # test-only credentials, so in the store: MinIO's root user is npg's key
  s3Key = { id = "npg-test"; secret = "npg-test-secret"; };
  minioCredentials = pkgs.writeText "minio-credentials" "MINIO_ROOT_USER=${s3Key.id}\nMINIO_ROOT_PASSWORD=${s3Key.secret}\n";
  npgS3Credentials = pkgs.writeText "npg-s3-credentials" "AWS_ACCESS_KEY_ID=${s3Key.id}\nAWS_SECRET_ACCESS_KEY=${s3Key.secret}\n";

  # the public name resolves to the balancer, for the client
  lbName = { nodes, ... }: {
    networking.hosts.${nodes.lb.networking.primaryIPAddress} = [ domain ];
  };

  # 8 VMs: each gets what it needs instead of the default 1 GiB (npm on the client needs most)
  memory = mb: { virtualisation.memorySize = mb; };

  replica = name: { config, pkgs, ... }: {
    imports = [ npgModule (memory 768) ];
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
      # the three replicas share one bucket: one upstream fetch per tarball for the cluster
      tarballStore = {
        type = "s3";
        bucket = "npg";
        endpoint = "http://redis:9000";
        pathStyle = true;
        credentialsFile = "${npgS3Credentials}";
      };
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
        # both families: names resolve to IPv6 first (HTTPS follows HTTP_BIND)
        HTTP_BIND = "::";
      };
    };
    environment.systemPackages = [ config.services.npg.package pkgs.curl pkgs.openssl ];
  };
in
{
  name = "npg-cluster";

  nodes = {
    redis = { pkgs, ... }: {
      imports = [ (memory 768) ];
      services.minio = {
        enable = true;
        rootCredentialsFile = minioCredentials;
      };
      networking.firewall.allowedTCPPorts = [ 9000 ];
      environment.systemPackages = [ pkgs.minio-client ];
      services.redis.servers.npg = {
        enable = true;
        port = 6379;
        bind = null;
        openFirewall = true;
        settings.protected-mode = "no";
      };
    };

    acme = { pkgs, nodes, ... }: {
      imports = [ (memory 512) ];
      networking.firewall.allowedTCPPorts = [ 14000 15000 ];
      # pebble's DNS, as in tests/cluster/run: every name is the balancer (IPv4 only)
      systemd.services.challtestsrv = {
        description = "Pebble challenge test server (DNS mock)";
        wantedBy = [ "multi-user.target" ];
        after = [ "network.target" ];
        serviceConfig.ExecStart = lib.escapeShellArgs [
          "${pkgs.pebble}/bin/pebble-challtestsrv"
          "-dns01" "127.0.0.1:8053" "-http01" "" "-https01" "" "-tlsalpn01" ""
          "-management" "127.0.0.1:8055"
          "-defaultIPv4" nodes.lb.networking.primaryIPAddress "-defaultIPv6" ""
        ];
      };
      systemd.services.pebble = {
        description = "Pebble ACME test server";
        wantedBy = [ "multi-user.target" ];
        wants = [ "challtestsrv.service" ];
        after = [ "network.target" "challtestsrv.service" ];
        # no random validation delays
        environment.PEBBLE_VA_NOSLEEP = "1";
        serviceConfig = {
          RuntimeDirectory = "pebble";
          WorkingDirectory = "/run/pebble";
          ExecStart = "${pkgs.pebble}/bin/pebble -config ${pebbleConfig} -dnsserver 127.0.0.1:8053 -strict=false";
        };
      };
    };

    upstream = { imports = [ ./upstream.nix (memory 512) ]; };

    npg1 = replica "npg1";
    npg2 = replica "npg2";
    npg3 = replica "npg3";

    lb = {
      imports = [ (memory 512) ];
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
      imports = [ lbName (memory 1536) ];
      # trusts pebble's listener; the issuing root is fetched from pebble in the test
      security.pki.certificateFiles = [ "${certs}/ca.pem" ];
      environment.systemPackages = [ pkgs.nodejs pkgs.curl pkgs.openssl ];
    };
  };

  testScript = builtins.readFile ./cluster.py;
}
