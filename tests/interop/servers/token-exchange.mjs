// RFC 8693 token exchange for oidc-provider, which ships no handler for it: registered with
// provider.registerGrantType() (oidc-provider docs, "Custom Grant Types").
//
// What it checks, strictly:
// - subject_token and subject_token_type are present; the type is ...:token-type:jwt or
//   ...:token-type:access_token (anything else: invalid_request, RFC 8693 §2.2.2);
// - actor_token and actor_token_type come together (RFC 8693 §2.1), requested_token_type is one
//   we can issue;
// - the subject token is a JWT signed (ES256) by the separate "workload issuer" key, with
//   iss https://workload.interop.test, aud oauth-egress, an unexpired exp and a known sub
//   (alice or bob); anything else is invalid_request, as RFC 8693 §2.2.2 requires ("if either
//   the subject_token or actor_token are invalid for any reason ... MUST be the
//   invalid_request error code"; many servers answer invalid_grant instead, which the proxy
//   treats alike);
// - resource / audience, when sent, name the one resource server; scope is within what the
//   client and the resource allow (default api:read).
// It issues an RFC 9068 JWT access token through oidc-provider's own AccessToken model (so it
// is signed like every other token, with the provider's ES256 key): sub = the subject, act =
// { sub: the exchanging client } (RFC 8693 §4.1), aud = the resource.

import * as crypto from 'node:crypto';

import { errors } from 'oidc-provider';
import * as jose from 'jose';

import { RESOURCE, REQUIRED_SCOPE, RESOURCE_SCOPES } from './common.mjs';

export const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
export const WORKLOAD_ISSUER = 'https://workload.interop.test';
export const WORKLOAD_AUDIENCE = 'oauth-egress';
export const SUBJECTS = ['alice', 'bob'];

const TT = 'urn:ietf:params:oauth:token-type:';
const SUBJECT_TOKEN_TYPES = new Set([`${TT}jwt`, `${TT}access_token`]);
const REQUESTED_TOKEN_TYPES = new Set([`${TT}access_token`, `${TT}jwt`]);

export const PARAMETERS = [
  'audience', 'resource', 'scope', 'requested_token_type',
  'subject_token', 'subject_token_type',
  'actor_token', 'actor_token_type',
];
export const DUPLICATES_ALLOWED = ['audience', 'resource'];

const asList = (value) => (value === undefined ? [] : [].concat(value));

/** Mints a workload-issuer JWT for `sub`, valid for `ttlSeconds`. */
export async function mintSubjectToken(workloadKey, kid, sub, ttlSeconds = 600) {
  return new jose.SignJWT({})
    .setProtectedHeader({ alg: 'ES256', typ: 'JWT', kid })
    .setIssuer(WORKLOAD_ISSUER)
    .setAudience(WORKLOAD_AUDIENCE)
    .setSubject(sub)
    .setIssuedAt()
    .setExpirationTime(`${ttlSeconds}s`)
    .setJti(crypto.randomUUID())
    .sign(workloadKey);
}

async function verifyWorkloadToken(token, workloadPublicKey, label) {
  try {
    const { payload } = await jose.jwtVerify(token, workloadPublicKey, {
      algorithms: ['ES256'],
      issuer: WORKLOAD_ISSUER,
      audience: WORKLOAD_AUDIENCE,
      requiredClaims: ['sub', 'exp'],
      clockTolerance: 5,
    });
    if (!SUBJECTS.includes(payload.sub)) {
      throw new errors.InvalidRequest(`${label} subject is not known`);
    }
    return payload;
  } catch (err) {
    if (err instanceof errors.OIDCProviderError) throw err;
    throw new errors.InvalidRequest(`${label} is invalid (${err.code || err.message})`);
  }
}

/**
 * Returns the grant handler. `actClaims` is a WeakMap token -> act claim value; the provider's
 * extraTokenClaims returns { act } for those tokens, so `act` lands in the JWT next to
 * oidc-provider's own claims.
 */
export function tokenExchangeHandler({ provider, workloadPublicKey, resourceServerInfo, actClaims }) {
  return async function tokenExchange(ctx) {
    const { params, client } = ctx.oidc;

    if (!params.subject_token) {
      throw new errors.InvalidRequest("missing required parameter 'subject_token'");
    }
    if (!params.subject_token_type) {
      throw new errors.InvalidRequest("missing required parameter 'subject_token_type'");
    }
    if (!SUBJECT_TOKEN_TYPES.has(params.subject_token_type)) {
      throw new errors.InvalidRequest('unsupported subject_token_type');
    }
    if (params.actor_token && !params.actor_token_type) {
      throw new errors.InvalidRequest("missing required parameter 'actor_token_type'");
    }
    if (params.actor_token_type && !params.actor_token) {
      throw new errors.InvalidRequest('actor_token_type must not be sent without actor_token');
    }
    if (params.actor_token_type && !SUBJECT_TOKEN_TYPES.has(params.actor_token_type)) {
      throw new errors.InvalidRequest('unsupported actor_token_type');
    }
    if (params.requested_token_type && !REQUESTED_TOKEN_TYPES.has(params.requested_token_type)) {
      throw new errors.InvalidRequest('unsupported requested_token_type');
    }

    for (const target of [...asList(params.resource), ...asList(params.audience)]) {
      if (target !== RESOURCE) {
        throw new errors.InvalidTarget();
      }
    }

    const requested = params.scope ? params.scope.split(' ') : [REQUIRED_SCOPE];
    const clientScopes = new Set((client.scope || '').split(' '));
    const resourceScopes = new Set(RESOURCE_SCOPES.split(' '));
    for (const scope of requested) {
      if (!clientScopes.has(scope) || !resourceScopes.has(scope)) {
        throw new errors.InvalidScope('requested scope is not allowed', scope);
      }
    }
    const scope = [...new Set(requested)].join(' ');

    const subject = await verifyWorkloadToken(params.subject_token, workloadPublicKey, 'subject_token');
    const act = params.actor_token
      ? { sub: (await verifyWorkloadToken(params.actor_token, workloadPublicKey, 'actor_token')).sub }
      : { sub: client.clientId };

    const at = new provider.AccessToken({
      accountId: subject.sub,
      client,
      gty: TOKEN_EXCHANGE,
      scope,
      expiresWithSession: false,
    });
    at.resourceServer = new provider.ResourceServer(RESOURCE, resourceServerInfo);
    actClaims.set(at, act);

    ctx.oidc.entity('AccessToken', at);
    const accessToken = await at.save();
    ctx.state.logExtra = `sub=${subject.sub} act=${act.sub}`;

    ctx.body = {
      access_token: accessToken,
      issued_token_type: `${TT}access_token`,
      token_type: 'Bearer',
      expires_in: at.expiration,
      scope,
    };
  };
}
