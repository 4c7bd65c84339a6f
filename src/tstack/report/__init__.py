"""Display and files: the only place where units are converted and things are printed or written."""
