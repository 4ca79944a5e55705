"""Cluster launcher, demo and overlay benchmark for relaytv."""
