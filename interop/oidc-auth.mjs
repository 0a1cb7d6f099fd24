// oidc-provider 9.13.3 (a certified OpenID Provider) for issue 12's
// interoperability tests: client authentication by signed JWT, the device
// authorization grant, discovery and token exchange, over plain HTTP on
// loopback (which oidc-provider and tokenkeeper both allow).
//
// Usage: node interop/oidc-auth.mjs --key-dir DIR [PORT]
//
// Listens on 127.0.0.1 (PORT, default 0 = any free port), writes the private
// keys the tests sign with into DIR (made if missing; files mode 0600, new on
// every start), prints exactly one line `READY http://127.0.0.1:PORT` (the
// issuer) to stdout once it accepts connections, and runs until SIGTERM or
// SIGINT. Set INTEROP_VERBOSE=1 to log each request it answers to stderr (never
// a secret). oidc-provider warns on stderr at start (an "unsupported runtime"
// on Node 20, which works on 20.19+; the in-memory store, which is all this
// needs).
//
// The files written into DIR (PKCS#8 PEM):
//   rs256-client.pem  the RSA key of interop-rs256-client (kid interop-rs256)
//   es256-client.pem  the P-256 key of interop-es256-client (kid interop-es256)
//   platform.pem      the P-256 key of a "platform" (think: a cluster's
//                     service-account issuer) whose JWTs token exchange takes
//                     as subject or actor tokens
//
// The clients (all allowed scopes `read` and `write`):
// - interop-rs256-client, private_key_jwt, RS256 key registered as a JWK;
// - interop-es256-client, private_key_jwt, ES256 key registered as a JWK;
// - interop-hs256-client, client_secret_jwt (HS256) with secret
//   HS256_SECRET below;
//   each allowed client_credentials. oidc-provider checks an assertion's
//   `alg` against the algorithms allowed, `exp`, `jti` (single use: a replay
//   is refused until the assertion expires), `iss` = the client id, `aud` =
//   the issuer or the token endpoint's URL, and the signature against the
//   client's registered keys (or secret).
// - interop-device-client: public (no secret, `none`), allowed the device
//   code grant and refresh_token; asking for `offline_access` gets a refresh
//   token. Its device codes live DEVICE_CODE_SECONDS; those of
//   interop-device-expiring-client (the same otherwise) live 3 s.
// - interop-exchange-client, client_secret_basic with EXCHANGE_SECRET,
//   allowed client_credentials and token exchange; it may revoke its tokens
//   (RFC 7009, ISSUER/token/revocation).
//
// Discovery: oidc-provider's own /.well-known/openid-configuration, with the
// issuer above, token_endpoint ISSUER/token, device_authorization_endpoint
// ISSUER/device/auth, and the grant types including token exchange.
//
// Device authorization grant (RFC 8628), what this script adds to what
// oidc-provider does:
// - the device authorization answer carries `interval` (DEVICE_INTERVAL s;
//   oidc-provider sends none, which means 5 s);
// - a poll that comes sooner than the device code's interval after the one
//   before (less POLL_TOLERANCE_MS of slack) is answered `slow_down` instead of
//   `authorization_pending`, and the code's interval grows by 5 s (§3.5);
// - TEST-ONLY routes that act as the person at the browser, against the
//   provider's own store (POST, the user code in the query string, with or
//   without its dash):
//     POST /test/device/approve?user_code=CODE[&account=ID]
//          an account (default "alice") grants the client the scopes asked
//          for: a Grant is saved and the device code bound to it, as
//          oidc-provider's own confirmation page does;
//     POST /test/device/deny?user_code=CODE
//          the person refuses: the next poll gets `access_denied`;
//     POST /test/device/slow-down?user_code=CODE
//          the next pending poll gets `slow_down` whatever its timing.
//   Each answers 204, 404 for an unknown or expired code, 409 for a code
//   already approved or denied.
//
// Token exchange (RFC 8693; oidc-provider does not ship it, so a grant
// handler is registered here) for interop-exchange-client:
// - subject_token (required) with subject_token_type (required), and an
//   optional actor_token with actor_token_type (required with it). Accepted
//   types: `urn:ietf:params:oauth:token-type:access_token` (an access token
//   this provider issued by client_credentials or the device grant and that
//   has not expired, or a token this handler issued) and
//   `urn:ietf:params:oauth:token-type:jwt` (a JWT signed with ES256 by the
//   platform key, `iss` PLATFORM_ISSUER, `aud` containing this issuer, `sub`,
//   `exp` in the future). A token that fails is `invalid_grant`; a type this
//   handler does not take, or a missing parameter, is `invalid_request`.
// - requested_token_type: `...:access_token` (default; `token_type` Bearer)
//   or `...:jwt` (`token_type` N_A, RFC 8693 §2.2.1); any other is
//   `invalid_request`. The answer carries `issued_token_type`.
// - audience (repeatable): each must start with `urn:tokenkeeper:`;
//   resource (repeatable): each an absolute `https:` or `urn:tokenkeeper:`
//   URI; anything else is `invalid_target`. scope: `read` and/or `write`,
//   else `invalid_scope` (default: none).
// - The issued token is a JWT signed with ES256 by a key made at start,
//   living EXCHANGE_SECONDS, with `iss` this issuer, `sub` the subject's,
//   `aud` the audiences and resources (or the client id when neither is
//   given), `client_id`, `scope`, and `act: { sub }` for an actor.
//
// Request log: `GET /interop/requests` is a JSON array with one entry per
// request to the token and device authorization endpoints and for the
// discovery document, in order:
//   { "at": ms since the epoch the request arrived, "endpoint": "token",
//     "device_authorization" or "discovery", "grant_type", "client_id", "auth_method" (as
//     oidc-provider authenticated it), "assertion": null or the client
//     assertion's { alg, kid, iss, sub, aud, lifetime (exp - iat), jti },
//     "device_code": a short digest of the device code (never the code),
//     "scope", "subject_token_type", "actor_token_type", "subject_digest"
//     (the first 16 characters of the base64url SHA-256 of the subject token,
//     to tell which token was sent without showing it), "subject" (the
//     subject token's sub once verified), "actor", "requested_token_type",
//     "audience", "resource" (arrays), "issued_token_type",
//     "result": "ok" or the OAuth error code }.

