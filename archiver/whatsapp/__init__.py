"""WhatsApp itself: the one Graph API client and the parsing of webhook payloads into items."""
