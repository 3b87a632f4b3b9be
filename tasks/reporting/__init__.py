"""What a reader sees of a result row: the report's cards and its highlight marks."""
