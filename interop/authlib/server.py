"""An OAuth2 authorization server built with Authlib, for tokenkeeper's interop tests.

    python server.py --key-dir DIR [--port PORT] [--device-interval SECONDS]

It makes its keys at start (with `cryptography`) and writes the private halves
as PKCS#8 PEM files into DIR, which the tests sign with; the server keeps only
the public halves:

    issuer-rs256.pem, issuer-es256.pem   the JWT bearer issuer `authlib-issuer`
                                         (kids issuer-rs256, issuer-es256)
    client-rs256.pem, client-es256.pem   the private_key_jwt client
                                         `authlib-pkjwt-client` (kids client-rs256,
                                         client-es256)

Clients and what they may do (in memory):

    authlib-issuer        JWT bearer grant (RFC 7523 §2.1): assertions signed by its
                          keys, iss = authlib-issuer, aud = the token endpoint, a
                          subject among the known users
    authlib-pkjwt-client  client_credentials with private_key_jwt (RFC 7523 §2.2):
                          aud = the token endpoint, a jti used once only
    authlib-workload      client_credentials with private_key_jwt whose assertions a
                          "platform" makes (POST /test/platform-token: a JWT signed by
                          a key of the server's, as a Kubernetes cluster signs
                          projected service-account tokens)
    authlib-device-client device code grant (RFC 8628), a public client (no secret),
                          with rotating refresh tokens

Users: any subject that starts with "user-" or is "alice" or "bob" exists.
Requested scopes are granted as asked (tests use unique scopes to find their
own requests in the log).

Routes: POST /token, POST /device_authorization (verification URI /device), and
test-only routes that no real server would have:

(the test routes take their parameters from the query or a form)

    POST /test/device/approve  user_code=...   the person approves
    POST /test/device/deny     user_code=...   the person refuses
    POST /test/device/expire   user_code=...   the code's lifetime is over
    POST /test/device/slow-down user_code=...&count=N   the next N polls answer slow_down
    POST /test/platform-token  sub=...&aud=...&ttl=...  a platform-signed JWT (iss
                               authlib-platform) for the workload client
    POST /test/introspect      token=...       what an access token was issued for
    GET  /test/log             every /token and /device_authorization request: path,
                               grant type, client id, whether Basic was used, the
                               assertions' header and claims (alg, kid, iss, sub, aud,
                               jti), the scope it is about (asked for, or that of the
                               device code or refresh token), the status and the error
                               code: never a secret

It prints `READY http://127.0.0.1:PORT` once it listens.
"""

import argparse
import base64
import json
import os
import sys
import threading
import time

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import Flask, jsonify, request
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey
from werkzeug.serving import make_server

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin, grants
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion, JWTBearerGrant
from authlib.oauth2.rfc8628 import (
    DEVICE_CODE_GRANT_TYPE,
    DeviceAuthorizationEndpoint,
    DeviceCodeGrant,
    DeviceCredentialDict,
)

JWT_BEARER = JWTBearerGrant.GRANT_TYPE
PRIVATE_KEY_JWT = "private_key_jwt"

LOCK = threading.RLock()
TOKENS = {}  # access token -> record
REFRESH_TOKENS = {}  # refresh token -> record
DEVICE_CODES = {}  # device code -> DeviceCredentialDict
DEVICE_SCOPES = {}  # device code -> scope, kept after use (for the log)
USER_GRANTS = {}  # user code -> (user, approved)
SLOW_DOWN = {}  # user code -> polls left that answer slow_down
SEEN_JTI = set()  # (client id, jti) of client assertions
LOG = []


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--key-dir", required=True)
    parser.add_argument("--device-interval", type=int, default=1)
    parser.add_argument("--device-lifetime", type=int, default=600)
    return parser.parse_args()


# --- keys ---------------------------------------------------------------------


def write_private_key(directory, name, private_key):
    """Writes a private key as PKCS#8 PEM, readable by its owner only."""
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = os.path.join(directory, name + ".pem")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)


def make_key_pair(directory, kid, kind):
    """Makes a key, writes its private half to DIR/KID.pem, returns its public JWK."""
    if kind == "RS256":
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_class = RSAKey
    else:
        private_key = ec.generate_private_key(ec.SECP256R1())
        key_class = ECKey
    write_private_key(directory, kid, private_key)
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key_class.import_key(public_pem, {"kid": kid, "alg": kind, "use": "sig"})