import {
  createHash,
  createPublicKey,
  generateKeyPairSync,
  randomUUID,
  sign,
  verify,
} from 'node:crypto';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';

import { Provider, errors } from 'oidc-provider';

const HOST = '127.0.0.1';
const SCOPES = 'read write';
const HS256_SECRET = 'interop-hs256-secret-that-is-long-enough-for-hs256';
const EXCHANGE_SECRET = 'interop-exchange-secret';
const PLATFORM_ISSUER = 'urn:tokenkeeper:interop-platform';
const ACCESS_TOKEN_SECONDS = 300;
const EXCHANGE_SECONDS = 300;
const DEVICE_CODE_SECONDS = 120;
const EXPIRING_DEVICE_CODE_SECONDS = 3;
const DEVICE_INTERVAL = 1;
const POLL_TOLERANCE_MS = 250;
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const DEVICE_CODE = 'urn:ietf:params:oauth:grant-type:device_code';
const TYPE = {
  accessToken: 'urn:ietf:params:oauth:token-type:access_token',
  jwt: 'urn:ietf:params:oauth:token-type:jwt',
};
const LOG_PATH = '/interop/requests';
// Enough for every test run; older entries are dropped.
const LOG_LIMIT = 10000;

const verbose = process.env.INTEROP_VERBOSE === '1';
const log = (...args) => {
  if (verbose) console.error('[oidc-auth]', ...args);
};

