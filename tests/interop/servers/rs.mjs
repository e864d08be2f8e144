// The resource server: plain node:https + jose, verifying every request strictly, so a token
// the proxy injects is accepted only if an independent verifier agrees it is right.
//
// For every path except /_control/*:
// - Authorization must be `Bearer <t>` or `DPoP <t>`. The token must be an RFC 9068 JWT
//   (typ at+jwt, ES256) from the AS (keys from its discovered jwks_uri, over HTTPS trusting the
//   test CA), iss = the AS, aud = https://api.interop.test/, exp/nbf enforced, and its scope
//   must contain api:read (else 403 insufficient_scope, RFC 6750 §3.1).
// - cnf.jkt (RFC 9449): the scheme must be DPoP and the DPoP header a valid proof (§4.3):
//   typ dpop+jwt, asymmetric alg, public jwk, signature, htm, htu (no query/fragment), iat
//   within 60 s, unseen jti, ath = hash of the token, jwk thumbprint = cnf.jkt. The RS also
//   requires its own nonce (§9): none or a stale one is 401 DPoP error="use_dpop_nonce" with
//   DPoP-Nonce. A DPoP scheme without cnf.jkt, or a bound token sent as Bearer: 401.
// - cnf["x5t#S256"] (RFC 8705 §3): the TLS connection must carry the client certificate whose
//   SHA-256 thumbprint it is.
// - Tokens whose jti was seen before POST /_control/revoke are refused ("token revoked"), which
//   drives the proxy's one-retry-after-401 path.
// Success: 200 JSON echoing what was verified. Control endpoints (no token):
// GET /_control/seen, POST /_control/reset, POST /_control/revoke, POST /_control/rotate-nonce.

import * as crypto from 'node:crypto';

import * as jose from 'jose';
import { Agent, fetch as undiciFetch } from 'undici';

import { RESOURCE, REQUIRED_SCOPE, listenHttps, log, readBody, sha256b64u } from './common.mjs';

const DPOP_ALGS = ['ES256', 'ES384', 'ES512', 'PS256', 'PS384', 'PS512', 'RS256', 'RS384', 'RS512', 'EdDSA', 'Ed25519'];
const PRIVATE_JWK_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'];
const IAT_WINDOW = 60;

class AuthError extends Error {
  constructor(status, error, description, extra = {}) {
    super(description);
    this.status = status;
    this.error = error;
    this.description = description;
    this.extra = extra;
  }
}

const quote = (s) => `"${String(s).replace(/["\\]/g, '')}"`;

function newNonce() {
  return crypto.randomBytes(24).toString('base64url');
}

