# npg from Cargo.lock. Only the unit tests run in the build: the integration tests start
# redis-server, pebble, npm and more, which the build sandbox does not have.
{ lib, stdenv, rustPlatform }:
rustPlatform.buildRustPackage {
  pname = "npg";
  version = (lib.importTOML ../Cargo.toml).package.version;

  # only what cargo needs: a change to the docs, tests or Nix files does not rebuild npg
  src = lib.sourceByRegex ../. [ "^Cargo\\.(toml|lock)$" "^src(/.*)?$" ];
  cargoLock.lockFile = ../Cargo.lock;

  cargoTestFlags = [ "--lib" ];

  # jemalloc fixes its page size at build time: 64 KiB runs on every aarch64 kernel
  # (4, 16 or 64 KiB pages); x86_64 has 4 KiB only.
  env = lib.optionalAttrs stdenv.hostPlatform.isAarch64 { JEMALLOC_SYS_WITH_LG_PAGE = "16"; };

  meta = {
    description = "Security gateway and caching proxy for the npm registry";
    mainProgram = "npg";
    platforms = lib.platforms.linux;
  };
}
