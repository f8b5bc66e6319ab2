"""Query-time: load published index versions, encode queries, search, hydrate from the catalog."""
