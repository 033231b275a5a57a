"""Business numbers (accounts) and their sealed secrets."""
