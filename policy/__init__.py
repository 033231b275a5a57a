"""Outbound governance: consent ledger, lexicon, templates, send rules, outbox,
dispatcher, Cloud API client, campaigns and auto-replies.

Every outbound message passes a pure policy decision before dispatch.
"""
