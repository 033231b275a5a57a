"""Search: the tokenizer and blind index, queries and the search service."""
