#!/bin/sh
# kubeadm starts `/usr/local/bin/kube-proxy`. Before the real binary runs, point iptables at the
# backend the node already uses (legacy or nft; the kind node picks it from its host's rules), so
# kube-proxy's rules land beside the node's rather than in the other table set.
legacy=$( (iptables-legacy-save; ip6tables-legacy-save) 2>/dev/null | grep -c '^-' || true)
nft=$( (timeout 5 sh -c 'iptables-nft-save; ip6tables-nft-save') 2>/dev/null | grep -c '^-' || true)
mode=nft
[ "${legacy:-0}" -gt "${nft:-0}" ] && mode=legacy
update-alternatives --set iptables "/usr/sbin/iptables-$mode" >/dev/null
update-alternatives --set ip6tables "/usr/sbin/ip6tables-$mode" >/dev/null
exec /usr/local/lib/kube-proxy/kube-proxy "$@"
