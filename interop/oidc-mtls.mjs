// A second, independently written authority for tokenkeeper's interoperability
// tests: oidc-provider 9.13.3 (a certified OpenID Provider) behind Node's
// https server, authenticating clients by RFC 8705 mutual TLS.
//
// Usage: node interop/oidc-mtls.mjs --cert SERVER.pem --key SERVER.key
//          --client-ca CLIENT-CA.pem --self-signed-client SELF-SIGNED.pem [PORT]
//
// (interop/certificates.sh makes all four files.) Listens on 127.0.0.1 (PORT,
// default 0 = any free port), prints exactly one line
// `READY https://localhost:PORT/token` to stdout once it accepts connections,
// and runs until SIGTERM or SIGINT. Set INTEROP_VERBOSE=1 to log each token
// request to stderr. oidc-provider itself always warns on stderr at start:
// that Node 20 is an "unsupported runtime" (it asks for 22; it works on
// 20.19+), and that its in-memory store is for development only (it is all
// this needs: nothing outlives the process).
//
// What oidc-provider does on its own (for the token endpoint):
// - It authenticates every client by the one method registered for it
//   (`token_endpoint_auth_method`): a request that tries another method (an
//   HTTP Basic header, say) gets 401 invalid_client, always with the same
//   generic description. With the mTLS methods the client is named by the
//   `client_id` form parameter; a request without one gets 400
//   invalid_request. A `client_secret` form parameter next to an mTLS
//   method is ignored, not refused.
// - With its mTLS feature on, it implements RFC 8705's two methods, but it
//   has no access to the TLS connection: the functions below read the
//   client certificate from the socket and say whether Node verified it.
//   `tls_client_auth` then needs a verified certificate whose subject matches
//   the client's registered `tls_client_auth_subject_dn` (or a SAN);
//   `self_signed_tls_client_auth` needs a certificate whose SHA-256
//   thumbprint is one of the `x5c` certificates in the client's registered
//   JWKS, verified or not.
// - client_credentials (a feature, off by default): 200 with `access_token`,
//   `token_type` "Bearer", `expires_in` and `scope` (the requested scopes
//   that the provider knows and the client and resource server allow; others
//   are dropped silently, and no `scope` member is sent when none is left).
//   Tokens are opaque unless a resource server asks for JWTs; a `resource`
//   it does not know gets 400 invalid_target. With
//   certificate-bound access tokens on and the client registered with
//   `tls_client_certificate_bound_access_tokens`, the token is bound to the
//   client certificate: a JWT access token carries
//   `cnf: { "x5t#S256": base64url(SHA-256(certificate DER)) }`.
// - It answers errors as RFC 6749 §5.2 JSON, sends `Cache-Control: no-store`,
//   and rejects requests that are not form-encoded POSTs.
//
// What the configuration below adds:
// - TLS: Node's https server with the given server certificate, asking every
//   client for a certificate (`requestCert`) and checking it against
//   CLIENT-CA.pem, but not refusing the handshake when there is none or it
//   does not verify (`rejectUnauthorized: false`), so that oidc-provider
//   answers with an OAuth2 error (and self-signed certificates get through).
// - Two clients, allowed only the client_credentials grant and scopes
//   `read` and `write`, both with certificate-bound access tokens:
//   `interop-mtls-client` by tls_client_auth with subject DN
//   `CN=interop-mtls-client` (what certificates.sh puts in client.pem, signed
//   by the client CA), and `interop-self-signed-client` by
//   self_signed_tls_client_auth with SELF-SIGNED.pem in its JWKS. No client
//   secret exists: the token endpoint accepts the two mTLS methods only.
// - One resource server, `urn:tokenkeeper:interop`, the default resource of
//   every token request, that takes JWT access tokens signed with ES256 by a
//   key generated at start, living 300 s, with audience
//   `urn:tokenkeeper:interop`. So a token's claims (client_id, scope, aud,
//   cnf) can be read by the tests.
// - Only the token endpoint matters: no interactive login, no other grant.

