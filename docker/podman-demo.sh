#!/usr/bin/env bash
# Builds a static (musl) oauth-egress with the demo, puts it alone in an image FROM scratch,
# and runs `oauth-egress demo --once` in it: the dev authorization server, echo API and proxy
# in one process, one request through the proxy, exit 0 when the injected token worked.
# Needs: podman, musl-tools, `rustup target add x86_64-unknown-linux-musl`. Not run by CI.
#   docker/podman-demo.sh            (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-musl
cargo build --locked --bin oauth-egress --target "$target"
bin="target/$target/debug/oauth-egress"
file "$bin" | grep -Eq 'static(-pie)? linked|statically linked' || { echo "podman-demo: $bin is not static" >&2; exit 1; }
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$bin" "$ctx/oauth-egress"
cat > "$ctx/Containerfile" <<'CONTAINERFILE'
FROM scratch
COPY oauth-egress /oauth-egress
WORKDIR /tmp
ENTRYPOINT ["/oauth-egress"]
CMD ["demo", "--once"]
CONTAINERFILE
# WORKDIR creates /tmp, where the demo writes its CA (./ca/).
podman build -q -t localhost/oauth-egress-demo:scratch "$ctx"
podman run --rm --network=none localhost/oauth-egress-demo:scratch demo --once
