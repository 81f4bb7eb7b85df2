# npg from Cargo.lock. Only the unit tests run in the build: the integration tests start
# redis-server, pebble, npm and more, which the build sandbox does not have.
{ lib, rustPlatform }:
rustPlatform.buildRustPackage {
  pname = "npg";
  version = (lib.importTOML ../Cargo.toml).package.version;

  # only what cargo needs: a change to the docs, tests or Nix files does not rebuild npg
  src = lib.sourceByRegex ../. [ "^Cargo\\.(toml|lock)$" "^src(/.*)?$" ];
  cargoLock.lockFile = ../Cargo.lock;

  cargoTestFlags = [ "--lib" ];

  meta = {
    description = "Security gateway and caching proxy for the npm registry";
    mainProgram = "npg";
    platforms = lib.platforms.linux;
  };
}
