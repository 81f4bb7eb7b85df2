# The VM tests, by name; the flake runs each with pkgs.testers.runNixOSTest (checks.vm-<name>).
{ pkgs, lib, npgModule }:
{
  single = import ./single.nix { inherit pkgs lib npgModule; };
  cluster = import ./cluster.nix { inherit pkgs lib npgModule; };
}
