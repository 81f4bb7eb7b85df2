# Node module: the cluster test's fake npm registry (tests/cluster/upstream.py) on :80, with
# tarball URLs under http://upstream and the malware feed at /feed.json.
{ pkgs, ... }:
let
  dir = pkgs.writeTextDir "upstream.py" (builtins.readFile ../tests/cluster/upstream.py);
  python = "${pkgs.python3}/bin/python3";
in
{
  networking.firewall.allowedTCPPorts = [ 80 ];
  systemd.services.upstream = {
    description = "fake npm registry";
    wantedBy = [ "multi-user.target" ];
    after = [ "network.target" ];
    serviceConfig = {
      StateDirectory = "upstream";
      ExecStartPre = "${python} -c 'import sys; sys.path.insert(0, \"${dir}\"); import upstream; upstream.build(\"/var/lib/upstream\", \"http://upstream\")'";
      # both families: "upstream" resolves to IPv6 first
      ExecStart = "${python} ${dir}/upstream.py /var/lib/upstream :: 80";
    };
  };
}
