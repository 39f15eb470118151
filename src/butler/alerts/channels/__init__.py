"""Alert channels: one module per channel builds its Messages from a task outcome."""