function parseArguments(argv) {
  const usage = (problem) => {
    console.error(`oidc-auth.mjs: ${problem}\nusage: node oidc-auth.mjs --key-dir DIR [PORT]`);
    process.exit(2);
  };
  const options = { port: 0, keyDir: undefined };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (arg === '--key-dir') {
      if (argv[i + 1] === undefined) usage('--key-dir needs a folder');
      options.keyDir = argv[i + 1];
      i += 1;
    } else if (/^[0-9]+$/.test(arg) && Number(arg) <= 65535) {
      options.port = Number(arg);
    } else {
      usage(`unexpected argument ${JSON.stringify(arg)}`);
    }
  }
  if (options.keyDir === undefined) usage('--key-dir is missing');
  return options;
}

const options = parseArguments(process.argv.slice(2));

/** A new key pair; its private half written to KEY_DIR/NAME as PKCS#8 PEM. */
function clientKey(name, type, parameters, alg, kid) {
  const { privateKey, publicKey } = generateKeyPairSync(type, parameters);
  const file = path.join(options.keyDir, name);
  writeFileSync(file, privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
  chmodSync(file, 0o600);
  return { privateKey, publicJwk: { ...publicKey.export({ format: 'jwk' }), alg, use: 'sig', kid } };
}

mkdirSync(options.keyDir, { recursive: true });
const rs256 = clientKey('rs256-client.pem', 'rsa', { modulusLength: 2048 }, 'RS256', 'interop-rs256');
const es256 = clientKey('es256-client.pem', 'ec', { namedCurve: 'P-256' }, 'ES256', 'interop-es256');
const platform = clientKey('platform.pem', 'ec', { namedCurve: 'P-256' }, 'ES256', 'interop-platform');

// The provider's own signing key (ID tokens), and the key that signs the
// tokens token exchange issues: new on every start.
const signingJwk = {
  ...generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' }),
  alg: 'ES256',
  use: 'sig',
  kid: randomUUID(),
};
const exchangeKey = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const exchangeKid = randomUUID();

/** The plain HTTP server: up first, because the issuer URL needs its port. */
const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(options.port, HOST, () => {
    server.off('error', reject);
    resolve();
  });
});
const issuer = `http://${HOST}:${server.address().port}`;

const clientCredentialsClient = {
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  scope: SCOPES,
};
const deviceClient = {
  grant_types: [DEVICE_CODE, 'refresh_token'],
  response_types: [],
  redirect_uris: [],
  scope: `${SCOPES} offline_access`,
  token_endpoint_auth_method: 'none',
};

