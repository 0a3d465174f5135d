// The pod sandbox's init process: no dependencies, built static by the pinned Go toolchain.
module kube-testenv.dev/images/pause

go 1.26.0
