"""The deployment files: the runtime lock, the Containerfile and the Kubernetes manifests."""
