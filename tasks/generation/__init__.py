"""From passages to answers: the generator, its attention, prompts, snapping, citations."""
