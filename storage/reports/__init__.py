"""Rendering for people: HTML reports, the eval report, escaping."""