const provider = new Provider(issuer, {
  clients: [
    {
      ...clientCredentialsClient,
      client_id: 'interop-rs256-client',
      token_endpoint_auth_method: 'private_key_jwt',
      jwks: { keys: [rs256.publicJwk] },
    },
    {
      ...clientCredentialsClient,
      client_id: 'interop-es256-client',
      token_endpoint_auth_method: 'private_key_jwt',
      jwks: { keys: [es256.publicJwk] },
    },
    {
      ...clientCredentialsClient,
      client_id: 'interop-hs256-client',
      client_secret: HS256_SECRET,
      token_endpoint_auth_method: 'client_secret_jwt',
      token_endpoint_auth_signing_alg: 'HS256',
    },
    { ...deviceClient, client_id: 'interop-device-client' },
    { ...deviceClient, client_id: 'interop-device-expiring-client' },
    {
      ...clientCredentialsClient,
      client_id: 'interop-exchange-client',
      client_secret: EXCHANGE_SECRET,
      grant_types: ['client_credentials', TOKEN_EXCHANGE],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  clientAuthMethods: ['private_key_jwt', 'client_secret_jwt', 'client_secret_basic', 'client_secret_post', 'none'],
  // Its default, RS256, needs an RSA key in the keystore, which has one EC key.
  clientDefaults: { id_token_signed_response_alg: 'ES256' },
  jwks: { keys: [signingJwk] },
  scopes: [...SCOPES.split(' '), 'offline_access'],
  // Any account id names an account: the test routes decide who approves.
  findAccount: (_ctx, accountId) => ({ accountId, claims: () => ({ sub: accountId }) }),
  ttl: {
    AccessToken: ACCESS_TOKEN_SECONDS,
    ClientCredentials: ACCESS_TOKEN_SECONDS,
    RefreshToken: 24 * 3600,
    Grant: 24 * 3600,
    DeviceCode: (_ctx, _code, client) =>
      client.clientId === 'interop-device-expiring-client' ? EXPIRING_DEVICE_CODE_SECONDS : DEVICE_CODE_SECONDS,
  },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    deviceFlow: { enabled: true },
    // POST ISSUER/token/revocation (RFC 7009): a test revokes the token a
    // chain's exchange presents.
    revocation: { enabled: true },
  },
});

// --- token exchange ---------------------------------------------------------------

const b64 = (value) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');

/** A compact JWS (ES256) of CLAIMS, by node:crypto. */
function signJwt(claims, privateKey, kid) {
  const input = `${b64({ alg: 'ES256', typ: 'JWT', kid })}.${b64(claims)}`;
  const signature = sign('sha256', Buffer.from(input), { key: privateKey, dsaEncoding: 'ieee-p1363' });
  return `${input}.${signature.toString('base64url')}`;
}

/** The claims of an ES256 JWT signed by PUBLIC_KEY, or undefined. */
function verifiedClaims(token, publicKey) {
  const parts = token.split('.');
  if (parts.length !== 3) return undefined;
  try {
    const header = JSON.parse(Buffer.from(parts[0], 'base64url').toString());
    if (header.alg !== 'ES256') return undefined;
    const ok = verify(
      'sha256',
      Buffer.from(`${parts[0]}.${parts[1]}`),
      { key: publicKey, dsaEncoding: 'ieee-p1363' },
      Buffer.from(parts[2], 'base64url'),
    );
    if (!ok) return undefined;
    const claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString());
    return claims !== null && typeof claims === 'object' ? claims : undefined;
  } catch {
    return undefined;
  }
}

const platformPublic = createPublicKey(platform.privateKey);
const exchangePublic = createPublicKey(exchangeKey.privateKey);
const now = () => Math.floor(Date.now() / 1000);

/** Who a subject or actor token speaks for, or an OAuth error thrown. */
async function subjectOf(token, type, what) {
  if (typeof token !== 'string' || token === '') throw new errors.InvalidRequest(`${what} missing`);
  if (typeof type !== 'string' || type === '') throw new errors.InvalidRequest(`${what}_type missing`);
  if (type === TYPE.accessToken) {
    const stored = (await provider.ClientCredentials.find(token)) ?? (await provider.AccessToken.find(token));
    if (stored) return stored.accountId ?? stored.clientId;
    const exchanged = verifiedClaims(token, exchangePublic);
    if (exchanged && exchanged.iss === issuer && exchanged.exp > now()) return exchanged.sub;
    throw new errors.InvalidGrant(`${what} is not an active access token of this issuer`);
  }
  if (type === TYPE.jwt) {
    const claims = verifiedClaims(token, platformPublic);
    if (!claims) throw new errors.InvalidGrant(`${what} is not a JWT signed by the platform`);
    const audiences = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
    if (claims.iss !== PLATFORM_ISSUER) throw new errors.InvalidGrant(`${what} has the wrong iss`);
    if (!audiences.includes(issuer)) throw new errors.InvalidGrant(`${what} is not meant for this issuer`);
    if (typeof claims.exp !== 'number' || claims.exp <= now()) throw new errors.InvalidGrant(`${what} has expired`);
    if (typeof claims.sub !== 'string' || claims.sub === '') throw new errors.InvalidGrant(`${what} has no sub`);
    return claims.sub;
  }
  throw new errors.InvalidRequest(`unsupported ${what}_type`);
}

/** A parameter that may repeat, as an array (oidc-provider keeps repeats as arrays). */
const many = (value) => (value === undefined ? [] : Array.isArray(value) ? value : [value]);

