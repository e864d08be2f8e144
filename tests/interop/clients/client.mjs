// A legacy Node service: undici's fetch with the EnvHttpProxyAgent, which reads HTTPS_PROXY
// and NO_PROXY like curl does; Node itself adds NODE_EXTRA_CA_CERTS to its roots. Nothing
// here names a proxy or a CA. Usage: node client.mjs SPEC, where each SPEC line is
// METHOD<TAB>URL<TAB>AUTHORIZATION or -<TAB>BODY or -. Prints one JSON object per request.
import { readFileSync } from 'node:fs';
import { EnvHttpProxyAgent, fetch, setGlobalDispatcher } from 'undici';

setGlobalDispatcher(new EnvHttpProxyAgent());

const lines = readFileSync(process.argv[2], 'utf8').split('\n').filter((l) => l !== '');
for (const line of lines) {
  const [method, url, authorization, body] = line.split('\t');
  const headers = authorization === '-' ? {} : { authorization };
  const response = await fetch(url, {
    method,
    headers,
    body: body === '-' ? undefined : body,
  });
  console.log(JSON.stringify({ url, status: response.status, body: await response.text() }));
}
