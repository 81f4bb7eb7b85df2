# `import nixpkgs { system; overlays; }` of the stub: the real lib, placeholder derivations
# (they evaluate, never build) for the packages npg's flake uses, and builders that check
# what they are given: buildRustPackage copies its source, dockerTools renders the image
# config, runNixOSTest evaluates every node's modules against ./stub-nixos.nix.
{ system, overlays ? [ ], config ? { } }:
let
  lib = import ./lib;

  placeholder = name: env: derivation ({
    inherit name system;
    builder = "/bin/sh";
    args = [ "-c" "echo stub nixpkgs: nothing here builds; exit 1" ];
  } // env);
  pkg = name: placeholder name { };

  runNixOSTest = final: test:
    let
      names = lib.attrNames test.nodes;
      evalNode = i: name: (lib.evalModules {
        modules = [
          ./stub-nixos.nix
          test.nodes.${name}
          { networking.primaryIPAddress = "192.168.1.${toString (i + 1)}"; }
        ];
        specialArgs = { pkgs = final; inherit nodes; };
      }).config;
      nodes = lib.listToAttrs (lib.imap0 (i: n: lib.nameValuePair n (evalNode i n)) names);
      checkNode = name: cfg:
        let failed = lib.filter (a: !a.assertion) cfg.assertions; in
        if failed != [ ] then throw "VM test ${test.name}, node ${name}: ${lib.concatMapStringsSep "; " (a: a.message) failed}"
        else builtins.deepSeq (removeAttrs cfg [ "_module" ]) name;
    in
    assert builtins.isString test.testScript;
    placeholder "vm-test-run-${test.name}" {
      # every node evaluated in full, its assertions holding
      nodes = lib.mapAttrsToList checkNode nodes;
      inherit (test) testScript;
    };

  base = final: {
    inherit lib system;
    path = ./.;
    callPackage = fn: args:
      let f = if builtins.isFunction fn then fn else import fn;
      in f (builtins.intersectAttrs (builtins.functionArgs f) final // args);

    stdenv.hostPlatform = lib.systems.elaborate system;

    rustPlatform.buildRustPackage = args:
      assert lib.assertMsg (builtins.pathExists args.cargoLock.lockFile) "cargoLock.lockFile missing";
      placeholder "${args.pname}-${args.version}" {
        inherit (args) src;
        cargoTestFlags = args.cargoTestFlags or [ ];
        env = builtins.toJSON (args.env or { });
      } // { inherit (args) pname version; meta = args.meta or { }; };

    dockerTools.buildLayeredImage = args: placeholder "${args.name}.tar.gz" {
      config = builtins.toJSON args.config;
      inherit (args) contents;
      fakeRootCommands = args.fakeRootCommands or "";
    } // { imageName = args.name; imageTag = args.tag; };

    testers.runNixOSTest = runNixOSTest final;

    runCommand = name: env: script: placeholder name (env // { buildCommand = script; });
    writeText = name: text: placeholder name { inherit text; };
    writeTextDir = path: text: placeholder (baseNameOf path) { inherit text; };
    formats.yaml = { }: { generate = name: value: placeholder name { value = builtins.toJSON value; }; };
    mkShell = args: placeholder "nix-shell" { packages = args.packages or [ ]; };
  } // lib.genAttrs [ "cacert" "cargo" "clippy" "coreutils" "curl" "minio-client" "nodejs" "openssl" "pebble"
    "python3" "redis" "rustc" "rustfmt" "traefik" ] pkg;
in
lib.fix (lib.foldl' (f: overlay: lib.extends overlay f) base overlays)
