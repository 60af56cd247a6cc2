"""Run records: their schema, the store (atomic writes, loading) and statistics."""
