#!/usr/bin/env bash
# Install the Debian packages relaytv needs, only those that are missing.
# Uses apt-get directly as root, through sudo otherwise; names the packages
# and stops with an error when neither is possible.
set -euo pipefail

packages=(ffmpeg libvlc5 vlc-plugin-base vlc-plugin-video-output xvfb xauth
          fonts-dejavu-core doxygen graphviz iproute2 chromium chromium-driver postgresql)
python3 -c 'import venv, ensurepip' 2>/dev/null || packages+=(python3-venv)

missing=()
for p in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [[ "$status" == "install ok installed" ]] || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "relaytv: please install these Debian/Ubuntu packages: ${missing[*]}" >&2
    exit 1
fi
if [[ $(id -u) -eq 0 ]]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
else
    echo "relaytv: not root and no sudo; install as root: apt-get install ${missing[*]}" >&2
    exit 1
fi
echo "relaytv: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