# --- models --------------------------------------------------------------------


class Client(ClientMixin):
    def __init__(self, client_id, grant_types, auth_methods, key_set=None):
        self.client_id = client_id
        self.grant_types = grant_types
        self.auth_methods = auth_methods
        self.key_set = key_set

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return None

    def get_allowed_scope(self, scope):
        # Every scope asked for is granted: the tests mark their requests with them.
        return scope or ""

    def check_redirect_uri(self, redirect_uri):
        return False

    def check_client_secret(self, client_secret):
        return False  # no client here has a secret

    def check_endpoint_auth_method(self, method, endpoint):
        return method in self.auth_methods

    def check_response_type(self, response_type):
        return False

    def check_grant_type(self, grant_type):
        return grant_type in self.grant_types


class User:
    def __init__(self, subject):
        self.subject = subject

    def get_user_id(self):
        return self.subject


def find_user(subject):
    if isinstance(subject, str) and (
        subject in ("alice", "bob") or subject.startswith("user-")
    ):
        return User(subject)
    return None


class Token(TokenMixin):
    def __init__(self, client_id, user, scope, grant_type, expires_in):
        self.client_id = client_id
        self.user = user
        self.scope = scope
        self.grant_type = grant_type
        self.expires_at = time.time() + expires_in
        self.revoked = False

    def check_client(self, client):
        return self.client_id == client.get_client_id()

    def get_scope(self):
        return self.scope

    def get_expires_in(self):
        return int(self.expires_at - time.time())

    def is_expired(self):
        return self.expires_at < time.time()

    def is_revoked(self):
        return self.revoked

    def get_user(self):
        return self.user


# --- grants and client authentication ------------------------------------------


class TokenEndpoint:
    """The token endpoint's URL as the clients address it (the assertions' aud)."""

    url = None


class AssertionClientAuth(JWTBearerClientAssertion):
    """private_key_jwt: the client's registered keys, aud = the token endpoint,
    each jti once."""

    CLIENT_AUTH_METHOD = PRIVATE_KEY_JWT

    def get_audiences(self):
        return [TokenEndpoint.url]

    def validate_jti(self, claims, jti):
        with LOCK:
            key = (claims["sub"], jti)
            if key in SEEN_JTI:
                return False
            SEEN_JTI.add(key)
            return True

    def resolve_client_public_key(self, client):
        return client.key_set


class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = [PRIVATE_KEY_JWT]


class BearerGrant(JWTBearerGrant):
    def resolve_issuer_client(self, issuer):
        client = CLIENTS.get(issuer)
        if client is not None and client.check_grant_type(JWT_BEARER):
            return client
        return None

    def resolve_client_public_key(self, client):
        return client.key_set

    def authenticate_user(self, subject):
        return find_user(subject)

    def get_audiences(self):
        return [TokenEndpoint.url]

    def has_granted_permission(self, client, user):
        return True


class DeviceEndpoint(DeviceAuthorizationEndpoint):
    CLIENT_AUTH_METHODS = ["none"]

    def get_verification_uri(self):
        return request.host_url.rstrip("/") + "/device"

    def save_device_credential(self, client_id, scope, data):
        credential = DeviceCredentialDict(
            client_id=client_id,
            scope=scope,
            expires_at=time.time() + self.EXPIRES_IN,
            last_poll=None,
            **data,
        )
        with LOCK:
            DEVICE_CODES[data["device_code"]] = credential
            DEVICE_SCOPES[data["device_code"]] = scope


