// A third-party OAuth2 authority for tokenkeeper's interoperability tests.
//
// Usage: node interop/authority.mjs [--cert CERT.pem --key KEY.pem] [PORT]
//
// Listens on 127.0.0.1 (PORT, default 0 = any free port), prints exactly one
// line `READY http://127.0.0.1:PORT/token` to stdout once it accepts
// connections, and runs until SIGTERM or SIGINT. Set INTEROP_VERBOSE=1 to log
// each token request to stderr.
//
// With --cert and --key (PEM files; interop/certificates.sh makes a pair for
// `localhost` and 127.0.0.1) it serves HTTPS instead, with oauth2-mock-server's
// own TLS support (Node's https server with that certificate, TLS 1.2 and
// 1.3, no client certificate asked for), and the line reads
// `READY https://localhost:PORT/token`: a name, so that clients check the
// certificate's DNS name. It still listens on 127.0.0.1 only; `localhost`
// resolves there (a client that tries ::1 first finds it closed and moves on).
// Everything below is the same over HTTPS.
//
// What oauth2-mock-server 8.2.3 does on its own (POST /token):
// - It performs NO client authentication: any client id and secret, sent with
//   HTTP Basic or in the form body, or none at all, are accepted.
// - client_credentials: 200 with a signed JWT `access_token`, `token_type`
//   "Bearer", `expires_in` 3600 (a fixed number), `scope` echoed when sent,
//   and no refresh token. The JWT carries `scope` and `aud` (from an `aud`
//   form parameter; `audience` and `resource` are ignored).
// - refresh_token: accepts any `refresh_token` value, even one it never
//   issued, and answers like client_credentials plus an `id_token` and a new
//   random `refresh_token` on every response (so it rotates natively), with
//   `scope` defaulting to "dummy".
// - An unknown grant_type gets 400 {"error":"invalid_grant"} (the RFC says
//   unsupported_grant_type; that answer is sent before any hook runs, so it
//   stays as the library makes it). A body without grant_type gets 400
//   {"error":"invalid_request","error_description":...}.
// - Responses carry `Cache-Control: no-store` and `Pragma: no-cache`.
//
// What the hooks below add:
// - Client authentication (RFC 6749 §2.3.1) for every grant: exactly client
//   `interop-client` with secret `interop-secret`, by client_secret_basic
//   (id and secret form-urlencoded, then base64) or client_secret_post.
//   Wrong or missing credentials get 401 {"error":"invalid_client"} (with a
//   `WWW-Authenticate: Basic` header when Basic was tried); using both methods
//   at once gets 400 invalid_request.
// - Refresh tokens are single-use: a refresh_token grant must present a
//   refresh token this authority issued and that was not used yet, or a
//   never-used token starting with `interop-seed-` (how a test starts a
//   chain; pick a unique one per test). Anything else gets 400
//   {"error":"invalid_grant"}. Every successful refresh returns a new
//   refresh token, so a client that keeps using an old one fails.
// - A form parameter `interop_expires_in=N` (1..86400) sets `expires_in` and
//   the JWT's `exp` to N seconds, so tests can ask for short-lived tokens
//   through tokenkeeper's extra parameters.

import { OAuth2Server } from 'oauth2-mock-server';

const CLIENT_ID = 'interop-client';
const CLIENT_SECRET = 'interop-secret';
const SEED_PREFIX = 'interop-seed-';
const HOST = '127.0.0.1';
const TOKEN_PATH = '/token';
const MAX_EXPIRES_IN = 86400;

const verbose = process.env.INTEROP_VERBOSE === '1';
const log = (...args) => {
  if (verbose) console.error('[authority]', ...args);
};

/** Refresh tokens issued and not used yet. */
const liveRefreshTokens = new Set();
/** Refresh tokens already presented once (seeds included). */
const usedRefreshTokens = new Set();

/** Decodes application/x-www-form-urlencoded text; null when malformed. */
function formDecode(text) {
  try {
    return decodeURIComponent(text.replace(/\+/g, ' '));
  } catch {
    return null;
  }
}

/**
 * The client credentials a request presents:
 * { method: 'basic' | 'post' | 'none' | 'both', id, secret }.
 */
