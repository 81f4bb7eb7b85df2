# A test CA and two certificates, made at build time: pebble's HTTPS listener (`acme`) and
# npg's static certificate (`npg.test`). nixpkgs' own ACME tests ship a fixed snakeoil CA;
# making one keeps these tests independent of nixpkgs' test tree.
{ pkgs }:
pkgs.runCommand "npg-vm-test-certs" { nativeBuildInputs = [ pkgs.openssl ]; } ''
  mkdir -p $out && cd $out
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=npg VM test CA" -keyout ca.key -out ca.pem
  leaf() {
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
      -keyout "$1.key" -out "$1.csr"
    printf 'subjectAltName=%s\n' "$2" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile "$1.ext" -out "$1.pem"
  }
  leaf acme DNS:acme
  leaf npg DNS:npg.test
  # test keys: world-readable in the store anyway, and npg runs as its own user
  chmod 0644 ./*.key
''
