#!/usr/bin/env bash
# Puts h2load (Debian's nghttp2-client, with the libev it needs) into .tools/h2load for `make bench`,
# from Debian's package registry, without root and without touching the system.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.tools/h2load
if [[ -x .tools/bin/h2load ]] && .tools/bin/h2load --version >/dev/null 2>&1; then
  exit 0
fi
mkdir -p "$dest" .tools/bin
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download nghttp2-client libev4 >/dev/null 2>&1) || { echo "apt-get download nghttp2-client libev4 failed" >&2; exit 1; }
for deb in "$work"/*.deb; do dpkg -x "$deb" "$dest"; done
cat > .tools/bin/h2load <<WRAP
#!/usr/bin/env bash
LD_LIBRARY_PATH="$PWD/$dest/usr/lib/x86_64-linux-gnu\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$PWD/$dest/usr/bin/h2load" "\$@"
WRAP
chmod +x .tools/bin/h2load
.tools/bin/h2load --version | head -1
