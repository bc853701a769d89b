"""Decide which custom-resource writes bring the published state to the desired state."""
