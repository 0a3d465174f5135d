"""The tunnel from a worker to its pods: Kubernetes port-forwarding spoken directly (SPDY, or
WebSocket where the server prefers it) and the pod watch that follows restarts.

May import: ground
"""
