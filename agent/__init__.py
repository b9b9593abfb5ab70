"""Who decides, and the CLI and tracking around it."""
