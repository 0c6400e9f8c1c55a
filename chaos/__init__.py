"""The fault suite: a mixed workload through several sidecars while processes are killed."""