async function tokenExchange(ctx) {
  const { params, client } = ctx.oidc;
  const subject = await subjectOf(params.subject_token, params.subject_token_type, 'subject_token');
  ctx.oidc.interopSubject = subject;
  let actor;
  if (params.actor_token !== undefined || params.actor_token_type !== undefined) {
    actor = await subjectOf(params.actor_token, params.actor_token_type, 'actor_token');
    ctx.oidc.interopActor = actor;
  }
  const requested = params.requested_token_type ?? TYPE.accessToken;
  if (requested !== TYPE.accessToken && requested !== TYPE.jwt) {
    throw new errors.InvalidRequest('unsupported requested_token_type');
  }
  const audience = many(params.audience);
  const resource = many(params.resource);
  if (!audience.every((a) => a.startsWith('urn:tokenkeeper:'))) {
    throw new errors.InvalidTarget('audience not accepted');
  }
  if (!resource.every((r) => /^https:\/\/[^/]/.test(r) || r.startsWith('urn:tokenkeeper:'))) {
    throw new errors.InvalidTarget('resource not accepted');
  }
  const scopes = params.scope ? params.scope.split(' ') : [];
  if (!scopes.every((s) => SCOPES.split(' ').includes(s))) throw new errors.InvalidScope('scope not allowed');
  const aud = [...audience, ...resource];
  const iat = now();
  const claims = {
    iss: issuer,
    sub: subject,
    aud: aud.length === 0 ? client.clientId : aud.length === 1 ? aud[0] : aud,
    client_id: client.clientId,
    iat,
    exp: iat + EXCHANGE_SECONDS,
    jti: randomUUID(),
    ...(scopes.length > 0 ? { scope: scopes.join(' ') } : {}),
    ...(actor !== undefined ? { act: { sub: actor } } : {}),
  };
  ctx.oidc.interopIssuedType = requested;
  ctx.body = {
    access_token: signJwt(claims, exchangeKey.privateKey, exchangeKid),
    issued_token_type: requested,
    token_type: requested === TYPE.accessToken ? 'Bearer' : 'N_A',
    expires_in: EXCHANGE_SECONDS,
    ...(scopes.length > 0 ? { scope: scopes.join(' ') } : {}),
  };
}

provider.registerGrantType(
  TOKEN_EXCHANGE,
  tokenExchange,
  [
    'subject_token',
    'subject_token_type',
    'actor_token',
    'actor_token_type',
    'requested_token_type',
    'audience',
    'resource',
    'scope',
  ],
  ['audience', 'resource'],
);

// --- the device flow: interval, slow_down, the person -----------------------------------

/** What this script remembers of each device code, by its value. */
const polls = new Map();
const deviceState = (deviceCode) => {
  let state = polls.get(deviceCode);
  if (!state) {
    state = { interval: DEVICE_INTERVAL, last: undefined, forceSlowDown: false };
    polls.set(deviceCode, state);
  }
  return state;
};

provider.on('device_authorization.success', (_ctx, body) => {
  body.interval = DEVICE_INTERVAL;
});

/** Reads the user code of a test route's query, normalized as oidc-provider stores it. */
function userCodeOf(url) {
  const code = url.searchParams.get('user_code') ?? '';
  return code.toUpperCase().replace(/[^A-Z0-9]/g, '');
}

async function personActs(action, url) {
  const code = await provider.DeviceCode.findByUserCode(userCodeOf(url), { ignoreExpiration: true });
  if (!code || code.isExpired) return 404;
  if (action === 'slow-down') {
    deviceState(code.jti).forceSlowDown = true;
    return 204;
  }
  if (code.accountId || code.error) return 409;
  if (action === 'deny') {
    Object.assign(code, { error: 'access_denied', errorDescription: 'the person refused' });
  } else {
    const accountId = url.searchParams.get('account') || 'alice';
    const scope = code.params.scope ?? '';
    const grant = new provider.Grant({ accountId, clientId: code.clientId });
    if (scope) grant.addOIDCScope(scope);
    const grantId = await grant.save();
    Object.assign(code, { accountId, grantId, scope, authTime: now() });
  }
  await code.save();
  return 204;
}

