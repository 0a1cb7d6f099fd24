// A third, independently written authority for tokenkeeper's interoperability
// tests: oidc-provider 9.13.3 (a certified OpenID Provider) with its DPoP
// feature (RFC 9449), demanding a server nonce in every proof, behind Node's
// plain http server on loopback.
//
// Usage: node interop/oidc-dpop.mjs [PORT]
//
// Listens on 127.0.0.1 (PORT, default 0 = any free port), prints exactly one
// line `READY http://127.0.0.1:PORT/token` to stdout once it accepts
// connections, and runs until SIGTERM or SIGINT. Set INTEROP_VERBOSE=1 to log
// each token request to stderr. oidc-provider itself always warns on stderr at
// start: that Node 20 is an "unsupported runtime" (it asks for 22; it works
// on 20.19+), and that its in-memory store is for development only (it is all
// this needs: nothing outlives the process).
//
// What oidc-provider does on its own (for the token endpoint, DPoP on):
// - A request with a `DPoP` header has its proof checked: a JWT of type
//   `dpop+jwt`, signed with ES256, Ed25519 or EdDSA by the public key in its
//   `jwk` header, with a `jti`, `htm` equal to the method, `htu` equal to the
//   token endpoint's URL (query and fragment ignored). Any failure is 400
//   `invalid_dpop_proof`.
// - Nonces (because `nonceSecret` is set): the nonce is derived from the
//   secret and the time in 60 s steps; the one handed out is the next step's,
//   and any of five steps around now is accepted, so a nonce stays good for
//   about four minutes and changes every minute. A proof without a nonce, or
//   with one that is no longer good, gets 400 `use_dpop_nonce` with the nonce
//   to use in a `DPoP-Nonce` header. A success carries `DPoP-Nonce` only when
//   the proof's nonce is not the one it would hand out now. A proof with a
//   nonce is not checked for its `iat` at all (the nonce proves freshness).
// - Replay: a `jti` is remembered per client for five minutes; a second use
//   is 400 `invalid_grant` ("DPoP proof JWT Replay detected"), not
//   `invalid_dpop_proof`.
// - A token issued to a request with a valid proof is bound to the proof's
//   key: `token_type` is "DPoP", and a JWT access token carries
//   `cnf: { "jkt": <RFC 7638 thumbprint> }`. A client registered with
//   `dpop_bound_access_tokens` that sends no proof gets 400 `invalid_grant`
//   ("DPoP proof JWT not provided").
// - client_credentials (a feature, off by default): 200 with `access_token`,
//   `token_type`, `expires_in` and `scope` (the requested scopes the client
//   and the resource server allow).
//
// What the configuration below adds:
// - One client, `interop-dpop-client` with secret `interop-dpop-secret`
//   (client_secret_basic or client_secret_post), allowed only the
//   client_credentials grant and scopes `read` and `write`, registered with
//   `dpop_bound_access_tokens`: it gets DPoP-bound tokens or nothing.
// - Nonces required for every proof (`requireNonce`), with a secret made at
//   start.
// - One resource server, `urn:tokenkeeper:interop`, the default resource of
//   every token request, that takes JWT access tokens signed with ES256 by a
//   key generated at start, living 300 s, with audience
//   `urn:tokenkeeper:interop`, so that a token's claims (client_id, scope,
//   cnf.jkt) can be read by the tests.
// - `GET /interop/token-requests`: a JSON array with one entry per token
//   request so far, in order: `{ "jkt": the thumbprint of the key in its
//   proof's header, or null without a proof, "jti", "nonce": whether the
//   proof carried one, "result": "ok" or the OAuth error code }`. The tests
//   pick their requests by their key's thumbprint (every test uses a key of
//   its own) to count them: what the server saw, not what the client says.
// - Only the token endpoint matters: no interactive login, no other grant.

