"""Identity: roles and permissions, users, credentials, TOTP, sessions, tokens,
approvals, grants."""
