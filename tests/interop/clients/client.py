"""A legacy Python service: plain `requests`, configured only by its environment.

It reads HTTPS_PROXY and REQUESTS_CA_BUNDLE like any requests-based program does (nothing in
this file mentions a proxy or a CA). Usage: client.py SPEC, where each SPEC line is
METHOD<TAB>URL<TAB>AUTHORIZATION or -<TAB>BODY or -. Prints one JSON object per request.
"""

import json
import re
import sys

import requests


def main(spec_path):
    with open(spec_path, encoding="utf-8") as spec, requests.Session() as session:
        for line in spec:
            method, url, authorization, body = line.rstrip("\n").split("\t")
            headers = {} if authorization == "-" else {"Authorization": authorization}
            data = None if body == "-" else body.encode()
            try:
                response = session.request(method, url, headers=headers, data=data, timeout=30)
            except requests.exceptions.ProxyError as err:
                # A refused CONNECT: requests raises; report the proxy's status.
                found = re.search(r"\b(4\d\d)\b", str(err))
                status = int(found.group(1)) if found else 0
                print(json.dumps({"url": url, "status": status, "body": str(err)}))
                continue
            print(json.dumps({"url": url, "status": response.status_code, "body": response.text}))


if __name__ == "__main__":
    main(sys.argv[1])
