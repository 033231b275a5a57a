"""Root key custody: rotating the root key that wraps every subject key."""
