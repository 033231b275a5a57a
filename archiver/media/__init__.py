"""Media: fetching files from the Graph API, and judging what is safe to show."""
