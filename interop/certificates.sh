#!/usr/bin/env bash
# Makes the throw-away certificates of the TLS interop tests with the
# `openssl` command, into DIR (created, mode 0700):
#
#   interop/certificates.sh DIR
#
#   ca.pem                   the test CA (EC P-256) that signed both servers'
#                            certificates: what the clients trust
#   server.pem, server.key   the servers' certificate, for DNS:localhost and
#                            IP:127.0.0.1, signed by ca.pem
#   client-ca.pem            a second CA, for client certificates only: what
#                            oidc-provider's TLS server accepts
#   client.pem, client.key   a client certificate (RSA 2048) whose subject is
#                            CN=interop-mtls-client, the client id registered
#                            with tls_client_auth in oidc-mtls.mjs; signed by
#                            client-ca.pem
#   self-signed-client.pem, self-signed-client.key
#                            a self-signed client certificate (EC P-256) for
#                            CN=interop-self-signed-client, registered with
#                            self_signed_tls_client_auth in oidc-mtls.mjs
#
# Everything is valid for 7 days from now. The CAs' keys are deleted once
# they have signed, so nothing else can be issued under them. Called by
# scripts/test-all.sh into its scratch folder, and by tests/interop.rs when it
# starts the servers itself; nothing it makes is ever committed.
set -euo pipefail

[ "$#" -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
command -v openssl >/dev/null 2>&1 || { echo "$0: the openssl command is missing" >&2; exit 1; }

DIR=$1
DAYS=7
mkdir -p "$DIR"
chmod 700 "$DIR"
cd "$DIR"
umask 077

# Our own configuration, so that no distribution's openssl.cnf adds
# extensions of its own.
cat >openssl.cnf <<'EOF'
[req]
distinguished_name = dn
prompt = no

[dn]
CN = unused

[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF

# Runs a command, showing what it printed only if it fails (openssl prints
# progress and "signature ok" lines).
quiet() {
  local out
  out=$("$@" 2>&1) || { printf '%s\n' "$out" >&2; return 1; }
}

ec_key() { quiet openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }
rsa_key() { quiet openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1"; }
serial() { printf '0x%s' "$(openssl rand -hex 16)"; }

# self_signed NAME SUBJECT EXTENSIONS: NAME.pem from NAME.key.
self_signed() {
  quiet openssl req -new -x509 -config openssl.cnf -extensions "$3" -key "$1.key" \
    -subj "$2" -days "$DAYS" -sha256 -set_serial "$(serial)" -out "$1.pem"
}

# signed NAME SUBJECT EXTENSIONS CA: NAME.pem from NAME.key, signed by CA.
signed() {
  quiet openssl req -new -config openssl.cnf -key "$1.key" -subj "$2" -out "$1.csr"
  quiet openssl x509 -req -in "$1.csr" -CA "$4.pem" -CAkey "$4.key" -set_serial "$(serial)" \
    -days "$DAYS" -sha256 -extfile openssl.cnf -extensions "$3" -out "$1.pem"
  rm -f "$1.csr"
}

ec_key ca.key
self_signed ca "/O=tokenkeeper tests/CN=tokenkeeper interop test CA" ca

ec_key server.key
signed server "/O=tokenkeeper tests/CN=localhost" server ca

ec_key client-ca.key
self_signed client-ca "/O=tokenkeeper tests/CN=tokenkeeper interop client CA" ca

rsa_key client.key
signed client "/CN=interop-mtls-client" client client-ca

ec_key self-signed-client.key
self_signed self-signed-client "/CN=interop-self-signed-client" client

rm -f ca.key client-ca.key openssl.cnf
# The certificates are public; the servers and the tests read the keys.
chmod 644 ./*.pem