import { X509Certificate, generateKeyPairSync, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import https from 'node:https';

import { Provider, errors } from 'oidc-provider';

const HOST = '127.0.0.1';
const MTLS_CLIENT_ID = 'interop-mtls-client';
const SELF_SIGNED_CLIENT_ID = 'interop-self-signed-client';
const RESOURCE = 'urn:tokenkeeper:interop';
const SCOPES = 'read write';
const ACCESS_TOKEN_SECONDS = 300;

const verbose = process.env.INTEROP_VERBOSE === '1';
const log = (...args) => {
  if (verbose) console.error('[oidc-mtls]', ...args);
};

/** The command line: { port, cert, key, clientCa, selfSignedClient }. */
function parseArguments(argv) {
  const names = { '--cert': 'cert', '--key': 'key', '--client-ca': 'clientCa', '--self-signed-client': 'selfSignedClient' };
  const options = { port: 0 };
  const usage = (problem) => {
    console.error(
      `oidc-mtls.mjs: ${problem}\nusage: node oidc-mtls.mjs --cert SERVER.pem --key SERVER.key ` +
        '--client-ca CLIENT-CA.pem --self-signed-client SELF-SIGNED.pem [PORT]',
    );
    process.exit(2);
  };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (arg in names) {
      if (argv[i + 1] === undefined) usage(`${arg} needs a file`);
      options[names[arg]] = argv[i + 1];
      i += 1;
    } else if (/^[0-9]+$/.test(arg) && Number(arg) <= 65535) {
      options.port = Number(arg);
    } else {
      usage(`unexpected argument ${JSON.stringify(arg)}`);
    }
  }
  for (const [flag, name] of Object.entries(names)) {
    if (options[name] === undefined) usage(`${flag} is missing`);
  }
  return options;
}

/**
 * A certificate's subject as an RFC 4514 string (most specific RDN first),
 * which is how RFC 8705 registers `tls_client_auth_subject_dn`. Node lists
 * the subject in certificate order, one `TYPE=value` a line.
 */
function subjectDn(certificate) {
  return certificate.subject.split('\n').reverse().join(',');
}

/** The client certificate of the connection a request came on, if any. */
function peerCertificate(ctx) {
  const socket = ctx.req.socket;
  return typeof socket.getPeerX509Certificate === 'function' ? socket.getPeerX509Certificate() : undefined;
}

const options = parseArguments(process.argv.slice(2));

const selfSignedCertificate = new X509Certificate(readFileSync(options.selfSignedClient));
const selfSignedJwk = {
  ...selfSignedCertificate.publicKey.export({ format: 'jwk' }),
  use: 'sig',
  x5c: [selfSignedCertificate.raw.toString('base64')],
};

// The key that signs access tokens: new on every start.
const signingJwk = {
  ...generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' }),
  alg: 'ES256',
  use: 'sig',
  kid: randomUUID(),
};

const clientDefaults = {
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  scope: SCOPES,
  tls_client_certificate_bound_access_tokens: true,
};

/** The TLS server: up first, because the issuer URL needs its port. */
const server = https.createServer({
  cert: readFileSync(options.cert),
  key: readFileSync(options.key),
  ca: readFileSync(options.clientCa),
  requestCert: true,
  rejectUnauthorized: false,
  minVersion: 'TLSv1.2',
});
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(options.port, HOST, () => {
    server.off('error', reject);
    resolve();
  });
});
const { port } = server.address();
const issuer = `https://localhost:${port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      ...clientDefaults,
      client_id: MTLS_CLIENT_ID,
      token_endpoint_auth_method: 'tls_client_auth',
      tls_client_auth_subject_dn: `CN=${MTLS_CLIENT_ID}`,
    },
    {
      ...clientDefaults,
      client_id: SELF_SIGNED_CLIENT_ID,
      token_endpoint_auth_method: 'self_signed_tls_client_auth',
      jwks: { keys: [selfSignedJwk] },
    },
  ],
  clientAuthMethods: ['tls_client_auth', 'self_signed_tls_client_auth'],
  // Its default, RS256, needs an RSA key in the keystore, which has one EC key.
  clientDefaults: { id_token_signed_response_alg: 'ES256' },
  jwks: { keys: [signingJwk] },
  scopes: SCOPES.split(' '),
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    mTLS: {
      enabled: true,
      certificateBoundAccessTokens: true,
      tlsClientAuth: true,
      selfSignedTlsClientAuth: true,
      getCertificate(ctx) {
        const certificate = peerCertificate(ctx);
        return certificate instanceof X509Certificate ? certificate : undefined;
      },
      certificateAuthorized(ctx) {
        // Node checked the chain against CLIENT-CA.pem during the handshake.
        return ctx.req.socket.authorized === true;
      },
      certificateSubjectMatches(ctx, property, expected) {
        const certificate = peerCertificate(ctx);
        if (!certificate) return false;
        switch (property) {
          case 'tls_client_auth_subject_dn':
            return subjectDn(certificate) === expected;
          default:
            // Only the subject DN is registered here.
            return false;
        }
      },
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

provider.on('grant.success', (ctx) => {
  log('token for', ctx.oidc.client?.clientId, 'by', ctx.oidc.client?.clientAuthMethod, 'ok');
});
provider.on('grant.error', (ctx, error) => {
  // error_detail says why (the description sent is generic for invalid_client).
  log('token for', ctx.oidc.params?.client_id, 'failed:', error.error, error.error_detail ?? error.error_description);
});

server.on('request', provider.callback());
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
