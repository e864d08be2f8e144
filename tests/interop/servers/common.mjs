// Shared helpers for the interop servers: logging to stderr, 0600 file writes, key material.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as https from 'node:https';
import * as path from 'node:path';

/** The resource indicator (RFC 8707) the AS knows and the RS expects as `aud`. */
export const RESOURCE = 'https://api.interop.test/';
/** The scope every route asks for and the RS requires. */
export const REQUIRED_SCOPE = 'api:read';
/** Scopes a client may be granted for RESOURCE. */
export const RESOURCE_SCOPES = 'api:read api:write';

/**
 * An HTTPS server on 127.0.0.1:0 with the test PKI (`tls` = { cert, key, ca } PEM strings). It
 * requests a client certificate without requiring one, so tls_client_auth and
 * certificate-bound tokens can be checked while other clients connect without one.
 */
export async function listenHttps(tls) {
  const server = https.createServer({
    cert: tls.cert,
    key: tls.key,
    ca: [tls.ca],
    requestCert: true,
    rejectUnauthorized: false,
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  return { server, port: server.address().port };
}

/** One line to stderr, prefixed by the component (`as`, `rs`, `main`). */
export function log(component, message) {
  process.stderr.write(`[interop ${component}] ${message}\n`);
}

/** Writes `data` to `file` atomically (temp file in the same directory, then rename), mode 0600. */
export function writePrivateFile(file, data) {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${crypto.randomUUID()}.tmp`);
  const fd = fs.openSync(tmp, 'wx', 0o600);
  try {
    fs.writeSync(fd, data);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
}

/** A random secret: 48 bytes, base64url (64 characters), long enough for HS256 (RFC 7518 §3.2). */
export function randomSecret() {
  return crypto.randomBytes(48).toString('base64url');
}

/**
 * Generates a signing key pair.
 * kind: 'ES256' (P-256) or 'RS256' (RSA 2048).
 * Returns { privateKey, publicKey (KeyObjects), pkcs8Pem, privateJwk, publicJwk } with kid/alg/use set on both JWKs.
 */
export function generateSigningKey(kind, kid) {
  const { privateKey, publicKey } = kind === 'ES256'
    ? crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' })
    : crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const meta = { kid, alg: kind, use: 'sig' };
  return {
    privateKey,
    publicKey,
    pkcs8Pem: privateKey.export({ type: 'pkcs8', format: 'pem' }),
    privateJwk: { ...privateKey.export({ format: 'jwk' }), ...meta },
    publicJwk: { ...publicKey.export({ format: 'jwk' }), ...meta },
  };
}

/** base64url(SHA-256(data)). */
export function sha256b64u(data) {
  return crypto.createHash('sha256').update(data).digest('base64url');
}

/** Reads a request body fully (bounded) as a Buffer. */
export function readBody(req, limit = 1024 * 1024) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > limit) {
        reject(new Error('request body too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}
