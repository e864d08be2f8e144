// A legacy Node service: undici's fetch with the EnvHttpProxyAgent, which reads HTTPS_PROXY
// and NO_PROXY like curl does; Node itself adds NODE_EXTRA_CA_CERTS to its roots. Nothing
// here names a proxy or a CA, except that a service the proxy recognises by a token
// (PROXY_TOKEN) uses undici's ProxyAgent({ uri, token }), the way undici documents it. Usage: node client.mjs SPEC, where each SPEC line is
// METHOD<TAB>URL<TAB>AUTHORIZATION or -<TAB>BODY or -. Prints one JSON object per request.
import { readFileSync } from 'node:fs';
import { EnvHttpProxyAgent, ProxyAgent, fetch, setGlobalDispatcher } from 'undici';

const token = process.env.PROXY_TOKEN;
setGlobalDispatcher(
  token ? new ProxyAgent({ uri: process.env.HTTPS_PROXY, token }) : new EnvHttpProxyAgent(),
);

const lines = readFileSync(process.argv[2], 'utf8').split('\n').filter((l) => l !== '');
for (const line of lines) {
  const [method, url, authorization, body] = line.split('\t');
  const headers = authorization === '-' ? {} : { authorization };
  let response;
  try {
    response = await fetch(url, { method, headers, body: body === '-' ? undefined : body });
  } catch (err) {
    // A refused CONNECT: undici throws "Proxy response (407) !== 200 ..."; report that status.
    const chain = [];
    for (let e = err; e; e = e.cause) chain.push(String(e.message ?? e));
    const text = chain.join(': ');
    const found = text.match(/\((\d{3})\)/);
    console.log(JSON.stringify({ url, status: found ? Number(found[1]) : 0, body: text }));
    continue;
  }
  console.log(JSON.stringify({ url, status: response.status, body: await response.text() }));
}
