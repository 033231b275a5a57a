"""Imports: the chat-export parser and the importer."""
