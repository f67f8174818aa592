#!/bin/sh
# Configure a debootstrap'ed rootfs into a lab host image. Usage: configure.sh ROOTFS RECIPE_DIR MIRROR
set -eu
root="$1"; recipe="$2"; mirror="$3"
security="${CAI_LAB_SECURITY_MIRROR:-$(printf '%s' "$mirror" | sed 's#/debian/*$#/debian-security#')}"

# apt works inside
sed -e "s#@MIRROR@#$mirror#g" -e "s#@SECURITY@#$security#g" "$recipe/sources.list.in" > "$root/etc/apt/sources.list"
rm -f "$root"/etc/apt/sources.list.d/*.list "$root"/etc/apt/sources.list.d/*.sources
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' > "$root/etc/apt/apt.conf.d/90cai-lab"

# sshd: key-only root login; no listen address here (per host)
install -m 0644 "$recipe/sshd-lab.conf" "$root/etc/ssh/sshd_config.d/10-cai-lab.conf"
mkdir -p "$root/run/sshd" "$root/root/.ssh"
chmod 0700 "$root/root/.ssh"

# mask what cannot work in a container
while read -r unit; do
  case "$unit" in ''|'#'*) continue ;; esac
  ln -sfn /dev/null "$root/etc/systemd/system/$unit"
done < "$recipe/masked-units.txt"

# the distro engines do not start at boot
while read -r unit; do
  case "$unit" in ''|'#'*) continue ;; esac
  find "$root/etc/systemd/system" -path "*.wants/$unit" -type l -delete
done < "$recipe/disabled-units.txt"

# a fresh machine-id on each host's first boot
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"

# the agent user (1000:1000, bash), as in ContainAI agent containers
chroot "$root" groupadd -g 1000 agent
chroot "$root" useradd -m -u 1000 -g 1000 -s /bin/bash agent
mkdir -p "$root/home/agent/.ssh"
chmod 0700 "$root/home/agent/.ssh"
chroot "$root" chown -R agent:agent /home/agent

# journald: keep logs in memory only, small
mkdir -p "$root/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\nRuntimeMaxUse=16M\n' > "$root/etc/systemd/journald.conf.d/cai-lab.conf"

# smaller image
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
       "$root"/usr/share/man/* "$root"/usr/share/locale/* 2>/dev/null || true
