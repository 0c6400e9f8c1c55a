"""Tests of deploy/: the image, docker-compose and Kubernetes manifests."""
