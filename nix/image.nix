# OCI image npg:latest for compose/docker-compose.yml: npg on PATH (its health check runs
# `npg health`), CA certificates, a non-root user, state in the /var/lib/npg volume.
{ pkgs }:
let
  npg = pkgs.npg;
  uid = "10001";
  seconds = s: s * 1000000000; # OCI health check durations are nanoseconds
in
pkgs.dockerTools.buildLayeredImage {
  name = "npg";
  tag = "latest";
  contents = [ npg pkgs.cacert ];
  # the volume's mount point, owned by the runtime user so a fresh named volume is writable
  fakeRootCommands = ''
    mkdir -p var/lib/npg tmp
    chown ${uid}:${uid} var/lib/npg
    chmod 1777 tmp
  '';
  config = {
    User = "${uid}:${uid}";
    Cmd = [ "/bin/npg" ];
    WorkingDir = "/var/lib/npg";
    Env = [
      "PATH=/bin"
      "SSL_CERT_FILE=${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt"
      "HOME=/var/lib/npg"
      "STORAGE_DIR=/var/lib/npg/storage"
      "MALWARE_LIST_DIR=/var/lib/npg/malware-list"
    ];
    # Docker lets a non-root user bind 80 and 443 in a container (ip_unprivileged_port_start=0)
    ExposedPorts = { "3000/tcp" = { }; "80/tcp" = { }; "443/tcp" = { }; };
    Volumes = { "/var/lib/npg" = { }; };
    Healthcheck = {
      Test = [ "CMD" "npg" "health" "--url" "http://127.0.0.1:3000/api/health" ];
      Interval = seconds 10;
      Timeout = seconds 5;
      Retries = 3;
      StartPeriod = seconds 20;
    };
  };
}
