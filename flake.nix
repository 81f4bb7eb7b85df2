{
  description = "npg: security gateway and caching proxy for the npm registry";

  # a released NixOS branch; flake.lock pins the revision (README, "Nix and NixOS")
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      # nixpkgs imported once per system, shared by packages, checks and dev shells
      pkgsFor = nixpkgs.lib.genAttrs systems (system:
        import nixpkgs { inherit system; overlays = [ self.overlays.default ]; });
      forAllSystems = f: nixpkgs.lib.mapAttrs (_: f) pkgsFor;
    in
    {
      overlays.default = final: prev: {
        npg = final.callPackage ./nix/package.nix { };
      };

      # services.npg with the flake's own build of npg (its pinned nixpkgs and rustc) as the
      # default package: a host on any NixOS release runs it without the overlay. The overlay
      # stays for those who want npg built with the host's nixpkgs (README, "Nix and NixOS").
      nixosModules.default = { lib, pkgs, ... }: {
        imports = [ ./nixos-module ];
        services.npg.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.npg;
      };

      packages = forAllSystems (pkgs: {
        npg = pkgs.npg;
        default = pkgs.npg;
        image = import ./nix/image.nix { inherit pkgs; };
      });

      checks = forAllSystems (pkgs:
        let
          vmTests = import ./vm-tests {
            inherit pkgs;
            inherit (pkgs) lib;
            npgModule = self.nixosModules.default;
          };
          moduleTests = import ./nix/module-tests.nix { inherit (pkgs) lib; };
        in
        pkgs.lib.mapAttrs' (name: test: pkgs.lib.nameValuePair "vm-${name}" (pkgs.testers.runNixOSTest test)) vmTests
        // {
          npg = pkgs.npg;
          # lib.runTests over the module with stub NixOS options (nix/check runs the same)
          module-eval =
            if moduleTests.failed == [ ] then pkgs.runCommand "npg-module-eval" { } "touch $out"
            else throw "module tests failed: ${builtins.toJSON moduleTests.failed}";
        });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [ cargo rustc clippy rustfmt redis pebble traefik nodejs openssl ];
        };
      });
    };
}
