#!/usr/bin/env bash
# Prepares this machine for mshot's integration tests.  Run as root; safe to
# run again (every step checks before it changes anything).
#
# - installs the Debian packages the harness drives: openssh-server (the real
#   sshd the tests start on loopback and in network namespaces),
#   openssh-client (ssh, ssh-keygen), sudo, iproute2 (ip netns, veth), python3
#   (its http.server serves module repositories), minisign (signature interop),
#   openssl (test certificates for the HTTPS repository test);
# - creates the test users:
#     mshot-nopw    key login only, passwordless sudo (NOPASSWD: ALL)
#     mshot-pw      password "mshot-pw-secret", sudo asks for that password
#     mshot-nosudo  password "mshot-nosudo-secret", no sudo rights
#
# The harness never uses port 22.  If this script is what installs
# openssh-server, it keeps the distribution's sshd service from starting
# (policy-rc.d during the install, then /etc/ssh/sshd_not_to_be_run), so the
# test users' well-known passwords are never offered on a real port.  An
# openssh-server that was already installed is left exactly as it was.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "setup-host.sh: must run as root" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive

packages=(openssh-server openssh-client sudo iproute2 python3 python3-venv zstd minisign openssl)

is_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

missing=()
for p in "${packages[@]}"; do
    is_installed "$p" || missing+=("$p")
done

if ((${#missing[@]})); then
    echo "setup-host.sh: installing ${missing[*]}"
    fresh_sshd=0
    is_installed openssh-server || fresh_sshd=1
    # Keep maintainer scripts from starting services while we install, but
    # only if no policy of the machine's own is in place.
    own_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        own_policy=1
    fi
    cleanup_policy() { ((own_policy)) && rm -f /usr/sbin/policy-rc.d; return 0; }
    trap cleanup_policy EXIT
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
    cleanup_policy
    trap - EXIT
    if ((fresh_sshd)); then
        # Debian's and Ubuntu's ssh units honour this file.
        touch /etc/ssh/sshd_not_to_be_run
        if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
            systemctl disable --now ssh.service ssh.socket >/dev/null 2>&1 || true
        fi
    fi
fi

# sshd refuses to start without its privilege separation directory, and /run
# is a tmpfs on most machines.
install -d -m 0755 /run/sshd

ensure_user() {
    local user=$1
    if ! id -u "$user" >/dev/null 2>&1; then
        useradd --create-home --shell /bin/bash "$user"
    fi
    install -d -o "$user" -g "$(id -gn "$user")" -m 0755 "$(getent passwd "$user" | cut -d: -f6)"
}

ensure_user mshot-nopw
ensure_user mshot-pw
ensure_user mshot-nosudo

# With UsePAM no, sshd refuses even key logins to an account whose password
# field starts with "!" (locked), which is what useradd leaves; "*" means
# "no password" without "locked".
usermod -p '*' mshot-nopw
echo 'mshot-pw:mshot-pw-secret' | chpasswd
echo 'mshot-nosudo:mshot-nosudo-secret' | chpasswd

sudoers=/etc/sudoers.d/mshot-tests
tmp=$(mktemp)
cat >"$tmp" <<'EOF'
# Written by mshot's tests/setup-host.sh: users for the integration tests.
mshot-nopw ALL=(ALL:ALL) NOPASSWD: ALL
mshot-pw ALL=(ALL:ALL) ALL
# Ask every time, and print nothing but the prompt, so tests are repeatable.
Defaults:mshot-pw timestamp_timeout=0, lecture=never
EOF
if ! cmp -s "$tmp" "$sudoers"; then
    visudo -c -q -f "$tmp"
    install -m 0440 "$tmp" "$sudoers"
fi
rm -f "$tmp"

# mshot-nosudo must have no rights at all, including through groups.
for group in sudo wheel admin; do
    if getent group "$group" | cut -d: -f4 | tr ',' '\n' | grep -qx mshot-nosudo; then
        gpasswd -d mshot-nosudo "$group" >/dev/null
    fi
done

echo "setup-host.sh: ok (users mshot-nopw, mshot-pw, mshot-nosudo; $(/usr/sbin/sshd -V 2>&1 | head -n1))"
