#!/usr/bin/env bash
# The main job: build Myelin, bring up the local lab (a node running the agent,
# pods plumbed by the real CNI plugin, an external "world" host) and show pods
# talking through the eBPF datapath. The lab stays up for you to explore.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
cargo build --workspace --bins
M=target/debug/myelin
LAB=${MYELIN_LAB:-myelin}

$M lab down --name "$LAB" >/dev/null 2>&1 || true
$M lab up --name "$LAB" ${1:+-f "$1"}

ip_of() { $M lab status --name "$LAB" -o json | python3 -c "import json,sys; d=json.load(sys.stdin); print(next(p['ip'] for p in d['pods'] if p['namespace']+'/'+p['name']=='$1'))"; }
world=$($M lab status --name "$LAB" -o json | python3 -c "import json,sys; print(json.load(sys.stdin)['external'][0]['ip'])")
backend=$(ip_of prod/backend)

echo
echo "== pod to pod (default/frontend -> prod/backend $backend), forwarded by eBPF =="
$M lab exec --name "$LAB" default/frontend -- ping -c 3 -i 0.2 "$backend"
echo
echo "== pod to world (default/frontend -> $world), masqueraded to the node address =="
$M lab exec --name "$LAB" default/frontend -- ping -c 3 -i 0.2 "$world"
echo
echo "== policy: only default/frontend may reach prod/backend (examples/backend-policy.yaml) =="
$M policy apply --lab "$LAB" -f examples/backend-policy.yaml
echo "-- default/frontend -> prod/backend: allowed"
$M lab exec --name "$LAB" default/frontend -- ping -c 2 -i 0.2 -W 1 "$backend"
echo "-- prod/db -> prod/backend: dropped by the eBPF datapath"
$M lab exec --name "$LAB" prod/db -- ping -c 2 -i 0.2 -W 1 "$backend" || true
echo
echo "-- why (evaluated from the applied policies):"
$M policy explain --lab "$LAB" --from prod/db --to prod/backend --port 8/ICMP || true
echo
echo "== flows: every forwarded and dropped packet, named by pod, identity and the policy that decided =="
echo "-- myelin observe --lab $LAB --last 15 --print-policy-names"
$M observe --lab "$LAB" --last 15 --print-policy-names
echo
echo "-- only the drops (myelin observe --lab $LAB --verdict DROPPED --last 5)"
$M observe --lab "$LAB" --verdict DROPPED --last 5
echo
echo "-- the policy verdicts to prod/backend, as JSON (Hubble's format; first 2 lines)"
$M observe --lab "$LAB" --type policy-verdict --to-pod prod/backend --last 2 -o json
echo
echo "== the datapath's own counters (per endpoint, direction and reason; 133 = policy denied) =="
$M endpoint metrics --lab "$LAB" --node node1
echo
echo "Live flows:   $M observe --lab $LAB -f        (Hubble's filters: --from-pod, --verdict, --since 5m, ...)"
murl=$($M lab status --name "$LAB" -o json | python3 -c "import json,sys; print(json.load(sys.stdin)['nodes'][0]['metrics_url'])")
echo "Metrics:      $murl (Prometheus; reachable inside the lab, e.g."
echo "              $M lab exec --name $LAB node1 -- python3 -c \"import urllib.request as u; print(u.urlopen('$murl').read().decode())\")"
echo
echo "The lab '$LAB' is still up. Explore it (see 'Try:' above), then remove it with:"
echo "  $M lab down --name $LAB"
