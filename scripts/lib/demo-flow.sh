#!/usr/bin/env bash
# The demo's flow, run inside the test host by scripts/demo: seed 000's smoke flow on the
# built-in defaults (define, start and wait for SSH, status, handle, stop, destroy), plus a
# command on every node, a snapshot, a broken cluster, its kernel evidence, and the revert.
set -euo pipefail
vmc=${VMCLUSTER_BIN:?}
guest=${VMCLUSTER_GUEST_DIR:?}
topology_dir=/etc/vmcluster/topologies
name=demo-3node

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
timed() { local t0 t1; t0=$(date +%s.%N); "$@"; t1=$(date +%s.%N); printf '    (%.1f s)\n' "$(echo "$t1 - $t0" | bc)"; }

mkdir -p "$topology_dir"
cat > "$topology_dir/$name.yaml" <<YAML
# A 3-node demo cluster of the project's tiny test guest (Debian kernel + busybox + dropbear).
cluster_name: $name
base_image: $guest/base.qcow2
kernel: $guest/vmlinuz
initrd: $guest/initrd.img
cmdline: console=ttyS0 root=/dev/vda rw quiet printk.devkmsg=on
network:
  name: $name-net
  bridge: virbr-demo3
  subnet: 192.168.120.0/24
nodes:
  - {name: controller, role: control, vcpus: 1, memory_mb: 192, ip: 192.168.120.10}
  - {name: worker-0, role: worker, vcpus: 1, memory_mb: 192, ip: 192.168.120.11}
  - {name: client-0, role: client, vcpus: 1, memory_mb: 192, ip: 192.168.120.20}
ssh:
  user: root
  connect_timeout_s: 5
snapshots:
  baseline: clean-boot
YAML
cleanup() { "$vmc" destroy "$name" --remove-overlays >/dev/null 2>&1 || true; }
trap cleanup EXIT

step "Topology $topology_dir/$name.yaml"
sed -n '/^nodes:/,/^ssh:/p' "$topology_dir/$name.yaml" | sed '$d'
step "cluster_define $name   (network, overlays, NoCloud seeds, domains)"
timed "$vmc" define "$name"
step "cluster_start $name   (3 nodes boot in parallel; wait until each is ready: domain, SSH port, SSH login, cloud-init)"
timed "$vmc" start "$name" --ssh-timeout 180
step "cluster_status $name"
"$vmc" status "$name"
step "cluster_handle $name   (how a downstream tool reaches the nodes)"
"$vmc" handle "$name"
step "Running 'uname -r; uptime' on every node with the handle's SSH descriptors"
key=/etc/vmcluster/ssh/vmcluster_id_ed25519
for ip in 192.168.120.10 192.168.120.11 192.168.120.20; do
  printf '    %s: ' "$ip"
  ssh -i "$key" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
      "root@$ip" 'echo "$(hostname) $(uname -r) up $(cut -d" " -f1 /proc/uptime)s"'
done
step "node_exec_all $name   (one pooled SSH session per node; stdout and stderr kept apart)"
"$vmc" exec "$name" -- 'echo "$(hostname): $(cut -d" " -f1 /proc/uptime)s up"'
step "snapshot_create $name baseline --memory   (pause all, snapshot all, resume all: one consistent cut)"
"$vmc" exec "$name" -- 'echo "state of $(hostname) at the cut" > /root/state' >/dev/null
timed "$vmc" snapshot create "$name" baseline --memory
step "Breaking every node: a file deleted, a kernel warning planted"
"$vmc" exec "$name" -- 'rm /root/state; echo "<4>WARNING: CPU: 0 PID: 1 at demo.c:1 planted+0x0/0x1" > /dev/kmsg; echo broken'
step "dmesg_collect $name --level warn+   (classified kernel lines)"
"$vmc" dmesg collect "$name" --level warn+
step "snapshot_revert $name baseline   (memory: every node resumes at the cut, no reboot)"
timed "$vmc" snapshot revert "$name" baseline
"$vmc" exec "$name" -- 'cat /root/state'
step "node_crash $name worker-0   (pull the plug, power on, wait until ready)"
timed "$vmc" node crash "$name" worker-0
step "cluster_stop $name   (ACPI shutdown, forced after the timeout)"
timed "$vmc" stop "$name"
step "cluster_destroy $name --remove-overlays"
timed "$vmc" destroy "$name" --remove-overlays
trap - EXIT
step "Left behind: $(virsh -c qemu:///system list --all --name | grep -c "^${name}_" || true) domain(s), $(virsh -c qemu:///system net-list --all --name | grep -c "^$name-net$" || true) network(s)"
