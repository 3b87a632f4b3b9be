"""From questions to passages: search (the order of the steps), retrievers, fusion, rerank."""
