#!/bin/sh
# Makes the compose demo's *upstream* TLS material (not oauth-egress's interception CA, which
# oauth-egress generates itself): a throwaway "demo upstream CA" and two server certificates
# signed by it, one for Keycloak (https://keycloak:8443) and one for the echo API
# (https://api:8443). oauth-egress trusts the demo CA through `upstream_roots`.
#
# Idempotent: does nothing when the files exist (`docker compose down -v` starts over).
# Demo only: the keys are world-readable inside the demo volume so that every image's user
# (keycloak uid 1000, node uid 1000, ...) can read them.
set -eu
out=${1:-/certs}
if [ -s "$out/demo-ca.pem" ] && [ -s "$out/keycloak/tls.crt" ] && [ -s "$out/api/fullchain.pem" ]; then
  echo "gen-certs: $out already populated, keeping it"
  exit 0
fi
mkdir -p "$out/keycloak" "$out/api"
cd "$out"

openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout demo-ca.key -out demo-ca.pem -days 365 -subj "/CN=oauth-egress demo upstream CA" \
  -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
  -addext "keyUsage=critical,keyCertSign,cRLSign"

leaf() { # leaf NAME DIR CERT_FILE KEY_FILE
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$2/$4" -out "$2/req.csr" -subj "/CN=$1"
  printf '%s\n' \
    "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth" \
    "subjectAltName=DNS:$1,DNS:localhost" > "$2/ext.cnf"
  openssl x509 -req -in "$2/req.csr" -CA demo-ca.pem -CAkey demo-ca.key -CAcreateserial \
    -days 365 -sha256 -extfile "$2/ext.cnf" -out "$2/$3"
  rm -f "$2/req.csr" "$2/ext.cnf"
}
leaf keycloak keycloak tls.crt tls.key
leaf api api fullchain.pem privkey.pem    # the names mendhak/http-https-echo reads

rm -f demo-ca.srl demo-ca.key             # nothing more is signed: drop the CA key
chmod 0755 . keycloak api
chmod 0644 demo-ca.pem keycloak/* api/*
echo "gen-certs: wrote $out/demo-ca.pem, keycloak/tls.{crt,key}, api/{fullchain,privkey}.pem"