import { createHash, generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import http from 'node:http';

import { Provider, errors } from 'oidc-provider';

const HOST = '127.0.0.1';
const CLIENT_ID = 'interop-dpop-client';
const CLIENT_SECRET = 'interop-dpop-secret';
const RESOURCE = 'urn:tokenkeeper:interop';
const SCOPES = 'read write';
const ACCESS_TOKEN_SECONDS = 300;
const LOG_PATH = '/interop/token-requests';
// Enough for every test run; older entries are dropped.
const LOG_LIMIT = 10000;

const verbose = process.env.INTEROP_VERBOSE === '1';
const log = (...args) => {
  if (verbose) console.error('[oidc-dpop]', ...args);
};

function parsePort(argv) {
  if (argv.length === 0) return 0;
  if (argv.length === 1 && /^[0-9]+$/.test(argv[0]) && Number(argv[0]) <= 65535) {
    return Number(argv[0]);
  }
  console.error('oidc-dpop.mjs: usage: node oidc-dpop.mjs [PORT]');
  process.exit(2);
}

const port = parsePort(process.argv.slice(2));

// The key that signs access tokens: new on every start.
const signingJwk = {
  ...generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' }),
  alg: 'ES256',
  use: 'sig',
  kid: randomUUID(),
};

/** The plain HTTP server: up first, because the issuer URL needs its port. */
const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, HOST, () => {
    server.off('error', reject);
    resolve();
  });
});
const issuer = `http://${HOST}:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: CLIENT_ID,
      client_secret: CLIENT_SECRET,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      scope: SCOPES,
      token_endpoint_auth_method: 'client_secret_basic',
      dpop_bound_access_tokens: true,
    },
  ],
  clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
  // Its default, RS256, needs an RSA key in the keystore, which has one EC key.
  clientDefaults: { id_token_signed_response_alg: 'ES256' },
  jwks: { keys: [signingJwk] },
  scopes: SCOPES.split(' '),
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    dPoP: {
      enabled: true,
      nonceSecret: randomBytes(32),
      requireNonce: () => true,
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo(_ctx, resourceIndicator) {
        if (resourceIndicator !== RESOURCE) throw new errors.InvalidTarget();
        return {
          scope: SCOPES,
          audience: RESOURCE,
          accessTokenTTL: ACCESS_TOKEN_SECONDS,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        };
      },
    },
  },
});

/** The RFC 7638 thumbprint of an EC or OKP public key (what DPoP binds to). */
function thumbprint(jwk) {
  const members = { EC: ['crv', 'kty', 'x', 'y'], OKP: ['crv', 'kty', 'x'] }[jwk?.kty];
  if (!members) return null;
  const canonical = JSON.stringify(Object.fromEntries(members.map((name) => [name, jwk[name]])));
  return createHash('sha256').update(canonical).digest('base64url');
}

/** What a request's DPoP proof says, read without checking it (for the log). */
function proofOf(ctx) {
  const proof = ctx.get('DPoP');
  const [header, payload] = proof.split('.');
  try {
    const { jwk } = JSON.parse(Buffer.from(header, 'base64url').toString());
    const claims = JSON.parse(Buffer.from(payload, 'base64url').toString());
    return {
      jkt: thumbprint(jwk),
      jti: typeof claims.jti === 'string' ? claims.jti : null,
      nonce: typeof claims.nonce === 'string',
    };
  } catch {
    return { jkt: null, jti: null, nonce: false };
  }
}

// Recorded as the answer is decided, so before it is sent.
const tokenRequests = [];
function record(ctx, result) {
  const entry = { ...proofOf(ctx), result };
  tokenRequests.push(entry);
  if (tokenRequests.length > LOG_LIMIT) tokenRequests.shift();
  log('token request', JSON.stringify(entry));
}

provider.on('grant.success', (ctx) => record(ctx, 'ok'));
provider.on('grant.error', (ctx, error) => {
  // error_detail says why (the description sent is generic for some errors).
  log('failed:', error.error, error.error_detail ?? error.error_description);
  record(ctx, error.error ?? 'server_error');
});

const callback = provider.callback();
server.on('request', (req, res) => {
  if (req.method === 'GET' && req.url === LOG_PATH) {
    const body = JSON.stringify(tokenRequests);
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
    return;
  }
  callback(req, res);
});
process.stdout.write(`READY ${issuer}/token\n`);

let stopping = false;
function stop(signal) {
  if (stopping) return;
  stopping = true;
  log('stopping on', signal);
  // Open keep-alive connections must not keep us alive.
  setTimeout(() => process.exit(0), 2000).unref();
  server.close(() => process.exit(0));
  server.closeIdleConnections();
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
