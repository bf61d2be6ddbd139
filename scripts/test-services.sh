#!/usr/bin/env bash
# Ensure the binaries the test suite starts (tests/services.py, tests/sound.py) and the
# libraries it loads are installed.
# Quiet when everything is present; installs missing Debian packages when root.
set -euo pipefail

# One entry per requirement: "<Debian package>|<globs of a binary or a shared library it
# provides, space separated>".
REQUIREMENTS=(
    "postgresql|/usr/lib/postgresql/*/bin/postgres"
    "redis-server|/usr/bin/redis-server /usr/sbin/redis-server"
    "openssh-server|/usr/sbin/sshd"
    "sudo|/usr/bin/sudo"
    # the live `it0 call` test: PortAudio for sounddevice, reaching a throwaway PulseAudio
    # daemon through ALSA's pulse plugin
    "libportaudio2|/usr/lib/*/libportaudio.so.2*"
    "pulseaudio|/usr/bin/pulseaudio"
    "libasound2-plugins|/usr/lib/*/alsa-lib/libasound_module_pcm_pulse.so"
)

present() {
    local candidate
    for candidate in $1; do # unquoted on purpose: expand the glob
        case "$candidate" in
        *.so | *.so.*) [[ -f "$candidate" ]] && return 0 ;; # libraries need not be executable
        *) [[ -x "$candidate" ]] && return 0 ;;
        esac
    done
    return 1
}

missing=()
for requirement in "${REQUIREMENTS[@]}"; do
    package="${requirement%%|*}"
    binary_glob="${requirement#*|}"
    present "$binary_glob" || missing+=("$package")
done

((${#missing[@]} == 0)) && exit 0

if [[ $(id -u) -ne 0 ]]; then
    echo "test-services: missing Debian packages: ${missing[*]} (run this script as root, or: sudo apt-get install ${missing[*]})" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "test-services: missing packages: ${missing[*]}, and apt-get is not available to install them" >&2
    exit 1
fi

echo "test-services: installing ${missing[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

for requirement in "${REQUIREMENTS[@]}"; do
    if ! present "${requirement#*|}"; then
        echo "test-services: ${requirement%%|*} installed but ${requirement#*|} is still missing" >&2
        exit 1
    fi
done
