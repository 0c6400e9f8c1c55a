"""The web console: pages of instances, workflows and schedules served on the admin port."""
