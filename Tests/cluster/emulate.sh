# Sourced by Tests/cluster/run.sh (not run): a 2-node cluster inside this machine.
#   cluster_up     network namespaces ${NS}1, ${NS}2 on a bridge (node1 = .1, node2 = .2, this host = .254),
#                  /etc/hosts lines, munged (own key and socket), slurmctld here, one slurmd per namespace
#   cluster_down   removes all of it: daemons by PID, namespaces, bridge, hosts lines (safe to call twice)
# Every "node" shares this machine's filesystem, /tmp and CPUs: this tests launch, wire-up, TCP between
# nodes, Slurm's signals/requeue and failure handling, not performance.
# shellcheck shell=bash
NS=${CLUSTER_NS_PREFIX:-attns}
BR=${CLUSTER_BRIDGE:-attbr0}
NET=${CLUSTER_NET:-10.77.0}          # /24; must not be in use on this machine
HOSTS_TAG="# attunet-cluster-test"
PIDS=()                              # daemons started here, stopped by PID
export CLUSTER_NS_PREFIX=$NS

netns_usable() {
  [ "$(id -u)" = 0 ] || { echo "not root"; return 1; }
  for t in ip unshare nsenter; do command -v $t >/dev/null || { echo "$t missing"; return 1; }; done
  ip netns add "${NS}probe" 2>/dev/null || { echo "network namespaces refused here"; return 1; }
  ip netns del "${NS}probe"
  ip link add "${BR}p" type bridge 2>/dev/null || { echo "bridges refused here"; return 1; }
  ip link del "${BR}p"
  ip addr show | grep -q "inet $NET\." && { echo "$NET.0/24 already in use here"; return 1; }
  return 0
}

slurm_usable() {
  for t in slurmctld slurmd sbatch munged; do command -v $t >/dev/null || { echo "$t missing (launch/setup.sh installs it)"; return 1; }; done
  id munge >/dev/null 2>&1 || { echo "no munge user"; return 1; }
}

network_up() {
  ip link add "$BR" type bridge
  ip addr add "$NET.254/24" dev "$BR"
  ip link set "$BR" up
  for i in 1 2; do
    ip netns add "$NS$i"
    ip link add "${NS}v$i" type veth peer name eth0 netns "$NS$i"
    ip link set "${NS}v$i" master "$BR" up
    ip -n "$NS$i" addr add "$NET.$i/24" dev eth0
    ip -n "$NS$i" link set eth0 up
    ip -n "$NS$i" link set lo up
  done
  # /etc/hosts may be a bind mount (containers): rewrite it in place, never replace the file.
  printf "$NET.%s node%s $HOSTS_TAG\n" 1 1 2 2 >> /etc/hosts
}

slurm_up() {   # $1 = state folder
  local d=$1 host
  host=$(hostname -s)   # slurmctld must find its own short name here
  mkdir -p "$d/munge" "$d/ctld" "$d/log"
  chmod 755 "$d"
  dd if=/dev/urandom of="$d/munge/munge.key" bs=1024 count=1 status=none
  # munged insists: socket folder searchable by all, key readable by munge only
  chown -R munge:munge "$d/munge"; chmod 755 "$d/munge"; chmod 400 "$d/munge/munge.key"
  setpriv --reuid=munge --regid=munge --init-groups munged -F --key-file="$d/munge/munge.key" \
    --socket="$d/munge/munge.sock" --pid-file="$d/munge/munged.pid" --log-file="$d/munge/munged.log" \
    --seed-file="$d/munge/munged.seed" >"$d/munge/munged.out" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 50); do [ -S "$d/munge/munge.sock" ] && break; sleep 0.1; done
  [ -S "$d/munge/munge.sock" ] || { echo "munged did not start: $(tail -n 3 "$d/munge/munged.log")"; return 1; }
  cat > "$d/slurm.conf" <<CONF
ClusterName=attunettest
SlurmctldHost=$host($NET.254)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$d/munge/munge.sock
StateSaveLocation=$d/ctld
SlurmctldPidFile=$d/ctld/slurmctld.pid
SlurmctldLogFile=$d/log/slurmctld.log
SlurmdSpoolDir=$d/%n/spool
SlurmdPidFile=$d/%n/slurmd.pid
SlurmdLogFile=$d/log/slurmd-%n.log
# PMIx puts its folders under TmpFS; the "nodes" share /tmp, so each gets its own.
TmpFS=$d/%n/tmp
ProctrackType=proctrack/pgid
# task/affinity binds each rank to the CPUs of its task, as on a real cluster (both "nodes" bind within this
# machine's CPUs): what the --cpus-per-task check sees.
TaskPlugin=task/affinity
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$d/log/jobcomp.log
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobRequeue=1
KillWait=5
MinJobAge=600
SchedulerParameters=sched_interval=1
NodeName=node1 NodeHostname=node1 NodeAddr=$NET.1 CPUs=2 RealMemory=2000
NodeName=node2 NodeHostname=node2 NodeAddr=$NET.2 CPUs=2 RealMemory=2000
PartitionName=ci Nodes=node1,node2 Default=YES MaxTime=10 OverSubscribe=YES State=UP
CONF
  export SLURM_CONF=$d/slurm.conf
  for i in 1 2; do mkdir -p "$d/node$i/spool" "$d/node$i/tmp"; done
  slurmctld -D -i -f "$SLURM_CONF" >"$d/log/slurmctld.out" 2>&1 &
  PIDS+=($!)
  # nsenter, not `ip netns exec`: that remounts /sys and slurmd then finds no /sys/fs/cgroup.
  for i in 1 2; do
    nsenter --net="/run/netns/$NS$i" unshare --uts sh -c \
      "hostname node$i; exec slurmd -D -f '$SLURM_CONF' -N node$i" >"$d/log/slurmd-node$i.out" 2>&1 &
    PIDS+=($!)
  done
  for _ in $(seq 100); do
    [ "$(sinfo -h -o %t 2>/dev/null | sort -u)" = idle ] && return 0
    sleep 0.2
  done
  echo "slurm did not come up: $(sinfo 2>&1 | tail -n 2); $(tail -n 3 "$d/log/slurmctld.log" 2>/dev/null)"
  return 1
}

cluster_down() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 30); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  PIDS=()
  for i in 1 2; do
    # Whatever still runs inside a "node" (orphaned ranks) goes with it.
    for p in $(ip netns pids "$NS$i" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$NS$i" 2>/dev/null || true
    # A namespace outlives its name while sockets in it wait out TCP timeouts (after the partition test); its
    # veth pair would then block the next run.
    ip link del "${NS}v$i" 2>/dev/null || true
  done
  ip link del "$BR" 2>/dev/null || true
  if grep -q "$HOSTS_TAG" /etc/hosts; then
    local keep; keep=$(grep -v "$HOSTS_TAG" /etc/hosts)
    printf '%s\n' "$keep" > /etc/hosts
  fi
}
