{
  description = "npg: security gateway and caching proxy for the npm registry";

  # a released NixOS branch; flake.lock pins the revision (README, "Nix and NixOS")
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system:
        f (import nixpkgs { inherit system; overlays = [ self.overlays.default ]; }));
    in
    {
      overlays.default = final: prev: {
        npg = final.callPackage ./nix/package.nix { };
      };

      # a function, not a bare path: older Nix rejects a path as a module in `flake check`
      nixosModules.default = import ./nixos-module;

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
