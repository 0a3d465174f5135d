#!/bin/sh
# kube-router calls `iptables` from PATH. Point it at the backend the node's kube-proxy already
# filled (legacy or nft, whichever holds more rules), so the policy chains hook into the same
# table set as the node's own rules; KUBE_ROUTER_IPTABLES=legacy|nft overrides the guess.
mode=${KUBE_ROUTER_IPTABLES:-}
if [ -z "$mode" ]; then
    legacy=$(iptables-legacy-save 2>/dev/null | grep -c '^-' || true)
    nft=$(timeout 5 iptables-nft-save 2>/dev/null | grep -c '^-' || true)
    mode=nft
    [ "${legacy:-0}" -gt "${nft:-0}" ] && mode=legacy
fi
for tool in iptables ip6tables; do
    update-alternatives --set "$tool" "/usr/sbin/$tool-$mode" >/dev/null
done
echo "kube-router: iptables backend $mode" >&2
exec /usr/local/lib/kube-router/kube-router "$@"
