// The authorization server: oidc-provider (OpenID-certified, not written by us), configured
// strictly, over HTTPS with the test PKI.
//
// What it checks, and why: every token request the proxy makes is judged by an independent
// implementation of RFC 6749 (client credentials, refresh), RFC 7523 (client_secret_jwt,
// private_key_jwt), RFC 8705 (tls_client_auth, certificate-bound tokens), RFC 9449 (DPoP with a
// required server nonce), RFC 8707 (resource indicators) and, through a registered grant handler,
// RFC 8693 (token exchange). Access tokens are RFC 9068 JWTs (typ at+jwt, ES256).
//
// One client per authentication method, plus dpop (private_key_jwt + DPoP) / exchange / refresh clients. The refresh
// client's refresh token is seeded programmatically (a Grant for account "carol" plus a
// RefreshToken bound to it); refresh tokens always rotate, and oidc-provider's own reuse
// detection (a rotated token presented again is invalid_grant and revokes the grant) is kept.
//
// Control endpoints (no auth): GET /_control/token-requests (what came to /token, without any
// secret, assertion or token), POST /_control/reset.

import * as crypto from 'node:crypto';
import * as path from 'node:path';

import Provider, { errors } from 'oidc-provider';

import {
  RESOURCE, RESOURCE_SCOPES, generateSigningKey, listenHttps, log, randomSecret, writePrivateFile,
} from './common.mjs';
import {
  DUPLICATES_ALLOWED, PARAMETERS, SUBJECTS, TOKEN_EXCHANGE, mintSubjectToken, tokenExchangeHandler,
} from './token-exchange.mjs';

const TOKEN_TTL = 300;
const REFRESH_ACCOUNT = 'carol';

// The one resource server the AS knows (features.resourceIndicators.getResourceServerInfo).
export const RESOURCE_SERVER_INFO = Object.freeze({
  scope: RESOURCE_SCOPES,
  audience: RESOURCE,
  accessTokenFormat: 'jwt',
  accessTokenTTL: TOKEN_TTL,
  jwt: { sign: { alg: 'ES256' } },
});

/** The client's id from the authenticated client, the body, a Basic header or an assertion. */
function requestClientId(ctx) {
  if (ctx.oidc?.client?.clientId) return ctx.oidc.client.clientId;
  const params = ctx.oidc?.params || ctx.oidc?.body || {};
  if (params.client_id) return String(params.client_id);
  const auth = ctx.get('authorization');
  if (/^basic /i.test(auth)) {
    try {
      const decoded = Buffer.from(auth.slice(6).trim(), 'base64').toString('utf8');
      const id = decoded.slice(0, decoded.indexOf(':'));
      return decodeURIComponent(id.replace(/\+/g, ' '));
    } catch {
      return null;
    }
  }
  if (typeof params.client_assertion === 'string') {
    try {
      const payload = JSON.parse(Buffer.from(params.client_assertion.split('.')[1], 'base64url'));
      return typeof payload.sub === 'string' ? payload.sub : null;
    } catch {
      return null;
    }
  }
  return null;
}

/** Peer certificate of the TLS connection, as an X509Certificate, or undefined. */
function peerCertificate(socket) {
  return socket.getPeerX509Certificate?.() || undefined;
}

/** RFC 8705 §2.1.2 matching of a registered tls_client_auth_* value against the certificate. */
function certificateSubjectMatches(ctx, property, expected) {
  const cert = peerCertificate(ctx.socket);
  if (!cert) return false;
  const sans = (cert.subjectAltName || '').split(', ');
  switch (property) {
    case 'tls_client_auth_san_dns':
      return sans.includes(`DNS:${expected}`);
    case 'tls_client_auth_san_uri':
      return sans.includes(`URI:${expected}`);
    case 'tls_client_auth_san_ip':
      return sans.includes(`IP Address:${expected}`);
    case 'tls_client_auth_san_email':
      return sans.includes(`email:${expected}`);
    case 'tls_client_auth_subject_dn': {
      // Node prints the subject one RDN a line ("CN=x\nO=y"); compare as a set of RDNs against an
      // RFC 4514 string ("CN=x,O=y"), order-insensitive. Good enough for simple test DNs.
      const norm = (rdns) => rdns.map((r) => r.trim()).filter(Boolean).sort().join(',');
      return norm(cert.subject.split('\n')) === norm(expected.split(','));
    }
    default:
      throw new Error(`${property} certificate subject matching not implemented`);
  }
}

