# Stand-in for nixpkgs in nix/check (tier 2): `nix flake check --no-build --override-input
# nixpkgs path:<copy of this folder>` evaluates every output of npg's flake without nixpkgs.
# nix/check copies nixpkgs' real lib/ (NIXPKGS_LIB) and ../stub-nixos.nix in beside this file.
{
  description = "stub nixpkgs for npg's nix/check";
  outputs = { self }: { lib = import ./lib; };
}