function presentedClient(req) {
  const body = req.body ?? {};
  const header = req.headers.authorization;
  let basic = null;
  if (typeof header === 'string' && /^basic /i.test(header)) {
    const decoded = Buffer.from(header.slice(6).trim(), 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    basic =
      colon < 0
        ? { id: null, secret: null }
        : { id: formDecode(decoded.slice(0, colon)), secret: formDecode(decoded.slice(colon + 1)) };
  }
  const inBody = typeof body.client_secret === 'string';
  if (basic && inBody) return { method: 'both' };
  if (basic) return { method: 'basic', ...basic };
  if (inBody) return { method: 'post', id: body.client_id, secret: body.client_secret };
  return { method: 'none' };
}

/** Replaces the pending response with an RFC 6749 §5.2 error. */
function fail(response, status, error, description) {
  response.statusCode = status;
  response.body = description ? { error, error_description: description } : { error };
}

/** Parses `interop_expires_in`; undefined when absent or out of range. */
function requestedLifetime(req) {
  const raw = req.body?.interop_expires_in;
  if (typeof raw !== 'string' || !/^[0-9]+$/.test(raw)) return undefined;
  const seconds = Number(raw);
  return seconds >= 1 && seconds <= MAX_EXPIRES_IN ? seconds : undefined;
}

/** The command line: { port, cert, key }; exits with a message when wrong. */
function parseArguments(argv) {
  const options = { port: 0, cert: undefined, key: undefined };
  const usage = (problem) => {
    console.error(`authority.mjs: ${problem}\nusage: node authority.mjs [--cert CERT.pem --key KEY.pem] [PORT]`);
    process.exit(2);
  };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (arg === '--cert' || arg === '--key') {
      const value = argv[i + 1];
      if (value === undefined) usage(`${arg} needs a file`);
      options[arg.slice(2)] = value;
      i += 1;
    } else if (/^[0-9]+$/.test(arg) && Number(arg) <= 65535) {
      options.port = Number(arg);
    } else {
      usage(`unexpected argument ${JSON.stringify(arg)}`);
    }
  }
  if ((options.cert === undefined) !== (options.key === undefined)) {
    usage('--cert and --key go together');
  }
  return options;
}

const options = parseArguments(process.argv.slice(2));
const tls = options.cert !== undefined;
// oauth2-mock-server takes the key first, then the certificate (file paths).
const server = tls ? new OAuth2Server(options.key, options.cert) : new OAuth2Server();
await server.issuer.keys.generate('RS256');

server.service.on('beforeTokenSigning', (token, req) => {
  const seconds = requestedLifetime(req);
  if (seconds !== undefined) {
    token.payload.exp = Math.floor(Date.now() / 1000) + seconds;
  }
});

server.service.on('beforeResponse', (response, req) => {
  const body = req.body ?? {};
  const grant = body.grant_type;

  const client = presentedClient(req);
  if (client.method === 'both') {
    fail(response, 400, 'invalid_request', 'more than one client authentication method');
  } else if (client.method === 'none' || client.id !== CLIENT_ID || client.secret !== CLIENT_SECRET) {
    fail(response, 401, 'invalid_client');
    if (client.method === 'basic') {
      req.res?.set('WWW-Authenticate', 'Basic realm="interop"');
    }
  } else if (grant === 'refresh_token') {
    const presented = body.refresh_token;
    if (typeof presented !== 'string' || presented === '') {
      fail(response, 400, 'invalid_request', 'refresh_token is missing');
    } else if (
      liveRefreshTokens.has(presented) ||
      (presented.startsWith(SEED_PREFIX) && !usedRefreshTokens.has(presented))
    ) {
      liveRefreshTokens.delete(presented);
      usedRefreshTokens.add(presented);
    } else {
      fail(response, 400, 'invalid_grant', 'refresh token unknown or already used');
    }
  }

  if (response.statusCode === 200) {
    const seconds = requestedLifetime(req);
    if (seconds !== undefined) response.body.expires_in = seconds;
    if (typeof response.body.refresh_token === 'string') {
      liveRefreshTokens.add(response.body.refresh_token);
    }
  }
  log(grant, client.method, response.statusCode, response.body.error ?? 'ok');
});

await server.start(options.port, HOST);
const { port } = server.address();
const origin = tls ? `https://localhost:${port}` : `http://${HOST}:${port}`;
process.stdout.write(`READY ${origin}${TOKEN_PATH}\n`);

let stopping = false;
async function stop(signal) {
  if (stopping) return;
  stopping = true;
  log('stopping on', signal);
  // Open keep-alive connections must not keep us alive.
  setTimeout(() => process.exit(0), 2000).unref();
  try {
    await server.stop();
  } finally {
    process.exit(0);
  }
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