class DeviceGrant(DeviceCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["none"]

    def query_device_credential(self, device_code):
        with LOCK:
            return DEVICE_CODES.get(device_code)

    def query_user_grant(self, user_code):
        with LOCK:
            return USER_GRANTS.get(user_code)

    def should_slow_down(self, credential):
        # RFC 8628 §3.5: a client polling faster than the interval is told to
        # slow down, and the interval grows by 5 s for this and later polls.
        # (A quarter of a second of tolerance for the network and the
        # scheduler.) A test may also ask for slow_down answers.
        now = time.time()
        with LOCK:
            forced = SLOW_DOWN.get(credential["user_code"], 0)
            last = credential["last_poll"]
            credential["last_poll"] = now
            too_fast = last is not None and now - last < credential["interval"] - 0.25
            if forced > 0:
                SLOW_DOWN[credential["user_code"]] = forced - 1
            if forced > 0 or too_fast:
                credential["interval"] += 5
                return True
            return False

    def create_token_response(self):
        # A device code gives one token: it is forgotten once used.
        answer = super().create_token_response()
        credential = self.request.credential
        with LOCK:
            DEVICE_CODES.pop(credential["device_code"], None)
            USER_GRANTS.pop(credential["user_code"], None)
        return answer


class RefreshTokenGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["none"]
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token):
        with LOCK:
            token = REFRESH_TOKENS.get(refresh_token)
        if token is None or token.is_revoked():
            return None
        return token

    def authenticate_user(self, credential):
        return credential.get_user()

    def revoke_old_credential(self, credential):
        credential.revoked = True


# --- the application -------------------------------------------------------------

CLIENTS = {}


def save_token(token, oauth_request):
    client = oauth_request.client
    user = oauth_request.user
    record = Token(
        client.get_client_id(),
        user,
        token.get("scope", ""),
        oauth_request.payload.grant_type,
        token.get("expires_in", 3600),
    )
    with LOCK:
        TOKENS[token["access_token"]] = record
        if "refresh_token" in token:
            REFRESH_TOKENS[token["refresh_token"]] = record


def unverified_header_and_claims(assertion):
    """The header and claims of a compact JWS, unverified: for the log only."""
    try:
        header, payload = assertion.split(".")[:2]
        return decode_part(header), decode_part(payload)
    except (ValueError, TypeError):  # malformed: logged without its claims
        return {}, {}


def decode_part(part):
    decoded = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    if not isinstance(decoded, dict):
        raise ValueError("not a JSON object")
    return decoded


def scope_of(form):
    """The scope a token request is about: asked for, or that of the device
    code or refresh token it presents."""
    if form.get("scope"):
        return form["scope"]
    with LOCK:
        if form.get("device_code"):
            return DEVICE_SCOPES.get(form["device_code"])
        if form.get("refresh_token") in REFRESH_TOKENS:
            return REFRESH_TOKENS[form["refresh_token"]].scope
    return None


def log_entry(response):
    form = request.form
    entry = {
        "path": request.path,
        "grant_type": form.get("grant_type"),
        "client_id": form.get("client_id"),
        "scope": scope_of(form),
        "basic": request.authorization is not None,
        "status": response.status_code,
        "error": None,
    }
    for field, prefix in (("client_assertion", "client_assertion"), ("assertion", "assertion")):
        if form.get(field):
            header, claims = unverified_header_and_claims(form[field])
            entry[prefix] = {
                "alg": header.get("alg"),
                "kid": header.get("kid"),
                "iss": claims.get("iss"),
                "sub": claims.get("sub"),
                "aud": claims.get("aud"),
                "jti": claims.get("jti"),
            }
    if response.status_code >= 400 and response.is_json:
        body = response.get_json(silent=True) or {}
        entry["error"] = body.get("error")
    with LOCK:
        LOG.append(entry)


