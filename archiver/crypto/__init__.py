"""Envelope encryption and the keyring of subject keys under the root key."""
