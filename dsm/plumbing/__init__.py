"""What every layer leans on: typed configs, errors and exit statuses, atomic files and safe loads,
storage URLs, shared CLI options. Imports nothing else from dsm."""