def create_app(args):
    os.makedirs(args.key_dir, exist_ok=True)
    issuer_keys = KeySet(
        [
            make_key_pair(args.key_dir, "issuer-rs256", "RS256"),
            make_key_pair(args.key_dir, "issuer-es256", "ES256"),
        ]
    )
    client_keys = KeySet(
        [
            make_key_pair(args.key_dir, "client-rs256", "RS256"),
            make_key_pair(args.key_dir, "client-es256", "ES256"),
        ]
    )
    # The platform's key stays in the server (the tests never see it).
    platform_key = ECKey.generate_key("P-256", {"kid": "platform-es256", "alg": "ES256"})
    platform_public = KeySet([ECKey.import_key(platform_key.as_dict(private=False))])

    for client in (
        Client("authlib-issuer", [JWT_BEARER], [], issuer_keys),
        Client("authlib-pkjwt-client", ["client_credentials"], [PRIVATE_KEY_JWT], client_keys),
        Client("authlib-workload", ["client_credentials"], [PRIVATE_KEY_JWT], platform_public),
        Client("authlib-device-client", [DEVICE_CODE_GRANT_TYPE, "refresh_token"], ["none"]),
    ):
        CLIENTS[client.client_id] = client

    app = Flask(__name__)
    app.config["OAUTH2_REFRESH_TOKEN_GENERATOR"] = True
    app.config["OAUTH2_TOKEN_EXPIRES_IN"] = {
        "client_credentials": 3600,
        JWT_BEARER: 3600,
        DEVICE_CODE_GRANT_TYPE: 3600,
        "refresh_token": 3600,
    }
    server = AuthorizationServer(app, query_client=CLIENTS.get, save_token=save_token)
    server.register_client_auth_method(PRIVATE_KEY_JWT, AssertionClientAuth())
    server.register_grant(ClientCredentialsGrant)
    server.register_grant(BearerGrant)
    server.register_grant(DeviceGrant)
    server.register_grant(RefreshTokenGrant)
    DeviceEndpoint.INTERVAL = args.device_interval
    DeviceEndpoint.EXPIRES_IN = args.device_lifetime
    server.register_endpoint(DeviceEndpoint)

    @app.post("/token")
    def token():
        return server.create_token_response()

    @app.post("/device_authorization")
    def device_authorization():
        return server.create_endpoint_response(DeviceEndpoint.ENDPOINT_NAME)

    @app.after_request
    def after(response):
        if request.path in ("/token", "/device_authorization"):
            log_entry(response)
        return response

    # --- test-only routes: what a person, a platform or an operator would do ---

    def pending_credential(user_code):
        with LOCK:
            for credential in DEVICE_CODES.values():
                if credential["user_code"] == user_code:
                    return credential
        return None

    def decide(approved):
        user_code = request.values.get("user_code", "")
        if pending_credential(user_code) is None:
            return jsonify(error="unknown user code"), 404
        with LOCK:
            USER_GRANTS[user_code] = (User(request.values.get("user", "alice")), approved)
        return jsonify(ok=True)

    @app.post("/test/device/approve")
    def approve():
        return decide(True)

    @app.post("/test/device/deny")
    def deny():
        return decide(False)

    @app.post("/test/device/expire")
    def expire():
        credential = pending_credential(request.values.get("user_code", ""))
        if credential is None:
            return jsonify(error="unknown user code"), 404
        with LOCK:
            credential["expires_at"] = time.time() - 1
        return jsonify(ok=True)

    @app.post("/test/device/slow-down")
    def slow_down():
        user_code = request.values.get("user_code", "")
        if pending_credential(user_code) is None:
            return jsonify(error="unknown user code"), 404
        with LOCK:
            SLOW_DOWN[user_code] = int(request.values.get("count", "1"))
        return jsonify(ok=True)

    @app.post("/test/platform-token")
    def platform_token():
        now = int(time.time())
        ttl = int(request.values.get("ttl", "600"))
        claims = {
            "iss": request.values.get("iss", "authlib-workload"),
            "sub": request.values.get("sub", "authlib-workload"),
            "aud": request.values.get("aud", TokenEndpoint.url),
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": os.urandom(16).hex(),
        }
        header = {"alg": "ES256", "kid": "platform-es256"}
        return jwt.encode(header, claims, platform_key), 200, {"Content-Type": "text/plain"}

    @app.post("/test/introspect")
    def introspect():
        with LOCK:
            record = TOKENS.get(request.values.get("token", ""))
        if record is None:
            return jsonify(active=False)
        return jsonify(
            active=not record.is_expired(),
            client_id=record.client_id,
            sub=record.user.get_user_id() if record.user else None,
            scope=record.scope,
            grant_type=record.grant_type,
        )

    @app.get("/test/log")
    def get_log():
        with LOCK:
            return jsonify(list(LOG))

    return app


def main():
    args = parse_args()
    app = create_app(args)
    http = make_server("127.0.0.1", args.port, app, threaded=True)
    base = f"http://127.0.0.1:{http.server_port}"
    TokenEndpoint.url = base + "/token"
    print(f"READY {base}", flush=True)
    try:
        http.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
