"""Stand-ins for k3s, k0s, kubeadm, kubelet and kubectl (see kube/main.py).

They behave like the real CLIs where bootstrap depends on it: they reject flags and config
keys the real ones reject (lists from /work/shared/reference/distros.md), refuse tokens on
argv, write the files the real ones write, and keep one shared fake cluster
(kube/state.py) so several test nodes can form a cluster."""
