# npg from Cargo.lock. Only the unit tests run in the build: the integration tests start
# redis-server, pebble, npm and more, which the build sandbox does not have.
{ lib, rustPlatform }:
rustPlatform.buildRustPackage {
  pname = "npg";
  version = (lib.importTOML ../Cargo.toml).package.version;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [ ../Cargo.toml ../Cargo.lock ../src ];
  };
  cargoLock.lockFile = ../Cargo.lock;

  cargoTestFlags = [ "--lib" ];

  meta = {
    description = "Security gateway and caching proxy for the npm registry";
    mainProgram = "npg";
    platforms = lib.platforms.linux;
  };
}