// --- the request log, and slow_down --------------------------------------------------

const requests = [];
const digest = (value, length = 12) => createHash('sha256').update(value).digest('base64url').slice(0, length);

/** What a client assertion claims, read without checking it (for the log). */
function assertionOf(params) {
  if (typeof params?.client_assertion !== 'string') return null;
  try {
    const [header, payload] = params.client_assertion.split('.');
    const { alg, kid } = JSON.parse(Buffer.from(header, 'base64url').toString());
    const { iss, sub, aud, iat, exp, jti } = JSON.parse(Buffer.from(payload, 'base64url').toString());
    return { alg, kid: kid ?? null, iss, sub, aud, lifetime: exp - iat, jti };
  } catch {
    return { alg: null };
  }
}

provider.use(async (ctx, next) => {
  const at = Date.now();
  await next();
  const route = ctx.oidc?.route;
  if (route !== 'token' && route !== 'device_authorization' && route !== 'discovery') return;
  const params = ctx.oidc.params ?? {};
  const error = ctx.status >= 400 && typeof ctx.body?.error === 'string' ? ctx.body.error : undefined;

  if (route === 'token' && params.grant_type === DEVICE_CODE && typeof params.device_code === 'string') {
    const state = deviceState(params.device_code);
    if (error === 'authorization_pending') {
      const early = state.last !== undefined && at - state.last < state.interval * 1000 - POLL_TOLERANCE_MS;
      if (early || state.forceSlowDown) {
        state.forceSlowDown = false;
        state.interval += 5;
        ctx.body = { error: 'slow_down', error_description: `poll at most every ${state.interval} s` };
      }
    }
    state.last = at;
  }

  const result = ctx.status >= 400 ? (ctx.body?.error ?? 'server_error') : 'ok';
  const entry = {
    at,
    endpoint: route,
    grant_type: params.grant_type ?? null,
    client_id: ctx.oidc.client?.clientId ?? params.client_id ?? null,
    auth_method: ctx.oidc.client?.clientAuthMethod ?? null,
    assertion: assertionOf(params),
    device_code: typeof params.device_code === 'string' ? digest(params.device_code) : null,
    scope: params.scope ?? null,
    subject_token_type: params.subject_token_type ?? null,
    subject_digest: typeof params.subject_token === 'string' ? digest(params.subject_token, 16) : null,
    actor_token_type: params.actor_token_type ?? null,
    subject: ctx.oidc.interopSubject ?? null,
    actor: ctx.oidc.interopActor ?? null,
    requested_token_type: params.requested_token_type ?? null,
    audience: many(params.audience),
    resource: many(params.resource),
    issued_token_type: ctx.oidc.interopIssuedType ?? null,
    result,
  };
  requests.push(entry);
  if (requests.length > LOG_LIMIT) requests.shift();
  log('request', JSON.stringify(entry));
});

// --- the server ------------------------------------------------------------------------

function answer(res, status, body) {
  if (body === undefined) {
    res.writeHead(status, { 'content-length': 0 });
    res.end();
    return;
  }
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

const callback = provider.callback();
server.on('request', (req, res) => {
  const url = new URL(req.url, issuer);
  if (req.method === 'GET' && url.pathname === LOG_PATH) {
    answer(res, 200, requests);
    return;
  }
  const action = /^\/test\/device\/(approve|deny|slow-down)$/.exec(url.pathname)?.[1];
  if (action !== undefined) {
    if (req.method !== 'POST') {
      answer(res, 405, { error: 'POST only' });
      return;
    }
    req.resume();
    personActs(action, url).then(
      (status) => {
        log('person:', action, status);
        answer(res, status);
      },
      (error) => {
        console.error('oidc-auth.mjs: the test route failed:', error);
        answer(res, 500, { error: 'server_error' });
      },
    );
    return;
  }
  callback(req, res);
});
process.stdout.write(`READY ${issuer}\n`);

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