/** Starts the RS on 127.0.0.1:0. `tls` = { cert, key, ca }; `issuer` = the AS issuer. */
export async function startResourceServer({ tls, issuer }) {
  // ---- the AS's keys, discovered and fetched over HTTPS trusting the test CA --------------
  const dispatcher = new Agent({ connect: { ca: tls.ca } });
  const caFetch = (url, options = {}) => undiciFetch(url, { ...options, dispatcher });
  const discovery = await (async () => {
    const res = await caFetch(`${issuer}/.well-known/openid-configuration`);
    if (res.status !== 200) throw new Error(`AS discovery answered ${res.status}`);
    const doc = await res.json();
    if (doc.issuer !== issuer) throw new Error(`AS discovery issuer mismatch: ${doc.issuer}`);
    return doc;
  })();
  const jwks = jose.createRemoteJWKSet(new URL(discovery.jwks_uri), { [jose.customFetch]: caFetch });

  // ---- state ------------------------------------------------------------------------------
  let currentNonce = newNonce();
  const seenJtis = new Set(); // every access-token jti verified so far
  const revoked = new Set();
  const proofJtis = new Map(); // DPoP proof jti -> expiry (epoch s), replay cache
  const seen = [];

  const { server, port } = await listenHttps(tls);
  const api = `https://localhost:${port}`;

  function sendJson(res, status, body, headers = {}) {
    const data = JSON.stringify(body);
    res.writeHead(status, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(data),
      'cache-control': 'no-store',
      ...headers,
    });
    res.end(data);
  }

  function control(req, res, pathname) {
    if (req.method === 'GET' && pathname === '/_control/seen') return sendJson(res, 200, seen);
    if (req.method === 'POST' && pathname === '/_control/reset') {
      seen.length = 0;
      revoked.clear();
      return sendJson(res, 200, { ok: true });
    }
    if (req.method === 'POST' && pathname === '/_control/revoke') {
      for (const jti of seenJtis) revoked.add(jti);
      log('rs', `revoked ${revoked.size} access token(s)`);
      return sendJson(res, 200, { revoked: revoked.size });
    }
    if (req.method === 'POST' && pathname === '/_control/rotate-nonce') {
      currentNonce = newNonce();
      log('rs', 'DPoP nonce rotated');
      return sendJson(res, 200, { ok: true });
    }
    return sendJson(res, 404, { error: 'not_found' });
  }

  /** Validates a DPoP proof for `token` (RFC 9449 §4.3 + §7.1 + §9). Returns the jwk thumbprint. */
  async function checkDpopProof(req, pathname, token, jkt, record) {
    const proofs = req.headersDistinct.dpop || [];
    if (proofs.length !== 1) {
      throw new AuthError(401, 'invalid_dpop_proof', proofs.length ? 'more than one DPoP header' : 'DPoP proof missing');
    }
    let payload;
    let protectedHeader;
    try {
      ({ payload, protectedHeader } = await jose.jwtVerify(proofs[0], jose.EmbeddedJWK, {
        typ: 'dpop+jwt',
        algorithms: DPOP_ALGS,
      }));
    } catch (err) {
      throw new AuthError(401, 'invalid_dpop_proof', `DPoP proof invalid (${err.code || err.message})`);
    }
    const { jwk } = protectedHeader;
    if (PRIVATE_JWK_MEMBERS.some((m) => m in jwk)) {
      throw new AuthError(401, 'invalid_dpop_proof', 'DPoP proof jwk contains private key material');
    }
    if (typeof payload.jti !== 'string' || !payload.jti) {
      throw new AuthError(401, 'invalid_dpop_proof', 'DPoP proof jti missing');
    }
    if (payload.htm !== req.method) {
      throw new AuthError(401, 'invalid_dpop_proof', 'DPoP proof htm mismatch');
    }
    const htu = typeof payload.htu === 'string' ? URL.parse(payload.htu) : null;
    if (htu) {
      htu.search = '';
      htu.hash = '';
    }
    if (!htu || htu.href !== new URL(pathname, api).href) {
      throw new AuthError(401, 'invalid_dpop_proof', 'DPoP proof htu mismatch');
    }
    const now = Math.floor(Date.now() / 1000);
    if (typeof payload.iat !== 'number' || Math.abs(now - payload.iat) > IAT_WINDOW) {
      throw new AuthError(401, 'invalid_dpop_proof', 'DPoP proof iat not within 60 s');
    }
    if (payload.ath !== sha256b64u(token)) {
      throw new AuthError(401, 'invalid_dpop_proof', 'DPoP proof ath mismatch');
    }
    const thumbprint = await jose.calculateJwkThumbprint(jwk, 'sha256');
    if (thumbprint !== jkt) {
      throw new AuthError(401, 'invalid_token', 'DPoP proof key does not match cnf.jkt');
    }
    for (const [jti, exp] of proofJtis) if (exp < now) proofJtis.delete(jti);
    if (proofJtis.has(payload.jti)) {
      throw new AuthError(401, 'invalid_dpop_proof', 'DPoP proof jti replayed');
    }
    proofJtis.set(payload.jti, now + 2 * IAT_WINDOW);
    if (payload.nonce !== currentNonce) {
      record.nonce_ok = false;
      throw new AuthError(401, 'use_dpop_nonce', 'Resource server requires nonce in DPoP proof', {
        'dpop-nonce': currentNonce,
      });
    }
    record.nonce_ok = true;
    return thumbprint;
  }

  async function authorize(req, pathname, record) {
    const authorization = req.headers.authorization || '';
    const match = /^(Bearer|DPoP) +([A-Za-z0-9\-._~+/]+=*)$/i.exec(authorization);
    if (!match) {
      record.scheme = authorization ? authorization.split(' ')[0] : null;
      throw new AuthError(401, authorization ? 'invalid_request' : null,
        authorization ? 'Authorization must be Bearer or DPoP with a token68' : 'no access token');
    }
    const scheme = match[1].toLowerCase() === 'dpop' ? 'DPoP' : 'Bearer';
    const token = match[2];
    record.scheme = scheme;

    let payload;
    try {
      ({ payload } = await jose.jwtVerify(token, jwks, {
        issuer,
        audience: RESOURCE,
        typ: 'at+jwt',
        algorithms: ['ES256'],
        clockTolerance: 5,
        requiredClaims: ['iss', 'sub', 'aud', 'exp', 'iat', 'jti', 'client_id'],
      }));
    } catch (err) {
      throw new AuthError(401, 'invalid_token', `token invalid (${err.code || err.message})`);
    }
    const cnf = payload.cnf || {};
    Object.assign(record, {
      client_id: payload.client_id,
      sub: payload.sub,
      act: payload.act ?? null,
      jti: payload.jti,
      jkt: cnf.jkt ?? null,
      x5t: cnf['x5t#S256'] ?? null,
    });
    seenJtis.add(payload.jti);

    if (revoked.has(payload.jti)) {
      throw new AuthError(401, 'invalid_token', 'token revoked');
    }
    const scopes = typeof payload.scope === 'string' ? payload.scope.split(' ') : [];
    if (!scopes.includes(REQUIRED_SCOPE)) {
      throw new AuthError(403, 'insufficient_scope', `token lacks scope ${REQUIRED_SCOPE}`);
    }

    if (cnf.jkt) {
      if (scheme !== 'DPoP') {
        throw new AuthError(401, 'invalid_token', 'DPoP-bound token sent with the Bearer scheme');
      }
      await checkDpopProof(req, pathname, token, cnf.jkt, record);
    } else if (scheme === 'DPoP') {
      throw new AuthError(401, 'invalid_token', 'DPoP scheme used with a token that is not DPoP-bound');
    }

    if (cnf['x5t#S256']) {
      const cert = req.socket.getPeerX509Certificate?.();
      if (!cert) {
        throw new AuthError(401, 'invalid_token', 'certificate-bound token without a client certificate');
      }
      if (sha256b64u(cert.raw) !== cnf['x5t#S256']) {
        throw new AuthError(401, 'invalid_token', 'client certificate does not match cnf.x5t#S256');
      }
    }

    return { scheme, payload };
  }

  server.on('request', async (req, res) => {
    const url = new URL(req.url, api);
    const { pathname } = url;
    if (pathname.startsWith('/_control/')) {
      control(req, res, pathname);
      return;
    }

    const record = {
      method: req.method,
      path: pathname,
      status: null,
      scheme: null,
      client_id: null,
      sub: null,
      act: null,
      jti: null,
      jkt: null,
      x5t: null,
      error: null,
      nonce_ok: null,
    };
    let status;
    try {
      const body = await readBody(req);
      const { scheme, payload } = await authorize(req, pathname, record);
      status = 200;
      const headers = scheme === 'DPoP' ? { 'dpop-nonce': currentNonce } : {};
      sendJson(res, status, {
        method: req.method,
        path: pathname,
        query: url.search ? url.search.slice(1) : '',
        client_id: payload.client_id,
        sub: payload.sub,
        act: payload.act ?? null,
        scope: payload.scope,
        aud: payload.aud,
        jti: payload.jti,
        scheme,
        jkt: payload.cnf?.jkt ?? null,
        x5t: payload.cnf?.['x5t#S256'] ?? null,
        body: body.toString('utf8'),
      }, headers);
    } catch (err) {
      if (!(err instanceof AuthError)) {
        log('rs', `internal error: ${err.stack || err}`);
        status = 500;
        record.error = 'server_error';
        if (!res.headersSent) sendJson(res, 500, { error: 'server_error' });
      } else {
        status = err.status;
        record.error = err.error || 'missing_token';
        const scheme = record.scheme === 'DPoP' || err.error === 'use_dpop_nonce' || err.error === 'invalid_dpop_proof'
          ? 'DPoP' : 'Bearer';
        const params = [];
        // RFC 6750 §3.1: a request without credentials gets a challenge without an error code.
        if (err.error) params.push(`error=${quote(err.error)}`, `error_description=${quote(err.description)}`);
        else params.push('realm="interop"');
        if (err.error === 'insufficient_scope') params.push(`scope=${quote(REQUIRED_SCOPE)}`);
        if (scheme === 'DPoP') params.push(`algs=${quote(DPOP_ALGS.join(' '))}`);
        const challenge = `${scheme}${params.length ? ` ${params.join(', ')}` : ''}`;
        sendJson(res, status, { error: record.error, error_description: err.description }, {
          'www-authenticate': challenge,
          ...err.extra,
        });
      }
    }
    record.status = status;
    seen.push(record);
    log('rs', `${req.method} ${pathname} status=${status} scheme=${record.scheme} client_id=${record.client_id}`
      + ` sub=${record.sub} jti=${record.jti} jkt=${record.jkt ? 'yes' : 'no'} x5t=${record.x5t ? 'yes' : 'no'}`
      + ` nonce_ok=${record.nonce_ok}${record.error ? ` error=${record.error}` : ''}`);
  });

  log('rs', `listening on 127.0.0.1:${port}, api ${api}, jwks ${discovery.jwks_uri}`);
  return { server, api, close: () => dispatcher.close() };
}