/**
 * Starts the AS on 127.0.0.1:0. `tls` = { cert, key, ca } PEM strings. Writes client secrets,
 * private keys and the seeded refresh token into `dir` (0600). Returns what ready.json needs.
 */
export async function startAuthorizationServer({ dir, tls }) {
  const { server, port } = await listenHttps(tls);
  const issuer = `https://localhost:${port}`;

  // ---- key material -----------------------------------------------------------------------
  const providerKey = generateSigningKey('ES256', `as-${crypto.randomBytes(4).toString('hex')}`);
  const es256 = generateSigningKey('ES256', `es256-${crypto.randomBytes(4).toString('hex')}`);
  const rs256 = generateSigningKey('RS256', `rs256-${crypto.randomBytes(4).toString('hex')}`);
  // The DPoP client authenticates with private_key_jwt, so its token requests carry both a
  // client assertion and a DPoP proof, and the nonce resend carries both again (oidc-provider
  // refuses an assertion jti it has seen).
  const dpopClientKey = generateSigningKey('ES256', `dpop-client-${crypto.randomBytes(4).toString('hex')}`);
  const workload = generateSigningKey('ES256', `workload-${crypto.randomBytes(4).toString('hex')}`);
  const secrets = {
    basic: randomSecret(),
    post: randomSecret(),
    jwt: randomSecret(),
    exchange: randomSecret(),
    refresh: randomSecret(),
  };
  const ids = {
    basic: 'interop-basic',
    post: 'interop-post',
    jwt: 'interop-jwt',
    es256: 'interop-es256',
    rs256: 'interop-rs256',
    mtls: 'interop-mtls',
    dpop: 'interop-dpop',
    exchange: 'interop-exchange',
    refresh: 'interop-refresh',
  };

  const common = {
    scope: RESOURCE_SCOPES,
    response_types: [],
    redirect_uris: [],
    grant_types: ['client_credentials'],
  };
  const clients = [
    { ...common, client_id: ids.basic, client_secret: secrets.basic, token_endpoint_auth_method: 'client_secret_basic' },
    { ...common, client_id: ids.post, client_secret: secrets.post, token_endpoint_auth_method: 'client_secret_post' },
    {
      ...common,
      client_id: ids.jwt,
      client_secret: secrets.jwt,
      token_endpoint_auth_method: 'client_secret_jwt',
      token_endpoint_auth_signing_alg: 'HS256',
    },
    {
      ...common,
      client_id: ids.es256,
      token_endpoint_auth_method: 'private_key_jwt',
      token_endpoint_auth_signing_alg: 'ES256',
      jwks: { keys: [es256.publicJwk] },
    },
    {
      ...common,
      client_id: ids.rs256,
      token_endpoint_auth_method: 'private_key_jwt',
      token_endpoint_auth_signing_alg: 'RS256',
      jwks: { keys: [rs256.publicJwk] },
    },
    {
      ...common,
      client_id: ids.mtls,
      token_endpoint_auth_method: 'tls_client_auth',
      tls_client_auth_san_dns: 'interop-mtls-client',
      tls_client_certificate_bound_access_tokens: true,
    },
    {
      ...common,
      client_id: ids.dpop,
      token_endpoint_auth_method: 'private_key_jwt',
      token_endpoint_auth_signing_alg: 'ES256',
      jwks: { keys: [dpopClientKey.publicJwk] },
      dpop_bound_access_tokens: true,
    },
    {
      ...common,
      client_id: ids.exchange,
      client_secret: secrets.exchange,
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['client_credentials', TOKEN_EXCHANGE],
    },
    {
      ...common,
      client_id: ids.refresh,
      client_secret: secrets.refresh,
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['refresh_token'],
    },
  ];

  // ---- the provider -----------------------------------------------------------------------
  const actClaims = new WeakMap();
  const provider = new Provider(issuer, {
    clients,
    jwks: { keys: [providerKey.privateJwk] },
    cookies: { keys: [randomSecret()] },
    scopes: ['openid', 'offline_access', ...RESOURCE_SCOPES.split(' ')],
    // No end-user flows are exercised (the refresh token is seeded), so no authorization_code
    // or implicit grant is offered; 'none' keeps the authorization endpoint inert.
    responseTypes: ['none'],
    clientAuthMethods: [
      'client_secret_basic', 'client_secret_post', 'client_secret_jwt', 'private_key_jwt', 'tls_client_auth',
    ],
    clientDefaults: {
      grant_types: ['client_credentials'],
      response_types: [],
      id_token_signed_response_alg: 'ES256',
      token_endpoint_auth_method: 'client_secret_basic',
    },
    enabledJWA: {
      idTokenSigningAlgValues: ['ES256'],
      clientAuthSigningAlgValues: ['HS256', 'RS256', 'PS256', 'ES256'],
      dPoPSigningAlgValues: ['ES256', 'PS256', 'RS256', 'EdDSA', 'Ed25519'],
    },
    async findAccount(ctx, sub) {
      return { accountId: sub, async claims() { return { sub }; } };
    },
    async extraTokenClaims(ctx, token) {
      const act = actClaims.get(token);
      return act ? { act } : undefined;
    },
    rotateRefreshToken: true,
    ttl: {
      AccessToken: TOKEN_TTL,
      ClientCredentials: TOKEN_TTL,
      Grant: 24 * 3600,
      IdToken: TOKEN_TTL,
      RefreshToken: 24 * 3600,
      Interaction: 600,
      Session: 3600,
      AuthorizationCode: 60,
    },
    features: {
      devInteractions: { enabled: false },
      userinfo: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource(ctx, client, oneOf) {
          if (oneOf) return oneOf.includes(RESOURCE) ? RESOURCE : oneOf;
          return RESOURCE;
        },
        useGrantedResource() {
          return true;
        },
        getResourceServerInfo(ctx, resourceIndicator) {
          if (resourceIndicator === RESOURCE) {
            return { ...RESOURCE_SERVER_INFO, jwt: { sign: { ...RESOURCE_SERVER_INFO.jwt.sign } } };
          }
          throw new errors.InvalidTarget();
        },
      },
      dPoP: {
        enabled: true,
        nonceSecret: crypto.randomBytes(32),
        requireNonce: () => true,
      },
      mTLS: {
        enabled: true,
        tlsClientAuth: true,
        certificateBoundAccessTokens: true,
        getCertificate: (ctx) => peerCertificate(ctx.socket),
        certificateAuthorized: (ctx) => ctx.socket.authorized === true,
        certificateSubjectMatches,
      },
    },
  });

  provider.registerGrantType(
    TOKEN_EXCHANGE,
    tokenExchangeHandler({
      provider, workloadPublicKey: workload.publicKey, resourceServerInfo: RESOURCE_SERVER_INFO, actClaims,
    }),
    PARAMETERS,
    DUPLICATES_ALLOWED,
  );

  // ---- recording + control middleware (runs before oidc-provider's own stack) ---------------
  const tokenRequests = [];
  const tokenPath = new URL(provider.urlFor('token')).pathname;
  provider.use(async (ctx, next) => {
    if (ctx.path.startsWith('/_control/')) {
      if (ctx.method === 'GET' && ctx.path === '/_control/token-requests') {
        ctx.body = tokenRequests;
      } else if (ctx.method === 'POST' && ctx.path === '/_control/reset') {
        tokenRequests.length = 0;
        ctx.body = { ok: true };
      } else {
        ctx.status = 404;
        ctx.body = { error: 'not_found' };
      }
      return;
    }

    await next();

    if (ctx.path === tokenPath && ctx.method === 'POST') {
      const params = ctx.oidc?.params || ctx.oidc?.body || {};
      const failed = ctx.status >= 400;
      const entry = {
        grant_type: params.grant_type ?? null,
        client_id: requestClientId(ctx),
        dpop: !!ctx.get('dpop'),
        status: ctx.status,
        error: failed ? (ctx.body?.error ?? null) : null,
        error_description: failed ? (ctx.body?.error_description ?? null) : null,
      };
      tokenRequests.push(entry);
      const entities = ctx.oidc?.entities || {};
      const issued = entities.AccessToken || entities.ClientCredentials;
      log('as', `POST /token grant_type=${entry.grant_type} client_id=${entry.client_id} dpop=${entry.dpop}`
        + ` client_cert=${!!peerCertificate(ctx.socket)} status=${entry.status}`
        + (failed ? ` error=${entry.error} error_description=${JSON.stringify(entry.error_description)}` : '')
        + (ctx.state.errorDetail ? ` detail=${JSON.stringify(ctx.state.errorDetail)}` : '')
        + (ctx.state.logExtra ? ` ${ctx.state.logExtra}` : '')
        + (!failed && issued ? ` jti=${issued.jti}` : '')
        + (!failed && entities.RotatedRefreshToken ? ' refresh_token=rotated' : ''));
    }
  });

  // oidc-provider keeps the reason for an error out of the response (error_detail); keep it for
  // the log line, which is where a failing interop test gets diagnosed.
  provider.on('grant.error', (ctx, err) => {
    if (err.error_detail) ctx.state.errorDetail = String(err.error_detail);
  });
  provider.on('server_error', (ctx, err) => log('as', `server_error: ${err.stack || err}`));

  server.on('request', provider.callback());

  // ---- seed the refresh token -------------------------------------------------------------
  const grant = new provider.Grant({ accountId: REFRESH_ACCOUNT, clientId: ids.refresh });
  grant.addResourceScope(RESOURCE, RESOURCE_SCOPES);
  const grantId = await grant.save();
  const refreshToken = await new provider.RefreshToken({
    accountId: REFRESH_ACCOUNT,
    clientId: ids.refresh,
    grantId,
    gty: 'authorization_code',
    resource: RESOURCE,
    scope: RESOURCE_SCOPES,
    expiresWithSession: false,
    rotations: 0,
  }).save();

  // ---- subject tokens for token exchange --------------------------------------------------
  const subjectTokens = {};
  for (const sub of SUBJECTS) {
    subjectTokens[sub] = await mintSubjectToken(workload.privateKey, workload.privateJwk.kid, sub);
  }

  // ---- files ------------------------------------------------------------------------------
  const file = (name) => path.join(dir, name);
  for (const [name, secret] of Object.entries(secrets)) {
    writePrivateFile(file(`${name}.secret`), secret);
  }
  writePrivateFile(file('es256.key'), es256.pkcs8Pem);
  writePrivateFile(file('rs256.key'), rs256.pkcs8Pem);
  writePrivateFile(file('dpop.key'), dpopClientKey.pkcs8Pem);
  writePrivateFile(file('refresh.token'), refreshToken);

  const readyClients = {
    basic: { client_id: ids.basic, client_secret_file: file('basic.secret') },
    post: { client_id: ids.post, client_secret_file: file('post.secret') },
    jwt: { client_id: ids.jwt, client_secret_file: file('jwt.secret') },
    es256: { client_id: ids.es256, private_key_file: file('es256.key'), key_id: es256.publicJwk.kid },
    rs256: { client_id: ids.rs256, private_key_file: file('rs256.key'), key_id: rs256.publicJwk.kid },
    mtls: { client_id: ids.mtls },
    dpop: { client_id: ids.dpop, private_key_file: file('dpop.key'), key_id: dpopClientKey.publicJwk.kid },
    exchange: { client_id: ids.exchange, client_secret_file: file('exchange.secret') },
    refresh: {
      client_id: ids.refresh,
      client_secret_file: file('refresh.secret'),
      refresh_token_file: file('refresh.token'),
    },
  };

  log('as', `listening on 127.0.0.1:${port}, issuer ${issuer}`);
  return {
    server,
    issuer,
    tokenEndpoint: provider.urlFor('token'),
    clients: readyClients,
    subjectTokens,
  };
}
