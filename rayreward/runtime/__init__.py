"""Where rayreward runs: storage (local folders and object stores) and the Ray session."""
