#!/usr/bin/env node
// Third-party servers for the oauth-egress interop tests.
//
//   node tests/interop/servers.mjs <dir>
//
// <dir> must hold the test PKI (PEM): ca.pem, server.pem + server-key.pem (localhost /
// 127.0.0.1, used by both servers) and client.pem (interop-mtls-client). This script starts
//   - the authorization server: oidc-provider, configured strictly (servers/as.mjs), and
//   - the resource server: node:https + jose, verifying strictly (servers/rs.mjs),
// each over HTTPS on 127.0.0.1 with an ephemeral port (client certificates requested, not
// required). It writes every secret, key and seeded token it generates into <dir> (mode 0600),
// then <dir>/ready.json (atomically) and prints one line `READY` on stdout.
//
// It exits on SIGTERM / SIGINT and when stdin closes, so a dying parent leaves no orphan (when
// running it by hand, keep stdin open: `sleep infinity | node tests/interop/servers.mjs dir`).
// Logs (one line per token request and per API request, never a secret) go to stderr.

import * as fs from 'node:fs';
import * as path from 'node:path';

import { RESOURCE, REQUIRED_SCOPE, log, writePrivateFile } from './servers/common.mjs';
import { startAuthorizationServer } from './servers/as.mjs';
import { startResourceServer } from './servers/rs.mjs';

const servers = [];
let exiting = false;

function shutdown(reason, code = 0) {
  if (exiting) return;
  exiting = true;
  log('main', `exiting: ${reason}`);
  for (const server of servers) {
    server.closeAllConnections?.();
    server.close();
  }
  // Do not wait for keep-alive clients; the servers hold nothing worth flushing.
  process.exit(code);
}

async function main() {
  const dir = process.argv[2];
  if (!dir) {
    throw new Error('usage: node servers.mjs <dir>');
  }
  const absDir = path.resolve(dir);
  const read = (name) => fs.readFileSync(path.join(absDir, name), 'utf8');
  const tls = { ca: read('ca.pem'), cert: read('server.pem'), key: read('server-key.pem') };

  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
  process.stdin.on('end', () => shutdown('stdin closed'));
  process.stdin.on('close', () => shutdown('stdin closed'));
  process.stdin.on('error', () => shutdown('stdin error'));
  process.stdin.on('data', () => {});
  process.stdin.resume();

  const as = await startAuthorizationServer({ dir: absDir, tls });
  servers.push(as.server);
  const rs = await startResourceServer({ tls, issuer: as.issuer });
  servers.push(rs.server);
  for (const server of servers) {
    server.on('error', (err) => {
      log('main', `server error: ${err.stack || err}`);
      shutdown('server error', 1);
    });
  }

  const ready = {
    issuer: as.issuer,
    token_endpoint: as.tokenEndpoint,
    api: rs.api,
    resource: RESOURCE,
    scope: REQUIRED_SCOPE,
    clients: as.clients,
    subject_tokens: as.subjectTokens,
    subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
  };
  writePrivateFile(path.join(absDir, 'ready.json'), `${JSON.stringify(ready, null, 2)}\n`);
  process.stdout.write('READY\n');
}

main().catch((err) => {
  process.stderr.write(`[interop main] failed to start: ${err.stack || err}\n`);
  shutdown('startup failure', 1);
});
