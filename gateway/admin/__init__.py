"""The routing command center: an operator JSON API and a dashboard over the same records."""
